// Package direct is the agent's side of a direct node (edge-agent
// --mode=direct): instead of holding a reverse tunnel, the agent listens on
// the fleet's own network and the fleet dials it, QUIC with mutual TLS
// (proto.DirectALPN), once per brokered connection. The agent shows its
// device certificate and accepts only the fleet's own client certificate
// (OU proto.FleetOU, from the fleet's CAs). Each connection's first stream
// starts with a StreamHeader, which the agent checks and answers with a
// StreamAccept, as on a tunnel; the stream then carries the session's bytes
// as they are. A later stream on the same connection carries a
// SessionEnd, when the fleet ends the session.
//
// Only firmware/... imports this package.
package direct

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/quicconn"
)

// Config configures a Server. TLSConfig and Handle are required.
type Config struct {
	// Listen is the UDP address to listen on, IP:PORT (":4433" for every
	// address).
	Listen string
	// TLSConfig returns the server's TLS config for the next handshake:
	// the device's certificate and the check of the fleet's (the server
	// sets the ALPN and requires a client certificate; a config that
	// checks none, by ClientCAs or VerifyPeerCertificate, fails every
	// handshake). Called per connection, so renewals take effect.
	TLSConfig func() (*tls.Config, error)
	// Check decides whether to accept a stream before Handle runs; a
	// *proto.Error refuses it with that code. Nil accepts every stream.
	Check func(h *proto.StreamHeader) error
	// Handle serves an accepted stream; it must close conn. It runs on a
	// goroutine of its own.
	Handle func(ctx context.Context, h *proto.StreamHeader, conn net.Conn)
	// OnMessage receives the fleet's later messages on a connection (a
	// SessionEnd). Optional.
	OnMessage func(m proto.Message)
	// IdleTimeout closes a connection that hears nothing for this long;
	// default 2m (the fleet pings a live one every 25 s).
	IdleTimeout time.Duration
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
}

// Server serves the fleet's connections. Create it with Listen, then
// call Serve.
type Server struct {
	cfg Config
	log *slog.Logger
	pc  net.PacketConn
	tr  *quic.Transport
	ln  *quic.Listener
	wg  sync.WaitGroup // connections being served
}

// Listen opens cfg.Listen, so that a busy port fails the agent's start.
func Listen(cfg Config) (*Server, error) {
	if cfg.TLSConfig == nil || cfg.Handle == nil {
		return nil, errors.New("direct: TLSConfig and Handle are required")
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 2 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "direct")}
	pc, err := net.ListenPacket("udp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("direct: listen on %s: %w", cfg.Listen, err)
	}
	s.pc, s.tr = pc, &quic.Transport{Conn: pc}
	tlsConf := &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			c, err := cfg.TLSConfig()
			if err != nil {
				return nil, err
			}
			return serverTLS(c)
		},
	}
	s.ln, err = s.tr.Listen(tlsConf, &quic.Config{
		MaxIdleTimeout:        cfg.IdleTimeout,
		HandshakeIdleTimeout:  10 * time.Second,
		MaxIncomingStreams:    8,
		MaxIncomingUniStreams: -1,
	})
	if err != nil {
		s.tr.Close()
		pc.Close()
		return nil, fmt.Errorf("direct: listen on %s: %w", cfg.Listen, err)
	}
	return s, nil
}

// serverTLS is c for the fleet's connections: the ALPN, TLS 1.3, and a
// client certificate required, whatever c asks for. A config that would
// take any certificate without checking it is refused: only the fleet
// may connect.
func serverTLS(c *tls.Config) (*tls.Config, error) {
	c = c.Clone()
	c.NextProtos = []string{proto.DirectALPN}
	c.MinVersion = tls.VersionTLS13
	checks := c.VerifyPeerCertificate != nil
	switch c.ClientAuth {
	case tls.RequireAndVerifyClientCert, tls.VerifyClientCertIfGiven:
		c.ClientAuth = tls.RequireAndVerifyClientCert
		checks = checks || c.ClientCAs != nil
	default:
		c.ClientAuth = tls.RequireAnyClientCert
	}
	if !checks {
		return nil, errors.New("direct: the TLS config checks no client certificate; only the fleet may connect")
	}
	return c, nil
}

