// Package balancer is a small TCP and UDP load balancer for tests and
// benchmarks of several fleetd replicas: one address (TCP for HTTPS, UDP
// for the device tunnels, on one port, as fleetd listens) in front of
// several replicas, as a cloud load balancer or a Kubernetes Service would
// be. A rule picks each client's replica (a test puts devices on one
// replica and users on another); a health check (GET /v1/ready on each
// replica, as a Kubernetes readiness probe) decides where clients go:
//
//   - a replica that is not ready (it answers, but not 200) takes no new
//     clients, and keeps the UDP flows it has for a while (Config.Drain, a
//     cloud load balancer's connection draining), so that what it still
//     sends them, such as the close frames of a replica that stops,
//     arrives;
//   - a replica that does not answer (Config.DownAfter checks in a row),
//     or whose port refuses the check, is down, and its clients move to
//     the next: a TCP client at its next connection, a UDP flow at its next
//     datagram. A UDP flow whose datagram the replica's port refuses moves
//     too, alone.
//
// UDP flows are kept per client address, each with a socket of its own to
// its replica, so the replica sees the balancer's address for each client
// (QUIC does not mind). Debian's nginx has no UDP proxying unless
// libnginx-mod-stream is installed, and HAProxy does not proxy UDP; this
// package stands in for either.
//
// Only tests and benchmarks import it.
package balancer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Client is what a rule knows of a client.
type Client struct {
	// Network is "tcp" or "udp".
	Network string
	Addr    net.Addr
}

// Rule returns the replicas (indexes into Config.Backends) a client may
// go to, in order of preference; the first that is up takes it.
type Rule func(c Client) []int

// Config configures a Balancer. Backends is required.
type Config struct {
	// Listen is the host:port to listen on (TCP and UDP); default
	// 127.0.0.1:0.
	Listen string
	// TCP and UDP, when both are set, are the sockets to serve on instead
	// of Listen's, bound before the balancer starts (a test that must
	// give its address to the replicas it balances); Close closes them.
	TCP net.Listener
	UDP *net.UDPConn
	// Backends are the replicas' addresses, host:port (TCP and UDP).
	Backends []string
	// Rule picks replicas; default: round robin over all.
	Rule Rule
	// HealthEvery is how often each replica's readiness is checked;
	// default 200ms. A replica that fails it takes no new clients until it
	// passes.
	HealthEvery time.Duration
	// Drain is how long a replica that answers its check "not ready"
	// keeps the UDP flows it has; default 30s. After it, or as soon as the
	// replica is down, they move.
	Drain time.Duration
	// DownAfter is how many checks in a row a replica must leave
	// unanswered to be down (a busy replica may answer late); default 3,
	// as a Kubernetes probe's failureThreshold. A replica whose port
	// refuses the check is down at once.
	DownAfter int
	// LocalAddrs are the local addresses the UDP flows' sockets to the
	// replicas are bound to (port 0), one after the other, so that many
	// flows do not take every ephemeral port of one address. Empty: the
	// kernel picks.
	LocalAddrs []netip.Addr
	// OnSocketError, when set, is called when a flow's socket to a
	// replica cannot be opened (no port or descriptor left); the flow's
	// datagram is dropped either way.
	OnSocketError func(error)
	// FlowIdle ends a UDP flow idle this long once its replica has
	// answered it; default 2m. A flow its replica never answered ends
	// after 30 s idle. Both as Linux's connection tracking does for UDP
	// (nf_conntrack_udp_timeout_stream, nf_conntrack_udp_timeout): a
	// crowd of devices redialling, each dial on a new port, must not hold
	// a socket each for long.
	FlowIdle time.Duration
	// Logger receives moves and failures; nil discards them.
	Logger *slog.Logger
}

// Balancer runs until Close.
type Balancer struct {
	cfg  Config
	log  *slog.Logger
	tcp  net.Listener
	udp  *net.UDPConn
	back []backend
	next atomic.Uint64 // round robin
	// local counts flow sockets opened, to spread them over LocalAddrs.
	local atomic.Uint64

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex // guards flows and conns
	flows map[string]*flow
	conns map[net.Conn]struct{}

	moves atomic.Int64
}

