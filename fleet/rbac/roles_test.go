package rbac

import (
	"context"
	"errors"
	"testing"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/logtest"
)

func newRoles(t *testing.T) *Roles {
	t.Helper()
	s := memstore.New()
	t.Cleanup(func() { s.Close() })
	return &Roles{Store: s, Logger: logtest.Logger(t)}
}

func TestEnsurePresetsKeepsEdits(t *testing.T) {
	ctx := context.Background()
	r := newRoles(t)
	edited := preset(t, PresetAccess)
	edited.Spec.Allow.Logins = []string{"pi"}
	if err := r.Put(ctx, edited); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := r.EnsurePresets(ctx); err != nil {
			t.Fatal(err)
		}
	}
	got, err := r.Get(ctx, PresetAccess)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Spec.Allow.Logins) != 1 || got.Spec.Allow.Logins[0] != "pi" {
		t.Errorf("got access logins %q after EnsurePresets, want the edit [pi]", got.Spec.Allow.Logins)
	}
	if _, err := r.Get(ctx, PresetAdmin); err != nil {
		t.Errorf("admin preset not created: %v", err)
	}
}

func TestRolesCRUD(t *testing.T) {
	ctx := context.Background()
	r := newRoles(t)
	if err := r.Put(ctx, role("bad", api.RoleConditions{Logins: []string{"*"}}, api.RoleConditions{})); err == nil {
		t.Error("Put accepted an invalid role")
	}
	for _, n := range []string{"b", "a"} {
		if err := r.Put(ctx, role(n, api.RoleConditions{Logins: []string{"pi"}, DeviceLabels: everywhere}, api.RoleConditions{})); err != nil {
			t.Fatal(err)
		}
	}
	list, err := r.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Metadata.Name != "a" || list[1].Metadata.Name != "b" {
		t.Errorf("got list %v, want roles a and b in order", list)
	}
	if err := r.Delete(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		err  error
	}{
		{"get deleted", func() error { _, err := r.Get(ctx, "a"); return err }()},
		{"delete deleted", r.Delete(ctx, "a")},
		{"get invalid name", func() error { _, err := r.Get(ctx, "../x"); return err }()},
	} {
		if !errors.Is(tt.err, ErrNotFound) || !errors.Is(tt.err, store.ErrNotFound) {
			t.Errorf("%s: got %v, want ErrNotFound (and store.ErrNotFound)", tt.name, tt.err)
		}
	}
}

func TestResolveSkipsUnknown(t *testing.T) {
	ctx := context.Background()
	r := newRoles(t)
	if err := r.EnsurePresets(ctx); err != nil {
		t.Fatal(err)
	}
	c, err := r.NewCheckerFor(ctx, []string{"gone", PresetAccess}, map[string][]string{"logins": {"pi"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Roles(); len(got) != 1 || got[0] != PresetAccess {
		t.Errorf("got roles %q, want [access]", got)
	}
	if err := c.CheckDevice("d", nil, "pi"); err != nil {
		t.Errorf("got %v, want allowed", err)
	}
}
