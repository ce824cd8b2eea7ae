package users

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto/api"
)

// ssoNameRE is what a single sign-on user's name may be: an email address
// or a provider's user name, lower-cased.
var ssoNameRE = regexp.MustCompile(`^[a-z0-9._@+-]{1,128}$`)

// CheckSSOName reports whether name may name a single sign-on user: 1 to
// 128 characters of a-z, 0-9, '.', '_', '-', '@' and '+', not "." or "..",
// not starting with '-'. Every local user name is one too.
func CheckSSOName(name string) error {
	if !ssoNameRE.MatchString(name) || name == "." || name == ".." || name[0] == '-' {
		return fmt.Errorf("single sign-on user name %q must be 1 to 128 characters of a-z, 0-9, '.', '_', '-', '@' and '+'", name)
	}
	return nil
}

// SSOUser is a single sign-on user as a login through a connector found
// them.
type SSOUser struct {
	// Name is their fleet user name (from the connector's username
	// claim); it must pass CheckSSOName.
	Name string
	// Connector and Subject say where they come from: the connector's
	// name and their sub claim.
	Connector, Subject string
	// Roles are what the connector's claims_to_roles gave; Traits their
	// claims, with keys under rbac.ExternalPrefix.
	Roles  []string
	Traits map[string][]string
	// Expires is when the certificates of this login expire at the
	// latest.
	Expires time.Time
}

// ErrNameTaken is returned by PutSSO when a local user, or a single
// sign-on user of another connector, has the name.
var ErrNameTaken = errors.New("the user name is taken")

// PutSSO records a single sign-on user's login: it creates their record,
// or replaces the roles and traits of the last login of the same
// connector. It never touches a local user (one with a password) or
// another connector's user of the same name: those are ErrNameTaken, so
// that a provider cannot speak for an account it does not own. It returns
// the user as stored.
func (s *Service) PutSSO(ctx context.Context, u SSOUser) (api.User, error) {
	fail := func(err error) (api.User, error) {
		return api.User{}, fmt.Errorf("users: single sign-on user %q: %w", u.Name, err)
	}
	if err := CheckSSOName(u.Name); err != nil {
		return fail(err)
	}
	if u.Connector == "" || u.Subject == "" {
		return fail(errors.New("no connector or subject"))
	}
	roles, err := distinct(u.Roles, rbac.CheckName)
	if err != nil {
		return fail(fmt.Errorf("role %w", err))
	}
	for k := range u.Traits {
		if !strings.HasPrefix(k, rbac.ExternalPrefix) || k == rbac.ExternalPrefix {
			return fail(fmt.Errorf("trait %q is not under %q", k, rbac.ExternalPrefix))
		}
	}
	now := s.now().UTC()
	key := prefix + u.Name
	for range maxRetries {
		rec, raw, err := s.get(ctx, u.Name)
		exists := err == nil
		switch {
		case errors.Is(err, ErrNotFound):
			rec = record{Name: u.Name, CreatedAt: now}
		case err != nil:
			return fail(err)
		case rec.SSO == nil:
			return fail(fmt.Errorf("%w: a local user (with a password) has it", ErrNameTaken))
		case rec.SSO.Connector != u.Connector:
			return fail(fmt.Errorf("%w: a user of connector %q has it", ErrNameTaken, rec.SSO.Connector))
		}
		rec.Roles = roles
		rec.Traits = u.Traits
		expires := u.Expires.UTC()
		if rec.SSO != nil && rec.SSO.Expires.After(expires) {
			expires = rec.SSO.Expires // an earlier login's certificates outlive this one's
		}
		rec.SSO = &api.SSOUser{Connector: u.Connector, Subject: u.Subject, LastLogin: now, Expires: expires}
		b, err := json.Marshal(rec)
		if err != nil {
			return fail(err)
		}
		if exists {
			err = s.Store.CompareAndSwap(ctx, key, raw, b)
		} else {
			err = s.Store.Create(ctx, key, b)
		}
		switch {
		case err == nil:
			s.logger().Info("users: single sign-on login recorded", "user", u.Name, "connector", u.Connector, "roles", roles)
			return rec.api(), nil
		case errors.Is(err, store.ErrConflict), errors.Is(err, store.ErrExists), errors.Is(err, store.ErrNotFound):
			continue // changed meanwhile: read it again
		default:
			return fail(err)
		}
	}
	return fail(errors.New("too many concurrent changes to the user; try again"))
}
