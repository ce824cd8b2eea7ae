package tunnelsrv

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// errCrowded refuses a connection before its handshake
// (Config.MaxHandshakes).
var errCrowded = errors.New("too many devices handshaking at once")

// admissionKey keys a connection's *admission in its context.
type admissionKey struct{}

// admission is one connection's place among those handshaking
// (Config.MaxHandshakes). It is given back once: when the connection's
// handshake completes, or when the connection ends, whichever comes first.
type admission struct {
	once sync.Once
	s    *Server
}

func (a *admission) leave() { a.once.Do(func() { a.s.handshaking.Add(-1) }) }

// admit is the listener's quic.Transport.ConnContext: it runs when a
// device's first packet arrives, before any cryptography. Past
// Config.MaxHandshakes connections still handshaking, it refuses the
// connection, and quic-go answers with CONNECTION_REFUSED: one small
// packet (quic-go sends a few such answers at a time and drops the rest
// unanswered; the device's dial then times out). Handshakes pile up when
// the fleet cannot keep up: their packets wait, or are dropped, unread. A
// crowd (every device of a restarted fleet at once) would otherwise have
// the fleet spend its CPU on handshakes it cannot follow through, and
// drop the datagrams of the devices it could serve.
func (s *Server) admit(ctx context.Context, _ *quic.ClientInfo) (context.Context, error) {
	if s.handshaking.Add(1) > int64(s.cfg.MaxHandshakes) {
		s.handshaking.Add(-1)
		s.refused.Add(1)
		return nil, errCrowded
	}
	a := &admission{s: s}
	// quic-go ends ctx when the connection closes or its handshake fails.
	context.AfterFunc(ctx, a.leave)
	return context.WithValue(ctx, admissionKey{}, a), nil
}

// admitted gives back qc's place among the handshaking connections
// (admit).
func admitted(qc *quic.Conn) {
	if a, ok := qc.Context().Value(admissionKey{}).(*admission); ok {
		a.leave()
	}
}

// Refused counts the refusals sent before a handshake because too many
// connections were handshaking (Config.MaxHandshakes): one per packet that
// would have started a connection, so a device whose first flight spans
// two packets (a post-quantum key share) counts twice.
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
				"refusals_before_handshake", r-refused, "told_to_come_back_later", tu-turned, "handshaking", s.handshaking.Load())
		}
		refused, turned = r, tu
	}
}
