// Package tunnel keeps the agent's QUIC tunnel to the fleet: it dials out,
// says hello on the control stream, sends heartbeats, renews certificates on
// request, accepts the streams the fleet opens for brokered connections, and
// redials with jittered exponential back-off whenever the connection dies.
//
// Only firmware/... imports this package.
package tunnel

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/quicconn"
	"remoteler.dev/edge/proto/resume"
)

// Config configures a Client. The zero value of each optional field works.
type Config struct {
	// Addr is the fleet's host:port (UDP). Resolved again on every dial.
	Addr string
	// TLSConfig returns the client TLS config for the next dial: the
	// device's client certificate and how to verify the fleet. It is called
	// per dial so renewed certificates take effect. Required.
	TLSConfig func() (*tls.Config, error)
	// Hello returns the hello to send on each new connection. Required.
	Hello func() *proto.Hello
	// Check decides whether to accept a stream before Handle runs; a
	// *proto.Error refuses it with that code. Nil accepts every stream.
	Check func(h *proto.StreamHeader) error
	// Handle serves an accepted stream. It runs on its own goroutine and
	// must close conn. Required.
	Handle func(ctx context.Context, h *proto.StreamHeader, conn net.Conn)
	// OnHelloAck is called with every HelloAck. Optional.
	OnHelloAck func(*proto.HelloAck)
	// OnState is called when the tunnel goes up (true) or down (false).
	OnState func(up bool)
	// OnMessage receives messages the fleet sends on its own (not answers
	// to Call), such as pushed configuration. Optional.
	OnMessage func(m proto.Message)

	// Keepalive is how often the agent refreshes its NAT mapping while the
	// link is idle: a one-byte datagram (not QUIC, so the fleet sends no
	// answer unless it does not know the sender) from the tunnel's socket. Default 25s, which holds a mapping
	// with a 30 s UDP timeout; negative turns it off. The fleet may set it
	// per device in its hello answer.
	Keepalive time.Duration
	// Liveness is how often the agent sends a heartbeat on the control
	// stream while idle: a QUIC packet, whose ACK tells the agent the fleet
	// still has the connection, and which keeps QUIC's idle timers on both
	// sides from ending it. Default 10m: the keep-alives already show the
	// fleet that the device is there, and a fleet that lost the connection
	// answers a keep-alive with a reset. The fleet may set it in its hello
	// answer.
	Liveness time.Duration
	// IdleTimeout closes a connection that hears nothing for this long;
	// default 2 × Liveness + 30s.
	IdleTimeout time.Duration
	// MinBackoff and MaxBackoff bound the reconnect delay; defaults 500ms
	// and 1m. The delay doubles per failure, with full jitter.
	MinBackoff, MaxBackoff time.Duration

	// PathMTUDiscovery lets QUIC probe for packets larger than 1280 bytes
	// (up to 1452). Default off: the probes cost about 11.6 kB on every new
	// connection and every address change (half of them the fleet's, which
	// has its own setting), 70 kB a day for a device that reconnects 6
	// times, a third of DESIGN.md's idle budget, while bulk data in
	// 1280-byte packets costs under 1% more bytes on the wire. Turn it on
	// for devices on wired links that move bulk data.
	PathMTUDiscovery bool

	// NoLinkPings turns off stall recovery (recover.go): stalled sessions
	// then wait for QUIC's own retransmission back-off. For links where
	// the extra datagrams are unwanted, and for measuring what the pings
	// buy. Default false.
	NoLinkPings bool

	// SessionHold is how long a session waits for the tunnel to come back
	// before it ends; default 10m.
	SessionHold time.Duration
	// SessionBuffer bounds each session's replay buffer; default 2 MiB.
	SessionBuffer int
	// SessionBudget bounds all sessions' replay buffers together; default
	// 32 MiB.
	SessionBudget int

	// ListenPacket opens the UDP socket for each connection; default
	// net.ListenUDP on an ephemeral port. Tests pass simulated sockets.
	ListenPacket func() (net.PacketConn, error)

	// Logger receives the tunnel's logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.Keepalive == 0 {
		c.Keepalive = DefaultKeepalive
	}
	if c.Liveness <= 0 {
		c.Liveness = DefaultLiveness
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 2*c.Liveness + 30*time.Second
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 500 * time.Millisecond
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = time.Minute
	}
	if c.SessionHold <= 0 {
		c.SessionHold = resume.DefaultHold
	}
	if c.SessionBuffer <= 0 {
		c.SessionBuffer = 2 << 20
	}
	if c.SessionBudget <= 0 {
		c.SessionBudget = 32 << 20
	}
	if c.ListenPacket == nil {
		c.ListenPacket = func() (net.PacketConn, error) {
			udp, err := net.ListenUDP("udp", nil)
			if err == nil {
				udp.SetReadBuffer(1 << 20)
				udp.SetWriteBuffer(1 << 20)
			}
			return udp, err
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Initial QUIC flow-control windows, the same on both sides
// (fleet/tunnelsrv): a bulk copy starts at a window of a few round trips
// of a fast link rather than waiting for quic-go's tuning to grow its 512
// KiB. The maxima stay quic-go's (6 MiB, 15 MiB); the resume layer reads
// at once, so the windows are rarely held full.
const (
	quicStreamWindow = 2 << 20
	quicConnWindow   = 3 << 20
)

// Defaults for Config.
const (
	DefaultKeepalive = 25 * time.Second
	DefaultLiveness  = 10 * time.Minute
)

// Client keeps one tunnel up. Create it with New and call Run.
type Client struct {
	cfg          Config
	log          *slog.Logger
	linkChange   chan struct{}
	sessionAdded chan struct{} // wakes the stall watcher
	heldChanged  chan struct{} // wakes reportHeld

	up        atomic.Bool
	reconnect atomic.Int64
	redialNow atomic.Bool // the link is back: dial without back-off

	mu       sync.Mutex // guards ctrl, sessions and stopping
	ctrl     *control   // current control stream, nil when down
	sessions map[string]*session
	stopping bool                 // Run is ending: no new sessions
	ended    map[string]endedHeld // why the fleet ended recent user-held sessions

	budget   *resume.Budget
	handlers sync.WaitGroup // Handle calls; they outlive connections
	tickets  tls.ClientSessionCache
	bootID   string // new per process: tells the fleet we restarted
}

// session is a brokered stream that can be re-attached after a reconnect.
type session struct {
	id     string
	secret []byte
	conn   *resume.Conn
	// userHeld: the user's client holds the fleet's end of the session
	// (proto.StreamHeader.UserHeld); the fleet re-attaches it
	// (reattachUserHeld), never the agent. held says whose it is (a
	// re-attach must name the same user and login again), and is how
	// reportHeld describes it to the fleet.
	userHeld bool
	held     proto.HeldSession
	attachMu sync.Mutex // serialises re-attaches of a user-held session
	// fleetEnded: the fleet ended the session (SessionEnded); a user-held
	// one is dropped once its service is done with it. endReason is
	// why, kept once it is dropped for a client that asks to resume it
	// (endedHeld).
	fleetEnded atomic.Bool
	endReason  atomic.Pointer[string]
	// started: the session's first transport is attached (before, it is
	// not away, only starting).
	started atomic.Bool

	// Guarded by Client.mu: the connection a resume of the session is
	// under way on (nil: none); and, for a session left without a
	// transport on a live connection (see retryDetached), when it was
	// found so, when to try again, and how many tries were made.
	resuming   *quic.Conn
	detachedAt time.Time
	retryAt    time.Time
	retries    int
}

// New returns a client for cfg.
func New(cfg Config) *Client {
	cfg.setDefaults()
	return &Client{
		cfg: cfg, log: cfg.Logger.With("component", "tunnel"), linkChange: make(chan struct{}, 1), sessionAdded: make(chan struct{}, 1),
		heldChanged: make(chan struct{}, 1),
		sessions:    map[string]*session{}, budget: resume.NewBudget(cfg.SessionBudget),
		bootID: rand.Text(), tickets: tls.NewLRUClientSessionCache(4),
	}
}

// Up reports whether the tunnel is connected and has said hello.
func (c *Client) Up() bool { return c.up.Load() }

// Reconnects counts the connections made after the first.
func (c *Client) Reconnects() int64 { return c.reconnect.Load() }

// Run keeps the tunnel up until ctx is done. It returns nil then.
func (c *Client) Run(ctx context.Context) error {
	if c.cfg.TLSConfig == nil || c.cfg.Hello == nil || c.cfg.Handle == nil {
		return errors.New("tunnel: TLSConfig, Hello and Handle are required")
	}
	defer c.handlers.Wait()
	defer c.abortSessions()
	failures := 0
	for n := 0; ; n++ {
		start := c.cfg.Now()
		if n > 0 {
			c.reconnect.Add(1)
		}
		err := c.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if c.cfg.Now().Sub(start) > time.Minute {
			failures = 0 // it worked for a while: start back-off afresh
		}
		if c.redialNow.Swap(false) {
			failures = 0
			continue
		}
		var d time.Duration
		d, failures = c.retryAfter(err, failures)
		c.log.Warn("tunnel down; reconnecting", "err", err, "in", d.Round(time.Millisecond))
		if c.waitForLink(ctx, d) {
			failures = 0
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// restartSpread reads the reconnect spread from a fleet's shutdown close
// (proto.RestartReason) or its close of a connection it is too busy to
// answer (proto.BusyReason).
func restartSpread(err error) (time.Duration, bool) {
	var ae *quic.ApplicationError
	if !errors.As(err, &ae) || !ae.Remote || ae.ErrorCode != quic.ApplicationErrorCode(proto.CodeUnavailable) {
		return 0, false
	}
	for _, format := range []string{proto.RestartReason, proto.BusyReason} {
		var ms int64
		if _, err := fmt.Sscanf(ae.ErrorMessage, format, &ms); err == nil && ms > 0 {
			return min(time.Duration(ms)*time.Millisecond, 5*time.Minute), true
		}
	}
	return 0, false
}

// retryAfter returns how long to wait before dialling again after a
// connection that ended with err, the failures before it counted in
// failures, and the new count.
func (c *Client) retryAfter(err error, failures int) (time.Duration, int) {
	if spread, ok := restartSpread(err); ok {
		// The fleet is restarting, or too busy to answer the hello: give
		// it a second, then come at a random moment within the spread it
		// gave, not all devices at once.
		return time.Second + mrand.N(spread+1), 0
	}
	if crowded(err) {
		// The fleet refused the connection before its handshake: it is
		// answering a crowd. Start further along the back-off.
		failures = max(failures, crowdedFailures)
	}
	return backoff(c.cfg.MinBackoff, c.cfg.MaxBackoff, failures), failures + 1
}

// crowdedFailures is where the back-off starts after a connection the
// fleet refused before its handshake (crowded): up to 16 × MinBackoff (8 s
// by default) rather than 1 ×.
const crowdedFailures = 4

// crowded reports whether err is the fleet's refusal of a connection
// before its handshake (QUIC's CONNECTION_REFUSED), which a fleet sends
// when more devices are connecting than it can answer.
func crowded(err error) bool {
	var te *quic.TransportError
	return errors.As(err, &te) && te.Remote && te.ErrorCode == quic.ConnectionRefused
}

// backoff returns a full-jitter delay for the n-th consecutive failure.
func backoff(lo, hi time.Duration, n int) time.Duration {
	d := lo << min(n, 20)
	if d <= 0 || d > hi {
		d = hi
	}
	return lo/2 + mrand.N(d-lo/2+1)
}

// session dials once and serves the connection until it dies.
func (c *Client) session(ctx context.Context) error {
	tlsConf, err := c.cfg.TLSConfig()
	if err != nil {
		return fmt.Errorf("tunnel: tls config: %w", err)
	}
	tlsConf = tlsConf.Clone()
	tlsConf.NextProtos = []string{proto.ALPN}
	// Session tickets let reconnects resume the TLS session: 0-RTT, and no
	// certificate signatures for either side to compute.
	tlsConf.ClientSessionCache = c.tickets
	raddr, err := net.ResolveUDPAddr("udp", c.cfg.Addr)
	if err != nil {
		return fmt.Errorf("tunnel: resolve %s: %w", c.cfg.Addr, err)
	}
	// One UDP socket and one Transport per connection; the socket stays
	// open for the connection's life (quic-go needs it even after a path
	// switch).
	udp, err := c.cfg.ListenPacket()
	if err != nil {
		return fmt.Errorf("tunnel: open udp socket: %w", err)
	}
	tr := &quic.Transport{Conn: udp}
	defer tr.Close()
	defer udp.Close()

	dctx, cancel := context.WithCancelCause(ctx)
	dctx, cancelT := context.WithTimeout(dctx, 15*time.Second)
	stopPings := c.pingWhileDialling(raddr, cancel)
	qc, err := tr.DialEarly(dctx, raddr, tlsConf, &quic.Config{
		// No QUIC keep-alives: a PING and its ACK cost ~110 bytes on the
		// wire. The NAT keep-alive and the heartbeat below cost less.
		MaxIdleTimeout:                 c.cfg.IdleTimeout,
		DisablePathMTUDiscovery:        !c.cfg.PathMTUDiscovery,
		InitialStreamReceiveWindow:     quicStreamWindow,
		InitialConnectionReceiveWindow: quicConnWindow,
		// The fleet may open as many streams as it lets a device have
		// sessions (tunnelsrv: 256), not quic-go's default 100: a
		// browser's app opens one per connection and websocket.
		MaxIncomingStreams: 256,
	})
	stopPings()
	cause := context.Cause(dctx)
	cancelT()
	cancel(nil)
	if err != nil {
		if errors.Is(cause, errLinkBack) {
			c.redialNow.Store(true)
			return fmt.Errorf("tunnel: dial fleet %s: %w", c.cfg.Addr, errLinkBack)
		}
		return fmt.Errorf("tunnel: dial fleet %s: %w", c.cfg.Addr, err)
	}
	defer func() { qc.CloseWithError(0, "agent closing") }()

	// The hello, and the resume streams right behind it, may go out as
	// 0-RTT data; the fleet acts on them only once the handshake is
	// complete. Pipelining the resumes saves a round trip on reconnect.
	// If the fleet rejects 0-RTT (it lost its ticket key), the same is
	// sent again once the handshake is done.
	ctrl, m, err := c.hello(ctx, qc)
	if errors.Is(err, quic.Err0RTTRejected) {
		c.log.Debug("fleet rejected 0-RTT; saying hello again")
		if qc, err = qc.NextConnection(ctx); err == nil {
			ctrl, m, err = c.hello(ctx, qc)
		}
	}
	if err != nil {
		return err
	}
	st := ctrl.st
	var link linkTimers
	st.SetReadDeadline(time.Time{})
	switch m := m.(type) {
	case *proto.HelloAck:
		cs := qc.ConnectionState()
		c.log.Info("tunnel up", "fleet", c.cfg.Addr, "device_id", m.DeviceID, "local", qc.LocalAddr(),
			"resumed", cs.TLS.DidResume, "0rtt", cs.Used0RTT)
		link = linkTimers{keepalive: c.cfg.Keepalive, liveness: c.cfg.Liveness, tag: m.LinkTag, key: m.LinkKey, resetToken: m.ResetToken}
		if m.KeepaliveMillis != 0 {
			link.keepalive = time.Duration(m.KeepaliveMillis) * time.Millisecond
		}
		if m.LivenessMillis > 0 {
			link.liveness = time.Duration(m.LivenessMillis) * time.Millisecond
		}
		if skew := time.UnixMilli(m.ServerTime).Sub(c.cfg.Now()); skew > time.Minute || skew < -time.Minute {
			c.log.Warn("device clock differs from the fleet's", "skew", skew.Round(time.Second),
				"fleet_time", time.UnixMilli(m.ServerTime).UTC())
		}
		if c.cfg.OnHelloAck != nil {
			c.cfg.OnHelloAck(m)
		}
	case *proto.Error:
		return fmt.Errorf("tunnel: fleet refused hello: %w", m)
	default:
		return fmt.Errorf("tunnel: fleet answered hello with %s", m.Kind())
	}

	c.mu.Lock()
	c.ctrl = ctrl
	c.mu.Unlock()
	c.up.Store(true)
	if c.cfg.OnState != nil {
		c.cfg.OnState(true)
	}
	defer func() {
		c.mu.Lock()
		c.ctrl = nil
		c.mu.Unlock()
		c.up.Store(false)
		ctrl.fail()
		if c.cfg.OnState != nil {
			c.cfg.OnState(false)
		}
	}()

	sctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	hurry := make(chan proto.LinkHurry, 1)
	d := &datagrams{c: c, ctrl: ctrl, qc: qc, link: link, hurry: hurry}
	paths := newLinkPaths(sctx, qc, tr, raddr, c.cfg.ListenPacket, c.log, d.handle)
	d.paths = paths
	paths.start()
	defer paths.close()
	wg.Add(5)
	go func() {
		defer wg.Done()
		c.acceptStreams(ctx, sctx, qc)
	}()
	go func() {
		defer wg.Done()
		c.reportHeld(sctx, qc)
	}()
	go func() {
		defer wg.Done()
		c.watchStalls(sctx, qc, ctrl, paths, raddr, link.tag, hurry)
	}()
	go func() {
		defer wg.Done()
		c.heartbeats(sctx, ctrl, link.liveness)
	}()
	go func() {
		defer wg.Done()
		natKeepalive(sctx, paths, link)
	}()
	go func() {
		<-sctx.Done()
		qc.CloseWithError(0, "agent closing")
	}()
	err = ctrl.readLoop()
	stop()
	return closeReason(qc, err)
}

// closeReason prefers the connection's close reason over a stream error.
func closeReason(qc *quic.Conn, err error) error {
	if cause := context.Cause(qc.Context()); cause != nil {
		var ae *quic.ApplicationError
		if errors.As(cause, &ae) && ae.Remote {
			return fmt.Errorf("fleet closed the tunnel: %w", ae)
		}
		return cause
	}
	return err
}

// hello opens the control stream, sends the hello and resumes, and reads
// the fleet's answer.
func (c *Client) hello(ctx context.Context, qc *quic.Conn) (*control, proto.Message, error) {
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("tunnel: open control stream: %w", err)
	}
	ctrl := &control{qc: qc, st: st, r: proto.NewReader(st), waiters: map[proto.Kind]chan proto.Message{}, onMessage: c.cfg.OnMessage}
	hello := c.cfg.Hello()
	hello.ProtocolVersion = proto.Version
	hello.BootID = c.bootID
	hello.KeepaliveMillis, hello.LivenessMillis = c.cfg.Keepalive.Milliseconds(), c.cfg.Liveness.Milliseconds()
	if err := ctrl.send(hello); err != nil {
		return nil, nil, fmt.Errorf("tunnel: send hello: %w", err)
	}
	c.resumeAll(ctx, qc, nil)
	st.SetReadDeadline(time.Now().Add(15 * time.Second))
	m, err := proto.ReadMsg(ctrl.r, proto.MaxControlFrame)
	if err != nil {
		if errors.Is(err, quic.Err0RTTRejected) {
			return nil, nil, err
		}
		return nil, nil, fmt.Errorf("tunnel: read hello answer: %w", closeReason(qc, err))
	}
	st.SetReadDeadline(time.Time{})
	return ctrl, m, nil
}

// linkTimers are one connection's keep-alive and liveness periods, the
// tag its keep-alives carry, and the keys of the fleet's link datagrams.
type linkTimers struct {
	keepalive, liveness time.Duration
	tag                 []byte
	key                 []byte // HelloAck.LinkKey: MACs the fleet's hurries
	resetToken          []byte // HelloAck.ResetToken: what a real reset carries
}

// natKeepalive sends a one-byte datagram outside QUIC every period (see
// proto.NATKeepaliveByte), from the active path's socket: it keeps the NAT
// mapping, and tells the fleet the device is there; the fleet answers only
// when it does not know the sender's address (datagrams.handle).
func natKeepalive(ctx context.Context, paths *linkPaths, l linkTimers) {
	if l.keepalive <= 0 {
		return
	}
	b := []byte{proto.NATKeepaliveByte}
	t := time.NewTicker(l.keepalive)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			paths.writeTo(b)
		}
	}
}

// datagrams handles one connection's datagrams outside QUIC from the
// fleet (see proto.LinkPokeByte).
type datagrams struct {
	c     *Client
	ctrl  *control
	qc    *quic.Conn
	link  linkTimers
	hurry chan<- proto.LinkHurry // to watchStalls

	paths *linkPaths

	mu        sync.Mutex // guards the fields below
	lastPoke  time.Time
	lastWho   time.Time
	hurrySeq  uint64
	hurrySeen bool
}

// pokeEvery bounds what pokes and who-asks draw: they are not
// authenticated, and must not make the agent send without limit.
const pokeEvery = time.Second

// limit reports whether pokeEvery has passed since *last, and if so sets
// it to now.
func (d *datagrams) limit(last *time.Time) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now()
	if now.Sub(*last) < pokeEvery {
		return false
	}
	*last = now
	return true
}

// handle acts on a datagram from the fleet's address, arriving on any of
// the connection's paths:
//
//   - a who-ask (the fleet does not know the keep-alive's address) draws
//     the tagged keep-alive;
//   - a poke (the fleet saw the tagged keep-alive from a new address) draws
//     a heartbeat, a QUIC packet that moves the connection there;
//   - a reset with this connection's token (the fleet does not know the
//     connection: it restarted or crashed) drops the connection to dial
//     again at once;
//   - a hurry with a good MAC and a new sequence number (the fleet's data is
//     stalled) tells the stall watcher the link is back.
//
// Anything else, and anything from another address, is ignored.
func (d *datagrams) handle(b []byte, from net.Addr) {
	if from.String() != d.qc.RemoteAddr().String() {
		return
	}
	switch {
	case len(b) == 1 && b[0] == proto.LinkPokeByte:
		if d.limit(&d.lastPoke) {
			d.c.log.Info("the fleet sees this device at a new address; moving the connection")
			go d.ctrl.send(&proto.Heartbeat{})
		}
	case len(b) == 1 && b[0] == proto.LinkWhoByte:
		// The fleet does not know this address (a new NAT mapping, or a
		// fleet that restarted): say which connection this is.
		if d.limit(&d.lastWho) {
			d.paths.writeTo(append([]byte{proto.NATKeepaliveByte}, d.link.tag...))
		}
	case proto.IsLinkReset(b, d.link.resetToken):
		d.c.log.Info("the fleet does not know this connection (it restarted); reconnecting")
		d.c.redialNow.Store(true)
		d.qc.CloseWithError(0, "agent: the fleet lost the connection, reconnecting")
	case len(b) > 0 && b[0] == proto.LinkResetByte:
		d.c.log.Debug("ignored a link reset without this connection's token", "from", from)
	case len(b) > 0 && b[0] == proto.LinkHurryByte:
		h, ok := proto.ParseLinkHurry(b, d.link.key)
		if !ok {
			d.c.log.Debug("ignored a link hurry with a bad MAC", "from", from)
			return
		}
		d.mu.Lock()
		fresh := !d.hurrySeen || h.Seq > d.hurrySeq
		if fresh {
			d.hurrySeq, d.hurrySeen = h.Seq, true
		}
		d.mu.Unlock()
		if fresh {
			select {
			case d.hurry <- h:
			default:
			}
		}
	}
}

// heartbeats sends a heartbeat every period; each one draws a QUIC ACK,
// so a fleet that is gone shows up as an idle timeout.
func (c *Client) heartbeats(ctx context.Context, ctrl *control, period time.Duration) {
	// The first one at a random point of the period: devices that
	// reconnected together (after a fleet restart) must not heartbeat
	// together ever after.
	t := time.NewTimer(mrand.N(period) + 1)
	defer t.Stop()
	var seq uint64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			seq++
			if err := ctrl.send(&proto.Heartbeat{Seq: seq}); err != nil {
				return
			}
			t.Reset(period)
		}
	}
}

