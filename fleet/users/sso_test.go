package users

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"remoteler.dev/edge/proto/api"
)

func TestPutSSO(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.add(t, api.AddUserRequest{Name: "alice", Password: "password-1", Roles: []string{"access"}})
	carol := SSOUser{Name: "carol@example.com", Connector: "okta", Subject: "00u1", Roles: []string{"access", "access"},
		Traits: map[string][]string{"external.groups": {"ops"}}, Expires: t0.Add(time.Hour)}

	got, err := f.svc.PutSSO(ctx, carol)
	if err != nil {
		t.Fatal(err)
	}
	if got.SSO == nil || got.SSO.Connector != "okta" || got.SSO.Subject != "00u1" || !got.SSO.LastLogin.Equal(t0) || !got.SSO.Expires.Equal(t0.Add(time.Hour)) {
		t.Errorf("stored SSO %+v", got.SSO)
	}
	if !slices.Equal(got.Roles, []string{"access"}) {
		t.Errorf("roles %q, want access once", got.Roles)
	}
	u, err := f.svc.Get(ctx, "carol@example.com")
	if err != nil || u.SSO == nil || !slices.Equal(u.Traits["external.groups"], []string{"ops"}) {
		t.Fatalf("Get = %+v, %v", u, err)
	}

	t.Run("a later login replaces roles and traits", func(t *testing.T) {
		f.clock.Add(time.Minute)
		next := carol
		next.Roles, next.Traits, next.Expires = []string{"admin"}, map[string][]string{"external.groups": {"fleet-admins"}}, t0.Add(30*time.Minute)
		got, err := f.svc.PutSSO(ctx, next)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.Roles, []string{"admin"}) || !slices.Equal(got.Traits["external.groups"], []string{"fleet-admins"}) {
			t.Errorf("after the second login: %+v", got)
		}
		if !got.SSO.Expires.Equal(t0.Add(time.Hour)) {
			t.Errorf("expires %v: the first login's certificates outlive the second's, want %v", got.SSO.Expires, t0.Add(time.Hour))
		}
		if !got.CreatedAt.Equal(t0) || !got.SSO.LastLogin.Equal(t0.Add(time.Minute)) {
			t.Errorf("created %v, last login %v", got.CreatedAt, got.SSO.LastLogin)
		}
	})

	refusals := []struct {
		name string
		u    SSOUser
		want error
	}{
		{"a local user's name", SSOUser{Name: "alice", Connector: "okta", Subject: "x", Roles: []string{"admin"}}, ErrNameTaken},
		{"another connector's user", SSOUser{Name: "carol@example.com", Connector: "google", Subject: "x"}, ErrNameTaken},
		{"a bad name", SSOUser{Name: "Carol Smith", Connector: "okta", Subject: "x"}, nil},
		{"a name with a slash", SSOUser{Name: "a/b", Connector: "okta", Subject: "x"}, nil},
		{"no subject", SSOUser{Name: "dave", Connector: "okta"}, nil},
		{"an internal trait", SSOUser{Name: "dave", Connector: "okta", Subject: "x", Traits: map[string][]string{"logins": {"root"}}}, nil},
		{"a bad role", SSOUser{Name: "dave", Connector: "okta", Subject: "x", Roles: []string{"Admin!"}}, nil},
	}
	for _, tt := range refusals {
		t.Run("refuses "+tt.name, func(t *testing.T) {
			_, err := f.svc.PutSSO(ctx, tt.u)
			if err == nil {
				t.Fatal("PutSSO succeeded")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("err %v, want %v", err, tt.want)
			}
		})
	}
	if a, err := f.svc.Get(ctx, "alice"); err != nil || a.SSO != nil || !slices.Equal(a.Roles, []string{"access"}) {
		t.Errorf("alice after a refused SSO login: %+v, %v", a, err)
	}

	t.Run("no password login for an SSO user", func(t *testing.T) {
		f.svc.PutSSO(ctx, SSOUser{Name: "erin", Connector: "okta", Subject: "e"})
		for _, pw := range []string{"", "password-1", "anything-at-all"} {
			if _, err := f.svc.Authenticate(ctx, "erin", pw, ""); !errors.Is(err, ErrBadCredentials) {
				t.Errorf("Authenticate(erin, %q) = %v, want ErrBadCredentials", pw, err)
			}
		}
	})

	t.Run("local add refuses an SSO user's name", func(t *testing.T) {
		if _, err := f.svc.Add(ctx, api.AddUserRequest{Name: "erin", Password: "password-1", Roles: []string{"admin"}}); !errors.Is(err, ErrExists) {
			t.Errorf("Add(erin) = %v, want ErrExists", err)
		}
	})

	t.Run("listed and removed", func(t *testing.T) {
		all, err := f.svc.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var sso []string
		for _, u := range all {
			if u.SSO != nil {
				sso = append(sso, u.Name)
			}
		}
		if !slices.Equal(sso, []string{"carol@example.com", "erin"}) {
			t.Errorf("SSO users listed: %q", sso)
		}
		if err := f.svc.Delete(ctx, "carol@example.com"); err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.Get(ctx, "carol@example.com"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Get after Delete = %v", err)
		}
	})
}

func TestCheckSSOName(t *testing.T) {
	for _, ok := range []string{"alice", "carol@example.com", "a.b+tag@x.io", "x_1"} {
		if err := CheckSSOName(ok); err != nil {
			t.Errorf("CheckSSOName(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "-x", "Alice", "a b", "a/b", "a\\b", "é@x", string(make([]byte, 129))} {
		if CheckSSOName(bad) == nil {
			t.Errorf("CheckSSOName(%q) accepted", bad)
		}
	}
}
