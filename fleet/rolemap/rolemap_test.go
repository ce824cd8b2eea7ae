package rolemap

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"remoteler.dev/edge/proto/api"
)

func TestRoles(t *testing.T) {
	rules := []api.RoleMapping{
		{Remote: "admin", Local: []string{"admin"}},
		{Remote: "site-*", Local: []string{"access"}},
		{Remote: "^ops-(.*)$", Local: []string{"operator-$1", "viewer"}},
		{Remote: "^team-(?P<team>[a-z]+)-(lead|member)$", Local: []string{"${team}-${2}"}},
		{Remote: "dev-?", Local: []string{"dev-$1"}},
	}
	m, err := Compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		remote []string
		want   []string
	}{
		{"exact", []string{"admin"}, []string{"admin"}},
		{"glob", []string{"site-north"}, []string{"access"}},
		{"glob matches empty tail", []string{"site-"}, []string{"access"}},
		{"regexp with capture", []string{"ops-north"}, []string{"operator-north", "viewer"}},
		{"named capture", []string{"team-blue-lead"}, []string{"blue-lead"}},
		{"glob capture", []string{"dev-a"}, []string{"dev-a"}},
		{"several, no repeats, rule order", []string{"site-b", "admin", "site-a"}, []string{"admin", "access"}},
		{"exact is exact", []string{"admins", "xadmin"}, nil},
		{"regexp anchored", []string{"xops-north", "ops-"}, []string{"operator-", "viewer"}},
		{"expansion to a bad name is dropped", []string{"ops-NORTH"}, []string{"viewer"}},
		{"nothing", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := m.Roles(tc.remote); !slices.Equal(got, tc.want) {
				t.Errorf("Roles(%q) = %q, want %q", tc.remote, got, tc.want)
			}
		})
	}
}