// acceptStreams accepts the streams the fleet opens until the connection
// ends (cctx). Handlers run under runCtx: sessions outlive connections.
func (c *Client) acceptStreams(runCtx, cctx context.Context, qc *quic.Conn) {
	for {
		st, err := qc.AcceptStream(cctx)
		if err != nil {
			return
		}
		c.handlers.Add(1)
		go func() {
			defer c.handlers.Done()
			c.serveStream(runCtx, qc, st)
		}()
	}
}

func (c *Client) serveStream(ctx context.Context, qc *quic.Conn, st *quic.Stream) {
	r := proto.NewReader(st)
	st.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, err := proto.ReadHeader(r)
	if err != nil {
		c.log.Warn("bad stream header from fleet", "err", err)
		st.CancelRead(quic.StreamErrorCode(proto.CodeBadRequest))
		st.CancelWrite(quic.StreamErrorCode(proto.CodeBadRequest))
		return
	}
	st.SetReadDeadline(time.Time{})
	conn := quicconn.New(qc, st, r)
	if h.Resume {
		// A session the agent admitted already: the secret, user and
		// login it was admitted with are the check.
		c.reattachUserHeld(conn, h)
		return
	}
	if c.cfg.Check != nil {
		if err := c.cfg.Check(h); err != nil {
			pe := &proto.Error{Code: proto.CodeForbidden, Message: err.Error()}
			errors.As(err, &pe)
			c.log.Warn("stream refused", "service", h.Service, "user", h.Identity.User, "login", h.Identity.Login, "session", h.SessionID, "reason", pe.Message)
			proto.WriteMsg(conn, &proto.StreamAccept{Code: pe.Code, Message: pe.Message})
			conn.CloseWrite()
			return
		}
	}
	c.mu.Lock()
	dup := c.sessions[h.SessionID] != nil
	stopping := c.stopping || ctx.Err() != nil
	c.mu.Unlock()
	if stopping {
		// The fleet opens the stream again on this device's next
		// connection (a restarting agent's, most likely).
		proto.WriteMsg(conn, &proto.StreamAccept{Code: proto.CodeGoingAway, Message: "the agent is stopping"})
		conn.CloseWrite()
		return
	}
	if len(h.Secret) == 0 || h.SessionID == "" || dup {
		proto.WriteMsg(conn, &proto.StreamAccept{Code: proto.CodeBadRequest, Message: "stream header needs a new session id and a resume secret"})
		conn.CloseWrite()
		return
	}
	if err := proto.WriteMsg(conn, &proto.StreamAccept{}); err != nil {
		conn.Close()
		return
	}
	s := &session{id: h.SessionID, secret: h.Secret, userHeld: h.UserHeld}
	var onDetach func()
	if s.userHeld {
		id := &h.Identity
		s.held = proto.HeldSession{SessionID: h.SessionID, Service: h.Service, User: id.User, Roles: id.Roles, Login: id.Login,
			Started: c.cfg.Now().UnixMilli(), Expires: id.Expires, NoPortForwarding: id.NoPortForwarding, NoFileCopy: id.NoFileCopy,
			KubeUser: id.KubeUser, KubeGroups: id.KubeGroups}
		onDetach = c.heldChange
	}
	s.conn = resume.New(resume.Config{
		Buffer: c.cfg.SessionBuffer, Hold: c.cfg.SessionHold, Budget: c.budget,
		LocalAddr: qc.LocalAddr(), RemoteAddr: qc.RemoteAddr(),
		OnDetach: onDetach,
		OnDone: func(err error) {
			c.mu.Lock()
			if c.sessions[s.id] == s {
				delete(c.sessions, s.id)
			}
			if why := s.endReason.Load(); s.userHeld && why != nil {
				c.rememberEndLocked(s, *why)
			}
			c.mu.Unlock()
			if s.userHeld {
				c.heldChange()
			}
			if err != nil {
				c.log.Info("session ended", "session", s.id, "err", err)
			}
		},
	})
	c.mu.Lock()
	stopping = c.stopping
	if !stopping {
		c.sessions[s.id] = s
	}
	c.mu.Unlock()
	select {
	case c.sessionAdded <- struct{}{}:
	default:
	}
	if stopping {
		s.conn.Abort(errors.New("tunnel: agent stopping"))
		conn.Close()
		return
	}
	if err := s.conn.Attach(conn, 0); err != nil {
		s.conn.Abort(err)
		return
	}
	s.started.Store(true)
	c.cfg.Handle(ctx, h, s.conn)
	if s.userHeld && s.fleetEnded.Load() {
		// The fleet ended it and cut the user's side: nobody will
		// acknowledge what is left, nor re-attach it.
		s.conn.Abort(errors.New("tunnel: the fleet ended the session"))
	}
}

