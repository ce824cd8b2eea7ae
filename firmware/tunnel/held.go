package tunnel

import (
	"context"
	"slices"
	"strings"

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
		if s.fleetEnded.Load() || s.conn.Attached() || s.conn.Err() != nil {
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
		if !slices.EqualFunc(list, sent, sameHeld) && (conn != nil || len(list) > 0) {
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

// sameHeld compares two reports of a session.
func sameHeld(a, b proto.HeldSession) bool {
	return a.SessionID == b.SessionID && a.User == b.User && a.Login == b.Login
}
