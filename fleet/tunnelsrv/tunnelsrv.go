// Package tunnelsrv is the fleet's end of the device tunnels: a QUIC listener
// that authenticates devices by their mTLS certificate, runs each device's
// control stream (hello, heartbeats, renewals) and opens a stream down a
// device's tunnel for every brokered user connection.
//
// Only fleet/... imports this package.
package tunnelsrv

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/quicconn"
	"remoteler.dev/edge/proto/resume"
)

// Config configures a Server. Required fields say so.
type Config struct {
	// TLSConfig is the server's TLS config: its certificate and the client
	// CAs devices are verified against (RequireAndVerifyClientCert is set
	// by the server). Required.
	TLSConfig *tls.Config
	// Authenticate maps a verified client certificate chain to a device ID,
	// or refuses it. Required.
	Authenticate func(cs tls.ConnectionState) (deviceID string, err error)
	// OnHello checks a device's hello (name, version) and returns the answer;
	// an error refuses the device with that message. Required.
	OnHello func(ctx context.Context, deviceID string, addr net.Addr, h *proto.Hello) (*proto.HelloAck, error)
	// Recheck, when set, is called once a device's new connection is
	// registered, before its hello is answered; an error refuses the
	// device. fleetd checks there that the device is still in the
	// registry: a removal (registry first, then Disconnect) either finds
	// the connection registered and closes it, or comes before Recheck,
	// which refuses it. Optional.
	Recheck func(ctx context.Context, deviceID string) error
	// OnHeartbeat is called for each heartbeat. Optional.
	OnHeartbeat func(deviceID string, hb *proto.Heartbeat)
	// OnRenew answers a renewal request. Optional: nil refuses renewals.
	OnRenew func(ctx context.Context, deviceID string, req *proto.RenewRequest) *proto.RenewResponse
	// OnDisconnect is called when a device's connection ends. Optional.
	OnDisconnect func(deviceID string, err error)
	// OnMessage answers control messages other than heartbeats and
	// renewals (audit batches, say). A nil reply sends nothing; an error
	// is sent to the device as a proto.Error and ends its connection.
	// Optional: without it such messages are a protocol error.
	OnMessage func(ctx context.Context, deviceID string, m proto.Message) (reply proto.Message, err error)
	// OnAgentStream serves a stream the agent opened to reach a fleet
	// service (proto.AgentStream: "ota" downloads); it must close conn.
	// Optional: without it such streams are refused.
	OnAgentStream func(ctx context.Context, deviceID, service string, conn net.Conn)
	// StatelessResetKey, when set, lets restarted fleets reset stale
	// connections at once instead of letting them time out.
	StatelessResetKey *quic.StatelessResetKey
	// TokenKey, when set, keeps QUIC address-validation tokens valid across
	// restarts and replicas.
	TokenKey *quic.TokenGeneratorKey
	// IdleTimeout closes a connection that hears nothing for this long;
	// default 5m. Agents send a heartbeat every 2m by default; the smaller
	// of the two sides' idle timeouts applies.
	IdleTimeout time.Duration
	// SessionHold is how long a brokered session waits for its device to
	// come back; default 10m.
	SessionHold time.Duration
	// SessionBuffer bounds each session's replay buffer; default 4 MiB.
	SessionBuffer int
	// SessionBudget bounds all sessions' replay buffers together; default
	// 256 MiB.
	SessionBudget int
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server accepts device tunnels. Create it with New and call Serve.
type Server struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex // guards conns, sessions, boots and tags
	conns    map[string]*deviceConn
	tags     map[string]*deviceConn         // HelloAck.LinkTag → connection
	changed  chan struct{}                  // closed and replaced whenever conns changes
	sessions map[string]map[string]*session // device ID → session ID →
	boots    map[string]string              // device ID → agent boot ID
	budget   *resume.Budget
}

// session is a brokered stream held for its device across reconnects.
type session struct {
	id     string
	secret []byte
	conn   *resume.Conn
}

// ErrAgentRestarted ends the sessions of a device whose agent restarted.
var ErrAgentRestarted = errors.New("tunnelsrv: the device's agent restarted; the session could not be resumed")

// deviceConn is one device's live tunnel.
type deviceConn struct {
	qc    *quic.Conn
	since time.Time
	ctrl  *ctrlStream

	mu        sync.Mutex // guards addr and addrMoved
	addr      string
	addrMoved time.Time
}

