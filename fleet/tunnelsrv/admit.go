package tunnelsrv

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// errCrowded refuses a connection before its handshake (Config.MaxPending).
var errCrowded = errors.New("too many devices handshaking or waiting to say hello")

// pendingKey keys a connection's *pending in its context.
type pendingKey struct{}

// pending is one connection's place among those handshaking or waiting
// for their hello's turn (Config.MaxPending). It is given back once: when
// the connection's hello gets its turn (or is refused one), or when the
// connection ends, whichever comes first.
type pending struct {
	once sync.Once
	s    *Server
}

func (p *pending) leave() { p.once.Do(func() { p.s.pending.Add(-1) }) }

// admit is the listener's quic.Transport.ConnContext: it runs when a
// device's first packet arrives, before any cryptography. Past
// Config.MaxPending connections still handshaking or waiting for their
// hello's turn, it refuses the connection, and quic-go answers with
// CONNECTION_REFUSED: one small packet. A crowd (every device of a
// restarted fleet at once) would otherwise have the fleet spend its CPU
// on handshakes it cannot follow through, and drop, unread, the datagrams
// of the devices it could serve.
func (s *Server) admit(ctx context.Context, _ *quic.ClientInfo) (context.Context, error) {
	if s.pending.Add(1) > int64(s.cfg.MaxPending) {
		s.pending.Add(-1)
		s.refused.Add(1)
		return nil, errCrowded
	}
	p := &pending{s: s}
	// quic-go ends ctx when the connection closes or its handshake fails.
	context.AfterFunc(ctx, p.leave)
	return context.WithValue(ctx, pendingKey{}, p), nil
}

// admitted gives back qc's place among the pending connections (admit).
func admitted(qc *quic.Conn) {
	if p, ok := qc.Context().Value(pendingKey{}).(*pending); ok {
		p.leave()
	}
}

// Refused counts the refusals sent before a handshake because too many
// connections were pending (Config.MaxPending): one per packet that would
// have started a connection, so a device whose first flight spans two
// packets (a post-quantum key share) counts twice.
func (s *Server) Refused() int64 { return s.refused.Load() }

// crowdEvery is how often a replica that turned devices away says so.
const crowdEvery = 10 * time.Second

// reportCrowd warns, every crowdEvery in which it happened, of the devices
// refused before their handshake and those told to come back later, until
// ctx ends.
func (s *Server) reportCrowd(ctx context.Context) {
	t := time.NewTicker(crowdEvery)
	defer t.Stop()
	var refused, turned int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r, tu := s.refused.Load(), s.turned.Load()
		if r != refused || tu != turned {
			s.log.Warn("turned devices away: more came at once than this fleet could answer",
				"refusals_before_handshake", r-refused, "told_to_come_back_later", tu-turned, "pending", s.pending.Load())
		}
		refused, turned = r, tu
	}
}
