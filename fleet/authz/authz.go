// Package authz holds the one access rule per brokered service (Decide:
// SSH logins, Kubernetes users and groups, web apps), with the rules of
// fleet/rbac, and re-authorises live sessions with it: given a session the
// fleet brokered (fleet/sessions), Authorizer.Check loads the user's
// current record and roles and the device's current labels, and decides
// again what the session was allowed when it began. The broker
// (fleet/broker) calls Decide when a session is asked for; the session
// registry calls Authorizer.Check whenever users or roles change, and a
// refusal is the message the user is shown as their session ends. A lock
// (fleet/locks) that shuts out the session's user, one of their roles, its
// login or its device is such a refusal too.
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
	"remoteler.dev/edge/fleet/locks"
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
	// Locks are the locks in force; nil: none.
	Locks *locks.Set
	// Leaves finds the leaf clusters this fleet relays to (trusted
	// clusters); an error matching store.ErrNotFound is a leaf no longer
	// trusted. Nil: relayed sessions end at the next check.
	Leaves func(ctx context.Context, name string) error
	// Remote maps the roles a trusted root fleet vouched for its user to
	// this fleet's roles with the trust's current role_map; an error that
	// does not wrap sessions.ErrUndecided ends the session with its
	// message (the trust was removed, no role maps any more). Nil: the
	// sessions of roots' users end at the next check.
	Remote func(ctx context.Context, origin string, roles []string) ([]string, error)
}

// Subject is what a lock is checked against for session s of a user who
// holds roles (their roles now, as well as those the session began with).
func Subject(s *sessions.Session, roles []string) locks.Subject {
	all := slices.Clone(s.Roles)
	for _, r := range roles {
		if !slices.Contains(all, r) {
			all = append(all, r)
		}
	}
	return locks.Subject{User: s.User, Roles: all, Login: s.Login, DeviceID: s.DeviceID}
}

// Check is sessions.Config.Check: nil when the session is still allowed,
// an error saying why it is not (for the user), or an error wrapping
// sessions.ErrUndecided when the fleet's state could not be read.
func (a *Authorizer) Check(ctx context.Context, s *sessions.Session) error {
	if err := a.Locks.Check(Subject(s, nil)); err != nil {
		return err
	}
	if s.Cluster != "" {
		return a.checkRelay(ctx, s)
	}
	var roles []string
	traits := s.Traits
	if s.Origin != "" {
		// A trusted root's user: the root vouched for them, and it ends
		// what it relays when their access there ends. Here, the
		// role_map decides their roles again.
		if a.Remote == nil {
			return fmt.Errorf("this fleet no longer trusts %q", s.Origin)
		}
		mapped, err := a.Remote(ctx, s.Origin, s.OriginRoles)
		if err != nil {
			return err
		}
		roles = mapped
	} else {
		u, err := a.Users.Get(ctx, s.User)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("the fleet user %q was removed", s.User)
		}
		if err != nil {
			return fmt.Errorf("%w: load user %q: %v", sessions.ErrUndecided, s.User, err)
		}
		roles, traits = u.Roles, u.Traits
	}
	if err := a.Locks.Check(Subject(s, roles)); err != nil {
		return err
	}
	checker, err := a.Roles.NewCheckerFor(ctx, roles, traits)
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

// checkRelay checks a request relayed to a leaf cluster: the leaf is still
// trusted, and the user still exists with every role and trait the fleet
// vouched for when the request began (the leaf decided with those), and
// those roles still exist here.
func (a *Authorizer) checkRelay(ctx context.Context, s *sessions.Session) error {
	if a.Leaves == nil {
		return fmt.Errorf("this fleet no longer relays to the cluster %q", s.Cluster)
	}
	if err := a.Leaves(ctx, s.Cluster); errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("the trust with the cluster %q was removed", s.Cluster)
	} else if err != nil {
		return fmt.Errorf("%w: load cluster %q: %v", sessions.ErrUndecided, s.Cluster, err)
	}
	if s.Admin || s.User == "" {
		return nil
	}
	u, err := a.Users.Get(ctx, s.User)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("the fleet user %q was removed", s.User)
	}
	if err != nil {
		return fmt.Errorf("%w: load user %q: %v", sessions.ErrUndecided, s.User, err)
	}
	for _, r := range s.Roles {
		if !slices.Contains(u.Roles, r) {
			return fmt.Errorf("access changed: you no longer hold the role %q, with which the cluster %q let you in; connect again", r, s.Cluster)
		}
		if _, err := a.Roles.Get(ctx, r); errors.Is(err, rbac.ErrNotFound) {
			return fmt.Errorf("access changed: the role %q, with which the cluster %q let you in, was removed; connect again", r, s.Cluster)
		} else if err != nil {
			return fmt.Errorf("%w: load role %q: %v", sessions.ErrUndecided, r, err)
		}
	}
	if !sameTraits(u.Traits, s.Traits) {
		return fmt.Errorf("access changed: your traits (logins) changed since the cluster %q let you in; connect again", s.Cluster)
	}
	return nil
}

func sameTraits(a, b map[string][]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		w, ok := b[k]
		if !ok || !slices.Equal(v, w) {
			return false
		}
	}
	return true
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