// Info describes a connected device's tunnel.
type Info struct {
	Addr  net.Addr
	Since time.Time
	RTT   time.Duration
	// Stats are the connection's counters (bytes and packets are the
	// fleet's: sent to the device and received from it).
	Stats quic.ConnectionStats
	// AddrChangedAt is when the device's address last changed on this
	// connection (QUIC follows NAT rebinding and migration); zero if never.
	AddrChangedAt time.Time
}

// Application error codes used to close QUIC connections; they are the
// proto error codes.
const (
	closeOK       = quic.ApplicationErrorCode(proto.CodeOK)
	closeReplaced = quic.ApplicationErrorCode(proto.CodeConflict)
)

// New returns a server for cfg.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	if cfg.SessionHold <= 0 {
		cfg.SessionHold = resume.DefaultHold
	}
	if cfg.SessionBuffer <= 0 {
		cfg.SessionBuffer = 4 << 20
	}
	if cfg.SessionBudget <= 0 {
		cfg.SessionBudget = 256 << 20
	}
	return &Server{
		cfg: cfg, log: cfg.Logger.With("component", "tunnel"), conns: map[string]*deviceConn{},
		sessions: map[string]map[string]*session{}, boots: map[string]string{}, tags: map[string]*deviceConn{},
		changed: make(chan struct{}),
		budget:  resume.NewBudget(cfg.SessionBudget),
	}
}

// Serve accepts tunnels on pc until ctx is done.
func (s *Server) Serve(ctx context.Context, pc net.PacketConn) error {
	tlsConf := s.cfg.TLSConfig.Clone()
	tlsConf.NextProtos = []string{proto.ALPN}
	tlsConf.ClientAuth = tls.RequireAndVerifyClientCert
	tlsConf.MinVersion = tls.VersionTLS13
	tr := &quic.Transport{Conn: pc, StatelessResetKey: s.cfg.StatelessResetKey, TokenGeneratorKey: s.cfg.TokenKey}
	defer tr.Close()
	// 0-RTT lets a reconnecting agent send its hello and resumes at once;
	// serveConn acts on nothing before the handshake is complete. Keep
	// TLSConfig's session ticket keys across restarts for it to work then.
	ln, err := tr.ListenEarly(tlsConf, &quic.Config{
		Allow0RTT:            true,
		MaxIdleTimeout:       s.cfg.IdleTimeout,
		HandshakeIdleTimeout: 10 * time.Second,
		MaxIncomingStreams:   maxSessionsPerDevice + 1, // control + resumes
	})
	if err != nil {
		return fmt.Errorf("tunnelsrv: listen: %w", err)
	}
	defer ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	// Tell every device at once when the fleet stops, so agents reconnect
	// to its successor without waiting for their idle timeout.
	defer s.closeAll()
	go s.serveDatagrams(ctx, tr)
	for {
		qc, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("tunnelsrv: accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serveConn(ctx, qc)
		}()
	}
}

