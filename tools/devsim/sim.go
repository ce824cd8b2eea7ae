package devsim

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"remoteler.dev/edge/firmware/identity"
	"remoteler.dev/edge/firmware/tunnel"
	"remoteler.dev/edge/proto"
)

// Config configures a Sim. Fleet and DataDir are required; Token is needed
// while some device in DataDir has not joined yet.
type Config struct {
	// Fleet is fleetd's HOST:PORT (HTTPS on TCP for joining, QUIC on UDP
	// for the tunnels). Required.
	Fleet string
	// Token is a join string (TOKEN@sha256:PIN) from fleetctl tokens add
	// with at least as many uses as devices still to join.
	Token string
	// Count is the number of simulated devices; default 1.
	Count int
	// DataDir keeps one identity file per device. Required.
	DataDir string
	// Prefix names the devices PREFIX-00001, PREFIX-00002, ...; default
	// "sim".
	Prefix string
	// First is how many devices come before this simulator's, so that
	// several processes can share a fleet: their devices are numbered
	// from First+1. Default 0.
	First int
	// Labels are sent in every device's hello; default devsim=1.
	Labels map[string]string
	// Keepalive and Liveness are the tunnel's timers (tunnel.Config); 0
	// keeps the agent's defaults (25s and 2m).
	Keepalive, Liveness time.Duration
	// IdleTimeout closes a tunnel that hears nothing for this long
	// (tunnel.Config); 0 keeps the agent's default (2 × Liveness + 30s).
	IdleTimeout time.Duration
	// MinBackoff and MaxBackoff bound the reconnect delay (tunnel.Config);
	// 0 keeps the agent's defaults (500ms and 1m).
	MinBackoff, MaxBackoff time.Duration
	// JoinWorkers is how many devices join at once; default 8.
	JoinWorkers int
	// StartRate is how many tunnels are started per second, so the first
	// connects do not all land at once; default 200. Negative: all at once.
	StartRate float64
	// OnUp, when set, is called each time a device's tunnel comes up, with
	// a function that sends on the device's control stream (an OTA
	// simulation sends its update status there).
	OnUp func(device int, send func(proto.Message) error)
	// OnMessage, when set, receives what the fleet sends a device on its
	// own (update offers, say), with the same send function.
	OnMessage func(device int, m proto.Message, send func(proto.Message) error)
	// Logger receives the simulator's logs (joins, reconnects, a summary
	// every 5 s); nil discards them.
	Logger *slog.Logger
	// TunnelLogger receives every device's tunnel logs; nil discards them.
	TunnelLogger *slog.Logger
	// Now is the clock that times events; nil means time.Now.
	Now func() time.Time
	// CheckIn, when set, makes the devices direct nodes (edge-agent
	// --mode=direct): each names DirectAddr in its hello as where it
	// listens, and brings its tunnel up only to check in: once at the
	// start (spread by StartRate), then every CheckIn (the first of those
	// at a random point of the period, so that check-ins spread evenly),
	// hanging up as soon as the fleet has answered its hello. They listen
	// nowhere: the fleet dials none of them unless asked to broker. Zero:
	// devices hold their tunnels, as agents do by default.
	CheckIn time.Duration
	// DirectAddr is the address direct nodes name; default 127.0.0.1:9.
	DirectAddr string
	// LocalAddrs are the local addresses the devices' UDP sockets are
	// bound to (device i's on LocalAddrs[i % len], port 0), to spread a
	// large fleet's sockets over several loopback addresses (see
	// SocketsPerAddr). Empty: the sockets are bound to port 0 of every
	// address, and the kernel gives each a port of its one range.
	LocalAddrs []netip.Addr
	// OnEvent, when set, is called with every event as it is recorded,
	// with the simulator's lock held: it must not block for long. Its
	// Device counts from First.
	OnEvent func(Event)
}

