package linksim

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Outage is a scheduled blackout: the link is out from At after the Link was
// created, for For, and again every Every if Every > 0.
type Outage struct {
	At    time.Duration
	For   time.Duration
	Every time.Duration // 0 = once
}

func (o Outage) String() string {
	s := o.At.String() + "+" + o.For.String()
	if o.Every > 0 {
		s += "/" + o.Every.String()
	}
	return s
}

func (o Outage) validate() error {
	switch {
	case o.At < 0 || o.For <= 0 || o.Every < 0:
		return fmt.Errorf("outage %v: At must be ≥ 0, For > 0, Every ≥ 0", o)
	case o.Every > 0 && o.For >= o.Every:
		return fmt.Errorf("outage %v: For must be shorter than Every", o)
	}
	return nil
}

// covers reports whether the outage, counted from start, has the link out at
// t, and if so when that window ends.
func (o Outage) covers(start, t time.Time) (end time.Time, in bool) {
	s := start.Add(o.At)
	if t.Before(s) {
		return time.Time{}, false
	}
	if o.Every > 0 {
		s = s.Add(t.Sub(s) / o.Every * o.Every)
	}
	e := s.Add(o.For)
	return e, t.Before(e)
}

// next returns the first start of the outage after t.
func (o Outage) next(start, t time.Time) (time.Time, bool) {
	s := start.Add(o.At)
	if s.After(t) {
		return s, true
	}
	if o.Every <= 0 {
		return time.Time{}, false
	}
	return s.Add((t.Sub(s)/o.Every + 1) * o.Every), true
}

// Config configures a Link. The zero value is a perfect link with no NAT
// expiry.
type Config struct {
	// Profile is the impairment per direction. Default: perfect.
	Profile Profile
	// Schedule lists outages counted from the Link's creation. Blackouts,
	// scheduled or not, take both directions out. Default: none.
	Schedule []Outage
	// Seed seeds the random source (loss, bursts, jitter) so runs repeat
	// exactly for the same sequence of packets. 0 = a random seed.
	Seed int64
	// NATTimeout is the idle time after which the UDP NAT forgets a mapping:
	// the server's packets to it are dropped and the client's next packet
	// gets a new upstream port. Only client→server packets refresh a
	// mapping (RFC 4787 requires outbound refresh; carrier NATs commonly
	// do nothing more). Real carrier NATs use 30 s to 5 min. 0 = never.
	NATTimeout time.Duration
	// ResetOnBlackout resets every TCP connection through the link when an
	// outage starts, like a NAT that forgot the connection; without it TCP
	// bytes are held during the outage and delivered after. Default false.
	ResetOnBlackout bool
	// BindIP is the source address of the upstream sockets (the device's
	// "public" address, as the server sees it); MoveTo changes it. Default:
	// chosen by the kernel (127.0.0.1 towards a loopback upstream).
	BindIP netip.Addr
	// Logger receives debug and error messages. Default: discard.
	Logger *slog.Logger
	// Now is the clock used for every decision (release times, outages, NAT
	// expiry). The relay waits on real timers for the differences, so Now
	// must advance at least as fast as real time; a clock that is moved by
	// hand suits tests with no delay. Default time.Now.
	Now func() time.Time
}

func (c *Config) fillDefaults() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Seed == 0 {
		c.Seed = rand.Int64()
	}
}

// relay is what a Link needs from the relays attached to it.
type relay interface {
	Stats() Stats
	Close() error
	rebind()        // the device's address or NAT mapping changed
	outageStarted() // an outage began
}