func (s *Server) serveConn(ctx context.Context, qc *quic.Conn) {
	log := s.log.With("addr", qc.RemoteAddr())
	// Nothing from 0-RTT data is acted on before the handshake completes:
	// until then the client is not authenticated, and 0-RTT can be replayed.
	select {
	case <-qc.HandshakeComplete():
	case <-qc.Context().Done():
		return
	case <-ctx.Done():
		return
	}
	id, err := s.cfg.Authenticate(qc.ConnectionState().TLS)
	if err != nil {
		log.Warn("device refused", "reason", err)
		qc.CloseWithError(quic.ApplicationErrorCode(proto.CodeUnauthenticated), err.Error())
		return
	}
	log = log.With("device_id", id)
	hctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	st, err := qc.AcceptStream(hctx)
	cancel()
	if err != nil {
		log.Warn("device opened no control stream", "err", err)
		qc.CloseWithError(quic.ApplicationErrorCode(proto.CodeBadRequest), "no control stream")
		return
	}
	r := proto.NewReader(st)
	st.SetReadDeadline(time.Now().Add(15 * time.Second))
	m, err := proto.ReadMsg(r, proto.MaxControlFrame)
	if err != nil {
		s.refuse(log, qc, st, proto.Errorf(proto.CodeBadRequest, "bad hello: %v", err))
		return
	}
	st.SetReadDeadline(time.Time{})
	hello, ok := m.(*proto.Hello)
	if !ok {
		s.refuse(log, qc, st, proto.Errorf(proto.CodeBadRequest, "first message is %s, want hello", m.Kind()))
		return
	}
	if hello.ProtocolVersion != proto.Version {
		s.refuse(log, qc, st, proto.Errorf(proto.CodeVersion, "agent speaks protocol %d, fleet speaks %d: update the agent", hello.ProtocolVersion, proto.Version))
		return
	}
	ack, err := s.cfg.OnHello(ctx, id, qc.RemoteAddr(), hello)
	if err != nil {
		pe := &proto.Error{Code: proto.CodeForbidden, Message: err.Error()}
		errors.As(err, &pe)
		s.refuse(log, qc, st, pe)
		return
	}
	ctrl := &ctrlStream{st: st}
	tag := make([]byte, proto.LinkTagSize)
	rand.Read(tag)
	ack.LinkTag = tag
	// Register before answering: once the agent has the answer it counts as
	// up, and a stream may be opened to it at once.
	dc := &deviceConn{qc: qc, since: s.cfg.Now(), ctrl: ctrl, addr: qc.RemoteAddr().String()}
	var lost []*session
	s.mu.Lock()
	old := s.conns[id]
	s.conns[id] = dc
	s.tags[string(tag)] = dc
	close(s.changed)
	s.changed = make(chan struct{})
	if prev, ok := s.boots[id]; ok && prev != hello.BootID {
		for _, ss := range s.sessions[id] {
			lost = append(lost, ss)
		}
	}
	s.boots[id] = hello.BootID
	s.mu.Unlock()
	for _, ss := range lost {
		ss.conn.Abort(ErrAgentRestarted)
	}
	if len(lost) > 0 {
		log.Info("agent restarted; dropped its held sessions", "sessions", len(lost))
	}
	if old != nil {
		old.qc.CloseWithError(closeReplaced, "replaced by a newer connection of the same device")
	}
	if s.cfg.Recheck != nil {
		if err := s.cfg.Recheck(ctx, id); err != nil {
			s.mu.Lock()
			delete(s.tags, string(tag))
			if s.conns[id] == dc {
				delete(s.conns, id)
			}
			s.mu.Unlock()
			pe := &proto.Error{Code: proto.CodeForbidden, Message: err.Error()}
			errors.As(err, &pe)
			s.refuse(log, qc, st, pe)
			return
		}
	}
	if err := ctrl.send(ack); err != nil {
		qc.CloseWithError(quic.ApplicationErrorCode(proto.CodeInternal), "write hello ack")
	}
	log.Info("device connected", "name", hello.Name, "agent_version", hello.AgentVersion)

	cctx, cancel := context.WithCancel(ctx)
	go s.acceptResumes(cctx, id, qc, log)
	err = s.controlLoop(ctx, id, ctrl, r)
	cancel()
	s.mu.Lock()
	delete(s.tags, string(tag))
	current := s.conns[id] == dc
	if current {
		delete(s.conns, id)
	}
	s.mu.Unlock()
	if ctx.Err() == nil {
		qc.CloseWithError(closeOK, "")
	} // else the fleet is stopping: closeAll closes it, with the reason
	if current {
		log.Info("device disconnected", "err", err)
		if s.cfg.OnDisconnect != nil {
			s.cfg.OnDisconnect(id, err)
		}
	}
}

// refuse tells the device why on the control stream, then closes.
func (s *Server) refuse(log *slog.Logger, qc *quic.Conn, st *quic.Stream, pe *proto.Error) {
	log.Warn("device refused", "code", pe.Code, "reason", pe.Message)
	st.SetWriteDeadline(time.Now().Add(2 * time.Second))
	proto.WriteMsg(st, pe)
	st.Close()
	qc.CloseWithError(quic.ApplicationErrorCode(pe.Code), pe.Message)
}