func TestMapRefusal(t *testing.T) {
	m, err := Compile([]api.RoleMapping{{Remote: "admin", Local: []string{"admin"}}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Map("root", []string{"access", "dev"})
	var nm *NoMatchError
	if !errors.As(err, &nm) {
		t.Fatalf("Map = %v, want *NoMatchError", err)
	}
	for _, want := range []string{"roles access, dev", `trusted cluster "root"`, "role_map", "at root"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if got, err := m.Map("root", []string{"admin"}); err != nil || !slices.Equal(got, []string{"admin"}) {
		t.Errorf("Map(admin) = %q, %v", got, err)
	}
	var zero Map
	if _, err := zero.Map("root", []string{"admin"}); !errors.As(err, &nm) {
		t.Errorf("the zero Map mapped something: %v", err)
	}
}

// TestMapCases runs Map, refusal included, over one small map per case:
// the issue's own example among them.
func TestMapCases(t *testing.T) {
	for _, tc := range []struct {
		name   string
		rules  []api.RoleMapping
		remote []string
		want   []string // nil: a *NoMatchError
	}{
		{"exact", []api.RoleMapping{{Remote: "admin", Local: []string{"admin", "auditor"}}}, []string{"admin"}, []string{"admin", "auditor"}},
		{"exact is case-sensitive", []api.RoleMapping{{Remote: "admin", Local: []string{"admin"}}}, []string{"Admin"}, nil},
		{"glob", []api.RoleMapping{{Remote: "site-*", Local: []string{"access"}}}, []string{"site-north"}, []string{"access"}},
		{"glob is anchored", []api.RoleMapping{{Remote: "site-*", Local: []string{"access"}}}, []string{"my-site-north"}, nil},
		{"regexp capture", []api.RoleMapping{{Remote: "^site-(.*)$", Local: []string{"operator-$1"}}}, []string{"site-north"}, []string{"operator-north"}},
		{"regexp capture, braces", []api.RoleMapping{{Remote: "^site-(.*)$", Local: []string{"${1}-ops"}}}, []string{"site-north"}, []string{"north-ops"}},
		{"regexp no match", []api.RoleMapping{{Remote: "^site-(.*)$", Local: []string{"operator-$1"}}}, []string{"ops-north", "sites"}, nil},
		{"regexp capture that makes no role name", []api.RoleMapping{{Remote: "^site-(.*)$", Local: []string{"operator-$1"}}}, []string{"site-North Wing"}, nil},
		{"two rules, one user", []api.RoleMapping{
			{Remote: "^site-(.*)$", Local: []string{"operator-$1"}},
			{Remote: "auditor", Local: []string{"auditor"}},
		}, []string{"auditor", "site-south"}, []string{"operator-south", "auditor"}},
		{"no roles", []api.RoleMapping{{Remote: "site-*", Local: []string{"access"}}}, nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Compile(tc.rules)
			if err != nil {
				t.Fatal(err)
			}
			got, err := m.Map("root", tc.remote)
			if tc.want == nil {
				var nm *NoMatchError
				if !errors.As(err, &nm) || got != nil || nm.Cluster != "root" || !slices.Equal(nm.Roles, tc.remote) {
					t.Fatalf("Map(%q) = %q, %v; want a *NoMatchError naming root and the roles", tc.remote, got, err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Errorf("Map(%q) = %q, %v; want %q", tc.remote, got, err, tc.want)
			}
		})
	}
}

func TestCompileErrors(t *testing.T) {
	long := strings.Repeat("a", MaxPatternLen+1)
	for _, tc := range []struct {
		name string
		rule api.RoleMapping
		want string
	}{
		{"empty remote", api.RoleMapping{Local: []string{"a"}}, "remote is empty"},
		{"no local", api.RoleMapping{Remote: "a"}, "local is empty"},
		{"long remote", api.RoleMapping{Remote: long, Local: []string{"a"}}, "longer than"},
		{"unanchored end", api.RoleMapping{Remote: "^a(.*)", Local: []string{"a"}}, "must end with $"},
		{"bad regexp", api.RoleMapping{Remote: "^a(.*$", Local: []string{"a"}}, "bad regular expression"},
		{"bad exact name", api.RoleMapping{Remote: "Admin", Local: []string{"a"}}, "not a role name"},
		{"bad local", api.RoleMapping{Remote: "a", Local: []string{"A B"}}, `local "A B"`},
		{"capture in an exact rule", api.RoleMapping{Remote: "a", Local: []string{"x-$1"}}, `local "x-$1"`},
		{"unknown capture", api.RoleMapping{Remote: "^a-(.*)$", Local: []string{"x-$2"}}, "no capture 2"},
		{"capture glued to text", api.RoleMapping{Remote: "^a-(.*)$", Local: []string{"$1x"}}, "no capture 1x"},
		{"unknown named capture", api.RoleMapping{Remote: "^a-(?P<s>.*)$", Local: []string{"${t}"}}, "no capture t"},
		{"bad characters around a capture", api.RoleMapping{Remote: "^a-(.*)$", Local: []string{"X-$1"}}, "characters"},
		{"too many locals", api.RoleMapping{Remote: "a", Local: slices.Repeat([]string{"a"}, MaxLocal+1)}, "local roles"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compile([]api.RoleMapping{{Remote: "ok", Local: []string{"ok"}}, tc.rule})
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "rule 2") {
				t.Errorf("Compile = %v, want an error about rule 2 saying %q", err, tc.want)
			}
		})
	}
	if _, err := Compile(slices.Repeat([]api.RoleMapping{{Remote: "a", Local: []string{"a"}}}, MaxRules+1)); err == nil {
		t.Error("Compile took more than MaxRules rules")
	}
}

func FuzzCompile(f *testing.F) {
	for _, s := range [][3]string{
		{"admin", "admin", "admin"},
		{"site-*", "access", "site-north"},
		{"^ops-(.*)$", "operator-$1", "ops-x"},
		{"^team-(?P<t>[a-z]+)$", "${t}-lead", "team-blue"},
		{"a?b", "x-$1", "acb"},
		{"^(a+)+$", "$1", strings.Repeat("a", 64) + "!"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, remote, local, role string) {
		m, err := Compile([]api.RoleMapping{{Remote: remote, Local: []string{local}}})
		if err != nil {
			return
		}
		for _, got := range m.Roles([]string{role}) {
			if !nameOK(got) {
				t.Fatalf("Roles(%q) gave the invalid role name %q (remote %q, local %q)", role, got, remote, local)
			}
		}
	})
}

func nameOK(s string) bool {
	if s == "" || len(s) > 64 || s == "." || s == ".." {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