// SessionEnded tells the tunnel that the fleet ended session id
// (proto.SessionEnd): a user-held session is dropped as soon as its
// service has told the user why and closed it, rather than held for a
// client that will not come back.
func (c *Client) SessionEnded(id, reason string) {
	c.mu.Lock()
	s := c.sessions[id]
	c.mu.Unlock()
	if s != nil {
		s.endReason.CompareAndSwap(nil, &reason)
		s.fleetEnded.Store(true)
		if s.userHeld {
			c.heldChange()
		}
	}
}

// reattachUserHeld re-attaches a user-held session to conn: the user's
// client asked the fleet to (h.Resume), showing the session's secret. It
// answers StreamAccept, then ResumeAccept with how many of the session's
// bytes the agent has, and replays from what the client has
// (h.Received). A session the agent does not hold (it ended, or the agent
// restarted since) or that is another user's is refused.
func (c *Client) reattachUserHeld(conn *quicconn.Conn, h *proto.StreamHeader) {
	refuse := func(code proto.ErrorCode, msg string) {
		c.log.Warn("session re-attach refused", "session", h.SessionID, "user", h.Identity.User, "reason", msg)
		proto.WriteMsg(conn, &proto.StreamAccept{Code: code, Message: msg})
		conn.CloseWrite()
	}
	c.mu.Lock()
	s := c.sessions[h.SessionID]
	c.mu.Unlock()
	if why, ok := c.endedHeld(s, h); ok {
		refuse(proto.CodeNotFound, "the session ended while its user was away: "+why)
		return
	}
	if s == nil || !s.userHeld || subtle.ConstantTimeCompare(s.secret, h.Secret) != 1 {
		refuse(proto.CodeNotFound, "the device's agent restarted, so the session could not be resumed (or the session had ended)")
		return
	}
	if id := &h.Identity; id.User != s.held.User || id.Login != s.held.Login || h.Service != s.held.Service {
		refuse(proto.CodeForbidden, "the session is another user's, login's or service's")
		return
	}
	if h.End != "" {
		// The fleet refused the user's resume (their access ended while
		// they were away): the session ends here too, now.
		proto.WriteMsg(conn, &proto.StreamAccept{})
		conn.CloseWrite()
		c.log.Info("the fleet ended a session its user could not resume", "session", s.id, "reason", h.End)
		c.SessionEnded(s.id, h.End)
		if c.cfg.OnMessage != nil {
			c.cfg.OnMessage(&proto.SessionEnd{SessionID: s.id, Message: h.End})
		}
		return
	}
	if !sameKube(&h.Identity, &s.held) {
		refuse(proto.CodeForbidden, "the session acts as another Kubernetes user or groups than the fleet allows now")
		return
	}
	s.attachMu.Lock()
	defer s.attachMu.Unlock()
	s.conn.Detach() // a transport the agent has not seen die yet
	if err := proto.WriteMsg(conn, &proto.StreamAccept{}); err != nil {
		conn.Close()
		return
	}
	if err := proto.WriteMsg(conn, &proto.ResumeAccept{Received: s.conn.Received()}); err != nil {
		conn.Close()
		return
	}
	if err := s.conn.Attach(conn, h.Received); err != nil {
		conn.Close()
		if !errors.Is(err, io.EOF) {
			s.conn.Abort(err)
		}
		c.log.Warn("session not re-attached", "session", s.id, "err", err)
		return
	}
	c.heldChange()
	c.log.Info("session re-attached by the user's client", "session", s.id)
}

