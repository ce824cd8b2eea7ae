// Package direct is the fleet's side of direct nodes: devices on the
// fleet's own network that hold no reverse tunnel. A direct node checks
// in now and then over its tunnel (hello, audit, renewals) and hangs up;
// its hello names where it listens (devices.Device.DirectAddr). For each
// brokered connection the fleet dials it there, QUIC with mutual TLS
// (proto.DirectALPN: the fleet shows its own client certificate, kind
// "fleet", and checks the node's device certificate), opens a stream,
// sends the stream header and splices, as it would down a tunnel; the
// connection closes with the stream. Nothing is held while the node is
// idle.
//
// Router is what the broker opens streams with: it sends a direct node's
// streams to the Dialer and every other device's down its tunnel
// (fleet/tunnelsrv).
//
// Only fleet/... server packages import direct.
package direct

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/quicconn"
)

// Devices looks a device up by ID (*devices.Registry).
type Devices interface {
	Get(ctx context.Context, id string) (devices.Device, error)
}

// Config configures a Dialer. CA and Devices are required.
type Config struct {
	// CA verifies the nodes' certificates and issues the fleet's client
	// certificate (renewed as it nears its end).
	CA      *ca.Authority
	Devices Devices
	// KeepAlive is how often an idle connection to a node sends a QUIC
	// ping, so that a quiet session (a shell left open) lives on; default
	// 25s.
	KeepAlive time.Duration
	// ListenPacket opens the UDP socket the Dialer dials from; default an
	// ephemeral port on all addresses.
	ListenPacket func() (net.PacketConn, error)
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Dialer dials direct nodes. Create it with New; Close it when done.
type Dialer struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex // guards tr, cert, sessions
	tr       *quic.Transport
	cert     *tls.Certificate
	sessions map[string]*quic.Conn // session ID → its connection
}

// New returns a Dialer for cfg.
func New(cfg Config) *Dialer {
	if cfg.KeepAlive <= 0 {
		cfg.KeepAlive = 25 * time.Second
	}
	if cfg.ListenPacket == nil {
		cfg.ListenPacket = func() (net.PacketConn, error) { return net.ListenPacket("udp", ":0") }
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Dialer{cfg: cfg, log: cfg.Logger.With("component", "direct"), sessions: map[string]*quic.Conn{}}
}

// Close closes the Dialer's socket and every connection it holds.
func (d *Dialer) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.tr == nil {
		return nil
	}
	err := d.tr.Close()
	d.tr.Conn.Close()
	d.tr = nil
	return err
}

// transport returns the Dialer's QUIC transport and client certificate,
// making them when needed (the certificate again within an hour of its
// end).
func (d *Dialer) transport() (*quic.Transport, *tls.Certificate, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.tr == nil {
		pc, err := d.cfg.ListenPacket()
		if err != nil {
			return nil, nil, fmt.Errorf("direct: open a UDP socket: %w", err)
		}
		d.tr = &quic.Transport{Conn: pc}
	}
	if d.cert == nil || d.cfg.Now().Add(time.Hour).After(d.cert.Leaf.NotAfter) {
		c, err := d.cfg.CA.FleetClientCert(24 * time.Hour)
		if err != nil {
			return nil, nil, fmt.Errorf("direct: %w", err)
		}
		d.cert = &c
	}
	return d.tr, d.cert, nil
}

