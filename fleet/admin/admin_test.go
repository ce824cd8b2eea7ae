package admin

import (
	"context"
	"errors"
	"strings"
	"testing"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/fleet/tokens"
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/audittest"
)

type fixture struct {
	a            *Admin
	trail        *audittest.Recorder
	changed      int
	disconnected []string
	devs         *devices.Registry
	roles        *rbac.Roles
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	st := memstore.New()
	f := &fixture{trail: &audittest.Recorder{}, devs: &devices.Registry{Store: st}, roles: &rbac.Roles{Store: st}}
	if err := f.roles.EnsurePresets(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.a = New(Config{
		Users:   &users.Service{Store: st, HashParams: users.HashParams{Time: 1, MemoryKiB: 64, Threads: 1}},
		Roles:   f.roles,
		Tokens:  &tokens.Service{Store: st},
		Devices: f.devs,
		CAPin:   func() string { return "sha256:00ff" },
		Disconnect: func(id, reason string) {
			f.disconnected = append(f.disconnected, id)
		},
		Changed: func() { f.changed++ },
		Audit:   f.trail,
	})
	return f
}

var alice = Actor{Name: "alice", Addr: "192.0.2.1:5000"}

func TestUsers(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	_, err := f.a.AddUser(ctx, alice, api.AddUserRequest{Name: "bob", Password: "a long enough password", Roles: []string{"nope"}})
	var ie *InputError
	if !errors.As(err, &ie) || !strings.Contains(ie.Msg, "unknown role nope") {
		t.Fatalf("unknown role: got %v, want an InputError", err)
	}
	if len(f.trail.Events()) != 0 || f.changed != 0 {
		t.Error("a refused action was recorded or told the sessions")
	}
	if _, err := f.a.AddUser(ctx, alice, api.AddUserRequest{Name: "bob", Password: "a long enough password", Roles: []string{"access"}, Logins: []string{"pi"}}); err != nil {
		t.Fatal(err)
	}
	e := f.trail.Last()
	if e.Type != proto.EventUserCreate || e.User != "alice" || e.Addr != alice.Addr || e.Fields["target_user"] != "bob" || e.Fields["logins"] != "pi" {
		t.Errorf("recorded %+v", e)
	}
	if err := f.a.DeleteUser(ctx, alice, "bob"); err != nil {
		t.Fatal(err)
	}
	if e := f.trail.Last(); e.Type != proto.EventUserDelete || e.Fields["target_user"] != "bob" {
		t.Errorf("recorded %+v", e)
	}
	if f.changed != 2 {
		t.Errorf("the sessions were told %d times, want 2", f.changed)
	}
}

func TestRoles(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	doc := []byte("kind: role\nversion: v1\nmetadata: {name: field-tech}\nspec: {allow: {logins: [pi], device_labels: {site: north}}}\n")
	tests := []struct {
		name    string
		edit    string
		doc     []byte
		wantErr string
	}{
		{"create", "", doc, ""},
		{"edit", "field-tech", doc, ""},
		{"edit names another role", "other", doc, `this page edits role "other"`},
		{"not YAML", "", []byte("{{{"), "role"},
		{"bad role", "", []byte("kind: role\nversion: v1\nmetadata: {name: \"Bad Name\"}\n"), "name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			role, err := f.a.PutRoleYAML(ctx, alice, tt.edit, tt.doc)
			if tt.wantErr != "" {
				var ie *InputError
				if !errors.As(err, &ie) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an InputError with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got, err := f.roles.Get(ctx, "field-tech"); err != nil || got.Metadata.Name != role.Metadata.Name {
				t.Errorf("stored role %+v, %v", got, err)
			}
			if e := f.trail.Last(); e.Type != proto.EventRoleCreate || e.Fields["role"] != "field-tech" {
				t.Errorf("recorded %+v", e)
			}
		})
	}
	if err := f.a.DeleteRole(ctx, alice, "field-tech"); err != nil {
		t.Fatal(err)
	}
	if e := f.trail.Last(); e.Type != proto.EventRoleDelete {
		t.Errorf("recorded %+v", e)
	}
}

func TestTokensAndDevices(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.a.AddToken(ctx, alice, api.AddTokenRequest{Labels: map[string]string{"bad key!": "x"}}); err == nil {
		t.Error("a token with a bad label was made")
	}
	tok, err := f.a.AddToken(ctx, alice, api.AddTokenRequest{Uses: 3, Labels: map[string]string{"site": "north"}})
	if err != nil {
		t.Fatal(err)
	}
	if tok.Token == "" || tok.JoinString != tok.Token+"@sha256:00ff" || tok.UsesLeft != 3 {
		t.Errorf("token %+v: want its secret and join string", tok)
	}
	if e := f.trail.Last(); e.Type != proto.EventTokenCreate || e.Fields["token_id"] != tok.ID || strings.Contains(e.Fields["token_id"], tok.Token) {
		t.Errorf("recorded %+v", e)
	}
	if err := f.a.DeleteToken(ctx, alice, tok.ID); err != nil {
		t.Fatal(err)
	}
	dev, err := f.devs.Register(ctx, devices.Device{Name: "pi-1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.a.DeleteDevice(ctx, alice, "pi-1"); err != nil {
		t.Fatal(err)
	}
	if len(f.disconnected) != 1 || f.disconnected[0] != dev.ID {
		t.Errorf("disconnected %v, want pi-1's ID", f.disconnected)
	}
	if e := f.trail.Last(); e.Type != proto.EventDeviceDelete || e.Device != dev.ID || e.Fields["name"] != "pi-1" {
		t.Errorf("recorded %+v", e)
	}
	if _, err := f.a.DeleteDevice(ctx, alice, "pi-1"); err == nil {
		t.Error("a removed device was removed again")
	}
}
