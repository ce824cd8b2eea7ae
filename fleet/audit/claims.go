package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// Devices cannot speak for users.
//
// A device's events come from the device: it chooses every field. What it
// may say of itself (its agent started, it updated, its queue dropped
// events) is its own business; what it says of a user must be checked,
// since a device could otherwise put words in any user's mouth. The fleet
// knows which sessions it brokered to which device for which user: it
// records a session.start event in its own chain, committed before the
// device hears of the session (see connect and the Kubernetes streams in
// fleetd). So a device event that names a session or a user is verified at
// ingestion against the fleet's session.start for that session:
//
//   - the session must have been brokered to this device;
//   - the user (and the login, when both name one) must be the session's;
//   - an event without a session must not name a user.
//
// An event that fails is still stored, in its place in the device's chain
// (the chain stays whole and the device's queue moves on: nothing is lost,
// and the attempt itself is evidence), but it is marked unverified with the
// reason, counted in the device's status, and kept out of the user and
// session indexes: it never shows as a user's activity, only in searches of
// the device, marked. Every exported event says who asserted it: the fleet
// or the device.

// bucketUnverified maps an event's ref (source, 0, seq) to why its claims
// did not verify.
var bucketUnverified = []byte("unverified")

// ErrNotBrokered is returned by Brokered for a session the fleet did not
// broker to the device.
var ErrNotBrokered = errors.New("audit: the fleet brokered no such session to this device")

// Brokered returns the fleet's session.start event for session, if the
// fleet brokered that session to deviceID; otherwise an error matching
// ErrNotBrokered. Recordings are checked with it.
func (l *Log) Brokered(deviceID, session string) (*proto.AuditEvent, error) {
	start, err := l.BrokeredHere(deviceID, session)
	if errors.Is(err, ErrNotBrokered) && l.cfg.Brokered != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return l.cfg.Brokered(ctx, deviceID, session)
	}
	return start, err
}

// BrokeredHere is Brokered on this replica's log alone (what the other
// replicas ask).
func (l *Log) BrokeredHere(deviceID, session string) (*proto.AuditEvent, error) {
	var start *proto.AuditEvent
	err := l.db.View(func(tx *bolt.Tx) error {
		start = findStart(tx, deviceID, session)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit: brokered: %w", err)
	}
	if start == nil {
		return nil, fmt.Errorf("%w (session %q)", ErrNotBrokered, session)
	}
	return start, nil
}

// findStart looks for the fleet's session.start of session for device.
func findStart(tx *bolt.Tx, device, session string) *proto.AuditEvent {
	if session == "" {
		return nil
	}
	fleet := tx.Bucket(bucketEvents).Bucket([]byte(api.SourceFleet))
	if fleet == nil {
		return nil
	}
	prefix := append([]byte(session), 0)
	c := tx.Bucket(bucketSession).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		rest := k[len(prefix)+8:] // source, 0, seq
		if len(rest) != len(api.SourceFleet)+9 || !bytes.HasPrefix(rest, []byte(api.SourceFleet+"\x00")) {
			continue
		}
		v := fleet.Get(rest[len(rest)-8:])
		if v == nil {
			continue
		}
		e, err := proto.UnmarshalEvent(v)
		if err != nil || e.Type != proto.EventSessionStart || e.Session != session || e.Device != device {
			continue
		}
		return e
	}
	return nil
}

// claimChecker verifies one batch's claims; it remembers the sessions it
// looked up.
type claimChecker struct {
	tx     *bolt.Tx
	device string
	starts map[string]*proto.AuditEvent
	// remote holds what other replicas said about sessions this log
	// lacks (replicas.go).
	remote map[string]remoteStart
}

// check returns why e's claims about a user or session do not hold, or ""
// when they do (or it makes none).
func (c *claimChecker) check(e *proto.AuditEvent) string {
	if e.Session == "" {
		if e.User != "" || e.Login != "" {
			return fmt.Sprintf("names user %q and login %q without a session: a device's own events cannot name a user", e.User, e.Login)
		}
		return ""
	}
	start, ok := c.starts[e.Session]
	if !ok {
		start = findStart(c.tx, c.device, e.Session)
		if c.starts == nil {
			c.starts = map[string]*proto.AuditEvent{}
		}
		c.starts[e.Session] = start
	}
	if start == nil {
		if rs, ok := c.remote[e.Session]; ok {
			if rs.err != nil {
				return fmt.Sprintf("names session %q, which could not be checked with the other replicas: %v", e.Session, rs.err)
			}
			start = rs.start
		}
	}
	switch {
	case start == nil:
		return fmt.Sprintf("names session %q, which the fleet did not broker to this device", e.Session)
	case e.User != "" && e.User != start.User:
		return fmt.Sprintf("names user %q, but the fleet brokered session %q for %q", e.User, e.Session, start.User)
	case e.Login != "" && start.Login != "" && e.Login != start.Login:
		return fmt.Sprintf("names login %q, but the fleet brokered session %q for login %q", e.Login, e.Session, start.Login)
	}
	return ""
}

// unverified returns why the event at ref did not verify ("" if it did).
func unverified(tx *bolt.Tx, source string, seq uint64) string {
	if source == api.SourceFleet {
		return ""
	}
	return string(tx.Bucket(bucketUnverified).Get(ref(source, seq)))
}

// AssertedBy says who asserted an event of source: "fleet", or "device:"
// and the device's ID.
func AssertedBy(source string) string {
	if source == api.SourceFleet {
		return api.SourceFleet
	}
	return "device:" + source
}