func (s *Server) controlLoop(ctx context.Context, id string, ctrl *ctrlStream, r proto.ByteReader) error {
	stop := context.AfterFunc(ctx, func() { ctrl.st.CancelRead(0) })
	defer stop()
	for {
		m, err := proto.ReadMsg(r, proto.MaxControlFrame)
		if err != nil {
			var pe *proto.Error
			if !errors.As(err, &pe) && !isConnErr(err) {
				// A malformed frame: tell the device and drop it.
				ctrl.send(proto.Errorf(proto.CodeBadRequest, "%v", err))
			}
			return err
		}
		switch m := m.(type) {
		case *proto.Heartbeat:
			// No answer: the QUIC ACK is enough, and bytes cost money.
			if s.cfg.OnHeartbeat != nil {
				s.cfg.OnHeartbeat(id, m)
			}
		case *proto.RenewRequest:
			resp := &proto.RenewResponse{Err: proto.Errorf(proto.CodeUnavailable, "renewal is not offered")}
			if s.cfg.OnRenew != nil {
				resp = s.cfg.OnRenew(ctx, id, m)
			}
			if err := ctrl.send(resp); err != nil {
				return err
			}
		default:
			if s.cfg.OnMessage == nil {
				err := fmt.Errorf("unexpected %s on the control stream", m.Kind())
				ctrl.send(&proto.Error{Code: proto.CodeBadRequest, Message: err.Error()})
				return err
			}
			reply, err := s.cfg.OnMessage(ctx, id, m)
			if err != nil {
				pe := &proto.Error{Code: proto.CodeBadRequest, Message: err.Error()}
				errors.As(err, &pe)
				ctrl.send(pe)
				return err
			}
			if reply != nil {
				if err := ctrl.send(reply); err != nil {
					return err
				}
			}
		}
	}
}

func isConnErr(err error) bool {
	var ae *quic.ApplicationError
	var ie *quic.IdleTimeoutError
	var se *quic.StreamError
	return errors.As(err, &ae) || errors.As(err, &ie) || errors.As(err, &se) || errors.Is(err, net.ErrClosed)
}

type ctrlStream struct {
	st  *quic.Stream
	wmu sync.Mutex // serialises writes
}

func (c *ctrlStream) send(m proto.Message) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return proto.WriteMsg(c.st, m)
}

// serveDatagrams handles the agents' datagrams outside QUIC (see
// proto.LinkPingByte): it echoes link pings, so an agent whose session
// stalled learns the link is back, and it pokes an agent whose tagged NAT
// keep-alive comes from a new address, so that it moves its connection
// there. Answers are no larger than what they answer: no amplification.
func (s *Server) serveDatagrams(ctx context.Context, tr *quic.Transport) {
	buf := make([]byte, 1500)
	for {
		n, addr, err := tr.ReadNonQUICPacket(ctx, buf)
		if err != nil {
			return
		}
		switch {
		case n == proto.LinkPingSize && buf[0] == proto.LinkPingByte:
			buf[0] = proto.LinkPongByte
			tr.WriteTo(buf[:n], addr)
		case n == 1+proto.LinkTagSize && buf[0] == proto.NATKeepaliveByte:
			s.mu.Lock()
			dc := s.tags[string(buf[1:n])]
			s.mu.Unlock()
			switch {
			case dc == nil:
				// A connection this fleet does not have: it was made with a
				// fleet that crashed or restarted. The agent reconnects.
				s.log.Debug("keep-alive for an unknown connection; telling it to reconnect", "addr", addr)
				tr.WriteTo([]byte{proto.LinkResetByte}, addr)
			case dc.qc.RemoteAddr().String() != addr.String():
				s.log.Debug("device keep-alive from a new address; poking it", "addr", addr, "conn_addr", dc.qc.RemoteAddr())
				tr.WriteTo([]byte{proto.LinkPokeByte}, addr)
			}
		}
	}
}

// maxSessionsPerDevice bounds the sessions held for one device.
const maxSessionsPerDevice = 256

// acceptResumes serves the streams a device opens to re-attach sessions.
// Sessions are looked up among this device's only: the mTLS identity binds
// them, and the secret proves the stream is the session's.
func (s *Server) acceptResumes(ctx context.Context, id string, qc *quic.Conn, log *slog.Logger) {
	for {
		st, err := qc.AcceptStream(ctx)
		if err != nil {
			return
		}
		go func() {
			if err := s.resume(ctx, id, qc, st); err != nil {
				log.Warn("resume refused", "reason", err)
			}
		}()
	}
}

