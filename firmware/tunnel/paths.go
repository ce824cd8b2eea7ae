package tunnel

import (
	"context"
	"fmt"
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
// never pays for one. Every socket a connection added a path on stays
// open for the connection's life: quic-go registers the connection with
// each path's transport, and closing one closes the connection. So a
// connection adds at most maxPaths paths (and moves at most maxMoves
// times); after that a recovery dials a new connection, which starts
// afresh.

// probeTimeout bounds the validation of a spare path.
const probeTimeout = 15 * time.Second

// maxMoves and maxPaths bound the moves of one connection and the paths it
// adds (a validation can fail), and so its sockets.
const (
	maxMoves = 8
	maxPaths = maxMoves + 2
)

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
	spare   *path   // being validated, or ready
	current *path   // the active path, when it is not the one dialled on
	added   []*path // every path added; closed with the connection
	moves   int
	closed  bool
}

// path is a path the agent added to the connection.
type path struct {
	udp   net.PacketConn
	tr    *quic.Transport
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
	if p.closed || p.spare != nil || len(p.added) >= maxPaths {
		return
	}
	udp, err := p.listen()
	if err != nil {
		p.log.Debug("spare path: open socket", "err", err)
		return
	}
	tr := &quic.Transport{Conn: udp}
	qp, err := p.qc.AddPath(tr)
	if err != nil {
		tr.Close()
		udp.Close()
		p.log.Debug("spare path: add", "err", err)
		return
	}
	s := &path{udp: udp, tr: tr, qp: qp}
	p.spare = s
	p.added = append(p.added, s)
	p.read(tr)
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
			p.spare = nil
			s.qp.Close() // its socket stays open until the connection ends
			return
		}
		s.ready = true
	})
}

// move switches the connection to the spare path, if one is ready and the
// connection has moves left; else it says why not.
func (p *linkPaths) move() (ok bool, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.spare
	switch {
	case p.closed:
		return false, "the connection is closing"
	case p.moves >= maxMoves:
		return false, fmt.Sprintf("the connection has made its %d moves", maxMoves)
	case s == nil || !s.ready:
		return false, "no spare path is ready"
	}
	if err := s.qp.Switch(); err != nil {
		p.log.Debug("switch to the spare path", "err", err)
		p.spare = nil
		s.qp.Close()
		return false, "the spare path failed"
	}
	if p.current != nil {
		p.current.qp.Close() // abandoned; its socket stays open (see above)
	}
	p.current, p.spare = s, nil
	p.active = s.tr
	p.moves++
	return true, ""
}

// close closes every path but the one dialled on, and waits for their
// readers. The connection must be closed first.
func (p *linkPaths) close() {
	p.mu.Lock()
	p.closed = true
	for _, s := range p.added {
		s.close()
	}
	p.spare, p.current, p.added = nil, nil, nil
	p.mu.Unlock()
	p.wg.Wait()
}

// close abandons the path and closes its socket: only once the connection
// is closed (see above).
func (s *path) close() {
	s.qp.Close()
	s.tr.Close()
	s.udp.Close()
}
