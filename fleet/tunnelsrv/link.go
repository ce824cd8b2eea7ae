package tunnelsrv

import (
	"context"
	"maps"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/resume"
)

// serveDatagrams handles the agents' datagrams outside QUIC (see
// proto.LinkPingByte): it echoes link pings, so an agent whose session
// stalled learns the link is back; it notes a keep-alive as a sign of life
// (presence.go), from the device whose connection has the sender's
// address, or else asks who sent it; it pokes an agent whose tagged
// keep-alive comes from a new address, so that it moves its connection
// there; and it answers a tagged keep-alive for a connection it does not
// have with a link reset that carries the connection's reset token.
// Answers are no larger than what they answer: no amplification.
//
// quic-go keeps only a few such datagrams for the fleet to read and drops
// the rest, so this loop only reads: it answers pings itself (they need no
// lock, and their echo times the link), and queues keep-alives for
// handleKeepalives, which takes the server's lock. During a restart's
// storm of handshakes, each device's keep-alive is its one way to learn
// that its connection is gone.
func (s *Server) serveDatagrams(ctx context.Context, tr *quic.Transport) {
	q := make(chan keepalive, keepaliveQueue)
	var wg sync.WaitGroup
	wg.Go(func() { s.handleKeepalives(ctx, tr, q) })
	defer wg.Wait()
	defer close(q)
	buf := make([]byte, 1500)
	for {
		n, addr, err := tr.ReadNonQUICPacket(ctx, buf)
		if err != nil {
			return
		}
		switch {
		case n == proto.LinkPingSize && buf[0] == proto.LinkPingByte:
			buf[0] = proto.LinkPongByte
			tr.WriteTo(buf[:n], addr)
		case (n == 1 || n == 1+proto.LinkTagSize) && buf[0] == proto.NATKeepaliveByte:
			k := keepalive{addr: addr, tagged: n > 1}
			copy(k.tag[:], buf[1:n])
			select {
			case q <- k:
			default:
				s.linkStats.dropped.Add(1)
			}
		}
	}
}

// keepaliveQueue is how many keep-alives wait for handleKeepalives: 10,000
// devices' worth in 25 s is 400 a second.
const keepaliveQueue = 4096

// keepalive is a device's NAT keep-alive, tagged with its connection's
// link tag or not.
type keepalive struct {
	addr   net.Addr
	tagged bool
	tag    [proto.LinkTagSize]byte
}

// linkStats counts what serveDatagrams answered and dropped, for the log.
type linkStats struct {
	resets, whoAsks, dropped atomic.Uint64
}

// linkStatsEvery is how often a replica that reset connections says so.
const linkStatsEvery = 10 * time.Second

// handleKeepalives acts on the keep-alives serveDatagrams queues until
// ctx ends (those still queued then are dropped: the fleet is stopping)
// or q closes. Every linkStatsEvery in which it told devices to
// reconnect, it logs how many, and warns of keep-alives it dropped.
func (s *Server) handleKeepalives(ctx context.Context, tr *quic.Transport, q <-chan keepalive) {
	t := time.NewTicker(linkStatsEvery)
	defer t.Stop()
	var said struct{ resets, whoAsks, dropped uint64 }
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			resets, whoAsks, dropped := s.linkStats.resets.Load(), s.linkStats.whoAsks.Load(), s.linkStats.dropped.Load()
			if resets != said.resets {
				s.log.Info("told devices whose connection this fleet does not have to reconnect",
					"devices", resets-said.resets, "who_asks", whoAsks-said.whoAsks)
			}
			if dropped != said.dropped {
				s.log.Warn("dropped device keep-alives: more arrived than this fleet could answer", "dropped", dropped-said.dropped)
			}
			said.resets, said.whoAsks, said.dropped = resets, whoAsks, dropped
		case k, ok := <-q:
			if !ok {
				return
			}
			s.keepalive(tr, k)
		}
	}
}

// keepalive acts on one keep-alive (see serveDatagrams).
func (s *Server) keepalive(tr *quic.Transport, k keepalive) {
	addr := k.addr.String()
	if !k.tagged {
		s.mu.Lock()
		dc := s.byAddr[addr]
		s.mu.Unlock()
		if dc != nil && dc.qc.RemoteAddr().String() == addr {
			s.heardNow(dc)
		} else {
			s.linkStats.whoAsks.Add(1)
			tr.WriteTo([]byte{proto.LinkWhoByte}, k.addr)
		}
		return
	}
	tag := k.tag[:]
	s.mu.Lock()
	dc := s.tags[string(tag)]
	if dc != nil {
		s.setAddrLocked(dc, addr)
	}
	stopping := s.stopping != ""
	s.mu.Unlock()
	switch {
	case dc == nil && stopping:
		// Its connection was just closed by this stopping fleet, which
		// told it when to reconnect: a reset would have it redial at
		// once, out of the spread.
	case dc == nil:
		// A connection this fleet does not have: it was made with a
		// fleet that crashed or restarted. The agent reconnects.
		s.log.Debug("keep-alive for an unknown connection; telling it to reconnect", "addr", k.addr)
		s.linkStats.resets.Add(1)
		tr.WriteTo(proto.AppendLinkReset(nil, proto.LinkResetToken(s.linkKey, tag)), k.addr)
	case dc.qc.RemoteAddr().String() != addr:
		s.heardNow(dc)
		s.log.Debug("device keep-alive from a new address; poking it", "addr", k.addr, "conn_addr", dc.qc.RemoteAddr())
		tr.WriteTo([]byte{proto.LinkPokeByte}, k.addr)
	default:
		s.heardNow(dc)
	}
}

