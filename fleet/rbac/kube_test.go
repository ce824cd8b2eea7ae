package rbac

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"remoteler.dev/edge/proto/api"
)

func TestKubeAccess(t *testing.T) {
	k3s := map[string]string{"site": "north", "k3s": "yes"}
	devs := role("devs", api.RoleConditions{
		DeviceLabels:     map[string][]string{"k3s": {"yes"}},
		KubernetesGroups: []string{"developers", "{{internal.kubernetes_groups}}"},
		KubernetesUsers:  []string{"{{internal.kubernetes_users}}"},
	}, api.RoleConditions{})
	viewers := role("viewers", api.RoleConditions{
		DeviceLabels:     everywhere,
		KubernetesGroups: []string{"viewers"},
	}, api.RoleConditions{})
	sshOnly := role("ssh-only", api.RoleConditions{DeviceLabels: everywhere, Logins: []string{"pi"}}, api.RoleConditions{})
	noDevs := role("no-devs", api.RoleConditions{}, api.RoleConditions{
		DeviceLabels: map[string][]string{"site": {"north"}}, KubernetesGroups: []string{"developers"},
	})
	noKube := role("no-kube", api.RoleConditions{}, api.RoleConditions{
		DeviceLabels: everywhere, KubernetesGroups: []string{"*"}, KubernetesUsers: []string{"*"},
	})
	hideNorth := role("hide-north", api.RoleConditions{}, api.RoleConditions{
		DeviceLabels: map[string][]string{"site": {"north"}}, Logins: []string{"*"},
	})
	tests := []struct {
		name       string
		roles      []api.Role
		traits     map[string][]string
		wantUsers  []string
		wantGroups []string
	}{
		{"groups and templates", []api.Role{devs}, map[string][]string{"kubernetes_groups": {"ops"}, "kubernetes_users": {"alice@example.com"}},
			[]string{"alice@example.com"}, []string{"developers", "ops"}},
		{"union across roles", []api.Role{devs, viewers}, nil, nil, []string{"developers", "viewers"}},
		{"deny removes a group", []api.Role{devs, viewers, noDevs}, nil, nil, []string{"viewers"}},
		{"deny star removes all", []api.Role{devs, viewers, noKube}, map[string][]string{"kubernetes_users": {"alice"}}, nil, nil},
		{"ssh role gives nothing", []api.Role{sshOnly}, nil, nil, nil},
		{"hidden device gives nothing", []api.Role{viewers, hideNorth}, nil, nil, nil},
		{"trait star is no wildcard", []api.Role{devs}, map[string][]string{"kubernetes_groups": {"*", "bad name"}}, nil, []string{"developers"}},
		{"no roles", nil, nil, nil, nil},
		{"groups from claims", []api.Role{role("sso", api.RoleConditions{DeviceLabels: everywhere, KubernetesGroups: []string{"{{external.groups}}"},
			KubernetesUsers: []string{"{{external.email}}"}}, api.RoleConditions{})},
			map[string][]string{"external.groups": {"fleet-admins", "ops"}, "external.email": {"carol@example.com"}, "kubernetes_groups": {"not-me"}},
			[]string{"carol@example.com"}, []string{"fleet-admins", "ops"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewChecker(tt.roles, tt.traits)
			users, groups := c.KubeAccess(k3s)
			if !slices.Equal(users, tt.wantUsers) || !slices.Equal(groups, tt.wantGroups) {
				t.Errorf("got users %q groups %q, want users %q groups %q", users, groups, tt.wantUsers, tt.wantGroups)
			}
			_, _, err := c.CheckKube("pi-1", k3s, "alice")
			wantDenied := len(tt.wantUsers) == 0 && len(tt.wantGroups) == 0
			var ad *AccessDenied
			if gotDenied := errors.As(err, &ad); gotDenied != wantDenied {
				t.Fatalf("CheckKube: got err %v, want denied %v", err, wantDenied)
			}
			if wantDenied && (!ad.Kube || !strings.Contains(err.Error(), "Kubernetes")) {
				t.Errorf("CheckKube: got %q, want a Kubernetes refusal", err)
			}
		})
	}
}

