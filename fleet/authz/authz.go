// Package authz re-authorises live sessions: given a session the fleet
// brokered (fleet/sessions), it loads the user's current record and roles
// and the device's current labels, and checks again, with the rules of
// fleet/rbac, what the session was allowed when it began. The session
// registry calls Authorizer.Check whenever users or roles change; a
// refusal is the message the user is shown as their session ends.
//
// Only fleet/... server packages import authz.
package authz

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// Users looks up a user (*users.Service); a removed user is an error
// matching store.ErrNotFound.
type Users interface {
	Get(ctx context.Context, name string) (api.User, error)
}

// Devices looks up a device by ID (*devices.Registry); a removed device is
// an error matching store.ErrNotFound.
type Devices interface {
	Get(ctx context.Context, id string) (devices.Device, error)
}

// Authorizer checks sessions against the fleet's current state. Users,
// Roles and Devices are required.
type Authorizer struct {
	Users   Users
	Roles   *rbac.Roles
	Devices Devices
	// LocalLabels returns the labels of the Kubernetes cluster fleetd
	// runs in (sessions with no DeviceID); nil when there is none.
	LocalLabels func() map[string]string
}

// Check is sessions.Config.Check: nil when the session is still allowed,
// an error saying why it is not (for the user), or an error wrapping
// sessions.ErrUndecided when the fleet's state could not be read.
func (a *Authorizer) Check(ctx context.Context, s *sessions.Session) error {
	u, err := a.Users.Get(ctx, s.User)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("the fleet user %q was removed", s.User)
	}
	if err != nil {
		return fmt.Errorf("%w: load user %q: %v", sessions.ErrUndecided, s.User, err)
	}
	checker, err := a.Roles.NewCheckerFor(ctx, u.Roles, u.Traits)
	if err != nil {
		return fmt.Errorf("%w: load roles of %q: %v", sessions.ErrUndecided, s.User, err)
	}
	var labels map[string]string
	switch {
	case s.DeviceID != "":
		dev, err := a.Devices.Get(ctx, s.DeviceID)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("device %q was removed from the fleet", s.DeviceName)
		}
		if err != nil {
			return fmt.Errorf("%w: load device %q: %v", sessions.ErrUndecided, s.DeviceName, err)
		}
		labels = dev.Labels
	case a.LocalLabels != nil:
		labels = a.LocalLabels()
	}
	switch s.Service {
	case proto.ServiceSSH:
		return checkSSH(checker, s, labels)
	case proto.ServiceKube:
		return checkKube(checker, s, labels)
	}
	// A service this package does not know: only what every service needs.
	if !checker.CanSeeDevice(labels) {
		return fmt.Errorf("access changed: you may no longer reach %q", s.DeviceName)
	}
	return nil
}

// changed words a refusal for a user whose session it ends.
func changed(err error) error {
	return errors.New("access changed: " + strings.TrimPrefix(err.Error(), "access denied: "))
}

func checkSSH(c *rbac.Checker, s *sessions.Session, labels map[string]string) error {
	if err := c.CheckDevice(s.DeviceName, labels, s.Login); err != nil {
		return changed(err)
	}
	if s.PortForwarding && !c.PortForwarding() {
		return errors.New("access changed: your roles no longer allow port forwarding (role option port_forwarding); connect again")
	}
	if s.FileCopy && !c.FileCopy() {
		return errors.New("access changed: your roles no longer allow file copies (role option ssh_file_copy); connect again")
	}
	return nil
}

func checkKube(c *rbac.Checker, s *sessions.Session, labels map[string]string) error {
	users, groups, err := c.CheckKube(s.DeviceName, labels, s.User)
	if err != nil {
		return changed(err)
	}
	if !slices.Contains(users, s.KubeUser) {
		return fmt.Errorf("access changed: your roles no longer allow Kubernetes user %q on %q", s.KubeUser, s.DeviceName)
	}
	for _, g := range s.KubeGroups {
		if !slices.Contains(groups, g) {
			return fmt.Errorf("access changed: your roles no longer give Kubernetes group %q on %q", g, s.DeviceName)
		}
	}
	return nil
}
