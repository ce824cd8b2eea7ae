package linksim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// tcpWindow bounds the bytes in flight per connection and direction,
	// as a TCP receive window does (Linux autotuning tops out at a few MB).
	tcpWindow = 4 << 20
	// tcpChunk is the largest read, and so the largest unit the model
	// schedules.
	tcpChunk = 16 << 10
	// minRTO is Linux's minimum retransmission timeout, added to the round
	// trip to get the RTO of an established connection.
	minRTO = 200 * time.Millisecond
	// synRTO is the initial retransmission timeout of a SYN (RFC 6298).
	synRTO = time.Second
	// maxRTO caps the exponential back-off (Linux TCP_RTO_MAX).
	maxRTO = 120 * time.Second
	// dialTimeout bounds the upstream connect.
	dialTimeout = 10 * time.Second
)

// TCPRelay forwards TCP connections to one upstream address through a Link.
// The link acts on the byte stream: see the package documentation for the
// model.
type TCPRelay struct {
	link     *Link
	log      *slog.Logger
	ln       *net.TCPListener
	upstream string
	counts   [2]dirCounters
	resets   atomic.Uint64

	mu     sync.Mutex // guards conns, closed
	conns  map[*tcpConn]struct{}
	closed bool

	ctx       context.Context // cancelled by Close
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// ListenTCP starts a TCP relay on listen (default "127.0.0.1:0") that
// forwards each accepted connection to upstream through the link. Each
// connection runs a reader and a scheduler per direction; Close (or the
// link's Close) stops them all.
func (l *Link) ListenTCP(listen, upstream string) (*TCPRelay, error) {
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	la, err := net.ResolveTCPAddr("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("linksim: tcp listen %q: %w", listen, err)
	}
	if _, err := net.ResolveTCPAddr("tcp", upstream); err != nil {
		return nil, fmt.Errorf("linksim: tcp upstream %q: %w", upstream, err)
	}
	ln, err := net.ListenTCP("tcp", la)
	if err != nil {
		return nil, fmt.Errorf("linksim: tcp listen: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &TCPRelay{
		link:     l,
		log:      l.log.With("relay", "tcp", "listen", ln.Addr().String()),
		ln:       ln,
		upstream: upstream,
		conns:    make(map[*tcpConn]struct{}),
		ctx:      ctx,
		cancel:   cancel,
	}
	if err := l.attach(r); err != nil {
		cancel()
		ln.Close()
		return nil, err
	}
	r.wg.Add(1)
	go r.accept()
	return r, nil
}

// Addr returns the address clients connect to.
func (r *TCPRelay) Addr() netip.AddrPort { return r.ln.Addr().(*net.TCPAddr).AddrPort() }

// Stats returns a snapshot of this relay's counters.
func (r *TCPRelay) Stats() Stats {
	r.mu.Lock()
	n := len(r.conns)
	r.mu.Unlock()
	return Stats{Up: r.counts[Up].snapshot(), Down: r.counts[Down].snapshot(), Conns: n, Resets: r.resets.Load()}
}

// Close stops accepting, closes every connection and waits for the relay's
// goroutines. It is idempotent.
func (r *TCPRelay) Close() error {
	var err error
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
		r.cancel()
		err = r.ln.Close()
		r.abortAll(false)
		r.wg.Wait()
	})
	return err
}

// rebind resets every connection: the server would answer packets from the
// new address with a reset.
func (r *TCPRelay) rebind() { r.abortAll(true) }

func (r *TCPRelay) outageStarted() {
	if r.link.cfg.ResetOnBlackout {
		r.abortAll(true)
	}
}

func (r *TCPRelay) abortAll(reset bool) {
	r.mu.Lock()
	cs := make([]*tcpConn, 0, len(r.conns))
	for c := range r.conns {
		cs = append(cs, c)
	}
	r.mu.Unlock()
	for _, c := range cs {
		c.abort(reset)
	}
}

func (r *TCPRelay) accept() {
	defer r.wg.Done()
	for {
		conn, err := r.ln.AcceptTCP()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				r.log.Error("accept", "err", err)
			}
			return
		}
		c := r.newConn(conn)
		r.mu.Lock()
		if r.closed {
			r.mu.Unlock()
			conn.Close()
			return
		}
		r.conns[c] = struct{}{}
		r.wg.Add(1)
		r.mu.Unlock()
		go c.serve()
	}
}

