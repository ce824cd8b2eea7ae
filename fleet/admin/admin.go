// Package admin is the fleet's administration: adding and removing users,
// writing and removing roles, making and removing join tokens, removing
// devices. Each action is checked, done, recorded in the audit trail (and
// on the audit logger, in one call: fleet/audit's Recorder), and followed
// by what it implies: the live sessions are checked again when users or
// roles change (fleet/sessions), a removed device's tunnel ends.
//
// The HTTPS API (fleet/httpapi, which fleetctl calls) and the dashboard
// (fleet/dashboard) both call it, so an action is the same whichever way
// an admin takes. Deciding that the caller is an admin is theirs.
//
// Only fleet/... server packages import admin.
package admin

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/tokens"
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/pin"
)

// Recorder records an audit event (*audit.Recorder).
type Recorder interface {
	Record(ctx context.Context, e *proto.AuditEvent) error
}

// Config configures an Admin. Users, Roles, Tokens and Devices are
// required.
type Config struct {
	Users   *users.Service
	Roles   *rbac.Roles
	Tokens  *tokens.Service
	Devices *devices.Registry
	// CAPin is the fleet's CA pin, for join strings.
	CAPin func() string
	// Disconnect ends a removed device's tunnel and held sessions
	// (tunnelsrv.Server.Disconnect); nil: nothing to end.
	Disconnect func(deviceID, reason string)
	// Changed tells the live sessions that users or roles changed
	// (sessions.Registry.Changed); nil: nothing to tell.
	Changed func()
	// Audit records every action; nil records nothing.
	Audit Recorder
}

// Admin takes admin actions. Its methods are safe for concurrent use.
type Admin struct{ cfg Config }

// New returns an Admin for cfg.
func New(cfg Config) *Admin { return &Admin{cfg: cfg} }

// Actor is who takes an action: the user (or "admin:NAME" for the admin
// identity) and their address.
type Actor struct {
	Name, Addr string
}

// InputError is an action refused for its input (an unknown role, a bad
// YAML document): the caller answers 400 with its message.
type InputError struct{ Msg string }

func (e *InputError) Error() string { return e.Msg }

// InvalidInput marks the error for the HTTPS API's error mapping.
func (e *InputError) InvalidInput() bool { return true }

func (a *Admin) record(ctx context.Context, by Actor, e *proto.AuditEvent) {
	if a.cfg.Audit == nil {
		return
	}
	e.User, e.Addr = by.Name, by.Addr
	a.cfg.Audit.Record(ctx, e)
}

func (a *Admin) changed() {
	if a.cfg.Changed != nil {
		a.cfg.Changed()
	}
}

// AddUser adds a user whose roles all exist.
func (a *Admin) AddUser(ctx context.Context, by Actor, req api.AddUserRequest) (api.AddUserResponse, error) {
	for _, role := range req.Roles {
		if _, err := a.cfg.Roles.Get(ctx, role); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return api.AddUserResponse{}, &InputError{"unknown role " + role + ": see fleetctl roles ls"}
			}
			return api.AddUserResponse{}, err
		}
	}
	resp, err := a.cfg.Users.Add(ctx, req)
	if err != nil {
		return resp, err
	}
	a.changed()
	a.record(ctx, by, &proto.AuditEvent{Type: proto.EventUserCreate,
		Fields: map[string]string{"target_user": req.Name, "roles": strings.Join(req.Roles, ","), "logins": strings.Join(req.Logins, ",")}})
	return resp, nil
}

// DeleteUser removes a user: the sessions they hold end.
func (a *Admin) DeleteUser(ctx context.Context, by Actor, name string) error {
	if err := a.cfg.Users.Delete(ctx, name); err != nil {
		return err
	}
	a.changed()
	a.record(ctx, by, &proto.AuditEvent{Type: proto.EventUserDelete, Fields: map[string]string{"target_user": name}})
	return nil
}

// PutRole creates or replaces a role: sessions it no longer allows end.
func (a *Admin) PutRole(ctx context.Context, by Actor, role api.Role) error {
	if err := rbac.Validate(role); err != nil {
		return &InputError{err.Error()}
	}
	if err := a.cfg.Roles.Put(ctx, role); err != nil {
		return err
	}
	a.changed()
	a.record(ctx, by, &proto.AuditEvent{Type: proto.EventRoleCreate, Fields: map[string]string{"role": role.Metadata.Name}})
	return nil
}