func (s *Server) resume(ctx context.Context, id string, qc *quic.Conn, st *quic.Stream) error {
	r := proto.NewReader(st)
	conn := quicconn.New(qc, st, r)
	st.SetReadDeadline(time.Now().Add(15 * time.Second))
	m, err := proto.ReadMsg(r, proto.MaxHeaderFrame)
	if err != nil {
		conn.Close()
		return fmt.Errorf("bad resume stream: %w", err)
	}
	st.SetReadDeadline(time.Time{})
	if as, ok := m.(*proto.AgentStream); ok && s.cfg.OnAgentStream != nil {
		s.cfg.OnAgentStream(ctx, id, as.Service, conn)
		return nil
	}
	req, ok := m.(*proto.Resume)
	if !ok {
		conn.Close()
		return fmt.Errorf("stream starts with %s, want resume", m.Kind())
	}
	s.mu.Lock()
	ss := s.sessions[id][req.SessionID]
	s.mu.Unlock()
	if ss == nil || subtle.ConstantTimeCompare(ss.secret, req.Secret) != 1 {
		proto.WriteMsg(conn, &proto.ResumeAccept{Code: proto.CodeNotFound, Message: "the fleet holds no such session for this device"})
		conn.CloseWrite()
		return fmt.Errorf("session %q: unknown, or the secret is wrong", req.SessionID)
	}
	ss.conn.Detach()
	if err := proto.WriteMsg(conn, &proto.ResumeAccept{Received: ss.conn.Received()}); err != nil {
		conn.Close()
		return err
	}
	if err := ss.conn.Attach(conn, req.Received); err != nil {
		conn.Close()
		if !errors.Is(err, io.EOF) {
			ss.conn.Abort(err)
		}
		return err
	}
	s.log.Info("session resumed", "device_id", id, "session", ss.id, "addr", qc.RemoteAddr())
	return nil
}

// Sessions returns the number of sessions held for deviceID.
func (s *Server) Sessions(deviceID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions[deviceID])
}

// ErrOffline is returned by Open for a device with no live tunnel.
var ErrOffline = errors.New("tunnelsrv: device is offline")

// Open opens a stream down deviceID's tunnel, sends h (with a fresh resume
// secret) and waits for the agent's acceptance. A refusal comes back as
// *proto.Error. The returned conn survives the device's reconnects for up
// to the hold time; it implements CloseWrite.
//
// When the device's connection ends while the stream is being opened (the
// agent is replacing it after an outage, say), Open waits for the next one
// and tries again, as long as ctx allows (30 s without a deadline).
func (s *Server) Open(ctx context.Context, deviceID string, h *proto.StreamHeader) (net.Conn, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	for {
		s.mu.Lock()
		dc, changed := s.conns[deviceID], s.changed
		s.mu.Unlock()
		conn, err := s.open(ctx, deviceID, h)
		var pe *proto.Error
		if err == nil || errors.Is(err, ErrOffline) || errors.As(err, &pe) || dc == nil || dc.qc.Context().Err() == nil {
			return conn, err
		}
		// The connection died under us: wait for the device's next one.
		s.log.Debug("device connection ended while opening a stream; waiting for the next", "device_id", deviceID, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("tunnelsrv: %w (and the device did not come back in time)", err)
		case <-changed:
		}
	}
}

func (s *Server) open(ctx context.Context, deviceID string, h *proto.StreamHeader) (net.Conn, error) {
	s.mu.Lock()
	dc := s.conns[deviceID]
	full := len(s.sessions[deviceID]) >= maxSessionsPerDevice
	dup := s.sessions[deviceID][h.SessionID] != nil
	s.mu.Unlock()
	if dc == nil {
		return nil, ErrOffline
	}
	if full {
		return nil, proto.Errorf(proto.CodeUnavailable, "device has %d sessions open, the most it may", maxSessionsPerDevice)
	}
	if dup || h.SessionID == "" {
		return nil, proto.Errorf(proto.CodeConflict, "session id %q is empty or in use", h.SessionID)
	}
	hdr := *h
	hdr.Secret = make([]byte, 32)
	rand.Read(hdr.Secret)
	st, err := dc.qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("tunnelsrv: open stream: %w", err)
	}
	r := proto.NewReader(st)
	conn := quicconn.New(dc.qc, st, r)
	if err := proto.WriteMsg(conn, &hdr); err != nil {
		conn.Close()
		return nil, fmt.Errorf("tunnelsrv: send stream header: %w", err)
	}
	// Wait as long as the caller allows: an idle device behind a NAT that
	// forgot it is reached at its next keep-alive.
	deadline, _ := ctx.Deadline()
	st.SetReadDeadline(deadline)
	if err := proto.ReadAccept(r); err != nil {
		conn.Close()
		return nil, err
	}
	st.SetReadDeadline(time.Time{})
	ss := &session{id: hdr.SessionID, secret: hdr.Secret}
	ss.conn = resume.New(resume.Config{
		Buffer: s.cfg.SessionBuffer, Hold: s.cfg.SessionHold, Budget: s.budget,
		LocalAddr: dc.qc.LocalAddr(), RemoteAddr: dc.qc.RemoteAddr(),
		OnDone: func(error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			if m := s.sessions[deviceID]; m[ss.id] == ss {
				delete(m, ss.id)
				if len(m) == 0 {
					delete(s.sessions, deviceID)
				}
			}
		},
	})
	s.mu.Lock()
	if s.sessions[deviceID] == nil {
		s.sessions[deviceID] = map[string]*session{}
	}
	s.sessions[deviceID][ss.id] = ss
	s.mu.Unlock()
	if err := ss.conn.Attach(conn, 0); err != nil {
		ss.conn.Abort(err)
		return nil, err
	}
	return ss.conn, nil
}

