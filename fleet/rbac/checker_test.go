package rbac

import (
	"errors"
	"slices"
	"testing"
	"time"

	"remoteler.dev/edge/proto/api"
)

func preset(t *testing.T, name string) api.Role {
	t.Helper()
	for _, p := range Presets() {
		if p.Metadata.Name == name {
			return p
		}
	}
	t.Fatalf("no preset %q", name)
	return api.Role{}
}

func TestCheckDevice(t *testing.T) {
	pi1 := map[string]string{"site": "north", "env": "prod"}
	noRoot := role("no-root", api.RoleConditions{}, api.RoleConditions{Logins: []string{"root"}, DeviceLabels: everywhere})
	noProd := role("no-prod", api.RoleConditions{}, api.RoleConditions{Logins: []string{"*"}, DeviceLabels: map[string][]string{"env": {"prod"}}})
	north := role("north", api.RoleConditions{Logins: []string{"pi"}, DeviceLabels: map[string][]string{"site": {"north"}}}, api.RoleConditions{})
	tests := []struct {
		name     string
		roles    []api.Role
		logins   []string
		login    string
		wantErr  string // "" means allowed
		wantRole string // the denying role, for deny-rule refusals
		wantRule string // AccessDenied.Rule
	}{
		{"admin with root trait", []api.Role{preset(t, "admin")}, []string{"root"}, "root", "", "", ""},
		{"admin without root trait", []api.Role{preset(t, "admin")}, []string{"pi"}, "root",
			`access denied: no role allows login "root" on device "pi-1"; logins you have there: pi`, "", RuleAllowLogins},
		{"admin without any trait", []api.Role{preset(t, "admin")}, nil, "root",
			`access denied: no role allows login "root" on device "pi-1"`, "", RuleAllowLogins},
		{"access with trait", []api.Role{preset(t, "access")}, []string{"pi", "ubuntu"}, "ubuntu", "", "", ""},
		{"deny wins across roles", []api.Role{preset(t, "admin"), noRoot}, []string{"root", "pi"}, "root",
			`access denied: role "no-root" denies login "root" on device "pi-1"`, "no-root", RuleDenyLogins},
		{"deny of other login leaves this one", []api.Role{preset(t, "admin"), noRoot}, []string{"root", "pi"}, "pi", "", "", ""},
		{"deny star wins", []api.Role{north, noProd}, nil, "pi",
			`access denied: role "no-prod" denies login "pi" on device "pi-1"`, "no-prod", RuleDenyLogins},
		{"selector allows", []api.Role{north}, nil, "pi", "", "", ""},
		{"no roles", nil, []string{"pi"}, "pi", `access denied: no role allows login "pi" on device "pi-1"`, "", RuleAllowLabels},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewChecker(tt.roles, map[string][]string{"logins": tt.logins})
			err := c.CheckDevice("pi-1", pi1, tt.login)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("got %v, want allowed", err)
				}
				return
			}
			var ad *AccessDenied
			if !errors.As(err, &ad) {
				t.Fatalf("got %v (%T), want *AccessDenied", err, err)
			}
			if err.Error() != tt.wantErr {
				t.Errorf("got message %q, want %q", err, tt.wantErr)
			}
			if ad.Role != tt.wantRole {
				t.Errorf("got denying role %q, want %q", ad.Role, tt.wantRole)
			}
			if ad.Rule != tt.wantRule {
				t.Errorf("got rule %q, want %q", ad.Rule, tt.wantRule)
			}
			f := ad.AuditFields()
			if f["rule"] != tt.wantRule || f["role"] != tt.wantRole {
				t.Errorf("audit fields %v, want rule %q and role %q", f, tt.wantRule, tt.wantRole)
			}
		})
	}
}

func TestSSHOptions(t *testing.T) {
	no, yes := false, true
	opts := func(name string, fwd, cp *bool) api.Role {
		r := role(name, api.RoleConditions{Logins: []string{"pi"}, DeviceLabels: everywhere}, api.RoleConditions{})
		r.Spec.Options.PortForwarding, r.Spec.Options.SSHFileCopy = fwd, cp
		return r
	}
	tests := []struct {
		name              string
		roles             []api.Role
		wantFwd, wantCopy bool
	}{
		{"unset allows", []api.Role{opts("a", nil, nil)}, true, true},
		{"true allows", []api.Role{opts("a", &yes, &yes)}, true, true},
		{"one false wins over true", []api.Role{opts("a", &yes, &yes), opts("b", &no, nil)}, false, true},
		{"one false wins over unset", []api.Role{opts("a", nil, nil), opts("b", nil, &no)}, true, false},
		{"both off", []api.Role{opts("a", &no, &no)}, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewChecker(tt.roles, nil)
			if c.PortForwarding() != tt.wantFwd || c.FileCopy() != tt.wantCopy {
				t.Errorf("PortForwarding %v FileCopy %v, want %v %v", c.PortForwarding(), c.FileCopy(), tt.wantFwd, tt.wantCopy)
			}
		})
	}
}