// Start listens and starts balancing.
func Start(cfg Config) (*Balancer, error) {
	if len(cfg.Backends) == 0 {
		return nil, errors.New("balancer: no backends")
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.HealthEvery <= 0 {
		cfg.HealthEvery = 200 * time.Millisecond
	}
	if cfg.Drain <= 0 {
		cfg.Drain = 30 * time.Second
	}
	if cfg.DownAfter <= 0 {
		cfg.DownAfter = 3
	}
	if cfg.FlowIdle <= 0 {
		cfg.FlowIdle = 2 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	b := &Balancer{cfg: cfg, log: cfg.Logger.With("component", "balancer"), back: make([]backend, len(cfg.Backends)),
		flows: map[string]*flow{}, conns: map[net.Conn]struct{}{}}
	if cfg.Rule == nil {
		b.cfg.Rule = func(Client) []int {
			n := len(cfg.Backends)
			first := int(b.next.Add(1)) % n
			out := make([]int, n)
			for i := range out {
				out[i] = (first + i) % n
			}
			return out
		}
	}
	switch {
	case (cfg.TCP == nil) != (cfg.UDP == nil):
		return nil, errors.New("balancer: TCP and UDP go together: set both or neither")
	case cfg.TCP != nil:
		b.tcp, b.udp = cfg.TCP, cfg.UDP
	default:
		var err error
		if b.tcp, b.udp, err = Listen(cfg.Listen); err != nil {
			return nil, err
		}
	}
	b.udp.SetReadBuffer(4 << 20)
	b.udp.SetWriteBuffer(4 << 20)
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.checkAll()
	b.health()
	b.wg.Go(func() { b.every(sweepEvery, b.sweepFlows) }) // beside the read loop
	b.wg.Go(b.acceptTCP)
	b.wg.Go(b.readUDP)
	return b, nil
}

// Listen binds a TCP listener and a UDP socket on one port of addr
// (host:port; port 0: one free for both, tried up to 20 times), as the
// balancer and the replicas it balances serve both on one port.
func Listen(addr string) (net.Listener, *net.UDPConn, error) {
	var err error
	for range 20 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", addr); err != nil {
			return nil, nil, err
		}
		var udp *net.UDPConn
		udp, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(ln.Addr().(*net.TCPAddr).AddrPort()))
		if err == nil {
			return ln, udp, nil
		}
		ln.Close() // the port is taken for UDP

		if _, port, _ := net.SplitHostPort(addr); port != "0" {
			return nil, nil, err
		}
	}
	return nil, nil, err
}

// Addr is where clients reach the replicas.
func (b *Balancer) Addr() string { return b.tcp.Addr().String() }

// Moves counts the clients moved off a replica that went away.
func (b *Balancer) Moves() int64 { return b.moves.Load() }

// Up reports whether backend i passed its last health check: it takes
// new clients.
func (b *Balancer) Up(i int) bool { return b.back[i].ready.Load() }

// Keeps reports whether backend i keeps the UDP flows it has: it is up,
// or not ready and still draining.
func (b *Balancer) Keeps(i int) bool { return b.back[i].keeps.Load() }

// backend is what the health checks found of one replica.
type backend struct {
	ready atomic.Bool // takes new clients
	keeps atomic.Bool // keeps the UDP flows it has

	// Only the health check of this backend uses these.
	fails    int       // checks in a row left unanswered
	drainEnd time.Time // when a not-ready replica's flows move; zero: not draining
}

// health is what one check found.
type health int

const (
	healthReady    health = iota // 200
	healthNotReady               // answered, not 200
	healthNoAnswer               // no answer in time
	healthRefused                // its port refused the check: nothing listens
)

// note records a check's result and reports whether the backend stopped
// keeping its flows.
func (bk *backend) note(h health, now time.Time, drain time.Duration, downAfter int) (lost bool) {
	wasKeeping := bk.keeps.Load()
	switch h {
	case healthReady:
		bk.fails, bk.drainEnd = 0, time.Time{}
		bk.ready.Store(true)
		bk.keeps.Store(true)
	case healthNotReady:
		bk.fails = 0
		bk.ready.Store(false)
		if wasKeeping && bk.drainEnd.IsZero() {
			bk.drainEnd = now.Add(drain)
		}
		bk.keeps.Store(!bk.drainEnd.IsZero() && now.Before(bk.drainEnd))
	case healthNoAnswer, healthRefused:
		bk.fails++
		if h == healthNoAnswer && bk.fails < downAfter {
			return false
		}
		bk.drainEnd = time.Time{}
		bk.ready.Store(false)
		bk.keeps.Store(false)
	}
	return wasKeeping && !bk.keeps.Load()
}

// Close stops the balancer and ends every connection and flow.
func (b *Balancer) Close() {
	b.cancel()
	b.tcp.Close()
	b.udp.Close()
	b.mu.Lock()
	for c := range b.conns {
		c.Close()
	}
	for _, f := range b.flows {
		f.close()
	}
	b.mu.Unlock()
	b.wg.Wait()
}