// Online reports whether deviceID has a live tunnel.
func (s *Server) Online(deviceID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[deviceID] != nil
}

// Info describes deviceID's live tunnel.
func (s *Server) Info(deviceID string) (Info, bool) {
	s.mu.Lock()
	dc := s.conns[deviceID]
	s.mu.Unlock()
	if dc == nil {
		return Info{}, false
	}
	st := dc.qc.ConnectionStats()
	addr := dc.qc.RemoteAddr()
	dc.mu.Lock()
	if a := addr.String(); a != dc.addr {
		dc.addr, dc.addrMoved = a, s.cfg.Now()
	}
	moved := dc.addrMoved
	dc.mu.Unlock()
	return Info{Addr: addr, Since: dc.since, RTT: st.SmoothedRTT, Stats: st, AddrChangedAt: moved}, true
}

// EachLink calls fn with the counters of every live device tunnel and when
// its connection began (fleet/linkhealth samples them). fn runs without
// the server's lock held.
func (s *Server) EachLink(fn func(deviceID string, since time.Time, st quic.ConnectionStats)) {
	s.mu.Lock()
	conns := make(map[string]*deviceConn, len(s.conns))
	for id, dc := range s.conns {
		conns[id] = dc
	}
	s.mu.Unlock()
	for id, dc := range conns {
		fn(id, dc.since, dc.qc.ConnectionStats())
	}
}

// Send pushes m to deviceID on its control stream.
func (s *Server) Send(deviceID string, m proto.Message) error {
	s.mu.Lock()
	dc := s.conns[deviceID]
	s.mu.Unlock()
	if dc == nil {
		return ErrOffline
	}
	return dc.ctrl.send(m)
}

// Count returns the number of connected devices.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// closeAll tells every device the fleet is going, with a reconnect spread
// sized to the fleet (10 ms a device, 2 s to 2 min: fleetd serves a few
// hundred reconnects a second per core), and waits (up to 2 s) for the
// close frames to leave before the socket closes.
func (s *Server) closeAll() {
	s.mu.Lock()
	conns := make([]*deviceConn, 0, len(s.conns))
	for _, dc := range s.conns {
		conns = append(conns, dc)
	}
	s.mu.Unlock()
	spread := min(max(time.Duration(len(conns))*10*time.Millisecond, 2*time.Second), 2*time.Minute)
	reason := fmt.Sprintf(proto.RestartReason, spread.Milliseconds())
	for _, dc := range conns {
		dc.qc.CloseWithError(quic.ApplicationErrorCode(proto.CodeUnavailable), reason)
	}
	deadline := time.After(2 * time.Second)
	for _, dc := range conns {
		select {
		case <-dc.qc.Context().Done():
		case <-deadline:
			return
		}
	}
}

// Shed closes every device's tunnel as closeAll does when the fleet stops
// (the agents reconnect, spread out, to whichever fleetd answers them), and
// goes on serving: a replica that can no longer record its devices sends
// them to another.
func (s *Server) Shed() { s.closeAll() }

// Disconnect closes deviceID's tunnel, if any, with a reason the agent
// logs, and ends the sessions held for it with that reason: the device is
// not expected back (it was removed from the fleet, say).
func (s *Server) Disconnect(deviceID, reason string) {
	s.mu.Lock()
	dc := s.conns[deviceID]
	var held []*session
	for _, ss := range s.sessions[deviceID] {
		held = append(held, ss)
	}
	s.mu.Unlock()
	if dc != nil {
		dc.qc.CloseWithError(quic.ApplicationErrorCode(proto.CodeForbidden), reason)
	}
	for _, ss := range held {
		ss.conn.Abort(errors.New(reason))
	}
}