func TestMatchLabels(t *testing.T) {
	dev := map[string]string{"site": "north", "env": "prod"}
	tests := []struct {
		name     string
		selector map[string][]string
		labels   map[string]string
		want     bool
	}{
		{"exact", map[string][]string{"site": {"north"}}, dev, true},
		{"exact among several values", map[string][]string{"site": {"south", "north"}}, dev, true},
		{"wrong value", map[string][]string{"site": {"south"}}, dev, false},
		{"every key must match", map[string][]string{"site": {"north"}, "env": {"dev"}}, dev, false},
		{"both keys match", map[string][]string{"site": {"north"}, "env": {"prod"}}, dev, true},
		{"star value", map[string][]string{"env": {"*"}}, dev, true},
		{"star value needs the key", map[string][]string{"hw": {"*"}}, dev, false},
		{"missing label", map[string][]string{"hw": {"rpi4"}}, dev, false},
		{"star star", map[string][]string{"*": {"*"}}, dev, true},
		{"star star without labels", map[string][]string{"*": {"*"}}, nil, true},
		{"star key with other value", map[string][]string{"*": {"prod"}}, dev, false},
		{"empty selector", nil, dev, false},
		{"empty selector and labels", map[string][]string{}, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := matchLabels(tt.selector, tt.labels); got != tt.want {
				t.Errorf("matchLabels(%v, %v) = %v, want %v", tt.selector, tt.labels, got, tt.want)
			}
		})
	}
}

