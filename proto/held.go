package proto

import (
	"fmt"

	"remoteler.dev/edge/proto/printable"
)

// ServiceHeld is the fleet service an agent reaches with AgentStream to say
// which user-held sessions (StreamHeader.UserHeld) it holds while their
// user is away: their transport broke and the user's client has not
// re-attached them yet. The stream carries HeldSessions frames from the
// agent, each the whole list, sent again whenever the list changes; the
// fleet sends nothing back and forgets the list when the stream ends.
//
// The replica the agent's tunnel reaches keeps each listed session in its
// session registry, as the agent's report, so that what ends the user's
// access (a lock, a removed user or role, the certificate's expiry) ends
// the session on the device too (SessionEnd on the control stream)
// instead of leaving its commands running for the hold time.
const ServiceHeld = "held"

// MaxHeldSessions bounds HeldSessions.Sessions; an agent holds fewer
// (its session budget), and the fleet refuses longer lists.
const MaxHeldSessions = 256

// HeldSessions is the agent's list of the user-held sessions it holds
// while their user is away (ServiceHeld).
type HeldSessions struct {
	Sessions []HeldSession `cbor:"1,keyasint,omitempty"`
}

// HeldSession is one user-held session, as its stream header described it.
type HeldSession struct {
	SessionID string `cbor:"1,keyasint"`
	Service   string `cbor:"2,keyasint"`
	User      string `cbor:"3,keyasint"`
	// Roles are the user's roles when the session began.
	Roles []string `cbor:"4,keyasint,omitempty"`
	Login string   `cbor:"5,keyasint,omitempty"`
	// Started is when the agent accepted the session, and Expires when
	// the user's access ends (Identity.Expires), in Unix milliseconds;
	// zero Expires: never.
	Started int64 `cbor:"6,keyasint,omitempty"`
	Expires int64 `cbor:"7,keyasint,omitempty"`
	// NoPortForwarding and NoFileCopy are the identity's.
	NoPortForwarding bool `cbor:"8,keyasint,omitempty"`
	NoFileCopy       bool `cbor:"9,keyasint,omitempty"`
	// KubeUser and KubeGroups are whom a Kubernetes session acts as
	// (tsh proxy kube), fixed when it began.
	KubeUser   string   `cbor:"10,keyasint,omitempty"`
	KubeGroups []string `cbor:"11,keyasint,omitempty"`
}

func (*HeldSessions) Kind() Kind { return KindHeldSessions }

// Check checks a list an agent sent: within MaxHeldSessions, each session
// with an ID, a service and a user, and every string printable and short.
// The fleet drops the list (and the stream) when it fails.
func (h *HeldSessions) Check() error {
	if len(h.Sessions) > MaxHeldSessions {
		return fmt.Errorf("held-sessions: %d sessions; at most %d", len(h.Sessions), MaxHeldSessions)
	}
	for i := range h.Sessions {
		s := &h.Sessions[i]
		if s.SessionID == "" || s.Service == "" || s.User == "" {
			return fmt.Errorf("held-sessions: session %d lacks an ID, a service or a user", i)
		}
		if len(s.Roles) > MaxHeldRoles {
			return fmt.Errorf("held-sessions: session %q: %d roles; at most %d", s.SessionID, len(s.Roles), MaxHeldRoles)
		}
		if len(s.KubeGroups) > MaxHeldRoles {
			return fmt.Errorf("held-sessions: session %q: %d Kubernetes groups; at most %d", s.SessionID, len(s.KubeGroups), MaxHeldRoles)
		}
		for _, f := range []struct {
			name, v string
			max     int
		}{{"ID", s.SessionID, 128}, {"service", s.Service, MaxPlatformLen}, {"user", s.User, 256}, {"login", s.Login, 256}, {"Kubernetes user", s.KubeUser, 256}} {
			if err := printable.Check(f.v, f.max); err != nil {
				return fmt.Errorf("held-sessions: session %d: %s: %w", i, f.name, err)
			}
		}
		for _, r := range s.Roles {
			if err := printable.Check(r, 256); err != nil {
				return fmt.Errorf("held-sessions: session %q: a role: %w", s.SessionID, err)
			}
		}
		for _, g := range s.KubeGroups {
			if err := printable.Check(g, 256); err != nil {
				return fmt.Errorf("held-sessions: session %q: a Kubernetes group: %w", s.SessionID, err)
			}
		}
	}
	return nil
}

// MaxHeldRoles bounds HeldSession.Roles.
const MaxHeldRoles = 64
