package tunnel

import (
	"bytes"
	"context"
	"crypto/rand"
	"net"
	"time"

	"github.com/quic-go/quic-go"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/resume"
)

// Recovery after an outage.
//
// After a blackout a QUIC connection with a full congestion window waits
// out its retransmission back-off, seconds to tens of seconds, before it
// sends again; switching to a new path does not shorten that. So while a
// session has bytes out that the fleet does not acknowledge (the resume
// layer acknowledges within 200 ms), the agent sends small link pings
// (proto.LinkPing: 9 bytes, not QUIC) from a spare socket, and the fleet
// echoes each one. The first echo means the link is back: the agent drops
// the stuck connection and dials again at once, and the resume layer
// replays what was not acknowledged. Data flows again a few round trips
// after the link returns, instead of after the back-off.
//
// Pings cost ~37 bytes on the wire each, every 100 ms for the first
// minute of a stall and every 500 ms after; they run only while a session
// is stalled (or the tunnel is down with sessions held), never on an idle
// device.
const (
	stallCheck     = 100 * time.Millisecond
	stallMin       = 600 * time.Millisecond // never call a stall shorter than this
	stallRTTs      = 4                      // or this many smoothed RTTs (plus the ack delay)
	pingFast       = 100 * time.Millisecond
	pingFastFor    = time.Minute
	pingSlow       = 500 * time.Millisecond
	pingReadBuffer = 64
)

// watchStalls pings while a session stalls and redials when the link is
// back. It returns when ctx ends. A link change sends a heartbeat at once,
// so that the fleet learns a new address without waiting.
func (c *Client) watchStalls(ctx context.Context, qc *quic.Conn, ctrl *control, raddr net.Addr) {
	// Tick only while there are sessions: an idle agent must not wake ten
	// times a second (battery-powered boards).
	t := time.NewTicker(stallCheck)
	t.Stop()
	ticking := false
	var p *pinger
	defer func() {
		if p != nil {
			p.close()
		}
	}()
	var stallFrom, nextPing time.Time
	var grace <-chan time.Time // after a pong: the connection's chance to recover
	var recvAtPong uint64
	for {
		if n := c.Sessions(); n > 0 && !ticking {
			t.Reset(stallCheck)
			ticking = true
		} else if n == 0 && ticking {
			t.Stop()
			ticking = false
			if p != nil {
				p.close()
				p, grace = nil, nil
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-c.linkChange:
			ctrl.send(&proto.Heartbeat{})
		case <-c.sessionAdded:
			continue
		case <-t.C:
		case <-pongOf(p):
			// The link is back. A connection with room in its congestion
			// window recovers by itself within a round trip; give it that
			// long before replacing it.
			st := qc.ConnectionStats()
			p.pong, recvAtPong = nil, st.PacketsReceived
			grace = time.After(st.SmoothedRTT + 20*time.Millisecond)
			continue
		case <-grace:
			grace = nil
			if qc.ConnectionStats().PacketsReceived > recvAtPong {
				continue // the connection hears the fleet again: it is recovering
			}
			c.log.Info("link is back but the connection is stuck; reconnecting to resume at once",
				"stalled_for", time.Since(stallFrom).Round(time.Millisecond))
			c.redialNow.Store(true)
			qc.CloseWithError(0, "agent: link is back, reconnecting")
			return
		}
		now := time.Now()
		silence := c.stalled()
		if c.cfg.NoLinkPings || silence <= max(stallMin, stallRTTs*qc.ConnectionStats().SmoothedRTT+resume.AckDelay) {
			if p != nil {
				c.log.Info("link recovered by itself", "stalled_for", now.Sub(stallFrom).Round(time.Millisecond))
				p.close()
				p, grace = nil, nil
			}
			continue
		}
		if p == nil {
			var err error
			if p, err = newPinger(c.cfg.ListenPacket, raddr); err != nil {
				c.log.Warn("link ping socket", "err", err)
				continue
			}
			stallFrom, nextPing = now, now
			c.log.Info("session stalled; pinging the fleet", "silence", silence.Round(time.Millisecond))
		}
		if !now.Before(nextPing) {
			p.ping()
			if now.Sub(stallFrom) < pingFastFor {
				nextPing = now.Add(pingFast)
			} else {
				nextPing = now.Add(pingSlow)
			}
		}
	}
}

// waitForLink waits up to d; while sessions are held it pings the fleet and
// returns early (true) when the fleet answers.
func (c *Client) waitForLink(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	var p *pinger
	if c.Sessions() > 0 {
		if raddr, err := net.ResolveUDPAddr("udp", c.cfg.Addr); err == nil {
			p, _ = newPinger(c.cfg.ListenPacket, raddr)
		}
	}
	if p != nil {
		defer p.close()
		p.ping()
	}
	start := time.Now()
	tick := time.NewTicker(pingFast)
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
			if p != nil && (time.Since(start) < pingFastFor || time.Since(start)%pingSlow < pingFast) {
				p.ping()
			}
		}
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

func (p *pinger) ping() {
	p.pc.WriteTo(append([]byte{proto.LinkPingByte}, p.nonce...), p.to)
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

func (p *pinger) close() { p.pc.Close() }

// pongOf returns p's pong channel, or nil (never ready) for no pinger.
func pongOf(p *pinger) <-chan struct{} {
	if p == nil {
		return nil
	}
	return p.pong
}

// stalled returns the longest time a session has waited for an ack.
func (c *Client) stalled() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	var longest time.Duration
	for _, s := range c.sessions {
		longest = max(longest, s.conn.Stalled())
	}
	return longest
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