// sameKube reports whether a re-attach's identity acts as the session
// did when it began (held): the same Kubernetes user and groups, in any
// order. The fleet chose them again for the re-attach; an access change
// meanwhile that makes it choose otherwise does not carry over into the
// session, whose requests act as it began.
func sameKube(id *proto.Identity, held *proto.HeldSession) bool {
	return id.KubeUser == held.KubeUser &&
		slices.Equal(slices.Sorted(slices.Values(id.KubeGroups)), slices.Sorted(slices.Values(held.KubeGroups)))
}

// Sessions returns the number of live sessions.
func (c *Client) Sessions() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.sessions)
}

// resumeAll re-attaches every live session to qc on new streams: a new
// connection, or the same one after it moved to a new path. hint, when not
// nil, is a link hurry that said how much of one session the fleet has.
func (c *Client) resumeAll(ctx context.Context, qc *quic.Conn, hint *proto.LinkHurry) {
	c.mu.Lock()
	list := make([]*session, 0, len(c.sessions))
	for _, s := range c.sessions {
		if !s.userHeld { // the user's client re-attaches those
			list = append(list, s)
		}
	}
	c.mu.Unlock()
	for _, s := range list {
		go func() {
			if err := c.resumeSession(ctx, qc, s, hint); err != nil {
				c.log.Warn("session not resumed", "session", s.id, "err", err)
			}
		}()
	}
}