// Link is one impaired access link: a device's radio link and the NAT behind
// it. UDP and TCP relays attached to it share its impairments, its
// bandwidth, its outages and its public address. All methods are safe for
// concurrent use.
type Link struct {
	cfg   Config
	log   *slog.Logger
	now   func() time.Time
	start time.Time
	ch    [2]*channel

	mu          sync.Mutex // guards the fields below
	down        bool
	manualFrom  time.Time
	manualUntil time.Time
	changedCh   chan struct{} // closed and replaced when the outage state changes
	bindIP      netip.Addr
	relays      []relay
	closed      bool

	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// New creates a Link. It starts one goroutine if cfg.Schedule is not empty;
// Close stops it.
func New(cfg Config) (*Link, error) {
	cfg.fillDefaults()
	if err := cfg.Profile.Validate(); err != nil {
		return nil, err
	}
	for _, o := range cfg.Schedule {
		if err := o.validate(); err != nil {
			return nil, fmt.Errorf("linksim: %w", err)
		}
	}
	if cfg.NATTimeout < 0 {
		return nil, errors.New("linksim: NATTimeout is negative")
	}
	cfg.Schedule = append([]Outage(nil), cfg.Schedule...)
	seed := uint64(cfg.Seed)
	l := &Link{
		cfg:       cfg,
		log:       cfg.Logger.With("component", "linksim"),
		now:       cfg.Now,
		start:     cfg.Now(),
		ch:        [2]*channel{newChannel(cfg.Profile.Up, seed), newChannel(cfg.Profile.Down, ^seed)},
		changedCh: make(chan struct{}),
		bindIP:    cfg.BindIP,
		done:      make(chan struct{}),
	}
	if len(cfg.Schedule) > 0 {
		l.wg.Add(1)
		go l.watchSchedule()
	}
	return l, nil
}

// Profile returns the impairments in force.
func (l *Link) Profile() Profile {
	l.mu.Lock()
	name := l.cfg.Profile.Name
	l.mu.Unlock()
	return Profile{Name: name, Up: l.ch[Up].impairment(), Down: l.ch[Down].impairment()}
}

// SetProfile changes the impairments from now on. Packets already in flight
// keep the release times they were given.
func (l *Link) SetProfile(p Profile) error {
	if err := p.Validate(); err != nil {
		return err
	}
	l.ch[Up].setImpairment(p.Up)
	l.ch[Down].setImpairment(p.Down)
	l.mu.Lock()
	l.cfg.Profile.Name = p.Name
	l.mu.Unlock()
	return nil
}

// Blackout takes the link out, both directions, for d from now (extending
// an outage in progress). UDP packets sent or due during it are dropped; TCP
// bytes are held (or the connections reset, with ResetOnBlackout).
func (l *Link) Blackout(d time.Duration) {
	if d <= 0 {
		return
	}
	now := l.now()
	l.mu.Lock()
	if !now.Before(l.manualUntil) {
		l.manualFrom = now
	}
	if u := now.Add(d); u.After(l.manualUntil) {
		l.manualUntil = u
	}
	l.notifyLocked()
	rs := append([]relay(nil), l.relays...)
	l.mu.Unlock()
	l.log.Debug("blackout", "for", d)
	for _, r := range rs {
		r.outageStarted()
	}
}

// SetDown takes the link out (true) until SetDown(false), which also ends a
// Blackout in progress. Scheduled outages still apply.
func (l *Link) SetDown(down bool) {
	now := l.now()
	l.mu.Lock()
	was := l.down
	l.down = down
	if !down && now.Before(l.manualUntil) {
		l.manualUntil = now
	}
	l.notifyLocked()
	rs := append([]relay(nil), l.relays...)
	l.mu.Unlock()
	l.log.Debug("set down", "down", down)
	if down && !was {
		for _, r := range rs {
			r.outageStarted()
		}
	}
}

// Out reports whether the link is out now.
func (l *Link) Out() bool {
	out, _ := l.outage(l.now())
	return out
}

// Rebind makes the NAT give every UDP mapping a new upstream port now: the
// server's packets to the old ports are dropped and the client's next packet
// leaves from a new port. TCP connections through the link are reset (a TCP
// connection does not survive its address changing).
func (l *Link) Rebind() {
	l.mu.Lock()
	rs := append([]relay(nil), l.relays...)
	l.mu.Unlock()
	l.log.Debug("rebind")
	for _, r := range rs {
		r.rebind()
	}
}

// MoveTo moves the device to another address: upstream sockets are bound to
// ip from now on (127.0.0.2, say, so the server sees a new IP), existing UDP
// mappings are given up as with Rebind and TCP connections are reset. It
// fails if ip cannot be bound.
func (l *Link) MoveTo(ip netip.Addr) error {
	probe, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0)))
	if err != nil {
		return fmt.Errorf("linksim: move to %v: %w", ip, err)
	}
	probe.Close()
	l.mu.Lock()
	l.bindIP = ip
	l.mu.Unlock()
	l.log.Debug("move", "ip", ip)
	l.Rebind()
	return nil
}

// Stats sums the counters of every relay attached to the link, including
// closed ones.
func (l *Link) Stats() Stats {
	l.mu.Lock()
	rs := append([]relay(nil), l.relays...)
	l.mu.Unlock()
	var s Stats
	for _, r := range rs {
		s = s.add(r.Stats())
	}
	return s
}

// Close closes every relay attached to the link and stops its goroutines.
// It is idempotent.
func (l *Link) Close() error {
	var errs []error
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		rs := append([]relay(nil), l.relays...)
		l.mu.Unlock()
		close(l.done)
		for _, r := range rs {
			errs = append(errs, r.Close())
		}
		l.wg.Wait()
	})
	return errors.Join(errs...)
}

func (l *Link) attach(r relay) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("linksim: link closed")
	}
	l.relays = append(l.relays, r)
	return nil
}

func (l *Link) currentBindIP() netip.Addr {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.bindIP
}

// notifyLocked wakes everything waiting on changed.
func (l *Link) notifyLocked() {
	close(l.changedCh)
	l.changedCh = make(chan struct{})
}

// changed returns a channel closed at the next change of outage state.
func (l *Link) changed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.changedCh
}

// outage reports whether the link is out at t, and if so when it comes back;
// a zero until means not before SetDown(false).
func (l *Link) outage(t time.Time) (out bool, until time.Time) {
	l.mu.Lock()
	down, from, to := l.down, l.manualFrom, l.manualUntil
	l.mu.Unlock()
	if down {
		return true, time.Time{}
	}
	x := t
	for range 1000 {
		moved := false
		if !x.Before(from) && x.Before(to) {
			x, moved = to, true
		}
		for _, o := range l.cfg.Schedule {
			if end, in := o.covers(l.start, x); in {
				x, moved = end, true
			}
		}
		if !moved {
			return x.After(t), x
		}
	}
	return true, time.Time{} // outages chain without end
}

// rtt is the mean round trip the profile adds, used by the TCP model.
func (l *Link) rtt() time.Duration {
	return l.Profile().RTT()
}

// watchSchedule tells the relays when each scheduled outage starts.
func (l *Link) watchSchedule() {
	defer l.wg.Done()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := l.now()
		var next time.Time
		for _, o := range l.cfg.Schedule {
			if s, ok := o.next(l.start, now); ok && (next.IsZero() || s.Before(next)) {
				next = s
			}
		}
		if next.IsZero() {
			return
		}
		timer.Reset(next.Sub(now))
		select {
		case <-timer.C:
		case <-l.done:
			return
		}
		if out, _ := l.outage(l.now()); !out {
			continue
		}
		l.mu.Lock()
		l.notifyLocked()
		rs := append([]relay(nil), l.relays...)
		l.mu.Unlock()
		l.log.Debug("scheduled outage")
		for _, r := range rs {
			r.outageStarted()
		}
	}
}