func (c *Config) setDefaults() {
	if c.Count <= 0 {
		c.Count = 1
	}
	if c.DirectAddr == "" {
		c.DirectAddr = "127.0.0.1:9"
	}
	if c.Prefix == "" {
		c.Prefix = "sim"
	}
	if c.Labels == nil {
		c.Labels = map[string]string{"devsim": "1"}
	}
	if c.JoinWorkers <= 0 {
		c.JoinWorkers = 8
	}
	if c.StartRate == 0 {
		c.StartRate = 200
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.TunnelLogger == nil {
		c.TunnelLogger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Kind is what happened to a simulated device.
type Kind int

// Event kinds.
const (
	// Dial: the device opened a socket to dial the fleet (each connection
	// attempt opens a new one).
	Dial Kind = iota + 1
	// Up: the tunnel is connected and the fleet answered the hello.
	Up
	// Down: the tunnel went down.
	Down
)

func (k Kind) String() string {
	switch k {
	case Dial:
		return "dial"
	case Up:
		return "up"
	case Down:
		return "down"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Event is one dial, tunnel up or tunnel down of one device.
type Event struct {
	Device int // index, 0 to Count-1
	Kind   Kind
	At     time.Time
}

// Sim is a set of simulated devices. Create it with New and call Run.
type Sim struct {
	cfg Config
	log *slog.Logger

	devices []*device
	tally   tally // the devices' tunnel messages (tunnelConfig)
	up      atomic.Int64
	seen    atomic.Int64 // devices whose tunnel came up at least once

	mu      sync.Mutex // guards events and changed
	events  []Event
	changed chan struct{} // closed and replaced when an Up or Down is recorded

	// fatal receives the first error that stops the simulation (a socket
	// that cannot be had); buffered, sent without blocking.
	fatal chan error
}

// device is one simulated device.
type device struct {
	index  int
	name   string
	id     *identity.Identity
	tls    *tls.Config
	client *tunnel.Client
	// downAt is when the tunnel last went down (UnixNano), 0 while up.
	downAt atomic.Int64
	ups    atomic.Int64
	// checkedIn is signalled when a direct node's tunnel comes up.
	checkedIn chan struct{}
}

// New checks cfg and returns a simulator. Nothing is joined or started
// before Run.
func New(cfg Config) (*Sim, error) {
	cfg.setDefaults()
	if cfg.Fleet == "" {
		return nil, errors.New("devsim: the fleet address is required (--fleet HOST:PORT)")
	}
	if _, _, err := net.SplitHostPort(cfg.Fleet); err != nil {
		return nil, fmt.Errorf("devsim: fleet address %q: %w", cfg.Fleet, err)
	}
	if cfg.DataDir == "" {
		return nil, errors.New("devsim: a data directory is required (--data DIR)")
	}
	if cfg.First < 0 {
		return nil, fmt.Errorf("devsim: --first %d: want 0 or more", cfg.First)
	}
	s := &Sim{cfg: cfg, log: cfg.Logger.With("component", "devsim"), changed: make(chan struct{}), fatal: make(chan error, 1)}
	for i := range cfg.Count {
		s.devices = append(s.devices, &device{index: i, name: fmt.Sprintf("%s-%05d", cfg.Prefix, cfg.First+i+1), checkedIn: make(chan struct{}, 1)})
	}
	return s, nil
}

// Count returns the number of simulated devices.
func (s *Sim) Count() int { return len(s.devices) }

// Name returns the name of device i.
func (s *Sim) Name(i int) string { return s.devices[i].name }

// Up returns how many devices have their tunnel up now.
func (s *Sim) Up() int { return int(s.up.Load()) }

// Events returns a copy of every event so far, in the order recorded.
func (s *Sim) Events() []Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Event(nil), s.events...)
}

// Reconnects returns the number of tunnel connections made after each
// device's first, summed over the devices.
func (s *Sim) Reconnects() int64 {
	var n int64
	for _, d := range s.devices {
		if u := d.ups.Load(); u > 1 {
			n += u - 1
		}
	}
	return n
}

// CheckedIn returns how many devices have had their tunnel up at least
// once (for direct nodes: have checked in).
func (s *Sim) CheckedIn() int { return int(s.seen.Load()) }

// WaitUp waits until at least n devices are up (direct nodes: have
// checked in once), or ctx ends.
func (s *Sim) WaitUp(ctx context.Context, n int) error {
	count := s.Up
	if s.cfg.CheckIn > 0 {
		count = s.CheckedIn
	}
	for {
		s.mu.Lock()
		ch := s.changed
		s.mu.Unlock()
		if count() >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("devsim: %d of %d devices up: %w", count(), n, ctx.Err())
		case <-ch:
		}
	}
}

func (s *Sim) record(d *device, k Kind) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := Event{Device: d.index, Kind: k, At: s.cfg.Now()}
	s.events = append(s.events, e)
	if s.cfg.OnEvent != nil {
		e.Device += s.cfg.First
		s.cfg.OnEvent(e)
	}
	if k != Dial {
		close(s.changed)
		s.changed = make(chan struct{})
	}
}

// Run joins the devices that have not joined yet, starts every device's
// tunnel and keeps them up until ctx ends. It returns an error only when
// devices cannot join or the file limit is too low; it returns nil when ctx
// ends.
func (s *Sim) Run(ctx context.Context) error {
	// Each device holds one UDP socket, also while it redials (the old
	// one is closed first), as measured: 300 devices up, or reconnecting
	// after a fleet restart, held 300 more descriptors than none. The
	// rest is for joining (JoinWorkers connections), logs and the runtime.
	if err := raiseFileLimit(len(s.devices) + s.cfg.JoinWorkers + 256); err != nil {
		return fmt.Errorf("devsim: %w", err)
	}
	if err := os.MkdirAll(s.cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("devsim: data dir: %w", err)
	}
	if err := s.joinAll(ctx); err != nil {
		return err
	}
	if ctx.Err() != nil {
		return nil
	}
	host, _, _ := net.SplitHostPort(s.cfg.Fleet)
	var wg sync.WaitGroup
	defer wg.Wait()
	// Cancelled before the wait above: a fatal error stops every device.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Add(1)
	go func() {
		defer wg.Done()
		s.summarise(ctx)
	}()
	var gap time.Duration
	if s.cfg.StartRate > 0 {
		gap = time.Duration(float64(time.Second) / s.cfg.StartRate)
	}
	start := time.Now()
	for i, d := range s.devices {
		if err := d.prepare(host); err != nil {
			return fmt.Errorf("devsim: %s: %w", d.name, err)
		}
		d.client = tunnel.New(s.tunnelConfig(d))
		if gap > 0 {
			if wait := time.Until(start.Add(time.Duration(i) * gap)); wait > 0 {
				select {
				case <-ctx.Done():
					return nil
				case err := <-s.fatal:
					return err
				case <-time.After(wait):
				}
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if s.cfg.CheckIn > 0 {
				s.checkIns(ctx, d)
				return
			}
			d.client.Run(ctx)
		}()
	}
	s.log.Info("all devices started", "devices", len(s.devices), "took", time.Since(start).Round(time.Millisecond))
	select {
	case <-ctx.Done():
		return nil
	case err := <-s.fatal:
		return err
	}
}

// listen opens device d's UDP socket, on its local address when
// LocalAddrs names some. A socket that cannot be had (no port left on the
// address, no descriptor left) stops the whole simulation with the
// reason: redialling would only hold the machine's last ports.
func (s *Sim) listen(d *device) (*net.UDPConn, error) {
	var la *net.UDPAddr
	if n := len(s.cfg.LocalAddrs); n > 0 {
		la = net.UDPAddrFromAddrPort(netip.AddrPortFrom(s.cfg.LocalAddrs[d.index%n], 0))
	}
	c, err := net.ListenUDP("udp", la)
	if err != nil {
		err = fmt.Errorf("devsim: %s: open its UDP socket: %w (each device holds one: use more local addresses, or fewer devices per process)", d.name, err)
		select {
		case s.fatal <- err:
		default:
		}
		return nil, err
	}
	return c, nil
}

// checkIns runs a direct node: it checks in now, then every CheckIn (the
// first at a random point of the period), until ctx ends.
func (s *Sim) checkIns(ctx context.Context, d *device) {
	wait := time.Duration(0)
	for first := true; ; first = false {
		if !first {
			wait = s.cfg.CheckIn
			if d.ups.Load() == 1 {
				wait = mrand.N(s.cfg.CheckIn) + 1
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		done := make(chan struct{})
		go func() {
			defer close(done)
			d.client.Run(cctx)
		}()
		select {
		case <-d.checkedIn:
		case <-cctx.Done():
		}
		cancel()
		<-done
	}
}

// prepare builds the device's tunnel TLS config from its identity.
func (d *device) prepare(host string) error {
	cert, err := d.id.TLSCertificate()
	if err != nil {
		return err
	}
	pool, err := d.id.CertPool()
	if err != nil {
		return err
	}
	d.tls = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS13}
	return nil
}

func (s *Sim) tunnelConfig(d *device) tunnel.Config {
	return tunnel.Config{
		Addr:      s.cfg.Fleet,
		TLSConfig: func() (*tls.Config, error) { return d.tls, nil },
		Hello: func() *proto.Hello {
			h := &proto.Hello{Name: d.name, AgentVersion: "devsim", OS: runtime.GOOS, Arch: runtime.GOARCH,
				Labels: s.cfg.Labels, Time: s.cfg.Now().UnixMilli()}
			if s.cfg.CheckIn > 0 {
				h.Direct = s.cfg.DirectAddr
			}
			return h
		},
		Check: func(h *proto.StreamHeader) error {
			return proto.Errorf(proto.CodeNotFound, "%s is a simulated device (devsim) and serves nothing", d.name)
		},
		Handle: func(_ context.Context, _ *proto.StreamHeader, conn net.Conn) { conn.Close() },
		OnState: func(up bool) {
			s.state(d, up)
			if up && s.cfg.OnUp != nil {
				s.cfg.OnUp(d.index, d.client.Send)
			}
		},
		OnMessage: func(m proto.Message) {
			if s.cfg.OnMessage != nil {
				s.cfg.OnMessage(d.index, m, d.client.Send)
			}
		},
		ListenPacket: func() (net.PacketConn, error) {
			// Every dial opens a socket: count it as a connection attempt.
			// Returned as the *net.UDPConn itself so quic-go keeps its
			// fast paths.
			c, err := s.listen(d)
			if err != nil {
				return nil, err
			}
			s.record(d, Dial)
			return c, nil
		},
		Keepalive:   s.cfg.Keepalive,
		Liveness:    s.cfg.Liveness,
		IdleTimeout: s.cfg.IdleTimeout,
		MinBackoff:  s.cfg.MinBackoff,
		MaxBackoff:  s.cfg.MaxBackoff,
		Logger:      slog.New(&tallyHandler{t: &s.tally, next: s.cfg.TunnelLogger.Handler()}).With("device", d.name),
		Now:         s.cfg.Now,
	}
}

// state records a tunnel going up or down and logs reconnects.
func (s *Sim) state(d *device, up bool) {
	now := s.cfg.Now()
	if !up {
		s.up.Add(-1)
		d.downAt.Store(now.UnixNano())
		s.record(d, Down)
		return
	}
	s.up.Add(1)
	n := d.ups.Add(1)
	if n == 1 {
		s.seen.Add(1)
	}
	s.record(d, Up)
	if s.cfg.CheckIn > 0 {
		select {
		case d.checkedIn <- struct{}{}:
		default:
		}
		return // a direct node's tunnel comes and goes: no reconnect
	}
	if n > 1 {
		down := time.Duration(0)
		if at := d.downAt.Load(); at != 0 {
			down = now.Sub(time.Unix(0, at))
		}
		s.log.Info("device reconnected", "device", d.name, "down_for", down.Round(time.Millisecond), "reconnects", n-1)
	}
	d.downAt.Store(0)
}

// summarise logs how many devices are up every 5 s while that changes,
// and what their tunnels said most often since the last time.
func (s *Sim) summarise(ctx context.Context) {
	t := time.NewTicker(5 * time.Second)
	defer t.Stop()
	lastUp, lastRe := -1, int64(-1)
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		up, re := s.Up(), s.Reconnects()
		if up != lastUp || re != lastRe {
			s.log.Info("devices", "up", up, "of", len(s.devices), "reconnects", re)
			lastUp, lastRe = up, re
		}
		if said := s.tally.take(4); len(said) > 0 {
			s.log.Info("device tunnels said", "most", strings.Join(said, " | "))
		}
	}
}
