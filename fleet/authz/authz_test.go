package authz

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// fakeUsers and fakeDevices stand in for the user and device services,
// whose real implementations need password hashing and joins.
type fakeUsers map[string]api.User

func (f fakeUsers) Get(_ context.Context, name string) (api.User, error) {
	u, ok := f[name]
	if !ok {
		return api.User{}, fmt.Errorf("get user %q: %w", name, store.ErrNotFound)
	}
	return u, nil
}

type failingUsers struct{}

func (failingUsers) Get(context.Context, string) (api.User, error) {
	return api.User{}, errors.New("store: timeout")
}

type fakeDevices map[string]devices.Device

func (f fakeDevices) Get(_ context.Context, id string) (devices.Device, error) {
	d, ok := f[id]
	if !ok {
		return devices.Device{}, devices.ErrNotFound
	}
	return d, nil
}

func mustRole(t *testing.T, doc string) api.Role {
	t.Helper()
	r, err := rbac.Decode([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

const (
	sshRole = `metadata: {name: ops}
spec:
  allow: {device_labels: {"*": "*"}, logins: [root]}`
	kubeRole = `metadata: {name: kube}
spec:
  allow: {device_labels: {k3s: "yes"}, kubernetes_groups: [developers, viewers]}`
	noRoot = `metadata: {name: no-root}
spec:
  deny: {device_labels: {"*": "*"}, logins: [root]}`
	noForward = `metadata: {name: no-forward}
spec:
  allow: {device_labels: {"*": "*"}}
  options: {port_forwarding: false}`
	noViewers = `metadata: {name: no-viewers}
spec:
  deny: {device_labels: {"*": "*"}, kubernetes_groups: [viewers]}`
)

func TestCheck(t *testing.T) {
	ctx := context.Background()
	sshSession := sessions.Session{ID: "s", Service: proto.ServiceSSH, User: "alice", Login: "root", DeviceID: "d1", DeviceName: "pi-1"}
	fwdSession := sshSession
	fwdSession.PortForwarding = true
	kubeSession := sessions.Session{ID: "k", Service: proto.ServiceKube, User: "alice", KubeUser: "alice",
		KubeGroups: []string{"developers", "viewers"}, DeviceID: "d1", DeviceName: "pi-1"}
	tests := []struct {
		name    string
		roles   []string // the user's roles
		extra   []string // more role documents in the store
		labels  map[string]string
		noUser  bool
		noDev   bool
		s       sessions.Session
		wantErr string // "" means allowed
	}{
		{"ssh still allowed", []string{"ops"}, nil, nil, false, false, sshSession, ""},
		{"user removed", []string{"ops"}, nil, nil, true, false, sshSession, `the fleet user "alice" was removed`},
		{"device removed", []string{"ops"}, nil, nil, false, true, sshSession, `device "pi-1" was removed`},
		{"role removed", []string{"ops-gone"}, nil, nil, false, false, sshSession, `access changed: no role allows login "root"`},
		{"deny added", []string{"ops", "no-root"}, []string{noRoot}, nil, false, false, sshSession, `access changed: role "no-root" denies login "root"`},
		{"forwarding revoked", []string{"ops", "no-forward"}, []string{noForward}, nil, false, false, fwdSession, "no longer allow port forwarding"},
		{"forwarding revoked, session had none", []string{"ops", "no-forward"}, []string{noForward}, nil, false, false, sshSession, ""},
		{"kube still allowed", []string{"kube"}, nil, map[string]string{"k3s": "yes"}, false, false, kubeSession, ""},
		{"kube labels changed", []string{"kube"}, nil, map[string]string{"k3s": "no"}, false, false, kubeSession, "access changed"},
		{"kube group denied", []string{"kube", "no-viewers"}, []string{noViewers}, map[string]string{"k3s": "yes"}, false, false, kubeSession, `Kubernetes group "viewers"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			roles := &rbac.Roles{Store: memstore.New()}
			for _, doc := range append([]string{sshRole, kubeRole}, tt.extra...) {
				if err := roles.Put(ctx, mustRole(t, doc)); err != nil {
					t.Fatal(err)
				}
			}
			us := fakeUsers{"alice": {Name: "alice", Roles: tt.roles}}
			if tt.noUser {
				delete(us, "alice")
			}
			ds := fakeDevices{"d1": {ID: "d1", Name: "pi-1", Labels: tt.labels}}
			if tt.noDev {
				delete(ds, "d1")
			}
			a := &Authorizer{Users: us, Roles: roles, Devices: ds}
			s := tt.s
			err := a.Check(ctx, &s)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("got %v, want allowed", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("got %v, want %q", err, tt.wantErr)
			case err != nil && errors.Is(err, sessions.ErrUndecided):
				t.Fatalf("got undecided %v, want a decision", err)
			}
		})
	}
}

func TestCheckUndecided(t *testing.T) {
	a := &Authorizer{Users: failingUsers{}, Roles: &rbac.Roles{Store: memstore.New()}, Devices: fakeDevices{}}
	err := a.Check(context.Background(), &sessions.Session{User: "alice", Service: proto.ServiceSSH})
	if !errors.Is(err, sessions.ErrUndecided) {
		t.Errorf("got %v, want ErrUndecided when the store fails", err)
	}
}

// TestCheckRelay: a request relayed to a leaf cluster goes on while the
// leaf is trusted and the user still has, here, every role and trait this
// fleet vouched for; a removed trust, user or role, a role taken from the
// user or changed traits end it.
func TestCheckRelay(t *testing.T) {
	ctx := context.Background()
	relay := sessions.Session{ID: "c", Service: proto.ServiceCluster, User: "alice", Roles: []string{"ops"}, Cluster: "leaf",
		Traits: map[string][]string{"logins": {"root"}}}
	tests := []struct {
		name    string
		user    *api.User // nil: removed
		roles   []string  // role documents in the store
		leaf    bool      // the leaf is still trusted
		wantErr string    // "" means it goes on
	}{
		{"still allowed", &api.User{Name: "alice", Roles: []string{"ops"}, Traits: relay.Traits}, []string{sshRole}, true, ""},
		{"trust removed", &api.User{Name: "alice", Roles: []string{"ops"}, Traits: relay.Traits}, []string{sshRole}, false, `the trust with the cluster "leaf" was removed`},
		{"user removed", nil, []string{sshRole}, true, `the fleet user "alice" was removed`},
		{"role taken from the user", &api.User{Name: "alice", Roles: []string{"kube"}, Traits: relay.Traits}, []string{sshRole, kubeRole}, true, `you no longer hold the role "ops"`},
		{"role removed from the fleet", &api.User{Name: "alice", Roles: []string{"ops"}, Traits: relay.Traits}, nil, true, `the role "ops", with which the cluster "leaf" let you in, was removed`},
		{"traits changed", &api.User{Name: "alice", Roles: []string{"ops"}, Traits: map[string][]string{"logins": {"pi"}}}, []string{sshRole}, true, "your traits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			roles := &rbac.Roles{Store: memstore.New()}
			for _, doc := range tt.roles {
				if err := roles.Put(ctx, mustRole(t, doc)); err != nil {
					t.Fatal(err)
				}
			}
			us := fakeUsers{}
			if tt.user != nil {
				us["alice"] = *tt.user
			}
			a := &Authorizer{Users: us, Roles: roles, Devices: fakeDevices{}, Leaves: func(_ context.Context, name string) error {
				if !tt.leaf || name != "leaf" {
					return fmt.Errorf("cluster %q: %w", name, store.ErrNotFound)
				}
				return nil
			}}
			s := relay
			err := a.Check(ctx, &s)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("got %v, want allowed", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("got %v, want %q", err, tt.wantErr)
			case err != nil && errors.Is(err, sessions.ErrUndecided):
				t.Fatalf("got undecided %v, want a decision", err)
			}
		})
	}
}