// PutRoleYAML is PutRole for a role written as YAML (fleetctl create's
// format). The role's name must be name when name is not empty (an edit
// of that role).
func (a *Admin) PutRoleYAML(ctx context.Context, by Actor, name string, doc []byte) (api.Role, error) {
	role, err := rbac.Decode(doc)
	if err != nil {
		return api.Role{}, &InputError{err.Error()}
	}
	if name != "" && role.Metadata.Name != name {
		return api.Role{}, &InputError{fmt.Sprintf("this page edits role %q; the document names %q: create that role instead", name, role.Metadata.Name)}
	}
	return role, a.PutRole(ctx, by, role)
}

// DeleteRole removes a role: sessions it allowed end.
func (a *Admin) DeleteRole(ctx context.Context, by Actor, name string) error {
	if err := a.cfg.Roles.Delete(ctx, name); err != nil {
		return err
	}
	a.changed()
	a.record(ctx, by, &proto.AuditEvent{Type: proto.EventRoleDelete, Fields: map[string]string{"role": name}})
	return nil
}

// AddToken makes a join token; the answer holds its secret and join
// string, shown only now.
func (a *Admin) AddToken(ctx context.Context, by Actor, req api.AddTokenRequest) (api.Token, error) {
	if req.TTL < 0 || req.Uses < 0 {
		return api.Token{}, &InputError{"a join token's TTL and uses cannot be negative"}
	}
	if err := devices.CheckLabels(req.Labels); err != nil {
		return api.Token{}, &InputError{err.Error()}
	}
	switch {
	case req.Type != "" && req.Type != api.TokenDevice && req.Type != api.TokenTrustedCluster:
		return api.Token{}, &InputError{fmt.Sprintf("token type %q: want %s or %s", req.Type, api.TokenDevice, api.TokenTrustedCluster)}
	case req.Type == api.TokenTrustedCluster && len(req.Labels) > 0:
		return api.Token{}, &InputError{"a trusted-cluster token takes no labels"}
	}
	tok, err := a.cfg.Tokens.Add(ctx, req)
	if err != nil {
		return tok, err
	}
	if a.cfg.CAPin != nil {
		tok.CAPin = a.cfg.CAPin()
		tok.JoinString = pin.JoinString(tok.Token, tok.CAPin)
	}
	a.record(ctx, by, &proto.AuditEvent{Type: proto.EventTokenCreate,
		Fields: map[string]string{"token_id": tok.ID, "expires": tok.Expires.UTC().Format(time.RFC3339), "uses": strconv.Itoa(tok.UsesLeft), "type": tok.Type}})
	return tok, nil
}

// DeleteToken removes a join token.
func (a *Admin) DeleteToken(ctx context.Context, by Actor, id string) error {
	if err := a.cfg.Tokens.Delete(ctx, id); err != nil {
		return err
	}
	a.record(ctx, by, &proto.AuditEvent{Type: proto.EventTokenDelete, Fields: map[string]string{"token_id": id}})
	return nil
}

// DeleteDevice removes a device named by its name, or by its ID (32 hex
// digits: no name has that shape). The removal goes by the ID found, never
// by a name, and the device's tunnel and held sessions end at once; its
// certificate no longer opens a tunnel (the tunnel server checks the
// registry on every connection).
func (a *Admin) DeleteDevice(ctx context.Context, by Actor, name string) (devices.Device, error) {
	var dev devices.Device
	var err error
	if devices.IsID(name) {
		dev, err = a.cfg.Devices.Get(ctx, name)
	} else {
		dev, err = a.cfg.Devices.ByName(ctx, name)
	}
	if err != nil {
		return dev, err
	}
	if _, err := a.cfg.Devices.Delete(ctx, dev.ID); err != nil {
		return dev, err
	}
	if a.cfg.Disconnect != nil {
		a.cfg.Disconnect(dev.ID, "this device was removed from the fleet; join it again with a new token")
	}
	a.record(ctx, by, &proto.AuditEvent{Type: proto.EventDeviceDelete, Device: dev.ID, Fields: map[string]string{"name": dev.Name}})
	return dev, nil
}
