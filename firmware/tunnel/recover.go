package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net"
	"time"

	"github.com/quic-go/quic-go"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/resume"
)

// Recovery after an outage.
//
// After a blackout a QUIC connection waits out its retransmission back-off,
// seconds to tens of seconds, before it sends again. So:
//
//   - while a session has bytes out that the fleet does not acknowledge (the
//     resume layer acknowledges within 200 ms), the agent sends small link
//     pings (proto.LinkPing: 9 bytes, not QUIC) from a spare socket, and the
//     fleet echoes each one;
//   - while a session the fleet sends on stalls, the fleet sends link
//     hurries to the device (proto.LinkHurryByte), MACed with the
//     connection's link key;
//   - the first echo, or the first good hurry, means the link is back: the
//     agent moves the connection to its spare path (paths.go), so that
//     quic-go on both sides drops its back-off and congestion state, and
//     resumes every session on a new stream of the same connection from
//     exactly where the other side is (the old streams are reset, so
//     nothing is resent blindly): a hurry says how much of its session the
//     fleet has, and the agent replays from there at once; otherwise the
//     fleet's answer to the resume says it. If no spare path is ready, or
//     the sessions are still stuck a few round trips plus the resume
//     layer's ack delay later, the agent drops the connection and dials
//     again at once, and the resume layer replays what was not
//     acknowledged.
//
// Recovery is judged by the sessions moving again (resume.Conn.Progress),
// not by packets arriving: during an upload the device hears the fleet's
// acknowledgements of its own data while the fleet's data still waits.
// Pings go on until then, and while a dial is pending. An echo or a hurry
// is acted on only after an outage, a silence of the connection of a second
// or more (longer on a slow link, see outageGap): a stall on a link that
// keeps delivering packets is its queue or its losses, which QUIC copes
// with, and a move would cost it its congestion window.
//
// Pings cost ~37 bytes on the wire each, every 50 ms for as long as a
// stall lasts, so that they find the link at most 50 ms after it returns
// however long it was gone (740 bytes a second into the outage; a session
// is held 10 minutes). They run only while a session is stalled (or the
// tunnel is down with sessions held), never on an idle device.
const (
	stallCheck     = 100 * time.Millisecond
	stallMin       = 600 * time.Millisecond // never call a stall shorter than this
	stallRTTs      = 4                      // or this many smoothed RTTs (plus the ack delay)
	pingEvery      = 50 * time.Millisecond
	pingReadBuffer = 64
	// outageGap is the shortest silence (no QUIC packet heard) that tells
	// an outage from a slow or lossy link, or outagePTOs of QUIC's probe
	// timeouts (RTT + 4 × its deviation) if longer: a lost tail and a lost
	// probe leave a working link silent for about two. outageRecent is how
	// long after such a gap the link may still be recovering from it.
	outageGap    = time.Second
	outagePTOs   = 3
	outageRecent = 2 * time.Second
	// settleExtra is added to two round trips and the resume ack delay:
	// how long the sessions have, after a move, to move again.
	settleExtra = 100 * time.Millisecond
	// sessionProbeAfter: while a session is open and the fleet has been
	// silent this long, the agent sends a tagged keep-alive (this often)
	// so that it learns within seconds that the replica holding its
	// connection died, though its sessions have nothing outstanding (a
	// shell nobody types in, a copy waiting on its reader). Once no
	// session has moved for sessionProbeFor, it leaves that to the usual
	// keep-alive: a session left silent costs at most 200 probes of 37
	// bytes, however long it stays open.
	sessionProbeAfter = 3 * time.Second
	sessionProbeFor   = 10 * time.Minute
	// dialPatience: a pong that arrives while a dial has been pending for
	// longer than this restarts the dial, whose handshake packets are
	// waiting out their own back-off.
	dialPatience = 500 * time.Millisecond
)

// errLinkBack ends a dial that was pending when the link came back.
var errLinkBack = errors.New("tunnel: the link is back; dialling again")