func (r *TCPRelay) newConn(client *net.TCPConn) *tcpConn {
	l := r.link
	c := &tcpConn{r: r, client: client, done: make(chan struct{})}
	for d := range c.dirs {
		t := &tcpDir{c: c, d: Dir(d), space: make(chan struct{}, 1), timer: time.NewTimer(time.Hour)}
		t.timer.Stop()
		t.line = newLine(l.now, &r.counts[d], nil)
		ch := l.ch[d]
		t.gate = stallGate{
			link:  l,
			rto:   func() time.Duration { return l.rtt() + minRTO },
			delay: func() time.Duration { return ch.impairment().Delay },
		}
		c.dirs[d] = t
	}
	return c
}

// tcpConn is one relayed connection.
type tcpConn struct {
	r      *TCPRelay
	client *net.TCPConn
	done   chan struct{} // closed by abort or finish

	mu     sync.Mutex // guards server, ended
	server *net.TCPConn
	ended  bool

	finished atomic.Int32 // directions whose EOF was delivered
	dirs     [2]*tcpDir
}

// tcpDir is one direction of a connection.
type tcpDir struct {
	c        *tcpConn
	d        Dir
	line     *line
	gate     stallGate
	inflight atomic.Int64
	space    chan struct{} // cap 1: inflight went down
	timer    *time.Timer   // reader's, for bandwidth waits
}

// serve models the handshake, then starts the four goroutines of the
// connection. The client's connect has already completed locally; the
// relay lets the client's bytes in one round trip later (when its SYN-ACK
// would have arrived) and connects upstream half a round trip after that
// (when the server would accept). A SYN sent while the link is out is
// retried with TCP's back-off from a 1 s timeout.
func (c *tcpConn) serve() {
	r := c.r
	defer r.wg.Done()
	l := r.link
	syn := stallGate{link: l, rto: func() time.Duration { return synRTO }}
	if !c.waitGate(&syn) {
		return
	}
	p := l.Profile()
	start := l.now()
	if !c.sleepUntil(start.Add(p.Up.Delay + p.Down.Delay)) {
		return
	}
	r.wg.Add(1)
	go c.dirs[Up].read(c.client)
	if !c.sleepUntil(start.Add(p.Up.Delay + p.Down.Delay + p.Up.Delay)) {
		return
	}
	d := net.Dialer{Timeout: dialTimeout}
	if ip := l.currentBindIP(); ip.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(ip, 0))
	}
	conn, err := d.DialContext(r.ctx, "tcp", r.upstream)
	if err != nil {
		r.log.Debug("dial upstream", "err", err)
		c.abort(true)
		return
	}
	server := conn.(*net.TCPConn)
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		server.Close()
		return
	}
	c.server = server
	c.mu.Unlock()
	r.wg.Add(3)
	go func() {
		defer r.wg.Done()
		c.dirs[Up].line.run(c.done, c.dirs[Up].gate.check, c.dirs[Up].deliverTo(server))
	}()
	go c.dirs[Down].read(server)
	go func() {
		defer r.wg.Done()
		c.dirs[Down].line.run(c.done, c.dirs[Down].gate.check, c.dirs[Down].deliverTo(c.client))
	}()
}

// waitGate waits until g opens. With ResetOnBlackout an outage resets the
// connection instead.
func (c *tcpConn) waitGate(g *stallGate) bool {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		now := c.r.link.now()
		open, retry, changed := g.check(now)
		if open {
			return true
		}
		if c.r.link.cfg.ResetOnBlackout {
			c.abort(true)
			return false
		}
		var tc <-chan time.Time
		if !retry.IsZero() {
			timer.Reset(max(retry.Sub(now), time.Microsecond))
			tc = timer.C
		}
		select {
		case <-tc:
		case <-changed:
		case <-c.done:
			return false
		}
		timer.Stop()
	}
}

// sleepUntil waits until t on the link's clock, or the connection ends.
func (c *tcpConn) sleepUntil(t time.Time) bool {
	d := t.Sub(c.r.link.now())
	if d <= 0 {
		select {
		case <-c.done:
			return false
		default:
			return true
		}
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-c.done:
		return false
	}
}

// abort ends the connection: both sockets closed, with a reset (RST) if
// reset is true.
func (c *tcpConn) abort(reset bool) {
	c.mu.Lock()
	if c.ended {
		c.mu.Unlock()
		return
	}
	c.ended = true
	server := c.server
	c.mu.Unlock()
	if reset {
		c.r.resets.Add(1)
		c.client.SetLinger(0)
		if server != nil {
			server.SetLinger(0)
		}
	}
	c.client.Close()
	if server != nil {
		server.Close()
	}
	close(c.done)
	for _, t := range c.dirs {
		t.line.stop()
	}
	c.r.mu.Lock()
	delete(c.r.conns, c)
	c.r.mu.Unlock()
}