func (c *Client) resumeSession(ctx context.Context, qc *quic.Conn, s *session, hint *proto.LinkHurry) error {
	c.mu.Lock()
	busy := s.resuming == qc
	s.resuming = qc
	c.mu.Unlock()
	if busy {
		// The other resume on this connection answers (or fails, and
		// retryDetached tries again). One on an older connection fails
		// with it.
		return errResuming
	}
	defer func() {
		c.mu.Lock()
		if s.resuming == qc {
			s.resuming = nil
		}
		c.mu.Unlock()
	}()
	s.conn.Detach()
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return err // the connection died too; the next one tries again
	}
	r := proto.NewReader(st)
	conn := quicconn.New(qc, st, r)
	req := &proto.Resume{SessionID: s.id, Secret: s.secret, Received: s.conn.Received()}
	if hint != nil && hint.Session == proto.SessionTag(s.secret) && s.conn.CanReplayFrom(hint.Received) {
		// The fleet said where it is: replay from there at once, a round
		// trip sooner than after its answer.
		req.Replaying, req.From = true, hint.Received
		if err := proto.WriteMsg(conn, req); err != nil {
			conn.Close()
			return err
		}
		tr := &answerFirst{Conn: conn, r: r, refused: func(err *proto.Error) {
			if err.Code != proto.CodeUnavailable {
				s.conn.Abort(fmt.Errorf("tunnel: the fleet ended the session: %w", err))
			}
		}}
		if err := s.conn.Attach(tr, hint.Received); err != nil {
			conn.Close()
			return err
		}
		c.log.Info("session resumed", "session", s.id, "replaying_from", hint.Received)
		return nil
	}
	if err := proto.WriteMsg(conn, req); err != nil {
		conn.Close()
		return err
	}
	st.SetReadDeadline(time.Now().Add(15 * time.Second))
	m, err := proto.ReadMsg(r, proto.MaxHeaderFrame)
	if err != nil {
		conn.Close()
		return err
	}
	st.SetReadDeadline(time.Time{})
	acc, ok := m.(*proto.ResumeAccept)
	if !ok {
		conn.Close()
		return fmt.Errorf("fleet answered resume with %s", m.Kind())
	}
	if acc.Code != proto.CodeOK {
		conn.Close()
		err := &proto.Error{Code: acc.Code, Message: acc.Message}
		if acc.Code == proto.CodeUnavailable {
			// The fleet could not tell whether it still holds the
			// session (a replica did not answer): keep it, and ask
			// again (retryDetached).
			return err
		}
		s.conn.Abort(fmt.Errorf("tunnel: the fleet ended the session: %w", err))
		return err
	}
	if err := s.conn.Attach(conn, acc.Received); err != nil {
		conn.Close()
		if !errors.Is(err, io.EOF) {
			s.conn.Abort(err)
		}
		return err
	}
	c.log.Info("session resumed", "session", s.id)
	return nil
}