// TestKubeDenyWins checks who a request acts as, and that deny rules win
// over every allow, including the fleet user name a request acts as when
// roles give no Kubernetes user.
func TestKubeDenyWins(t *testing.T) {
	prod := map[string]string{"k3s": "yes", "env": "prod"}
	dev := map[string]string{"k3s": "yes", "env": "dev"}
	groupsOnly := role("groups-only", api.RoleConditions{DeviceLabels: everywhere, KubernetesGroups: []string{"developers"}}, api.RoleConditions{})
	carol := role("carol", api.RoleConditions{DeviceLabels: everywhere, KubernetesUsers: []string{"kube-carol"}}, api.RoleConditions{})
	twoUsers := role("two-users", api.RoleConditions{DeviceLabels: everywhere, KubernetesUsers: []string{"kube-carol", "kube-dave"}}, api.RoleConditions{})
	denyUsersStar := role("deny-users-star", api.RoleConditions{}, api.RoleConditions{DeviceLabels: everywhere, KubernetesUsers: []string{"*"}})
	denyAlice := role("deny-alice", api.RoleConditions{}, api.RoleConditions{DeviceLabels: everywhere, KubernetesUsers: []string{"alice"}})
	denyCarol := role("deny-carol", api.RoleConditions{}, api.RoleConditions{DeviceLabels: everywhere, KubernetesUsers: []string{"kube-carol"}})
	// The deny example of docs/kubernetes.md: groups "*" on env: prod.
	docsDeny := role("k3s-dev", api.RoleConditions{}, api.RoleConditions{DeviceLabels: map[string][]string{"env": {"prod"}}, KubernetesGroups: []string{"*"}})
	tests := []struct {
		name       string
		roles      []api.Role
		labels     map[string]string
		wantUsers  []string
		wantGroups []string
		wantRule   string // "" means allowed
		wantRole   string
	}{
		{"groups only act as the fleet name", []api.Role{groupsOnly}, dev, []string{"alice"}, []string{"developers"}, "", ""},
		{"deny users star refuses the fleet name", []api.Role{groupsOnly, denyUsersStar}, dev, nil, nil, RuleDenyKubeUsers, "deny-users-star"},
		{"deny of the user's own name refuses it", []api.Role{groupsOnly, denyAlice}, dev, nil, nil, RuleDenyKubeUsers, "deny-alice"},
		{"deny of the own name leaves a given user", []api.Role{carol, denyAlice}, dev, []string{"kube-carol"}, nil, "", ""},
		{"docs example keeps a kube user off prod", []api.Role{carol, docsDeny}, prod, nil, nil, RuleDenyKubeGroups, "k3s-dev"},
		{"docs example keeps groups off prod", []api.Role{groupsOnly, docsDeny}, prod, nil, nil, RuleDenyKubeGroups, "k3s-dev"},
		{"docs example leaves dev", []api.Role{carol, groupsOnly, docsDeny}, dev, []string{"kube-carol"}, []string{"developers"}, "", ""},
		{"every given user denied", []api.Role{carol, groupsOnly, denyCarol}, dev, nil, nil, RuleDenyKubeUsers, "deny-carol"},
		{"one of two users denied", []api.Role{twoUsers, denyCarol}, dev, []string{"kube-dave"}, nil, "", ""},
		{"nothing given", []api.Role{role("ssh", api.RoleConditions{DeviceLabels: everywhere, Logins: []string{"pi"}}, api.RoleConditions{})}, dev, nil, nil, RuleAllowKube, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewChecker(tt.roles, nil)
			users, groups, err := c.CheckKube("pi-1", tt.labels, "alice")
			if tt.wantRule == "" {
				if err != nil {
					t.Fatalf("got %v, want allowed", err)
				}
				if !slices.Equal(users, tt.wantUsers) || !slices.Equal(groups, tt.wantGroups) {
					t.Errorf("got users %q groups %q, want %q %q", users, groups, tt.wantUsers, tt.wantGroups)
				}
				return
			}
			var ad *AccessDenied
			if !errors.As(err, &ad) {
				t.Fatalf("got users %q groups %q err %v, want a refusal by %s", users, groups, err, tt.wantRule)
			}
			if ad.Rule != tt.wantRule || ad.Role != tt.wantRole || !ad.Kube {
				t.Errorf("got rule %q role %q kube %v (%v), want rule %q role %q", ad.Rule, ad.Role, ad.Kube, err, tt.wantRule, tt.wantRole)
			}
			if u, g := c.KubeAccess(tt.labels); tt.wantRule == RuleDenyKubeGroups && (u != nil || g != nil) {
				t.Errorf("KubeAccess lists users %q groups %q on a cluster a deny keeps the user off", u, g)
			}
		})
	}
}