// watchStalls pings while a session stalls and, when the link is back,
// moves the connection or redials (see above). It returns when ctx ends. A
// link change sends a heartbeat at once, so that the fleet learns a new
// address without waiting.
func (c *Client) watchStalls(ctx context.Context, qc *quic.Conn, ctrl *control, paths *linkPaths, raddr net.Addr, tag []byte, hurry <-chan proto.LinkHurry) {
	// Tick only while there are sessions: an idle agent must not wake ten
	// times a second (battery-powered boards).
	t := time.NewTicker(stallCheck)
	t.Stop()
	ticking := false
	pt := time.NewTimer(time.Hour) // the next ping, while pinging
	pt.Stop()
	var p *pinger
	stopPinging := func() {
		p.close()
		p = nil
		pt.Stop()
	}
	defer stopPinging()
	var stallFrom time.Time
	var rtt time.Duration // before the stall: a move resets quic-go's estimate
	// After the link came back: the sessions must move again by settle.
	var settle <-chan time.Time
	var progressAt uint64
	var backAt time.Time
	var calmAt time.Time // when a heartbeat last answered a needless hurry
	// Hurries the fleet sent before it saw the sessions resumed arrive for
	// up to a round trip after a move: they are stale until quietUntil.
	var quietUntil time.Time
	// Whether the link was out: a gap of outageGap or more in the QUIC
	// packets this side heard, now or lately. Without one, a stall is a
	// link's queue holding acks back (a congested cellular link), which
	// QUIC copes with; a move would only resend what is in flight.
	var rxCount uint64
	var rxAt, gapEndedAt, pingHoldUntil, probedAt, movedAt time.Time
	var moved uint64 // the sessions' progress at movedAt
	gap := func(st quic.ConnectionStats) time.Duration {
		return max(outageGap, outagePTOs*(st.SmoothedRTT+4*st.MeanDeviation))
	}
	sampleRx := func(now time.Time) {
		if st := qc.ConnectionStats(); st.PacketsReceived != rxCount {
			if now.Sub(rxAt) >= gap(st) {
				gapEndedAt = now
			}
			rxCount, rxAt = st.PacketsReceived, now
		}
	}
	outage := func() bool {
		now := time.Now()
		sampleRx(now)
		return now.Sub(rxAt) >= gap(qc.ConnectionStats()) || now.Sub(gapEndedAt) <= outageRecent
	}
	threshold := func() time.Duration {
		return max(stallMin, stallRTTs*qc.ConnectionStats().SmoothedRTT+resume.AckDelay)
	}
	linkBack := func(why string, hint *proto.LinkHurry) {
		if c.cfg.NoLinkPings || settle != nil {
			return
		}
		if rtt == 0 {
			rtt = qc.ConnectionStats().SmoothedRTT
		}
		progressAt, backAt = c.progress(), time.Now()
		if ok, whyNot := paths.move(); !ok {
			c.log.Info("link is back ("+why+") but "+whyNot+"; reconnecting to resume at once",
				"stalled_for", sinceOr(stallFrom, backAt))
			c.redialNow.Store(true)
			qc.CloseWithError(0, "agent: link is back, reconnecting")
			return
		}
		// Each session goes on over a new stream, from exactly where the
		// other side says it is: the old streams are reset, so neither side
		// resends their bytes blindly (the resume exchange says what
		// arrived before the outage), and the new path's first packet moves
		// the fleet's side too.
		c.resumeAll(ctx, qc, hint)
		quietUntil = backAt.Add(2*rtt + settleExtra)
		settle = time.After(2*rtt + resume.AckDelay + settleExtra)
		c.log.Info("link is back ("+why+"); moved the connection to a fresh path and resumed its sessions",
			"stalled_for", sinceOr(stallFrom, backAt))
	}
	for {
		n := c.Sessions()
		if want := n > 0 || p != nil || settle != nil; want && !ticking {
			t.Reset(stallCheck)
			ticking = true
			rxCount, rxAt = qc.ConnectionStats().PacketsReceived, time.Now()
		} else if !want && ticking {
			t.Stop()
			ticking = false
		}
		select {
		case <-ctx.Done():
			return
		case <-c.linkChange:
			go ctrl.send(&proto.Heartbeat{})
			continue
		case <-c.sessionAdded:
			continue
		case <-pt.C:
			if p != nil {
				p.ping()
				pt.Reset(pingEvery)
			}
			continue
		case <-pongOf(p):
			p.pong = nil
			if !outage() {
				// The fleet answers and the connection kept hearing it:
				// a slow link, not an outage. Ping again later.
				c.log.Debug("session stalled on a working link; leaving it to QUIC")
				stopPinging()
				pingHoldUntil = time.Now().Add(time.Second)
				continue
			}
			var hint *proto.LinkHurry
			select {
			case h := <-hurry: // it came at the same moment, with the fleet's position
				hint = &h
			default:
			}
			linkBack("the fleet answers pings", hint)
			continue
		case h := <-hurry:
			if time.Now().Before(quietUntil) || !outage() {
				continue // stale, or the link works and QUIC is on it
			}
			if h.Reason == proto.HurryReceiving && c.stalled() <= threshold() {
				// The fleet stopped hearing a transfer from this device,
				// which merely paused: a heartbeat tells it so.
				if time.Since(calmAt) >= pokeEvery {
					calmAt = time.Now()
					go ctrl.send(&proto.Heartbeat{})
				}
				continue
			}
			why := "the fleet's data is waiting"
			if h.Reason == proto.HurryReceiving {
				why = "the fleet waits for this device's data"
			}
			linkBack(why, &h)
			continue
		case <-t.C:
		case <-settle:
			// Stuck: nothing moved and something waits for an ack, or a
			// session's resume is still unanswered. (A fleet still
			// waiting sends another hurry, which redials when no spare
			// path is ready.)
			if c.progress() == progressAt && c.stalled() > 0 || !c.attached() {
				c.log.Info("link is back but the sessions are still stuck; reconnecting to resume at once",
					"since_back", time.Since(backAt).Round(time.Millisecond))
				c.redialNow.Store(true)
				qc.CloseWithError(0, "agent: link is back, reconnecting")
				return
			}
		}
		now := time.Now()
		sampleRx(now)
		if n > 0 {
			if p := c.progress(); p != moved || movedAt.IsZero() {
				moved, movedAt = p, now
			}
			c.retryDetached(ctx, qc)
		}
		if n > 0 && len(tag) > 0 && !c.cfg.NoLinkPings && now.Sub(rxAt) >= sessionProbeAfter && now.Sub(movedAt) < sessionProbeFor && now.Sub(probedAt) >= sessionProbeAfter {
			// A session is open and the fleet has been silent: say which
			// connection this is. A replica that does not know it (the
			// one holding it died, and the balancer now sends here)
			// answers with a link reset, and the agent redials at once;
			// the replica holding it answers nothing.
			probedAt = now
			paths.writeTo(append([]byte{proto.NATKeepaliveByte}, tag...))
		}
		if settle != nil && c.attached() && (c.progress() > progressAt || c.stalled() == 0 && now.Sub(backAt) > rtt) {
			c.log.Info("sessions moving again", "since_back", now.Sub(backAt).Round(time.Millisecond),
				"stalled_for", sinceOr(stallFrom, now))
			settle = nil
			stopPinging()
			rtt, stallFrom = 0, time.Time{}
		}
		silence := c.stalled()
		stalled := !c.cfg.NoLinkPings && silence > threshold()
		if !stalled && settle == nil {
			if p != nil {
				c.log.Info("link recovered by itself", "stalled_for", sinceOr(stallFrom, now))
				stopPinging()
				rtt, stallFrom = 0, time.Time{}
			}
			if n > 0 && !c.cfg.NoLinkPings {
				paths.prepare() // while the link works: validation needs a round trip
			}
			continue
		}
		if !stalled || p != nil || now.Before(pingHoldUntil) {
			continue // waiting for the sessions to move after a hurry, pinging, or a slow link
		}
		var err error
		if p, err = newPinger(c.cfg.ListenPacket, raddr); err != nil {
			c.log.Warn("link ping socket", "err", err)
			continue
		}
		if stallFrom.IsZero() {
			stallFrom = now
		}
		if rtt == 0 {
			rtt = qc.ConnectionStats().SmoothedRTT
		}
		c.log.Info("session stalled; pinging the fleet", "silence", silence.Round(time.Millisecond))
		p.ping()
		pt.Reset(pingEvery)
	}
}