// health checks every replica's readiness until Close.
func (b *Balancer) health() {
	// Each replica has its own loop: one that answers late must not hold
	// back what the others' checks find.
	for i := range b.cfg.Backends {
		b.wg.Go(func() { b.every(b.cfg.HealthEvery, func() { b.check(i) }) })
	}
}

// every calls fn every d until Close.
func (b *Balancer) every(d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

var healthClient = &http.Client{
	Timeout: 2 * time.Second,
	Transport: &http.Transport{
		// Readiness only: who answers does not matter here.
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		DisableKeepAlives: true,
	},
}

func (b *Balancer) checkAll() {
	var wg sync.WaitGroup
	for i := range b.cfg.Backends {
		wg.Go(func() { b.check(i) })
	}
	wg.Wait()
}

// check checks replica i's readiness once and acts on what it finds.
func (b *Balancer) check(i int) {
	addr := b.cfg.Backends[i]
	h := healthNoAnswer
	resp, err := healthClient.Get("https://" + addr + "/v1/ready")
	if errors.Is(err, syscall.ECONNREFUSED) {
		h = healthRefused
	}
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		h = healthNotReady
		if resp.StatusCode == http.StatusOK {
			h = healthReady
		}
	}
	bk := &b.back[i]
	wasReady, wasKeeping := bk.ready.Load(), bk.keeps.Load()
	lost := bk.note(h, time.Now(), b.cfg.Drain, b.cfg.DownAfter)
	if ready, keeps := bk.ready.Load(), bk.keeps.Load(); ready != wasReady || keeps != wasKeeping {
		b.log.Info("replica health changed", "backend", addr, "ready", ready, "keeps_flows", keeps)
	}
	if lost {
		b.moveFlowsOff(i)
	}
}

// pick returns the first replica the rule allows that is up, or -1.
func (b *Balancer) pick(c Client, not int) int {
	for _, i := range b.cfg.Rule(c) {
		if i >= 0 && i < len(b.back) && i != not && b.back[i].ready.Load() {
			return i
		}
	}
	return -1
}

func (b *Balancer) acceptTCP() {
	for {
		c, err := b.tcp.Accept()
		if err != nil {
			return
		}
		b.wg.Go(func() { b.serveTCP(c) })
	}
}

func (b *Balancer) track(c net.Conn, on bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if on {
		b.conns[c] = struct{}{}
	} else {
		delete(b.conns, c)
	}
}

func (b *Balancer) serveTCP(c net.Conn) {
	b.track(c, true)
	defer b.track(c, false)
	defer c.Close()
	cl := Client{Network: "tcp", Addr: c.RemoteAddr()}
	var up net.Conn
	tried := map[int]bool{}
	for {
		i := -1
		for _, j := range b.cfg.Rule(cl) {
			if !tried[j] && j >= 0 && j < len(b.back) && b.back[j].ready.Load() {
				i = j
				break
			}
		}
		if i < 0 {
			return
		}
		tried[i] = true
		var err error
		up, err = net.DialTimeout("tcp", b.cfg.Backends[i], 5*time.Second)
		if err == nil {
			break
		}
		b.log.Debug("replica refused a connection; trying the next", "backend", b.cfg.Backends[i], "err", err)
	}
	b.track(up, true)
	defer b.track(up, false)
	defer up.Close()
	var wg sync.WaitGroup
	wg.Go(func() {
		io.Copy(up, c)
		if tc, ok := up.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
	})
	io.Copy(c, up)
	if tc, ok := c.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	wg.Wait()
}

// flow is one UDP client's path to its replica.
type flow struct {
	client  *net.UDPAddr
	mu      sync.Mutex // guards backend and conn
	backend int
	conn    *net.UDPConn
	last    atomic.Int64 // unix nanos of the last datagram either way
	replied atomic.Bool  // a replica answered
}

// unrepliedIdle ends a flow no replica answered (see Config.FlowIdle).
const unrepliedIdle = 30 * time.Second

// sweepEvery is how often idle flows are looked for.
const sweepEvery = 10 * time.Second

func (f *flow) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn != nil {
		f.conn.Close()
	}
}

