package linksim

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	maxDatagram = 64 << 10
	// retiredLinger is how long a given-up mapping's socket stays open so
	// the server's late packets to it are counted as nat-expired drops
	// rather than drawing ICMP errors; at most maxRetired are kept.
	retiredLinger = 2 * time.Minute
	maxRetired    = 256
	// janitorEvery is how often expired mappings are retired and old
	// retired sockets closed.
	janitorEvery = time.Second
	// udpBuffer is the socket buffer size the relay asks for.
	udpBuffer = 4 << 20
)

// UDPRelay forwards UDP datagrams between clients and one upstream address
// through a Link, with a NAT-like mapping per client address: each client
// gets its own upstream socket, whose address is what the server sees.
type UDPRelay struct {
	link     *Link
	log      *slog.Logger
	ln       *net.UDPConn
	upstream netip.AddrPort
	counts   [2]dirCounters
	lines    [2]*line

	mu       sync.Mutex // guards mappings, retired, closed
	mappings map[netip.AddrPort]*mapping
	retired  []*mapping
	closed   bool

	done      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// mapping is one NAT binding: a client address and the upstream socket that
// stands for it.
type mapping struct {
	client    netip.AddrPort
	conn      *net.UDPConn
	public    netip.AddrPort
	lastOut   atomic.Int64 // UnixNano of the last client packet sent through it
	retired   atomic.Bool
	retiredAt time.Time // guarded by UDPRelay.mu
}

// ListenUDP starts a UDP relay on listen (default "127.0.0.1:0") that
// forwards to upstream through the link. It starts a reader and one
// scheduler per direction, a janitor, and a reader per NAT mapping; Close
// (or the link's Close) stops them all.
func (l *Link) ListenUDP(listen, upstream string) (*UDPRelay, error) {
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	la, err := net.ResolveUDPAddr("udp", listen)
	if err != nil {
		return nil, fmt.Errorf("linksim: udp listen %q: %w", listen, err)
	}
	ua, err := net.ResolveUDPAddr("udp", upstream)
	if err != nil {
		return nil, fmt.Errorf("linksim: udp upstream %q: %w", upstream, err)
	}
	ln, err := net.ListenUDP("udp", la)
	if err != nil {
		return nil, fmt.Errorf("linksim: udp listen: %w", err)
	}
	setBuffers(ln)
	r := &UDPRelay{
		link:     l,
		log:      l.log.With("relay", "udp", "listen", ln.LocalAddr().String()),
		ln:       ln,
		upstream: unmap(ua.AddrPort()),
		mappings: make(map[netip.AddrPort]*mapping),
		done:     make(chan struct{}),
	}
	for d := range r.lines {
		ch := l.ch[d]
		r.lines[d] = newLine(l.now, &r.counts[d], func() bool { return ch.impairment().Reorder })
	}
	if err := l.attach(r); err != nil {
		ln.Close()
		return nil, err
	}
	r.wg.Add(4)
	go r.readClients()
	go func() { defer r.wg.Done(); r.lines[Up].run(r.done, nil, r.sendUp) }()
	go func() { defer r.wg.Done(); r.lines[Down].run(r.done, nil, r.sendDown) }()
	go r.janitor()
	return r, nil
}

// Addr returns the address clients send to.
func (r *UDPRelay) Addr() netip.AddrPort { return r.ln.LocalAddr().(*net.UDPAddr).AddrPort() }

// Upstream returns the address the relay forwards to.
func (r *UDPRelay) Upstream() netip.AddrPort { return r.upstream }

// PublicAddr returns the address the server currently sees for client (the
// upstream socket of its mapping), if it has one.
func (r *UDPRelay) PublicAddr(client netip.AddrPort) (netip.AddrPort, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if m := r.mappings[client]; m != nil {
		return m.public, true
	}
	return netip.AddrPort{}, false
}

// Stats returns a snapshot of this relay's counters.
func (r *UDPRelay) Stats() Stats {
	r.mu.Lock()
	n := len(r.mappings)
	r.mu.Unlock()
	return Stats{Up: r.counts[Up].snapshot(), Down: r.counts[Down].snapshot(), Mappings: n}
}

// Close stops the relay and closes its sockets. It is idempotent.
func (r *UDPRelay) Close() error {
	var err error
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closed = true
		conns := make([]*net.UDPConn, 0, len(r.mappings)+len(r.retired))
		for _, m := range r.mappings {
			conns = append(conns, m.conn)
		}
		for _, m := range r.retired {
			conns = append(conns, m.conn)
		}
		r.mappings = map[netip.AddrPort]*mapping{}
		r.retired = nil
		r.mu.Unlock()
		close(r.done)
		err = r.ln.Close()
		for _, c := range conns {
			c.Close()
		}
		r.wg.Wait()
	})
	return err
}

func wireSize(payload int, a netip.Addr) int {
	if a.Is4() || a.Is4In6() {
		return payload + 28
	}
	return payload + 48
}

// readClients reads datagrams from clients and admits them to the up line.
func (r *UDPRelay) readClients() {
	defer r.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := r.ln.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				r.log.Error("read from clients", "err", err)
			}
			return
		}
		r.admit(Up, buf[:n], from)
	}
}

// admit runs a datagram that arrived now through the channel of direction d
// into its line. to is the client the datagram belongs to.
func (r *UDPRelay) admit(d Dir, p []byte, to netip.AddrPort) {
	c := &r.counts[d]
	c.received(len(p), 1)
	now := r.link.now()
	if out, _ := r.link.outage(now); out {
		c.drop(ReasonBlackout)
		return
	}
	at, reason, ok := r.link.ch[d].admitPacket(now, wireSize(len(p), to.Addr()))
	if !ok {
		c.drop(reason)
		return
	}
	if !r.lines[d].push(&item{at: at, data: append([]byte(nil), p...), to: to}) {
		c.drop(ReasonError)
	}
}

