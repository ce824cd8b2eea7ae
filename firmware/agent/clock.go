package agent

import (
	"crypto/x509"
	"log/slog"
	"sync"
	"time"
)

// clockFloor is a time before which the device clock is certainly wrong:
// boards without a real-time clock boot in 1970.
var clockFloor = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// Clock is the device's idea of the time: its own clock plus the offset to
// the fleet's clock learned at hello.
type Clock struct {
	now    func() time.Time
	log    *slog.Logger
	mu     sync.Mutex // guards offset, known
	offset time.Duration
	known  bool
	warned bool
}

func newClock(now func() time.Time, log *slog.Logger) *Clock {
	return &Clock{now: now, log: log}
}

func (c *Clock) setOffset(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if d > time.Minute || d < -time.Minute {
		c.log.Warn("device clock is off; using the fleet's time", "offset", d.Round(time.Second).String(),
			"device_time", c.now().UTC().Format(time.RFC3339))
	}
	c.offset, c.known = d, true
}

// Offset returns the fleet's clock minus the device's.
func (c *Clock) Offset() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.offset
}

// Now returns the best estimate of the real time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now().Add(c.offset)
}

// VerifyTime is the time to check leaf's validity at. When the clock is
// clearly wrong and the fleet's time is not known yet, the leaf is checked
// at its own start: the CA still authenticates the fleet, and the real
// time arrives with the hello answer.
func (c *Clock) VerifyTime(leaf *x509.Certificate) time.Time {
	t := c.Now()
	if !t.Before(clockFloor) {
		return t
	}
	c.mu.Lock()
	if !c.warned {
		c.warned = true
		c.log.Warn("device clock is before "+clockFloor.Format("2006-01-02")+" (no real-time clock?); checking the fleet's certificate at its issue time until the fleet tells the time",
			"device_time", t.UTC().Format(time.RFC3339))
	}
	c.mu.Unlock()
	return leaf.NotBefore.Add(time.Minute)
}