func (b *Balancer) readUDP() {
	buf := make([]byte, 64<<10)
	for {
		n, from, err := b.udp.ReadFromUDP(buf)
		if err != nil {
			return
		}
		key := from.String()
		b.mu.Lock()
		f := b.flows[key]
		if f == nil {
			f = &flow{client: from, backend: -1}
			b.flows[key] = f
		}
		b.mu.Unlock()
		f.last.Store(time.Now().UnixNano())
		conn := b.flowConn(f, -1)
		if conn == nil {
			continue // no replica up: dropped, as a dead link drops it
		}
		if _, err := conn.Write(buf[:n]); err != nil {
			// The replica's port is closed (it died): move the flow and
			// send again there.
			if conn = b.flowConn(f, f.backendOf(conn)); conn != nil {
				conn.Write(buf[:n])
			}
		}
	}
}

func (f *flow) backendOf(c *net.UDPConn) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn == c {
		return f.backend
	}
	return -1
}

// flowConn returns f's socket to its replica, opening one to a replica
// that is up (other than not) when it has none or its replica no longer
// keeps it.
func (b *Balancer) flowConn(f *flow, not int) *net.UDPConn {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conn != nil && f.backend != not && b.back[f.backend].keeps.Load() {
		return f.conn
	}
	i := b.pick(Client{Network: "udp", Addr: f.client}, not)
	if i < 0 {
		return nil
	}
	ra, err := net.ResolveUDPAddr("udp", b.cfg.Backends[i])
	if err != nil {
		return nil
	}
	var la *net.UDPAddr
	if n := uint64(len(b.cfg.LocalAddrs)); n > 0 {
		la = net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.cfg.LocalAddrs[b.local.Add(1)%n], 0))
	}
	c, err := net.DialUDP("udp", la, ra)
	if err != nil {
		if b.cfg.OnSocketError != nil {
			b.cfg.OnSocketError(fmt.Errorf("balancer: open a socket to replica %s: %w", b.cfg.Backends[i], err))
		}
		return nil
	}
	c.SetReadBuffer(1 << 20)
	if f.conn != nil {
		f.conn.Close()
	}
	if f.backend >= 0 && f.backend != i {
		b.moves.Add(1)
		b.log.Debug("flow moved to another replica", "client", f.client, "from", b.cfg.Backends[f.backend], "to", b.cfg.Backends[i])
	}
	f.conn, f.backend = c, i
	f.replied.Store(false) // this replica has not answered yet
	b.wg.Go(func() { b.replies(f, c) })
	return c
}

// replies copies a replica's datagrams back to the flow's client until the
// flow's socket changes or closes.
func (b *Balancer) replies(f *flow, c *net.UDPConn) {
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if !errors.Is(err, net.ErrClosed) {
				// ECONNREFUSED: the replica's port closed. The next
				// datagram from the client moves the flow.
				f.mu.Lock()
				if f.conn == c {
					f.conn.Close()
					f.conn = nil
				}
				f.mu.Unlock()
			}
			return
		}
		f.last.Store(time.Now().UnixNano())
		f.replied.Store(true)
		b.udp.WriteToUDP(buf[:n], f.client)
	}
}

// moveFlowsOff drops the sockets of flows on replica i (down, or done
// draining): their next datagram goes to another replica.
func (b *Balancer) moveFlowsOff(i int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, f := range b.flows {
		f.mu.Lock()
		if f.backend == i && f.conn != nil {
			f.conn.Close()
			f.conn = nil
		}
		f.mu.Unlock()
	}
}

// sweepFlows ends the flows idle past their time (Config.FlowIdle), and
// closes their sockets once it has let go of the flow table.
func (b *Balancer) sweepFlows() {
	now := time.Now()
	cut, cutUnreplied := now.Add(-b.cfg.FlowIdle).UnixNano(), now.Add(-unrepliedIdle).UnixNano()
	var ended []*flow
	b.mu.Lock()
	for k, f := range b.flows {
		if last := f.last.Load(); last < cut || !f.replied.Load() && last < cutUnreplied {
			ended = append(ended, f)
			delete(b.flows, k)
		}
	}
	b.mu.Unlock()
	for _, f := range ended {
		f.close()
	}
}

// Prefer returns a rule that sends clients of network to backends in the
// order given, and everything else round robin.
func Prefer(n int, network string, order ...int) Rule {
	var next atomic.Uint64
	return func(c Client) []int {
		if c.Network == network {
			return order
		}
		first := int(next.Add(1)) % n
		out := make([]int, n)
		for i := range out {
			out[i] = (first + i) % n
		}
		return out
	}
}

// ByPort returns a rule that spreads clients over n backends by their
// port, so a client keeps its replica while it is up.
func ByPort(n int) Rule {
	return func(c Client) []int {
		_, p, _ := net.SplitHostPort(c.Addr.String())
		port, _ := strconv.Atoi(p)
		out := make([]int, n)
		for i := range out {
			out[i] = (port + i) % n
		}
		return out
	}
}