func TestSelectorsThroughChecker(t *testing.T) {
	// The same selectors, seen through the Checker, in allow and in deny.
	tests := []struct {
		name     string
		selector map[string][]string
		labels   map[string]string
		want     bool
	}{
		{"exact", map[string][]string{"site": {"north"}}, map[string]string{"site": "north"}, true},
		{"star value", map[string][]string{"site": {"*"}}, map[string]string{"site": "x"}, true},
		{"star star", everywhere, map[string]string{}, true},
		{"missing label", map[string][]string{"site": {"*"}}, map[string]string{"env": "x"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name+" allow", func(t *testing.T) {
			c := NewChecker([]api.Role{role("r", api.RoleConditions{Logins: []string{"pi"}, DeviceLabels: tt.selector}, api.RoleConditions{})}, nil)
			if got := c.CheckDevice("d", tt.labels, "pi") == nil; got != tt.want {
				t.Errorf("allowed = %v, want %v", got, tt.want)
			}
			if got := c.CanSeeDevice(tt.labels); got != tt.want {
				t.Errorf("CanSeeDevice = %v, want %v", got, tt.want)
			}
		})
		t.Run(tt.name+" deny", func(t *testing.T) {
			c := NewChecker([]api.Role{
				role("all", api.RoleConditions{Logins: []string{"pi"}, DeviceLabels: everywhere}, api.RoleConditions{}),
				role("r", api.RoleConditions{}, api.RoleConditions{Logins: []string{"*"}, DeviceLabels: tt.selector}),
			}, nil)
			if got := c.CheckDevice("d", tt.labels, "pi") != nil; got != tt.want {
				t.Errorf("denied = %v, want %v", got, tt.want)
			}
			if got := !c.CanSeeDevice(tt.labels); got != tt.want {
				t.Errorf("!CanSeeDevice = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestTemplateExpansion(t *testing.T) {
	tests := []struct {
		name   string
		logins []string
		traits map[string][]string
		want   []string
	}{
		{"logins trait", []string{"{{internal.logins}}"}, map[string][]string{"logins": {"root", "pi"}}, []string{"pi", "root"}},
		{"spaces in template", []string{"{{ internal.logins }}"}, map[string][]string{"logins": {"pi"}}, []string{"pi"}},
		{"other trait", []string{"{{internal.unix}}", "ubuntu"}, map[string][]string{"unix": {"admin"}}, []string{"admin", "ubuntu"}},
		{"unknown trait", []string{"{{internal.nope}}", "pi"}, map[string][]string{"logins": {"root"}}, []string{"pi"}},
		{"nil traits", []string{"{{internal.logins}}"}, nil, nil},
		{"invalid values dropped", []string{"{{internal.logins}}"}, map[string][]string{"logins": {"ok", "bad name", "-x", "*", "", "9lives", "fine_2"}}, []string{"fine_2", "ok"}},
		{"duplicates merged", []string{"pi", "{{internal.logins}}"}, map[string][]string{"logins": {"pi"}}, []string{"pi"}},
		{"external trait", []string{"{{external.logins}}"}, map[string][]string{"external.logins": {"ops"}, "logins": {"root"}}, []string{"ops"}},
		{"internal does not read claims", []string{"{{internal.logins}}", "{{internal.external.logins}}"}, map[string][]string{"external.logins": {"ops"}}, nil},
		{"external does not read internal", []string{"{{external.logins}}"}, map[string][]string{"logins": {"root"}}, nil},
		{"email local part", []string{"{{email.local(external.email)}}"}, map[string][]string{"external.email": {"alice@example.com", "no-at-sign", "@example.com"}}, []string{"alice"}},
		{"email local of internal", []string{"{{ email.local( internal.mail ) }}"}, map[string][]string{"mail": {"bob@example.com"}}, []string{"bob"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewChecker([]api.Role{role("r", api.RoleConditions{Logins: tt.logins, DeviceLabels: everywhere}, api.RoleConditions{})}, tt.traits)
			if got := c.DeviceLogins(nil); !slices.Equal(got, tt.want) {
				t.Errorf("DeviceLogins = %q, want %q", got, tt.want)
			}
			if got := c.AllLogins(); !slices.Equal(got, tt.want) {
				t.Errorf("AllLogins = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTraitStarDoesNotDenyEverything(t *testing.T) {
	c := NewChecker([]api.Role{
		role("a", api.RoleConditions{Logins: []string{"pi"}, DeviceLabels: everywhere},
			api.RoleConditions{Logins: []string{"{{internal.banned}}"}, DeviceLabels: everywhere}),
	}, map[string][]string{"banned": {"*"}})
	if err := c.CheckDevice("d", nil, "pi"); err != nil {
		t.Errorf("a trait value \"*\" acted as a deny wildcard: %v", err)
	}
}

func TestDeviceAndAllLogins(t *testing.T) {
	roles := []api.Role{
		role("north", api.RoleConditions{Logins: []string{"pi", "root"}, DeviceLabels: map[string][]string{"site": {"north"}}}, api.RoleConditions{}),
		role("south", api.RoleConditions{Logins: []string{"ubuntu"}, DeviceLabels: map[string][]string{"site": {"south"}}}, api.RoleConditions{}),
		role("nolabels", api.RoleConditions{Logins: []string{"ghost"}}, api.RoleConditions{}),
		role("no-root-prod", api.RoleConditions{}, api.RoleConditions{Logins: []string{"root"}, DeviceLabels: map[string][]string{"env": {"prod"}}}),
		role("no-ubuntu", api.RoleConditions{}, api.RoleConditions{Logins: []string{"ubuntu"}, DeviceLabels: everywhere}),
	}
	c := NewChecker(roles, nil)
	tests := []struct {
		name   string
		labels map[string]string
		want   []string
	}{
		{"north dev", map[string]string{"site": "north", "env": "dev"}, []string{"pi", "root"}},
		{"north prod", map[string]string{"site": "north", "env": "prod"}, []string{"pi"}},
		{"south", map[string]string{"site": "south"}, nil},
		{"unlabelled", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := c.DeviceLogins(tt.labels); !slices.Equal(got, tt.want) {
				t.Errorf("DeviceLogins(%v) = %q, want %q", tt.labels, got, tt.want)
			}
		})
	}
	// root is denied only on prod, so it stays a principal; ubuntu is denied
	// everywhere; ghost's role selects no device.
	if got, want := c.AllLogins(), []string{"pi", "root"}; !slices.Equal(got, want) {
		t.Errorf("AllLogins = %q, want %q", got, want)
	}
	denyAll := append(slices.Clone(roles), role("none", api.RoleConditions{}, api.RoleConditions{Logins: []string{"*"}, DeviceLabels: everywhere}))
	if got := NewChecker(denyAll, nil).AllLogins(); got != nil {
		t.Errorf("AllLogins with a deny-everything role = %q, want none", got)
	}
}

func TestIsAdmin(t *testing.T) {
	noAdmin := role("no-admin", api.RoleConditions{}, api.RoleConditions{Admin: true})
	tests := []struct {
		name  string
		roles []api.Role
		want  bool
	}{
		{"admin preset", []api.Role{preset(t, "admin")}, true},
		{"access preset", []api.Role{preset(t, "access")}, false},
		{"admin denied", []api.Role{preset(t, "admin"), noAdmin}, false},
		{"none", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NewChecker(tt.roles, nil).IsAdmin(); got != tt.want {
				t.Errorf("IsAdmin = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMaxTTL(t *testing.T) {
	withTTL := func(name, ttl string) api.Role {
		r := preset(t, "access")
		r.Metadata.Name = name
		r.Spec.Options.MaxSessionTTL = ttl
		return r
	}
	tests := []struct {
		name  string
		roles []api.Role
		want  time.Duration
	}{
		{"none set", []api.Role{preset(t, "access")}, 8 * time.Hour},
		{"one set", []api.Role{preset(t, "access"), withTTL("a", "2h")}, 2 * time.Hour},
		{"smallest wins", []api.Role{withTTL("a", "2h"), withTTL("b", "30m"), withTTL("c", "24h")}, 30 * time.Minute},
		{"larger than default", []api.Role{withTTL("a", "24h")}, 24 * time.Hour},
		{"no roles", nil, 8 * time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := NewChecker(tt.roles, nil).MaxTTL(8 * time.Hour); got != tt.want {
				t.Errorf("MaxTTL = %v, want %v", got, tt.want)
			}
		})
	}
}