// setAddrLocked notes that dc's device sends keep-alives from addr. A
// connection keeps its last few addresses.
func (s *Server) setAddrLocked(dc *deviceConn, addr string) {
	if s.byAddr[addr] == dc {
		return
	}
	s.byAddr[addr] = dc
	dc.byAddr = append(dc.byAddr, addr)
	if len(dc.byAddr) > 4 {
		if old := dc.byAddr[0]; s.byAddr[old] == dc {
			delete(s.byAddr, old)
		}
		dc.byAddr = dc.byAddr[1:]
	}
}

// Link hurries tell an agent that the link is back and the fleet is
// waiting on a session, and how much of it the fleet has, so that the agent
// moves its connection to a fresh path and resumes at once
// (firmware/tunnel/recover.go). The fleet sends them to the device's address
// every hurryEvery while:
//
//   - a session the fleet sends on is stalled: bytes out that the device
//     has not acknowledged for longer than a few round trips plus the
//     resume layer's ack delay (proto.HurrySending); or
//   - a session that was receiving a bulk transfer (bulkBurst bytes in a
//     run) stopped receiving when the device went silent, for as long
//     (proto.HurryReceiving). If the device then answers without sending
//     more, the transfer merely paused, and the fleet stops until data
//     arrives again.
//
// Hurries run only in those cases, never for an idle device. During an
// outage they are lost, like the agent's link pings; the first one after
// it reaches the agent half a round trip after the link returns. They go
// twice as often as the agent's pings (25 ms against 50): only a hurry
// says where the fleet stands, so that the agent replays at once; and what
// the fleet sends into an outage never reaches the device's metered link
// (62 bytes on the wire each, 2.5 kB a second while a device is out with a
// session stalled).
const (
	stallCheck = 25 * time.Millisecond
	stallMin   = 600 * time.Millisecond
	stallRTTs  = 4
	hurryEvery = 25 * time.Millisecond
	bulkBurst  = 64 << 10
)

// watchStalls sends link hurries until ctx ends. It ticks only while the
// fleet holds sessions.
func (s *Server) watchStalls(ctx context.Context, tr *quic.Transport) {
	t := time.NewTicker(stallCheck)
	defer t.Stop()
	type held struct {
		dc       *deviceConn
		sessions []*session
	}
	var list []held
	var buf []byte
	for {
		s.mu.Lock()
		idle := len(s.sessions) == 0
		s.mu.Unlock()
		if idle {
			select {
			case <-ctx.Done():
				return
			case <-s.sessionAdded:
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		list = list[:0]
		s.mu.Lock()
		for id, m := range s.sessions {
			if dc := s.conns[id]; dc != nil {
				list = append(list, held{dc: dc, sessions: slices.Collect(maps.Values(m))})
			}
		}
		s.mu.Unlock()
		for _, h := range list {
			if hurry, ok := s.hurryFor(h.dc, h.sessions); ok {
				buf = proto.AppendLinkHurry(buf[:0], h.dc.linkKey, hurry)
				tr.WriteTo(buf, h.dc.qc.RemoteAddr())
			}
		}
	}
}

// hurryFor decides whether dc's device is due a hurry now, and what it says.
func (s *Server) hurryFor(dc *deviceConn, sessions []*session) (proto.LinkHurry, bool) {
	now := s.cfg.Now()
	threshold := max(stallMin, stallRTTs*dc.qc.ConnectionStats().SmoothedRTT+resume.AckDelay)
	heard := s.lastHeard(dc)
	var h proto.LinkHurry
	var worst time.Duration
	for _, ss := range sessions {
		if st := ss.conn.Stalled(); st > threshold && st > worst {
			worst = st
			h = proto.LinkHurry{Reason: proto.HurrySending, Session: ss.tag, Received: ss.conn.Received()}
		}
	}
	if h.Reason == 0 && now.Sub(heard) > threshold {
		for _, ss := range sessions {
			last, burst := ss.conn.Receiving()
			// The transfer stopped when the device fell silent: had it
			// merely paused, the device would have been heard since (a
			// keep-alive, or its answer to a hurry).
			if burst >= bulkBurst && now.Sub(last) > threshold && !heard.After(last.Add(threshold)) {
				h = proto.LinkHurry{Reason: proto.HurryReceiving, Session: ss.tag, Received: ss.conn.Received()}
				break
			}
		}
	}
	seq, ok := dc.hurryDue(now, h.Reason != 0)
	h.Seq = seq
	return h, ok
}

// hurryDue reports whether a hurry is due to dc's device at now, while
// stalled says a session is stalled, and if so counts it and returns its
// sequence number. The first is due at once, then one every hurryEvery, on
// watchStalls' ticks. A tick runs a hair late, by more or less each time:
// one that runs less late than the one before must not wait a whole tick
// more (that made every other hurry a tick late, and the link's return was
// found that much later), so a hurry is due from half a tick early.
func (dc *deviceConn) hurryDue(now time.Time, stalled bool) (seq uint64, ok bool) {
	dc.mu.Lock()
	defer dc.mu.Unlock()
	if !stalled {
		dc.stallFrom = time.Time{}
		return 0, false
	}
	if dc.stallFrom.IsZero() {
		dc.stallFrom, dc.nextHurry = now, now
	}
	if now.Before(dc.nextHurry) {
		return 0, false
	}
	dc.nextHurry = now.Add(hurryEvery - stallCheck/2)
	dc.hurrySeq++
	return dc.hurrySeq, true
}
