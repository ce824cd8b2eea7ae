// Package authz holds the one access rule per brokered service (Decide:
// SSH logins, Kubernetes users and groups, web apps), with the rules of
// fleet/rbac, and re-authorises live sessions with it: given a session the
// fleet brokered (fleet/sessions), Authorizer.Check loads the user's
// current record and roles and the device's current labels, and decides
// again what the session was allowed when it began. The broker
// (fleet/broker) calls Decide when a session is asked for; the session
// registry calls Authorizer.Check whenever users or roles change, and a
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
		if s.Service == proto.ServiceApp {
			app := dev.App(s.App)
			if app == nil {
				return fmt.Errorf("device %q no longer offers app %q", s.DeviceName, s.App)
			}
			labels = rbac.AppLabels(app.Labels, dev.Labels)
		}
	case a.LocalLabels != nil:
		labels = a.LocalLabels()
	}
	if _, err := Decide(checker, s, labels); err != nil {
		return changed(err)
	}
	return nil
}

// Decision is what a positive decision grants beyond "yes".
type Decision struct {
	// KubeUsers and KubeGroups are whom the user may act as in a
	// Kubernetes cluster (service kube).
	KubeUsers, KubeGroups []string
}

// Decide is the one rule per service: whether the user whose roles c holds
// may have session s on a device (or app) with these labels (for an app,
// rbac.AppLabels of the app's and the device's). The broker calls it when
// a session is asked for; Check calls it again whenever users or roles
// change. A refusal is an *rbac.AccessDenied or says what changed.
//
// A new service adds its case here.
func Decide(c *rbac.Checker, s *sessions.Session, labels map[string]string) (Decision, error) {
	switch s.Service {
	case proto.ServiceSSH:
		if err := c.CheckDevice(s.DeviceName, labels, s.Login); err != nil {
			return Decision{}, err
		}
		if s.PortForwarding && !c.PortForwarding() {
			return Decision{}, errors.New("your roles no longer allow port forwarding (role option port_forwarding); connect again")
		}
		if s.FileCopy && !c.FileCopy() {
			return Decision{}, errors.New("your roles no longer allow file copies (role option ssh_file_copy); connect again")
		}
		return Decision{}, nil
	case proto.ServiceKube:
		return decideKube(c, s, labels)
	case proto.ServiceApp:
		return Decision{}, c.CheckApp(s.DeviceName, s.App, labels)
	}
	// A service this package does not know: only what every service needs.
	if !c.CanSeeDevice(labels) {
		return Decision{}, fmt.Errorf("you may not reach %q", s.DeviceName)
	}
	return Decision{}, nil
}

// Visible reports whether the user may see what session s would reach:
// refusals of what they cannot see read as "no such device" (or app).
func Visible(c *rbac.Checker, s *sessions.Session, labels map[string]string) bool {
	if s.Service == proto.ServiceApp {
		return c.CanSeeApp(labels)
	}
	return c.CanSeeDevice(labels)
}

// Offered reports whether a device whose last hello listed services
// offers service. SSH is always offered; an app is offered when the device
// declared it (the broker checks that by name).
func Offered(service string, services []string) bool {
	switch service {
	case proto.ServiceSSH, proto.ServiceApp:
		return true
	}
	return slices.Contains(services, service)
}

// changed words a refusal for a user whose session it ends.
func changed(err error) error {
	return errors.New("access changed: " + strings.TrimPrefix(err.Error(), "access denied: "))
}

func decideKube(c *rbac.Checker, s *sessions.Session, labels map[string]string) (Decision, error) {
	users, groups, err := c.CheckKube(s.DeviceName, labels, s.User)
	if err != nil {
		return Decision{}, err
	}
	if s.KubeUser != "" && !slices.Contains(users, s.KubeUser) && !(len(users) == 0 && s.KubeUser == s.User) {
		return Decision{}, fmt.Errorf("your roles no longer allow Kubernetes user %q on %q", s.KubeUser, s.DeviceName)
	}
	for _, g := range s.KubeGroups {
		if !slices.Contains(groups, g) {
			return Decision{}, fmt.Errorf("your roles no longer give Kubernetes group %q on %q", g, s.DeviceName)
		}
	}
	return Decision{KubeUsers: users, KubeGroups: groups}, nil
}
