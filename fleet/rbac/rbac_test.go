package rbac

import (
	"strings"
	"testing"

	"remoteler.dev/edge/proto/api"
)

// role builds a valid role for tests.
func role(name string, allow, deny api.RoleConditions) api.Role {
	return api.Role{Kind: Kind, Version: Version, Metadata: api.Metadata{Name: name}, Spec: api.RoleSpec{Allow: allow, Deny: deny}}
}

var everywhere = map[string][]string{"*": {"*"}}

func TestValidate(t *testing.T) {
	ok := role("ok", api.RoleConditions{Logins: []string{"pi"}, DeviceLabels: everywhere}, api.RoleConditions{})
	tests := []struct {
		name    string
		edit    func(r *api.Role)
		wantErr string // substring; "" means valid
	}{
		{"valid", func(r *api.Role) {}, ""},
		{"valid template", func(r *api.Role) { r.Spec.Allow.Logins = []string{"{{internal.logins}}", "{{ internal.unix_users }}"} }, ""},
		{"valid deny everywhere", func(r *api.Role) {
			r.Spec.Deny = api.RoleConditions{Logins: []string{"*"}, DeviceLabels: map[string][]string{"env": {"prod"}}}
		}, ""},
		{"valid ttl", func(r *api.Role) { r.Spec.Options.MaxSessionTTL = "90m" }, ""},
		{"valid no labels", func(r *api.Role) { r.Spec.Allow.DeviceLabels = nil }, ""},
		{"wrong kind", func(r *api.Role) { r.Kind = "user" }, `kind is "user"`},
		{"wrong version", func(r *api.Role) { r.Version = "v2" }, `version is "v2"`},
		{"empty name", func(r *api.Role) { r.Metadata.Name = "" }, "name"},
		{"upper-case name", func(r *api.Role) { r.Metadata.Name = "Admin" }, "name"},
		{"long name", func(r *api.Role) { r.Metadata.Name = strings.Repeat("a", 65) }, "name"},
		{"dot-dot name", func(r *api.Role) { r.Metadata.Name = ".." }, "reserved"},
		{"star login in allow", func(r *api.Role) { r.Spec.Allow.Logins = []string{"*"} }, "only allowed in deny"},
		{"bad login", func(r *api.Role) { r.Spec.Allow.Logins = []string{"-rf"} }, "not a valid Unix login"},
		{"bad template namespace", func(r *api.Role) { r.Spec.Allow.Logins = []string{"{{outer.logins}}"} }, "not a template"},
		{"external template", func(r *api.Role) {
			r.Spec.Allow.Logins = []string{"{{external.logins}}", "{{email.local(external.email)}}"}
		}, ""},
		{"unknown function", func(r *api.Role) { r.Spec.Allow.Logins = []string{"{{email.domain(external.email)}}"} }, "not a template"},
		{"unclosed function", func(r *api.Role) { r.Spec.Allow.Logins = []string{"{{email.local(external.email}}"} }, "not a template"},
		{"partial template", func(r *api.Role) { r.Spec.Allow.Logins = []string{"x{{internal.logins}}"} }, "not a template"},
		{"star key with value", func(r *api.Role) { r.Spec.Allow.DeviceLabels = map[string][]string{"*": {"prod"}} }, `takes only the value "*"`},
		{"no values", func(r *api.Role) { r.Spec.Allow.DeviceLabels = map[string][]string{"env": {}} }, "has no values"},
		{"empty value", func(r *api.Role) { r.Spec.Allow.DeviceLabels = map[string][]string{"env": {""}} }, "empty value"},
		{"empty key", func(r *api.Role) { r.Spec.Allow.DeviceLabels = map[string][]string{"": {"x"}} }, "key"},
		{"deny logins without labels", func(r *api.Role) { r.Spec.Deny.Logins = []string{"root"} }, "needs deny.device_labels"},
		{"deny labels without logins", func(r *api.Role) { r.Spec.Deny.DeviceLabels = everywhere }, "denies nothing"},
		{"bad ttl", func(r *api.Role) { r.Spec.Options.MaxSessionTTL = "8 hours" }, "not a duration"},
		{"negative ttl", func(r *api.Role) { r.Spec.Options.MaxSessionTTL = "-1h" }, "positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := ok
			r.Spec.Allow.DeviceLabels = map[string][]string{"*": {"*"}}
			tt.edit(&r)
			err := Validate(r)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("got error %v, want none", err)
			case tt.wantErr != "" && err == nil:
				t.Errorf("got no error, want one containing %q", tt.wantErr)
			case err != nil && !strings.Contains(err.Error(), tt.wantErr):
				t.Errorf("got error %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestPresetsValid(t *testing.T) {
	for _, p := range Presets() {
		if err := Validate(p); err != nil {
			t.Errorf("preset %q: %v", p.Metadata.Name, err)
		}
	}
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		doc     string
		wantErr string
		check   func(t *testing.T, r api.Role)
	}{
		{
			name: "yaml with scalar label",
			doc: `kind: role
version: v1
metadata:
  name: field-tech
spec:
  allow:
    logins: ["{{internal.logins}}", pi]
    device_labels: {site: north, env: [dev, test]}
  deny:
    logins: [root]
    device_labels: {"*": "*"}
  options:
    max_session_ttl: 8h
`,
			check: func(t *testing.T, r api.Role) {
				t.Helper()
				if got := r.Spec.Allow.DeviceLabels["site"]; len(got) != 1 || got[0] != "north" {
					t.Errorf("got site selector %q, want [north]", got)
				}
				if got := r.Spec.Deny.DeviceLabels["*"]; len(got) != 1 || got[0] != "*" {
					t.Errorf("got deny selector %q, want [*]", got)
				}
			},
		},
		{
			name: "json without kind and version",
			doc:  `{"metadata":{"name":"x"},"spec":{"allow":{"logins":["pi"],"device_labels":{"*":["*"]}}}}`,
			check: func(t *testing.T, r api.Role) {
				t.Helper()
				if r.Kind != Kind || r.Version != Version {
					t.Errorf("got kind %q version %q, want %q %q", r.Kind, r.Version, Kind, Version)
				}
			},
		},
		{name: "unknown field", doc: "metadata: {name: x}\nspec: {allow: {logins: [pi], node_labels: {a: b}}}\n", wantErr: "unknown field"},
		{name: "unknown top-level field", doc: "metadata: {name: x}\nspec: {}\nextra: 1\n", wantErr: "unknown field"},
		{name: "duplicate key", doc: "metadata: {name: x}\nmetadata: {name: y}\nspec: {}\n", wantErr: "decode role"},
		{name: "not a mapping", doc: "- a\n- b\n", wantErr: "mapping"},
		{name: "invalid role", doc: "metadata: {name: X}\n", wantErr: "name"},
		{name: "empty", doc: "", wantErr: "name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Decode([]byte(tt.doc))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("got error %v, want none", err)
			}
			tt.check(t, r)
		})
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte("metadata: {name: x}\nspec: {allow: {logins: [pi], device_labels: {a: b}}}\n"))
	f.Add([]byte(`{"kind":"role","version":"v1","metadata":{"name":"x"},"spec":{"deny":{"logins":["*"],"device_labels":{"*":"*"}}}}`))
	f.Add([]byte("spec: {allow: {device_labels: [1, 2]}}"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Decode(data)
		if err != nil {
			return
		}
		if err := Validate(r); err != nil {
			t.Errorf("Decode accepted a role that Validate refuses: %v", err)
		}
		NewChecker([]api.Role{r}, map[string][]string{"logins": {"pi"}}).AllLogins()
	})
}