func sinceOr(from, now time.Time) time.Duration {
	if from.IsZero() {
		return 0
	}
	return now.Sub(from).Round(time.Millisecond)
}

// waitForLink waits up to d; while sessions are held it pings the fleet and
// returns early (true) when the fleet answers.
func (c *Client) waitForLink(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	var p *pinger
	if c.Sessions() > 0 && !c.cfg.NoLinkPings {
		if raddr, err := net.ResolveUDPAddr("udp", c.cfg.Addr); err == nil {
			p, _ = newPinger(c.cfg.ListenPacket, raddr)
		}
	}
	defer p.close()
	p.ping()
	tick := time.NewTicker(pingEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-timer.C:
			return false
		case <-c.linkChange:
			return true
		case <-pongOf(p):
			c.log.Info("fleet answers again; reconnecting now")
			return true
		case <-tick.C:
			p.ping()
		}
	}
}

// pingWhileDialling pings the fleet while a dial is pending with sessions
// held, and ends the dial (cancel with errLinkBack) when the fleet answers
// after dialPatience: the dial's handshake packets may be waiting out a
// back-off that began in the outage. The returned func stops the pings.
func (c *Client) pingWhileDialling(raddr net.Addr, cancel context.CancelCauseFunc) (stop func()) {
	if c.cfg.NoLinkPings || c.Sessions() == 0 {
		return func() {}
	}
	p, err := newPinger(c.cfg.ListenPacket, raddr)
	if err != nil {
		return func() {}
	}
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		defer p.close()
		start := time.Now()
		p.ping()
		tick := time.NewTicker(pingEvery)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-p.pong:
				if time.Since(start) < dialPatience {
					return // the dial itself will do
				}
				c.log.Info("fleet answers again while a dial is pending; dialling again now")
				cancel(errLinkBack)
				return
			case <-tick.C:
				p.ping()
			}
		}
	}()
	return func() {
		close(done)
		<-exited
	}
}