// Open dials the direct node deviceID at addr, opens a stream with header
// h, and waits for the node's answer: a refusal is a *proto.Error. The
// stream is a plain net.Conn (no resume layer: the node is on the fleet's
// own network); closing it closes the connection.
func (d *Dialer) Open(ctx context.Context, deviceID, addr string, h *proto.StreamHeader) (net.Conn, error) {
	tr, cert, err := d.transport()
	if err != nil {
		return nil, err
	}
	raddr, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("direct: node %s at %q: %w", deviceID, addr, err)
	}
	conf := &tls.Config{
		Certificates: []tls.Certificate{*cert},
		NextProtos:   []string{proto.DirectALPN},
		MinVersion:   tls.VersionTLS13,
		// The node's certificate is a device certificate from the fleet's
		// CA for this very device: checked here, not as a server name.
		InsecureSkipVerify:    true,
		VerifyPeerCertificate: d.verifyNode(deviceID),
	}
	qc, err := tr.Dial(ctx, raddr, conf, &quic.Config{
		HandshakeIdleTimeout: 10 * time.Second,
		MaxIdleTimeout:       3 * d.cfg.KeepAlive,
		KeepAlivePeriod:      d.cfg.KeepAlive,
	})
	if err != nil {
		return nil, fmt.Errorf("direct: dial node %s at %s: %w", deviceID, addr, err)
	}
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		qc.CloseWithError(0, "")
		return nil, fmt.Errorf("direct: open a stream to node %s at %s: %w", deviceID, addr, err)
	}
	r := proto.NewReader(st)
	conn := &nodeConn{Conn: quicconn.New(qc, st, r), qc: qc, d: d, session: h.SessionID}
	if err := proto.WriteMsg(conn, h); err != nil {
		conn.Close()
		return nil, fmt.Errorf("direct: send the stream header to node %s at %s: %w", deviceID, addr, err)
	}
	if deadline, ok := ctx.Deadline(); ok {
		st.SetReadDeadline(deadline)
	}
	if err := proto.ReadAccept(r); err != nil {
		conn.Close()
		var pe *proto.Error
		if errors.As(err, &pe) {
			return nil, err // the node's refusal, for the user
		}
		return nil, fmt.Errorf("direct: read the answer of node %s at %s: %w", deviceID, addr, err)
	}
	st.SetReadDeadline(time.Time{})
	d.mu.Lock()
	d.sessions[h.SessionID] = qc
	d.mu.Unlock()
	return conn, nil
}

// verifyNode checks that the node's certificate is device deviceID's,
// from the fleet's CA.
func (d *Dialer) verifyNode(deviceID string) func([][]byte, [][]*x509.Certificate) error {
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return errors.New("direct: the node sent no certificate")
		}
		leaf, err := x509.ParseCertificate(raw[0])
		if err != nil {
			return fmt.Errorf("direct: node certificate: %w", err)
		}
		id, err := d.cfg.CA.Identify(leaf)
		if err != nil {
			return fmt.Errorf("direct: node certificate: %w", err)
		}
		if id.Kind != ca.KindDevice || id.Name != deviceID {
			return fmt.Errorf("direct: the node at this address is %s %q, not device %s", id.Kind, id.Name, deviceID)
		}
		return nil
	}
}

// Send sends m (a proto.SessionEnd) to the node carrying its session, on
// a stream of its own on the session's connection.
func (d *Dialer) Send(m proto.Message) error {
	end, ok := m.(*proto.SessionEnd)
	if !ok {
		return fmt.Errorf("direct: a direct node takes no %s", m.Kind())
	}
	d.mu.Lock()
	qc := d.sessions[end.SessionID]
	d.mu.Unlock()
	if qc == nil {
		return ErrNoSession
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return fmt.Errorf("direct: session end: %w", err)
	}
	defer st.Close()
	return proto.WriteMsg(st, end)
}

// ErrNoSession is what Send returns for a session the Dialer does not
// carry.
var ErrNoSession = errors.New("direct: no connection carries that session")

// Sessions returns the number of connections the Dialer holds.
func (d *Dialer) Sessions() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.sessions)
}

// nodeConn is a stream to a direct node; closing it closes its
// connection. The fleet closes a session's stream when the session is
// over both ways (or the fleet ended it), so nothing is left in flight
// that matters; the node waits for this close.
type nodeConn struct {
	*quicconn.Conn
	qc      *quic.Conn
	d       *Dialer
	session string
	once    sync.Once
}

func (c *nodeConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.d.mu.Lock()
		if c.d.sessions[c.session] == c.qc {
			delete(c.d.sessions, c.session)
		}
		c.d.mu.Unlock()
		c.qc.CloseWithError(0, "")
	})
	return err
}

// CloseWrite half-closes the stream.
func (c *nodeConn) CloseWrite() error { return c.Conn.CloseWrite() }