// errResuming: a resume of the session is under way already.
var errResuming = errors.New("tunnel: the session is being resumed already")

// Retrying sessions left without a transport while the connection lives.
const (
	retryFirst = 500 * time.Millisecond
	retryMax   = 30 * time.Second
)

// retryDetached resumes on qc, each with a back-off, the sessions left
// without a transport while the connection lives: the fleet closed their
// stream but not the connection (the replica relaying a session lost its
// link to the replica holding it), or could not say whether it holds
// them. A session being resumed already is left alone.
func (c *Client) retryDetached(ctx context.Context, qc *quic.Conn) {
	now := time.Now()
	var due []*session
	c.mu.Lock()
	for _, s := range c.sessions {
		switch {
		case s.userHeld || s.resuming != nil:
		case s.conn.Attached():
			s.detachedAt, s.retries = time.Time{}, 0
		case s.detachedAt.IsZero():
			s.detachedAt, s.retryAt = now, now.Add(retryFirst)
		case !now.Before(s.retryAt):
			s.retries++
			s.retryAt = now.Add(min(retryFirst<<min(s.retries, 6), retryMax))
			due = append(due, s)
		}
	}
	c.mu.Unlock()
	for _, s := range due {
		c.log.Info("session has no stream on a live connection; resuming it", "session", s.id, "try", s.retries)
		go func() {
			if err := c.resumeSession(ctx, qc, s, nil); err != nil && !errors.Is(err, errResuming) {
				c.log.Warn("session not resumed", "session", s.id, "err", err)
			}
		}()
	}
}

