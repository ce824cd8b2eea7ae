package tunnel

import (
	"context"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
)

// Paths.
//
// After a blackout, QUIC on each side waits out its retransmission
// back-off before it sends again, and the back-off doubles through the
// outage: seconds after a long one. What it has in flight counts against its
// congestion window until then, so nothing new goes either. Moving the
// connection to a new path (another UDP socket of the agent, which the fleet
// sees as a new address) ends that wait on both sides: quic-go counts every
// packet in flight on the old path as lost and sends it again at once with a
// fresh congestion window (RFC 9000 section 9.4), the agent when it
// switches, the fleet as soon as a packet arrives on the path.
//
// A path must be validated before the agent may switch to it (a
// PATH_CHALLENGE and its answer, one round trip, about 4 kB with padding),
// and during an outage no round trip is possible. So while sessions run,
// the agent keeps one spare path validated ahead of need; an idle device
// never pays for one.
//
// A socket a connection added a path on stays open for the connection's
// life: quic-go registers the connection with each path's transport, and
// closing one closes the connection. So the sockets are a pool of at most
// maxSockets, and once it is full a spare path goes on the socket that
// has gone longest unused (quic-go lets a connection add a new path on a
// transport it used before). A connection can move after every outage of
// its life, not a fixed number of times, and an outage never costs a
// redial for want of a socket. The fleet's quic-go drops the other paths
// it knows whenever the connection moves, so the reused socket's address
// is a new path to it (and a NAT gives the socket a fresh mapping after an
// outage anyway): it validates it and moves as for a new one. (The agent's
// quic-go matches a PATH_RESPONSE to its challenge whatever path it came
// on, which is what lets a path added again on a used transport validate.)

// probeTimeout bounds the validation of a spare path.
const probeTimeout = 15 * time.Second

// maxSockets bounds the sockets a connection adds paths on, besides the
// one it was dialled on: the active path's, the spare's, and two that
// rest before they are reused.
const maxSockets = 4

// linkPaths are one connection's UDP paths to the fleet. The datagrams
// outside QUIC that arrive on any of them go to onDatagram.
type linkPaths struct {
	ctx        context.Context // the connection's: readers stop with it
	qc         *quic.Conn
	fleet      net.Addr
	listen     func() (net.PacketConn, error)
	log        *slog.Logger
	onDatagram func(b []byte, from net.Addr)
	wg         sync.WaitGroup // readers and probes

	mu      sync.Mutex // guards the fields below
	active  *quic.Transport
	spare   *path     // being validated, or ready
	current *path     // the active path, when it is not the one dialled on
	sockets []*socket // every socket added; closed with the connection
	closed  bool
}

// socket is one of the sockets the agent added paths on.
type socket struct {
	udp  net.PacketConn
	tr   *quic.Transport
	used time.Time // when a path on it was last abandoned or added
}

// path is a path the agent added to the connection, on one of its
// sockets.
type path struct {
	*socket
	qp    *quic.Path
	ready bool // validated: the agent may switch to it
}

func newLinkPaths(ctx context.Context, qc *quic.Conn, dialled *quic.Transport, fleet net.Addr,
	listen func() (net.PacketConn, error), log *slog.Logger, onDatagram func([]byte, net.Addr)) *linkPaths {
	return &linkPaths{ctx: ctx, qc: qc, fleet: fleet, listen: listen, log: log, onDatagram: onDatagram, active: dialled}
}

// start reads the datagrams that arrive on the path dialled on.
func (p *linkPaths) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.read(p.active)
}

// read hands tr's datagrams outside QUIC to onDatagram until tr closes or
// the connection ends.
func (p *linkPaths) read(tr *quic.Transport) {
	p.wg.Go(func() {
		buf := make([]byte, 64)
		for {
			n, from, err := tr.ReadNonQUICPacket(p.ctx, buf)
			if err != nil {
				return
			}
			p.onDatagram(buf[:n], from)
		}
	})
}

// writeTo sends b to the fleet from the active path's socket, where the
// fleet expects the device.
func (p *linkPaths) writeTo(b []byte) {
	p.mu.Lock()
	tr := p.active
	p.mu.Unlock()
	tr.WriteTo(b, p.fleet)
}

// prepare starts validating a spare path, unless one is ready or on its way.
func (p *linkPaths) prepare() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.spare != nil {
		return
	}
	so, fresh := p.socketFor()
	if so == nil {
		return
	}
	qp, err := p.qc.AddPath(so.tr)
	if err != nil {
		if fresh {
			so.tr.Close()
			so.udp.Close()
		}
		p.log.Debug("spare path: add", "err", err)
		return
	}
	if fresh {
		p.sockets = append(p.sockets, so)
		p.read(so.tr)
	}
	so.used = time.Now()
	s := &path{socket: so, qp: qp}
	p.spare = s
	p.wg.Go(func() {
		ctx, cancel := context.WithTimeout(p.ctx, probeTimeout)
		err := qp.Probe(ctx)
		cancel()
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.spare != s {
			return // closed meanwhile
		}
		if err != nil {
			p.log.Debug("spare path not validated", "err", err)
			p.abandon(s)
			p.spare = nil
			return
		}
		s.ready = true
	})
}

// socketFor returns the socket for a new spare path: a new one while the
// pool has room, else the one that has gone longest unused (never the
// active path's). fresh says it is new, not yet in the pool. p.mu is held.
func (p *linkPaths) socketFor() (so *socket, fresh bool) {
	if len(p.sockets) < maxSockets {
		udp, err := p.listen()
		if err != nil {
			p.log.Debug("spare path: open socket", "err", err)
			return nil, false
		}
		return &socket{udp: udp, tr: &quic.Transport{Conn: udp}}, true
	}
	for _, c := range p.sockets {
		if p.current != nil && c == p.current.socket {
			continue
		}
		if so == nil || c.used.Before(so.used) {
			so = c
		}
	}
	return so, false
}

// abandon closes s's path; its socket stays open, in the pool (see above).
// p.mu is held.
func (p *linkPaths) abandon(s *path) {
	s.qp.Close()
	s.used = time.Now()
}

// move switches the connection to the spare path, if one is ready and the
// connection is open; else it says why not.
func (p *linkPaths) move() (ok bool, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.spare
	switch {
	case p.closed:
		return false, "the connection is closing"
	case s == nil || !s.ready:
		return false, "no spare path is ready"
	}
	if err := s.qp.Switch(); err != nil {
		p.log.Debug("switch to the spare path", "err", err)
		p.spare = nil
		p.abandon(s)
		return false, "the spare path failed"
	}
	if p.current != nil {
		p.abandon(p.current)
	}
	p.current, p.spare = s, nil
	p.active = s.tr
	return true, ""
}

// close closes every socket but the one dialled on, and waits for their
// readers. The connection must be closed first.
func (p *linkPaths) close() {
	p.mu.Lock()
	p.closed = true
	for _, s := range []*path{p.spare, p.current} {
		if s != nil {
			s.qp.Close()
		}
	}
	for _, so := range p.sockets {
		so.tr.Close()
		so.udp.Close()
	}
	p.spare, p.current, p.sockets = nil, nil, nil
	p.mu.Unlock()
	p.wg.Wait()
}