// sendUp releases a client datagram to the server through the client's
// mapping, making one if needed.
func (r *UDPRelay) sendUp(it *item) {
	c := &r.counts[Up]
	now := r.link.now()
	if out, _ := r.link.outage(now); out {
		c.drop(ReasonBlackout)
		return
	}
	m, err := r.mappingFor(it.to, now)
	if err != nil {
		r.log.Error("nat mapping", "client", it.to, "err", err)
		c.drop(ReasonError)
		return
	}
	if _, err := m.conn.Write(it.data); err != nil {
		r.log.Debug("send upstream", "err", err)
		c.drop(ReasonError)
		return
	}
	c.forwarded(len(it.data), 1)
}

// sendDown releases a server datagram to its client.
func (r *UDPRelay) sendDown(it *item) {
	c := &r.counts[Down]
	if out, _ := r.link.outage(r.link.now()); out {
		c.drop(ReasonBlackout)
		return
	}
	if _, err := r.ln.WriteToUDPAddrPort(it.data, it.to); err != nil {
		r.log.Debug("send to client", "err", err)
		c.drop(ReasonError)
		return
	}
	c.forwarded(len(it.data), 1)
}

func (r *UDPRelay) expired(m *mapping, now time.Time) bool {
	t := r.link.cfg.NATTimeout
	return t > 0 && now.Sub(time.Unix(0, m.lastOut.Load())) >= t
}

// mappingFor returns the client's live mapping, replacing an expired one,
// and marks it used at now.
func (r *UDPRelay) mappingFor(client netip.AddrPort, now time.Time) (*mapping, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, net.ErrClosed
	}
	m := r.mappings[client]
	if m != nil && r.expired(m, now) {
		r.retireLocked(m, now)
		m = nil
	}
	if m == nil {
		var laddr *net.UDPAddr
		if ip := r.link.currentBindIP(); ip.IsValid() {
			laddr = net.UDPAddrFromAddrPort(netip.AddrPortFrom(ip, 0))
		}
		conn, err := net.DialUDP("udp", laddr, net.UDPAddrFromAddrPort(r.upstream))
		if err != nil {
			return nil, err
		}
		setBuffers(conn)
		m = &mapping{client: client, conn: conn, public: conn.LocalAddr().(*net.UDPAddr).AddrPort()}
		r.mappings[client] = m
		r.wg.Add(1)
		go r.readServer(m)
		r.log.Debug("nat mapping", "client", client, "public", m.public)
	}
	m.lastOut.Store(now.UnixNano())
	return m, nil
}

// retireLocked gives up a mapping; its socket lingers to count late packets.
func (r *UDPRelay) retireLocked(m *mapping, now time.Time) {
	if m.retired.Swap(true) {
		return
	}
	if r.mappings[m.client] == m {
		delete(r.mappings, m.client)
	}
	m.retiredAt = now
	r.retired = append(r.retired, m)
	if len(r.retired) > maxRetired {
		r.retired[0].conn.Close()
		r.retired = r.retired[1:]
	}
	r.log.Debug("nat mapping retired", "client", m.client, "public", m.public)
}

// readServer reads the server's datagrams to one mapping.
func (r *UDPRelay) readServer(m *mapping) {
	defer r.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, err := m.conn.Read(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				// ICMP errors (server not listening) surface here on a
				// connected socket; keep reading.
				select {
				case <-r.done:
					return
				default:
				}
				if isRefused(err) {
					continue
				}
				r.log.Debug("read from server", "public", m.public, "err", err)
			}
			return
		}
		now := r.link.now()
		if !m.retired.Load() && r.expired(m, now) {
			r.mu.Lock()
			r.retireLocked(m, now)
			r.mu.Unlock()
		}
		if m.retired.Load() {
			r.counts[Down].received(n, 1)
			r.counts[Down].drop(ReasonNATExpired)
			continue
		}
		r.admit(Down, buf[:n], m.client)
	}
}

// rebind gives up every mapping; clients get new ones on their next packet.
func (r *UDPRelay) rebind() {
	now := r.link.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.mappings {
		r.retireLocked(m, now)
	}
}

func (r *UDPRelay) outageStarted() {}

// janitor retires expired mappings and closes retired sockets after their
// linger.
func (r *UDPRelay) janitor() {
	defer r.wg.Done()
	t := time.NewTicker(janitorEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-r.done:
			return
		}
		now := r.link.now()
		r.mu.Lock()
		for _, m := range r.mappings {
			if r.expired(m, now) {
				r.retireLocked(m, now)
			}
		}
		keep := r.retired[:0]
		for _, m := range r.retired {
			if now.Sub(m.retiredAt) >= retiredLinger {
				m.conn.Close()
				continue
			}
			keep = append(keep, m)
		}
		clear(r.retired[len(keep):])
		r.retired = keep
		r.mu.Unlock()
	}
}

func isRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// setBuffers asks for large socket buffers, as quic-go does, so bursts are
// not dropped by the kernel before the model sees them. The kernel caps
// them at net.core.rmem_max/wmem_max.
func setBuffers(c *net.UDPConn) {
	c.SetReadBuffer(udpBuffer)
	c.SetWriteBuffer(udpBuffer)
}

func unmap(a netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(a.Addr().Unmap(), a.Port()) }