// pinger sends link pings from its own socket and reports the first echo.
type pinger struct {
	pc    net.PacketConn
	to    net.Addr
	nonce []byte
	pong  chan struct{}
}

func newPinger(listen func() (net.PacketConn, error), to net.Addr) (*pinger, error) {
	pc, err := listen()
	if err != nil {
		return nil, err
	}
	p := &pinger{pc: pc, to: to, nonce: make([]byte, proto.LinkPingSize-1), pong: make(chan struct{})}
	rand.Read(p.nonce)
	go p.read()
	return p, nil
}

// ping sends one ping; nil does nothing.
func (p *pinger) ping() {
	if p != nil {
		p.pc.WriteTo(append([]byte{proto.LinkPingByte}, p.nonce...), p.to)
	}
}

func (p *pinger) read() {
	buf := make([]byte, pingReadBuffer)
	for {
		n, _, err := p.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		if n == proto.LinkPingSize && buf[0] == proto.LinkPongByte && bytes.Equal(buf[1:n], p.nonce) {
			close(p.pong)
			return
		}
	}
}

// close closes the pinger's socket; nil does nothing.
func (p *pinger) close() {
	if p != nil {
		p.pc.Close()
	}
}

// pongOf returns p's pong channel, or nil (never ready) for no pinger.
func pongOf(p *pinger) <-chan struct{} {
	if p == nil {
		return nil
	}
	return p.pong
}

// stalled returns the longest time a session has waited for an ack. A
// user-held session does not count: its acks come from the user's
// client, over the user's link too, and the fleet may hold them back
// (a session it ended), so they say nothing of this link.
func (c *Client) stalled() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var longest time.Duration
	for _, s := range c.sessions {
		if !s.userHeld {
			longest = max(longest, s.conn.Stalled())
		}
	}
	return longest
}

// attached reports whether every session has a transport: a session
// whose resume is not answered yet has none, and is not moving, though it
// has nothing outstanding (the replica the path now reaches may not know
// the connection, and its resets do not reach a path quic-go added).
func (c *Client) attached() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, s := range c.sessions {
		if !s.userHeld && !s.conn.Attached() { // the user's client re-attaches those
			return false
		}
	}
	return true
}

// progress sums the sessions' progress (resume.Conn.Progress): it grows
// whenever bytes move in either direction.
func (c *Client) progress() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var sum uint64
	for _, s := range c.sessions {
		sum += s.conn.Progress()
	}
	return sum
}

// LinkChanged tells the tunnel that the device's network changed (an
// address or link event): it tells the fleet at once, or redials at once
// if the tunnel is down.
func (c *Client) LinkChanged() {
	select {
	case c.linkChange <- struct{}{}:
	default:
	}
}
