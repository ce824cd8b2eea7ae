package tunnel

import (
	"context"
	"crypto/subtle"
	"slices"
	"strings"
	"time"

	"github.com/quic-go/quic-go"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/quicconn"
)

// heldChange wakes reportHeld: a user-held session detached, was
// re-attached, or ended.
func (c *Client) heldChange() {
	select {
	case c.heldChanged <- struct{}{}:
	default:
	}
}

// away lists the user-held sessions whose user is away: their transport
// broke and no client has re-attached them, and the fleet has not ended
// them. Sorted by ID.
func (c *Client) away() []proto.HeldSession {
	c.mu.Lock()
	list := make([]*session, 0, len(c.sessions))
	for _, s := range c.sessions {
		if s.userHeld {
			list = append(list, s)
		}
	}
	c.mu.Unlock()
	var out []proto.HeldSession
	for _, s := range list {
		if !s.started.Load() || s.fleetEnded.Load() || s.conn.Attached() || s.conn.Err() != nil {
			continue
		}
		out = append(out, s.held)
	}
	slices.SortFunc(out, func(a, b proto.HeldSession) int { return strings.Compare(a.SessionID, b.SessionID) })
	if len(out) > proto.MaxHeldSessions {
		out = out[:proto.MaxHeldSessions]
	}
	return out
}

// reportHeld tells the fleet, for as long as connection qc lasts, which
// user-held sessions the agent holds while their user is away
// (proto.ServiceHeld): the replica it reaches keeps them in its session
// registry, so that what ends the user's access (a lock, a removed user
// or role, the certificate's expiry) ends them here at once, rather than
// at the end of the hold time. The whole list goes again whenever it
// changes; the stream opens with the first session to report. A fleet
// that does not know the service closes the stream, and is not asked
// again on this connection.
func (c *Client) reportHeld(ctx context.Context, qc *quic.Conn) {
	var conn *quicconn.Conn
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	var sent []proto.HeldSession
	for {
		list := c.away()
		// A session ID names one session: the lists differ when their IDs do.
		if !slices.EqualFunc(list, sent, func(a, b proto.HeldSession) bool { return a.SessionID == b.SessionID }) && (conn != nil || len(list) > 0) {
			if conn == nil {
				st, err := qc.OpenStreamSync(ctx)
				if err != nil {
					return
				}
				conn = quicconn.New(qc, st, nil)
				if err := proto.WriteMsg(conn, &proto.AgentStream{Service: proto.ServiceHeld}); err != nil {
					c.log.Debug("could not report held sessions", "err", err)
					return
				}
			}
			if err := proto.WriteMsg(conn, &proto.HeldSessions{Sessions: list}); err != nil {
				c.log.Debug("could not report held sessions", "err", err)
				return
			}
			c.log.Info("sessions held for their users, as told to the fleet", "away", len(list))
			sent = list
		}
		select {
		case <-ctx.Done():
			return
		case <-c.heldChanged:
		}
	}
}

// endedHeld is a user-held session the fleet ended, kept for a while so
// that its client, asking to resume it, is told why rather than that the
// session is unknown.
type endedHeld struct {
	secret []byte
	held   proto.HeldSession // whose it was
	reason string
	at     time.Time
}

// maxEndedHeld bounds how many ended sessions the agent remembers.
const maxEndedHeld = 64

// rememberEndLocked keeps why the fleet ended user-held session s, for as
// long as its client could still ask to resume it (the hold time). c.mu
// is held.
func (c *Client) rememberEndLocked(s *session, reason string) {
	now := c.cfg.Now()
	if c.ended == nil {
		c.ended = map[string]endedHeld{}
	}
	oldest, at := "", now
	for id, e := range c.ended {
		if now.Sub(e.at) > c.cfg.SessionHold {
			delete(c.ended, id)
		} else if e.at.Before(at) {
			oldest, at = id, e.at
		}
	}
	if len(c.ended) >= maxEndedHeld {
		delete(c.ended, oldest)
	}
	c.ended[s.id] = endedHeld{secret: s.secret, held: s.held, reason: reason, at: now}
}

// endedHeld says why the fleet ended the user-held session h asks to
// resume (s, while the agent still holds it: its service is closing it),
// when the agent remembers and h shows the session's secret, user and
// login.
func (c *Client) endedHeld(s *session, h *proto.StreamHeader) (string, bool) {
	var e endedHeld
	if s != nil {
		why := s.endReason.Load()
		if !s.userHeld || !s.fleetEnded.Load() || why == nil {
			return "", false
		}
		e = endedHeld{secret: s.secret, held: s.held, reason: *why}
	} else {
		c.mu.Lock()
		var ok bool
		e, ok = c.ended[h.SessionID]
		c.mu.Unlock()
		if !ok || c.cfg.Now().Sub(e.at) > c.cfg.SessionHold {
			return "", false
		}
	}
	if subtle.ConstantTimeCompare(e.secret, h.Secret) != 1 || h.Identity.User != e.held.User || h.Identity.Login != e.held.Login {
		return "", false
	}
	return e.reason, true
}