// answerFirst is a resume stream on which the agent replays before the
// fleet's answer arrives: reads return the session's frames only after the
// answer, and a refusal ends the session.
type answerFirst struct {
	*quicconn.Conn
	r       *bufio.Reader
	refused func(*proto.Error)
	read    bool // the answer was read (only the resume read loop reads)
}

func (a *answerFirst) Read(p []byte) (int, error) {
	if !a.read {
		m, err := proto.ReadMsg(a.r, proto.MaxHeaderFrame)
		if err != nil {
			return 0, err
		}
		acc, ok := m.(*proto.ResumeAccept)
		if !ok {
			return 0, fmt.Errorf("%w: fleet answered resume with %s", resume.ErrProtocol, m.Kind())
		}
		if acc.Code != proto.CodeOK {
			err := &proto.Error{Code: acc.Code, Message: acc.Message}
			a.refused(err)
			return 0, err
		}
		a.read = true
	}
	return a.r.Read(p)
}

// abortSessions ends every session (the agent is stopping).
func (c *Client) abortSessions() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopping = true
	for _, s := range c.sessions {
		s.conn.Abort(errors.New("tunnel: agent stopping"))
	}
}

// ErrDown is returned by Call and Send while the tunnel is down.
var ErrDown = errors.New("tunnel: the tunnel is down")