// finish is called when one direction has delivered its EOF; after both,
// the connection is closed.
func (c *tcpConn) finish() {
	if c.finished.Add(1) == 2 {
		c.abort(false)
	}
}

// read reads the stream from src into the direction's line, one chunk at a
// time, waiting for window and queue room.
func (t *tcpDir) read(src *net.TCPConn) {
	defer t.c.r.wg.Done()
	defer t.timer.Stop()
	buf := make([]byte, tcpChunk)
	for {
		imp := t.c.r.link.ch[t.d].impairment()
		n := tcpChunk
		if imp.Bandwidth > 0 {
			n = min(n, max(imp.mss(), imp.queueBytes()/2))
		}
		n, err := src.Read(buf[:n])
		if n > 0 && !t.admit(buf[:n]) {
			return
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				at := t.c.r.link.now().Add(imp.Delay)
				t.line.push(&item{at: at, eof: true})
				return
			}
			t.c.abort(false)
			return
		}
	}
}

// admit waits for room and queues p. It returns false if the connection
// ended.
func (t *tcpDir) admit(p []byte) bool {
	l := t.c.r.link
	for t.inflight.Load() > 0 && t.inflight.Load()+int64(len(p)) > tcpWindow {
		select {
		case <-t.space:
		case <-t.c.done:
			return false
		}
	}
	rtt := l.rtt()
	for {
		at, wait, segs, lost := l.ch[t.d].admitStream(l.now(), len(p), rtt)
		if wait > 0 {
			t.timer.Reset(wait)
			select {
			case <-t.timer.C:
				continue
			case <-t.c.done:
				return false
			}
		}
		counts := &t.c.r.counts[t.d]
		counts.received(len(p), segs)
		counts.retrans.Add(uint64(lost))
		t.inflight.Add(int64(len(p)))
		return t.line.push(&item{at: at, data: append([]byte(nil), p...), segs: segs})
	}
}

// deliverTo returns the line's deliver function for writing to dst.
func (t *tcpDir) deliverTo(dst *net.TCPConn) func(*item) {
	return func(it *item) {
		if it.eof {
			if err := dst.CloseWrite(); err != nil {
				t.c.abort(false)
				return
			}
			t.c.finish()
			return
		}
		_, err := dst.Write(it.data)
		t.inflight.Add(-int64(len(it.data)))
		select {
		case t.space <- struct{}{}:
		default:
		}
		if err != nil {
			t.c.abort(false)
			return
		}
		t.c.r.counts[t.d].forwarded(len(it.data), it.segs)
	}
}

// stallGate holds a TCP direction while the link is out and models the
// sender's retransmission back-off: when the link returns, data flows again
// only at the sender's next retransmission (first after rto, then doubling,
// counted from when the stall began), plus delay for the retransmitted
// segment to cross.
type stallGate struct {
	link     *Link
	rto      func() time.Duration
	delay    func() time.Duration // nil: none
	stall    time.Time            // when the first held item came due; zero: not stalled
	resumeAt time.Time            // when held items flow again; zero: not yet known
}

func (g *stallGate) check(now time.Time) (open bool, retry time.Time, changed <-chan struct{}) {
	changed = g.link.changed() // before reading the state, so no change is missed
	out, until := g.link.outage(now)
	if out {
		if g.stall.IsZero() {
			g.stall = now
		}
		g.resumeAt = time.Time{}
		return false, until, changed
	}
	if g.stall.IsZero() {
		return true, time.Time{}, nil
	}
	if g.resumeAt.IsZero() {
		var delay time.Duration
		if g.delay != nil {
			delay = g.delay()
		}
		g.resumeAt = retransmitAt(g.stall, now, g.rto()).Add(delay)
	}
	if now.Before(g.resumeAt) {
		return false, g.resumeAt, changed
	}
	g.stall, g.resumeAt = time.Time{}, time.Time{}
	return true, time.Time{}, nil
}

// retransmitAt returns the first retransmission at or after back of a
// sender that stalled at stall: stall+rto, then doubling gaps up to maxRTO.
func retransmitAt(stall, back time.Time, rto time.Duration) time.Time {
	if rto <= 0 {
		rto = minRTO
	}
	t := stall.Add(rto)
	step := rto
	for t.Before(back) {
		step = min(step*2, maxRTO)
		t = t.Add(step)
	}
	return t
}