// Addr is where the server listens.
func (s *Server) Addr() net.Addr { return s.pc.LocalAddr() }

// Serve serves connections until ctx ends; it closes the socket then,
// and returns once every connection's handler has returned.
func (s *Server) Serve(ctx context.Context) error {
	defer s.pc.Close()
	defer s.tr.Close()
	defer s.wg.Wait()
	defer s.ln.Close()
	for {
		qc, err := s.ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("direct: accept: %w", err)
		}
		s.wg.Go(func() { s.serveConn(ctx, qc) })
	}
}

// serveConn serves one connection of the fleet: its first stream is the
// session, later ones carry messages about it.
func (s *Server) serveConn(ctx context.Context, qc *quic.Conn) {
	log := s.log.With("fleet", qc.RemoteAddr())
	defer qc.CloseWithError(0, "")
	st, err := qc.AcceptStream(ctx)
	if err != nil {
		return
	}
	r := proto.NewReader(st)
	st.SetReadDeadline(time.Now().Add(headerTimeout))
	h, err := proto.ReadHeader(r)
	if err != nil {
		log.Warn("bad stream header from the fleet", "err", err)
		st.CancelRead(quic.StreamErrorCode(proto.CodeBadRequest))
		st.CancelWrite(quic.StreamErrorCode(proto.CodeBadRequest))
		linger(ctx, qc, headerTimeout)
		return
	}
	st.SetReadDeadline(time.Time{})
	conn := quicconn.New(qc, st, r)
	if s.cfg.Check != nil {
		if err := s.cfg.Check(h); err != nil {
			pe := &proto.Error{Code: proto.CodeForbidden, Message: err.Error()}
			errors.As(err, &pe)
			log.Warn("stream refused", "service", h.Service, "user", h.Identity.User, "login", h.Identity.Login, "session", h.SessionID, "reason", pe.Message)
			proto.WriteMsg(conn, &proto.StreamAccept{Code: pe.Code, Message: pe.Message})
			conn.CloseWrite()
			// The fleet closes the connection once it has read why.
			linger(ctx, qc, headerTimeout)
			return
		}
	}
	if err := proto.WriteMsg(conn, &proto.StreamAccept{}); err != nil {
		conn.Close()
		return
	}
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go s.messages(hctx, qc)
	s.cfg.Handle(hctx, h, conn)
	// The fleet closes the connection once it has read the session to its
	// end; closing it here could drop bytes still on their way.
	linger(ctx, qc, s.cfg.IdleTimeout)
}

// headerTimeout bounds the read of a stream's header, and how long a
// connection whose stream was refused waits for the fleet to hang up.
const headerTimeout = 10 * time.Second

// linger waits until the fleet closes qc, for at most d: what the node
// sent last (a session's end, a refusal and its reason) is lost if the
// node closes the connection while it is still on its way.
func linger(ctx context.Context, qc *quic.Conn, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-qc.Context().Done():
	case <-t.C:
	case <-ctx.Done():
	}
}

// messages reads the fleet's later streams on a connection: each carries
// one message.
func (s *Server) messages(ctx context.Context, qc *quic.Conn) {
	for {
		st, err := qc.AcceptStream(ctx)
		if err != nil {
			return
		}
		st.SetReadDeadline(time.Now().Add(10 * time.Second))
		m, err := proto.ReadMsg(proto.NewReader(st), proto.MaxControlFrame)
		st.CancelRead(0)
		st.Close()
		if err != nil {
			s.log.Warn("bad message from the fleet", "err", err)
			continue
		}
		if s.cfg.OnMessage != nil {
			s.cfg.OnMessage(m)
		}
	}
}
