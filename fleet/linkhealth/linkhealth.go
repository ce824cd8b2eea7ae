// Package linkhealth measures a device link's packet loss as people mean
// it: the share of packets lost while the link works, without the packets a
// blackout swallowed whole. QUIC counts every packet it declares lost, and
// during a blackout everything the fleet sends is lost, so a device that
// went through one showed a high LOSS in tsh ls -v although its link loses
// nothing when it is up.
//
// A Meter is fed samples of a connection's counters at a fixed period. An
// interval in which the fleet sent packets and heard nothing starts a
// silent run; a run that lasts MinBlackout or more is a blackout. QUIC
// declares the packets a blackout swallowed (those in flight when the link
// went, and its probes during it) lost when the first acknowledgement
// arrives after it, and its retransmissions may be declared lost a little
// later still. So the blackout and the time from its end until
// RecoverWindow after it are set apart: what was sent and lost then counts
// neither as sent nor as lost. The window is time, not a count of samples,
// so a sampler that runs late on a busy machine sets apart the same. A Sampler
// samples every live tunnel with one goroutine and keeps a Meter per
// connection.
//
// fleetd wires a Sampler to the tunnels (fleet/tunnelsrv) and the device
// listing (fleet/httpapi).
package linkhealth

import (
	"context"
	"sync"
	"time"
)

// Defaults of Sampler's settings.
const (
	DefaultPeriod      = time.Second
	DefaultMinBlackout = 3 * time.Second
	// DefaultRecoverWindow covers QUIC's declaring the packets a blackout
	// swallowed lost, and its retransmissions at the back-off it reached.
	DefaultRecoverWindow = 5 * time.Second
)

// Counters are a connection's packet counters since it began (QUIC's
// ConnectionStats: PacketsSent, PacketsLost, PacketsReceived). Lost may go
// down: a packet declared lost can arrive after all.
type Counters struct {
	Sent, Lost, Received uint64
}

// Meter turns samples of one connection's counters into its loss outside
// blackouts. The zero value is ready; it is not safe for concurrent use.
type Meter struct {
	// MinBlackout is how long the fleet must send and hear nothing for a
	// blackout; zero means DefaultMinBlackout.
	MinBlackout time.Duration
	// RecoverWindow is how long after a blackout ends the losses QUIC
	// declares are the blackout's; zero means DefaultRecoverWindow.
	RecoverWindow time.Duration

	last   Counters
	lastAt time.Time

	runStart     time.Time // start of the current silent run; zero: none
	runSent      uint64    // packets sent in the current silent run
	recoverUntil time.Time // until then, the last blackout's losses are declared

	apartSent, apartLost uint64 // set apart: sent and lost in blackouts
	blackouts            int
}

// Sample records the counters c read at now.
func (m *Meter) Sample(now time.Time, c Counters) {
	min := m.MinBlackout
	if min <= 0 {
		min = DefaultMinBlackout
	}
	sent := c.Sent - min64(c.Sent, m.last.Sent)
	lost := c.Lost - min64(c.Lost, m.last.Lost)
	heard := c.Received > m.last.Received
	window := m.RecoverWindow
	if window <= 0 {
		window = DefaultRecoverWindow
	}
	switch {
	case !heard && !m.runStart.IsZero():
		// The run goes on, with or without QUIC's probes.
		m.runSent += sent
	case !heard && sent > 0:
		m.runStart = m.lastAt
		if m.runStart.IsZero() {
			m.runStart = now
		}
		m.runSent = sent
	case heard:
		if !m.runStart.IsZero() && m.lastAt.Sub(m.runStart) >= min {
			m.blackouts++
			m.apartSent += m.runSent
			m.recoverUntil = now.Add(window)
		}
		m.runStart, m.runSent = time.Time{}, 0
	}
	if !now.After(m.recoverUntil) {
		m.apartSent += sent
		m.apartLost += lost
	}
	m.last, m.lastAt = c, now
}

// LossPercent is the share of the packets the fleet sent outside
// blackouts that were lost, in percent.
func (m *Meter) LossPercent() float64 {
	sent, lost := m.Counted()
	if sent == 0 {
		return 0
	}
	return 100 * float64(lost) / float64(sent)
}

// Counted returns the packets the fleet sent outside blackouts and those
// of them lost, since the connection began: LossPercent's terms, for a
// caller that takes differences over time (fleet/linkhist).
func (m *Meter) Counted() (sent, lost uint64) {
	sent = m.last.Sent - min64(m.last.Sent, m.apartSent)
	lost = m.last.Lost - min64(m.last.Lost, m.apartLost)
	return sent, min64(lost, sent)
}

// Blackouts is how many blackouts the meter set apart.
func (m *Meter) Blackouts() int { return m.blackouts }

func min64(a, b uint64) uint64 {
	if a < b {
		return a
	}
	return b
}

// Sampler samples the counters of every live device tunnel and keeps their
// loss outside blackouts. Links and Run are required; the zero value of
// the rest works.
type Sampler struct {
	// Links calls fn for every live tunnel: the device, when its
	// connection began (a new one starts a new meter) and its counters.
	Links func(fn func(deviceID string, since time.Time, c Counters))
	// Period is the time between samples; default DefaultPeriod.
	Period time.Duration
	// MinBlackout is Meter.MinBlackout; default DefaultMinBlackout.
	MinBlackout time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu     sync.Mutex // guards meters
	meters map[string]*conn
}

// conn is one tunnel's meter.
type conn struct {
	since time.Time
	meter Meter
	seen  bool // in the last sample
}

// Run samples every Period until ctx is done.
func (s *Sampler) Run(ctx context.Context) {
	period := s.Period
	if period <= 0 {
		period = DefaultPeriod
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.Sample()
		}
	}
}

// Sample reads every tunnel's counters once; Run calls it.
func (s *Sampler) Sample() {
	now := time.Now()
	if s.Now != nil {
		now = s.Now()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.meters == nil {
		s.meters = map[string]*conn{}
	}
	for _, c := range s.meters {
		c.seen = false
	}
	s.Links(func(id string, since time.Time, counters Counters) {
		c := s.meters[id]
		if c == nil || !c.since.Equal(since) {
			c = &conn{since: since, meter: Meter{MinBlackout: s.MinBlackout}}
			s.meters[id] = c
		}
		c.seen = true
		c.meter.Sample(now, counters)
	})
	for id, c := range s.meters {
		if !c.seen {
			delete(s.meters, id)
		}
	}
}

// Counted returns Meter.Counted and the blackouts of deviceID's tunnel;
// ok is false until the tunnel has been sampled.
func (s *Sampler) Counted(deviceID string) (sent, lost uint64, blackouts int, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.meters[deviceID]
	if c == nil {
		return 0, 0, 0, false
	}
	sent, lost = c.meter.Counted()
	return sent, lost, c.meter.Blackouts(), true
}

// Loss returns the loss outside blackouts of deviceID's tunnel, in
// percent, and the blackouts set apart; ok is false until the tunnel has
// been sampled.
func (s *Sampler) Loss(deviceID string) (percent float64, blackouts int, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.meters[deviceID]
	if c == nil {
		return 0, 0, false
	}
	return c.meter.LossPercent(), c.meter.Blackouts(), true
}
