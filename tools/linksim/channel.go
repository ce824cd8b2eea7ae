package linksim

import (
	"math/rand/v2"
	"sync"
	"time"
)

// Dir is a direction on the link.
type Dir int

const (
	// Up is client→server: device to fleet.
	Up Dir = iota
	// Down is server→client: fleet to device.
	Down
)

func (d Dir) String() string {
	if d == Up {
		return "up"
	}
	return "down"
}

// Reason says why a packet was dropped.
type Reason int

const (
	// ReasonLoss is random or bursty loss.
	ReasonLoss Reason = iota
	// ReasonQueue is a full queue in front of the bandwidth cap.
	ReasonQueue
	// ReasonMTU is a datagram larger than the path MTU.
	ReasonMTU
	// ReasonBlackout is a packet sent, or due to arrive, while the link is out.
	ReasonBlackout
	// ReasonNATExpired is a server packet to a mapping the NAT no longer has
	// (expired idle, or given up by Rebind or MoveTo).
	ReasonNATExpired
	// ReasonError is a packet the relay could not send (a socket error).
	ReasonError
	numReasons
)

var reasonNames = [numReasons]string{"loss", "queue", "mtu", "blackout", "nat-expired", "error"}

func (r Reason) String() string {
	if r >= 0 && r < numReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// channel is the shared state of one direction of a Link: the random source,
// the Gilbert-Elliott state and the bandwidth bottleneck. Every relay on the
// link goes through the same channel, as all traffic of a device shares one
// radio link.
type channel struct {
	mu        sync.Mutex // guards everything below
	imp       Impairment
	rng       *rand.Rand
	bad       bool      // Gilbert-Elliott state
	busyUntil time.Time // when the bottleneck has sent everything admitted so far
}

func newChannel(imp Impairment, seed uint64) *channel {
	return &channel{imp: imp, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}
}

func (c *channel) impairment() Impairment {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.imp
}

func (c *channel) setImpairment(imp Impairment) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.imp = imp
}

// loseLocked draws whether the next packet is lost.
func (c *channel) loseLocked() bool {
	lost := false
	if c.imp.Loss > 0 && c.rng.Float64() < c.imp.Loss {
		lost = true
	}
	if g := c.imp.Burst; g.Enabled() {
		if c.bad {
			if c.rng.Float64() < g.R {
				c.bad = false
			}
		} else if c.rng.Float64() < g.P {
			c.bad = true
		}
		p := g.LossGood
		if c.bad {
			p = g.lossBad()
		}
		if p > 0 && c.rng.Float64() < p {
			lost = true
		}
	}
	return lost
}

// jitterLocked draws the extra delay of one packet.
func (c *channel) jitterLocked() time.Duration {
	if c.imp.Jitter <= 0 {
		return 0
	}
	return time.Duration(c.rng.Int64N(int64(c.imp.Jitter)))
}

// txTime is how long wire bytes occupy a link of bw bits per second.
func txTime(wire int, bw int64) time.Duration {
	return time.Duration(int64(wire) * 8 * int64(time.Second) / bw)
}

// backlogLocked is the number of bytes queued at the bottleneck at now.
func (c *channel) backlogLocked(now time.Time) int {
	if c.imp.Bandwidth <= 0 || !c.busyUntil.After(now) {
		return 0
	}
	return int(int64(c.busyUntil.Sub(now)) * c.imp.Bandwidth / 8 / int64(time.Second))
}

// admitPacket decides the fate of one UDP datagram of wire bytes (headers
// included) arriving at now: dropped with a reason, or released at the
// returned time (before the line's ordering rule). The order of checks is:
// MTU, loss, queue; a lost packet uses no bandwidth.
func (c *channel) admitPacket(now time.Time, wire int) (release time.Time, drop Reason, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.imp.MTU > 0 && wire > c.imp.MTU {
		return time.Time{}, ReasonMTU, false
	}
	if c.loseLocked() {
		return time.Time{}, ReasonLoss, false
	}
	depart := now
	if bw := c.imp.Bandwidth; bw > 0 {
		if c.backlogLocked(now)+wire > c.imp.queueBytes() {
			return time.Time{}, ReasonQueue, false
		}
		start := now
		if c.busyUntil.After(now) {
			start = c.busyUntil
		}
		c.busyUntil = start.Add(txTime(wire, bw))
		depart = c.busyUntil
	}
	return depart.Add(c.imp.Delay + c.jitterLocked()), 0, true
}

// admitStream admits n bytes of a TCP stream arriving at now. If the
// bottleneck queue has no room it returns wait > 0: try again after it.
// Otherwise it returns the release time (including a retransmission penalty
// of rtt when a segment was lost), the number of segments and how many of
// them were lost.
func (c *channel) admitStream(now time.Time, n int, rtt time.Duration) (release time.Time, wait time.Duration, segs, lost int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	mss := c.imp.mss()
	segs = (n + mss - 1) / mss
	wire := n + 40*segs
	depart := now
	if bw := c.imp.Bandwidth; bw > 0 {
		q := c.imp.queueBytes()
		if b := c.backlogLocked(now); b > 0 && b+wire > q {
			return time.Time{}, max(txTime(b+wire-q, bw), time.Millisecond), 0, 0
		}
		start := now
		if c.busyUntil.After(now) {
			start = c.busyUntil
		}
		c.busyUntil = start.Add(txTime(wire, bw))
		depart = c.busyUntil
	}
	for range segs {
		if c.loseLocked() {
			lost++
		}
	}
	release = depart.Add(c.imp.Delay + c.jitterLocked())
	if lost > 0 {
		// Fast retransmit: the sender learns of the loss from duplicate
		// acks one round trip later and resends; lost segments of one
		// chunk are resent together.
		release = release.Add(rtt)
	}
	return release, 0, segs, lost
}
