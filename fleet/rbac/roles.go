package rbac

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto/api"
)

// Preset role names.
const (
	PresetAdmin  = "admin"
	PresetAccess = "access"
)

const prefix = "roles/"

// ErrNotFound is returned for a role that does not exist. It also matches
// store.ErrNotFound.
var ErrNotFound error = &kindError{msg: "role not found", kind: store.ErrNotFound}

// kindError is a sentinel with its own message that also matches a store
// error kind, so callers may test either.
type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

// Presets returns the roles every fleet starts with:
//   - admin: every login in the user's logins trait on every device, every
//     web app, and the admin API;
//   - access: every login in the user's logins trait on every device, and
//     every web app.
//
// A fleet that started before a preset gained something (app_labels) keeps
// its roles as they were: EnsurePresets never changes a role.
func Presets() []api.Role {
	return []api.Role{
		{
			Kind: Kind, Version: Version,
			Metadata: api.Metadata{Name: PresetAdmin, Description: "Full access: the user's logins on every device, every web app, and fleet administration."},
			Spec: api.RoleSpec{Allow: api.RoleConditions{
				DeviceLabels: map[string][]string{Wildcard: {Wildcard}},
				Logins:       []string{"{{internal.logins}}"},
				AppLabels:    map[string][]string{Wildcard: {Wildcard}},
				Admin:        true,
			}},
		},
		{
			Kind: Kind, Version: Version,
			Metadata: api.Metadata{Name: PresetAccess, Description: "The user's logins on every device, and every web app."},
			Spec: api.RoleSpec{Allow: api.RoleConditions{
				DeviceLabels: map[string][]string{Wildcard: {Wildcard}},
				Logins:       []string{"{{internal.logins}}"},
				AppLabels:    map[string][]string{Wildcard: {Wildcard}},
			}},
		},
	}
}

// Roles stores roles as JSON under "roles/NAME".
type Roles struct {
	Store store.Store
	// Logger receives a line for each unknown role Resolve skips. Nil
	// discards.
	Logger *slog.Logger
}

func (r *Roles) logger() *slog.Logger {
	if r.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Logger
}

// EnsurePresets creates the preset roles that are missing. It never
// changes a role that exists, so an admin's edits to a preset stay.
func (r *Roles) EnsurePresets(ctx context.Context) error {
	for _, p := range Presets() {
		b, err := json.Marshal(p)
		if err != nil {
			return fmt.Errorf("rbac: ensure presets: %w", err)
		}
		err = r.Store.Create(ctx, prefix+p.Metadata.Name, b)
		if err != nil && !errors.Is(err, store.ErrExists) {
			return fmt.Errorf("rbac: ensure preset %q: %w", p.Metadata.Name, err)
		}
	}
	return nil
}

// Put validates role and creates or replaces it.
func (r *Roles) Put(ctx context.Context, role api.Role) error {
	if err := Validate(role); err != nil {
		return err
	}
	b, err := json.Marshal(role)
	if err != nil {
		return fmt.Errorf("rbac: put role %q: %w", role.Metadata.Name, err)
	}
	if err := r.Store.Put(ctx, prefix+role.Metadata.Name, b); err != nil {
		return fmt.Errorf("rbac: put role %q: %w", role.Metadata.Name, err)
	}
	return nil
}

// Get returns the role called name, or an error matching ErrNotFound.
func (r *Roles) Get(ctx context.Context, name string) (api.Role, error) {
	var role api.Role
	if CheckName(name) != nil {
		return role, fmt.Errorf("rbac: get role %q: %w", name, ErrNotFound)
	}
	b, err := r.Store.Get(ctx, prefix+name)
	if errors.Is(err, store.ErrNotFound) {
		return role, fmt.Errorf("rbac: get role %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return role, fmt.Errorf("rbac: get role %q: %w", name, err)
	}
	if err := json.Unmarshal(b, &role); err != nil {
		return role, fmt.Errorf("rbac: get role %q: decode: %w", name, err)
	}
	return role, nil
}

// List returns every role, sorted by name.
func (r *Roles) List(ctx context.Context) ([]api.Role, error) {
	items, err := r.Store.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("rbac: list roles: %w", err)
	}
	roles := make([]api.Role, 0, len(items))
	for _, it := range items {
		var role api.Role
		if err := json.Unmarshal(it.Value, &role); err != nil {
			return nil, fmt.Errorf("rbac: list roles: decode %q: %w", it.Key, err)
		}
		roles = append(roles, role)
	}
	return roles, nil
}

// Delete removes the role called name, or returns an error matching
// ErrNotFound. Users that still name the role keep it in their role list;
// Resolve skips it.
func (r *Roles) Delete(ctx context.Context, name string) error {
	if CheckName(name) != nil {
		return fmt.Errorf("rbac: delete role %q: %w", name, ErrNotFound)
	}
	err := r.Store.Delete(ctx, prefix+name)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("rbac: delete role %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("rbac: delete role %q: %w", name, err)
	}
	return nil
}

// Resolve loads the roles a user names. Unknown roles are skipped with a
// log line, so deleting a role takes its access away from everyone who had
// it. Other store errors are returned.
func (r *Roles) Resolve(ctx context.Context, names []string) ([]api.Role, error) {
	roles := make([]api.Role, 0, len(names))
	for _, n := range names {
		role, err := r.Get(ctx, n)
		if errors.Is(err, ErrNotFound) {
			r.logger().Warn("rbac: ignoring unknown role", "role", n)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("rbac: resolve roles: %w", err)
		}
		roles = append(roles, role)
	}
	return roles, nil
}

// NewCheckerFor is Resolve followed by NewChecker.
func (r *Roles) NewCheckerFor(ctx context.Context, roleNames []string, traits map[string][]string) (*Checker, error) {
	roles, err := r.Resolve(ctx, roleNames)
	if err != nil {
		return nil, err
	}
	return NewChecker(roles, traits), nil
}
