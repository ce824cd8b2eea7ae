package tunnelsrv

import (
	"context"
	"errors"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/sync/errgroup"

	"remoteler.dev/edge/proto"
)

// Presence.
//
// A device is online while the fleet hears from it: its NAT keep-alives
// (every 25 s by default), its heartbeats and any other QUIC packet. One
// that has been silent for silenceKeepalives keep-alive periods plus
// silenceSlack is offline at once, in Online, Count, Info and Open, though
// its connection lingers until QUIC's idle timeout in case the device comes
// back on it (after a blackout, say). This costs no byte on the link: the
// keep-alives are sent anyway. A device whose keep-alives are off is judged
// by its heartbeats instead (silenceHeartbeats of them).
const (
	silenceKeepalives = 3 // one lost keep-alive in a row is common on a bad link; three are rare
	silenceSlack      = 5 * time.Second
	silenceHeartbeats = 2
	// presenceSweep is how often QUIC packet counters are read to update
	// when the fleet last heard from each device; keep-alives and
	// heartbeats update it as they arrive.
	presenceSweep = 5 * time.Second
)

// departure is how a device's last connection ended.
type departure struct {
	at        time.Time
	lastHeard time.Time
	// returning: the agent closed the connection itself (it is restarting
	// or redialling), so it is likely back within moments.
	returning bool
}

// returning reports whether a connection that ended with err was closed by
// the agent itself.
func returning(err error) bool {
	var ae *quic.ApplicationError
	return errors.As(err, &ae) && ae.Remote
}

// silenceWindow is how long a device may be silent before it counts as
// offline, from the periods its hello reports and the fleet's answer sets.
func silenceWindow(h *proto.Hello, ack *proto.HelloAck) time.Duration {
	keepalive := time.Duration(h.KeepaliveMillis) * time.Millisecond
	liveness := time.Duration(h.LivenessMillis) * time.Millisecond
	if ack.KeepaliveMillis != 0 {
		keepalive = time.Duration(ack.KeepaliveMillis) * time.Millisecond
	}
	if ack.LivenessMillis > 0 {
		liveness = time.Duration(ack.LivenessMillis) * time.Millisecond
	}
	if keepalive == 0 {
		keepalive = defaultKeepalive // an agent of the earlier revision
	}
	if liveness <= 0 {
		liveness = defaultLiveness
	}
	if keepalive < 0 {
		return silenceHeartbeats*liveness + silenceSlack
	}
	return silenceKeepalives*keepalive + silenceSlack
}

// The agent's defaults (firmware/tunnel), for agents that do not say.
const (
	defaultKeepalive = 25 * time.Second
	defaultLiveness  = 10 * time.Minute
)

// heardNow notes that the device just sent something.
func (s *Server) heardNow(dc *deviceConn) {
	dc.heard.Store(s.cfg.Now().UnixNano())
	if dc.silent.Load() {
		select {
		case s.heardAgain <- struct{}{}:
		default:
		}
	}
}

// lastHeard returns when the fleet last heard from dc's device, reading
// the connection's packet counter first.
func (s *Server) lastHeard(dc *deviceConn) time.Time {
	if n := dc.qc.ConnectionStats().PacketsReceived; dc.packets.Swap(n) != n {
		s.heardNow(dc)
	}
	return time.Unix(0, dc.heard.Load())
}

// online reports whether dc's device has been heard from recently enough.
func (s *Server) online(dc *deviceConn) bool {
	return s.cfg.Now().Sub(s.lastHeard(dc)) <= dc.window
}

// watchPresence reads every connection's packet counter every
// presenceSweep, so that LastHeard is right to within it even when nobody
// asks, and forgets departures once nobody waits for them.
func (s *Server) watchPresence(ctx context.Context) {
	t := time.NewTicker(presenceSweep)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.heardAgain:
		}
		s.mu.Lock()
		conns := make([]*deviceConn, 0, len(s.conns))
		ids := make([]string, 0, len(s.conns))
		for id, dc := range s.conns {
			conns = append(conns, dc)
			ids = append(ids, id)
		}
		now := s.cfg.Now()
		for id, d := range s.left {
			if now.Sub(d.at) > reconnectWait {
				delete(s.left, id)
			}
		}
		s.mu.Unlock()
		// A change is recorded before it counts as told: one that could
		// not be (the store is slow) is tried again at the next sweep.
		// Many at once (a cell tower down) are recorded markers at a
		// time, and a stop ends the sweep.
		var g errgroup.Group
		g.SetLimit(markers)
		for i, dc := range conns {
			silent := !s.online(dc)
			if dc.silent.Load() == silent || ctx.Err() != nil {
				continue
			}
			if s.cfg.OnSilence == nil {
				dc.silent.Store(silent)
				continue
			}
			g.Go(func() error {
				err := s.cfg.OnSilence(ctx, ids[i], dc.since, silent)
				if err == nil {
					dc.silent.Store(silent)
				}
				return err
			})
		}
		g.Wait()
	}
}

// markers bounds the silence changes recorded at once.
const markers = 16

// Online reports whether deviceID has a live tunnel and has been heard
// from within its silence window.
func (s *Server) Online(deviceID string) bool {
	s.mu.Lock()
	dc := s.conns[deviceID]
	s.mu.Unlock()
	return dc != nil && s.online(dc)
}

// Info describes deviceID's tunnel, while it has one (online or not).
func (s *Server) Info(deviceID string) (Info, bool) {
	s.mu.Lock()
	dc, boot := s.conns[deviceID], s.boots[deviceID]
	s.mu.Unlock()
	if dc == nil {
		return Info{}, false
	}
	st := dc.qc.ConnectionStats()
	addr := dc.qc.RemoteAddr()
	dc.mu.Lock()
	if a := addr.String(); a != dc.addr {
		dc.addr, dc.addrMoved = a, s.cfg.Now()
	}
	moved := dc.addrMoved
	dc.mu.Unlock()
	heard := s.lastHeard(dc)
	return Info{Addr: addr, Since: dc.since, RTT: st.SmoothedRTT, Stats: st, AddrChangedAt: moved,
		Online: s.cfg.Now().Sub(heard) <= dc.window, LastHeard: heard, Boot: boot}, true
}

// Count returns the number of online devices.
func (s *Server) Count() int {
	s.mu.Lock()
	conns := make([]*deviceConn, 0, len(s.conns))
	for _, dc := range s.conns {
		conns = append(conns, dc)
	}
	s.mu.Unlock()
	n := 0
	for _, dc := range conns {
		if s.online(dc) {
			n++
		}
	}
	return n
}