// Call sends m on the control stream and waits for the fleet's answer of
// kind want (one call per answer kind may be outstanding). A *proto.Error
// answer is returned as the error.
func (c *Client) Call(ctx context.Context, m proto.Message, want proto.Kind) (proto.Message, error) {
	c.mu.Lock()
	ctrl := c.ctrl
	c.mu.Unlock()
	if ctrl == nil {
		return nil, ErrDown
	}
	return ctrl.call(ctx, m, want)
}

// Send sends m on the control stream without waiting for an answer.
func (c *Client) Send(m proto.Message) error {
	c.mu.Lock()
	ctrl := c.ctrl
	c.mu.Unlock()
	if ctrl == nil {
		return ErrDown
	}
	return ctrl.send(m)
}

// Dial opens a stream to a fleet service (proto.AgentStream) on the
// current connection. Unlike brokered sessions it is not resumable: it
// ends with the connection, and its user starts over (OTA downloads
// resume with HTTP Range requests).
func (c *Client) Dial(ctx context.Context, service string) (net.Conn, error) {
	c.mu.Lock()
	ctrl := c.ctrl
	c.mu.Unlock()
	if ctrl == nil {
		return nil, ErrDown
	}
	st, err := ctrl.qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("tunnel: open a stream to %s: %w", service, err)
	}
	conn := quicconn.New(ctrl.qc, st, nil)
	if err := proto.WriteMsg(conn, &proto.AgentStream{Service: service}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("tunnel: open a stream to %s: %w", service, err)
	}
	return conn, nil
}

// Renew sends a renewal request on the control stream and waits for the
// fleet's answer.
func (c *Client) Renew(ctx context.Context, req *proto.RenewRequest) (*proto.RenewResponse, error) {
	m, err := c.Call(ctx, req, proto.KindRenewResponse)
	if err != nil {
		return nil, fmt.Errorf("tunnel: renew: %w", err)
	}
	resp := m.(*proto.RenewResponse)
	if resp.Err != nil {
		return nil, fmt.Errorf("tunnel: renew: %w", resp.Err)
	}
	return resp, nil
}

// control is one connection's control stream.
type control struct {
	qc *quic.Conn
	st *quic.Stream
	r  proto.ByteReader

	wmu sync.Mutex // serialises writes

	mu      sync.Mutex // guards waiters and dead
	waiters map[proto.Kind]chan proto.Message
	dead    bool

	onMessage func(proto.Message)
}

func (c *control) send(m proto.Message) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return proto.WriteMsg(c.st, m)
}

// call sends m and waits for a reply of kind want. One call per kind may be
// outstanding.
func (c *control) call(ctx context.Context, m proto.Message, want proto.Kind) (proto.Message, error) {
	ch := make(chan proto.Message, 1)
	c.mu.Lock()
	if c.dead {
		c.mu.Unlock()
		return nil, errors.New("tunnel is down")
	}
	if _, busy := c.waiters[want]; busy {
		c.mu.Unlock()
		return nil, fmt.Errorf("a %s is already pending", want)
	}
	c.waiters[want] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if c.waiters[want] == ch {
			delete(c.waiters, want)
		}
		c.mu.Unlock()
	}()
	if err := c.send(m); err != nil {
		return nil, err
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case r, ok := <-ch:
		if !ok {
			return nil, errors.New("tunnel went down")
		}
		return r, nil
	}
}

func (c *control) readLoop() error {
	for {
		m, err := proto.ReadMsg(c.r, proto.MaxControlFrame)
		if err != nil {
			return err
		}
		if e, ok := m.(*proto.Error); ok {
			return fmt.Errorf("fleet: %w", e)
		}
		c.mu.Lock()
		ch := c.waiters[m.Kind()]
		delete(c.waiters, m.Kind())
		c.mu.Unlock()
		switch {
		case ch != nil:
			ch <- m
		case m.Kind() == proto.KindHeartbeatAck:
			// Acks of heartbeats need no action.
		case c.onMessage != nil:
			c.onMessage(m)
		}
	}
}

// fail wakes every waiter when the connection ends.
func (c *control) fail() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dead = true
	for k, ch := range c.waiters {
		close(ch)
		delete(c.waiters, k)
	}
}
