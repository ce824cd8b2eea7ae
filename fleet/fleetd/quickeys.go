package fleetd

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/quic-go/quic-go"

	"remoteler.dev/edge/fleet/store"
)

// quicKeys are kept in the store so restarts (and replicas) share them:
// stateless resets and link resets then end stale connections at once,
// address tokens stay valid, and agents resume their TLS sessions.
type quicKeys struct {
	Reset quic.StatelessResetKey `json:"reset"`
	Token quic.TokenGeneratorKey `json:"token"`
	// Link keys link-reset tokens (tunnelsrv.Config.LinkKey).
	Link [32]byte `json:"link"`
	// Tickets are the session-ticket keys, oldest first, each used to seal
	// new tickets from its From on (see rotate).
	Tickets []ticketKey `json:"tickets,omitempty"`
	// Ticket is the single, never rotated ticket key of older fleetds; it
	// is kept as the first key's value when the record is upgraded.
	Ticket [32]byte `json:"ticket"`
}

// ticketKey is one session-ticket key and when it starts sealing tickets.
type ticketKey struct {
	Key  [32]byte  `json:"key"`
	From time.Time `json:"from"`
}

// ticketKeyPeriod is how long each ticket key seals new tickets. A ticket is
// opened while its key is current or the one before, so for one to two
// periods: agents that reconnect at least every day resume (0-RTT), and a
// leaked key opens only the tickets of its own two days, not every
// recorded 0-RTT flight.
const ticketKeyPeriod = 24 * time.Hour

const quicKeysKey = "fleet/quic-keys"

// rotate keeps three ticket keys: the previous, the current (From ≤ now)
// and the next (From one period after the current's), adding and dropping
// keys as time passes. It reports whether it changed anything. The next key
// is in the store a period before it seals anything, so every replica
// (which reads the keys hourly) can open its tickets before any replica
// seals one with it.
func (k *quicKeys) rotate(now time.Time) bool {
	changed := false
	if len(k.Tickets) == 0 {
		first := ticketKey{Key: k.Ticket, From: now}
		if first.Key == ([32]byte{}) {
			rand.Read(first.Key[:])
		}
		k.Tickets, changed = []ticketKey{first}, true
	}
	for {
		last := k.Tickets[len(k.Tickets)-1]
		if last.From.After(now) {
			break
		}
		next := ticketKey{From: last.From.Add(ticketKeyPeriod)}
		if !next.From.After(now) {
			// Asleep for more than a period: start afresh from now.
			next.From = now
		}
		rand.Read(next.Key[:])
		k.Tickets, changed = append(k.Tickets, next), true
	}
	// The key current now, and the one before it, must stay.
	cur := len(k.Tickets) - 2
	if cur > 1 {
		k.Tickets, changed = append([]ticketKey(nil), k.Tickets[cur-1:]...), true
	}
	return changed
}

// active returns the ticket keys for tls.Config.SetSessionTicketKeys: the
// current one first (it seals), then the next and the previous (they
// open).
func (k *quicKeys) active(now time.Time) [][32]byte {
	var cur, prev, next *ticketKey
	for i := range k.Tickets {
		t := &k.Tickets[i]
		switch {
		case t.From.After(now):
			if next == nil {
				next = t
			}
		default:
			prev, cur = cur, t
		}
	}
	var out [][32]byte
	for _, t := range []*ticketKey{cur, next, prev} {
		if t != nil {
			out = append(out, t.Key)
		}
	}
	return out
}

// loadQUICKeys reads the keys from the store, creating them the first time
// and rotating the ticket keys when due; replicas race with
// compare-and-swap, and every one ends with what the store holds.
func loadQUICKeys(ctx context.Context, st store.Store, now time.Time) (*quicKeys, error) {
	for range 10 {
		var k quicKeys
		b, err := st.Get(ctx, quicKeysKey)
		switch {
		case errors.Is(err, store.ErrNotFound):
			rand.Read(k.Reset[:])
			rand.Read(k.Token[:])
			rand.Read(k.Link[:])
			k.rotate(now)
			nb, _ := json.Marshal(&k)
			if err := st.Create(ctx, quicKeysKey, nb); errors.Is(err, store.ErrExists) {
				continue // another replica won
			} else if err != nil {
				return nil, fmt.Errorf("quic keys: %w", err)
			}
			return &k, nil
		case err != nil:
			return nil, fmt.Errorf("quic keys: %w", err)
		}
		if err := json.Unmarshal(b, &k); err != nil {
			return nil, fmt.Errorf("quic keys: %w", err)
		}
		changed := k.rotate(now)
		if k.Link == ([32]byte{}) { // stored by an older fleetd
			rand.Read(k.Link[:])
			changed = true
		}
		if !changed {
			return &k, nil
		}
		nb, _ := json.Marshal(&k)
		if err := st.CompareAndSwap(ctx, quicKeysKey, b, nb); errors.Is(err, store.ErrConflict) {
			continue
		} else if err != nil {
			return nil, fmt.Errorf("quic keys: %w", err)
		}
		return &k, nil
	}
	return nil, errors.New("quic keys: the store kept changing under us")
}

// ticketKeys seals and opens TLS session tickets with keys that can change
// while servers run: install sets a config's ticket hooks to use them, so
// clones of that config (quic-go clones it per connection) follow every
// set.
type ticketKeys struct {
	keys *tls.Config // only its session ticket keys are used
}

func newTicketKeys() *ticketKeys { return &ticketKeys{keys: &tls.Config{}} }

// set makes keys[0] seal new tickets; all of keys open them.
func (t *ticketKeys) set(keys [][32]byte) { t.keys.SetSessionTicketKeys(keys) }

// install makes c seal and open tickets with t's keys.
func (t *ticketKeys) install(c *tls.Config) {
	c.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		return t.keys.EncryptTicket(cs, ss)
	}
	c.UnwrapSession = func(identity []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		return t.keys.DecryptTicket(identity, cs)
	}
}
