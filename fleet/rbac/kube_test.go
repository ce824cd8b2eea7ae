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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewChecker(tt.roles, tt.traits)
			users, groups := c.KubeAccess(k3s)
			if !slices.Equal(users, tt.wantUsers) || !slices.Equal(groups, tt.wantGroups) {
				t.Errorf("got users %q groups %q, want users %q groups %q", users, groups, tt.wantUsers, tt.wantGroups)
			}
			_, _, err := c.CheckKube("pi-1", k3s)
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
		{"bad template", api.RoleConditions{DeviceLabels: everywhere, KubernetesGroups: []string{"{{external.x}}"}}, api.RoleConditions{}, "not a template"},
		{"deny star with labels", api.RoleConditions{}, api.RoleConditions{DeviceLabels: everywhere, KubernetesGroups: []string{"*"}}, ""},
		{"deny kube without labels", api.RoleConditions{}, api.RoleConditions{KubernetesUsers: []string{"admin"}}, "need deny.device_labels"},
		{"deny labels with nothing", api.RoleConditions{}, api.RoleConditions{DeviceLabels: everywhere}, "denies nothing"},
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