func TestValidateKube(t *testing.T) {
	tests := []struct {
		name    string
		allow   api.RoleConditions
		deny    api.RoleConditions
		wantErr string // substring; "" means valid
	}{
		{"groups and template", api.RoleConditions{DeviceLabels: everywhere, KubernetesGroups: []string{"system:masters", "{{internal.kubernetes_groups}}"}}, api.RoleConditions{}, ""},
		{"users", api.RoleConditions{DeviceLabels: everywhere, KubernetesUsers: []string{"alice@example.com"}}, api.RoleConditions{}, ""},
		{"star in allow", api.RoleConditions{DeviceLabels: everywhere, KubernetesGroups: []string{"*"}}, api.RoleConditions{}, `"*" is only allowed in deny`},
		{"space in name", api.RoleConditions{DeviceLabels: everywhere, KubernetesUsers: []string{"a b"}}, api.RoleConditions{}, "printable ASCII"},
		{"newline in name", api.RoleConditions{DeviceLabels: everywhere, KubernetesGroups: []string{"a\r\nImpersonate-User: admin"}}, api.RoleConditions{}, "printable ASCII"},
		{"bad template", api.RoleConditions{DeviceLabels: everywhere, KubernetesGroups: []string{"{{outer.x}}"}}, api.RoleConditions{}, "not a template"},
		{"external template", api.RoleConditions{DeviceLabels: everywhere, KubernetesGroups: []string{"{{external.groups}}"}}, api.RoleConditions{}, ""},
		{"deny star with labels", api.RoleConditions{}, api.RoleConditions{DeviceLabels: everywhere, KubernetesGroups: []string{"*"}}, ""},
		{"deny kube without labels", api.RoleConditions{}, api.RoleConditions{KubernetesUsers: []string{"admin"}}, "need deny.device_labels"},
		{"deny labels with nothing", api.RoleConditions{}, api.RoleConditions{DeviceLabels: everywhere}, "denies nothing"},
		{"deny message names the kube fields", api.RoleConditions{}, api.RoleConditions{DeviceLabels: everywhere}, `kubernetes_groups: ["*"] to keep users off the Kubernetes clusters`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(role("r", tt.allow, tt.deny))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("got %v, want valid", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestDecodeKubeRole(t *testing.T) {
	r, err := Decode([]byte(`
kind: role
version: v1
metadata: {name: kube-dev}
spec:
  allow:
    device_labels: {k3s: "yes"}
    kubernetes_groups: [developers]
    kubernetes_users: ["{{internal.kubernetes_users}}"]
  deny:
    device_labels: {env: prod}
    kubernetes_groups: ["*"]
`))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.Spec.Allow.KubernetesGroups, []string{"developers"}; !slices.Equal(got, want) {
		t.Errorf("allow groups: got %q, want %q", got, want)
	}
	if got, want := r.Spec.Deny.KubernetesGroups, []string{"*"}; !slices.Equal(got, want) {
		t.Errorf("deny groups: got %q, want %q", got, want)
	}
}
