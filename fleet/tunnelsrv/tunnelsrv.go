// Package tunnelsrv is the fleet's end of the device tunnels: a QUIC listener
// that authenticates devices by their mTLS certificate, runs each device's
// control stream (hello, heartbeats, renewals) and opens a stream down a
// device's tunnel for every brokered user connection.
//
// Only fleet/... imports this package.
package tunnelsrv

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
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/sync/errgroup"

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
	// OnSilence is called when a connected device falls silent for longer
	// than its silence window (it counts as offline, though its
	// connection lingers) and when it is heard again (silent false),
	// within presenceSweep of the change (several devices' at once): fleetd
	// records it where other replicas see it. since names the connection
	// (Info.Since). An error (the change could not be recorded) is retried
	// at the next sweep. Optional.
	OnSilence func(ctx context.Context, deviceID string, since time.Time, silent bool) error
	// OnDisconnect is called when a device's connection ends, with the
	// last time the fleet heard from the device. Optional.
	OnDisconnect func(deviceID string, lastHeard time.Time, err error)
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
	// LinkKey keys the reset tokens of link resets (proto.LinkResetToken).
	// Keep it across restarts and replicas, as StatelessResetKey: a fleet
	// that does not know a connection can then reset it, and nobody else
	// can. Nil: a random key per Server, so its resets are honoured only
	// for connections it made itself.
	LinkKey []byte
	// IdleTimeout closes a connection that hears no QUIC packet for this
	// long; default 25m. Idle agents send a heartbeat every 10m by default
	// (2 × that + 30s is their own idle timeout); the smaller of the two
	// sides' idle timeouts applies. A device that falls silent counts as
	// offline long before (presence.go).
	IdleTimeout time.Duration
	// PathMTUDiscovery lets QUIC probe for packets larger than 1280 bytes
	// toward devices; default off (see tunnel.Config.PathMTUDiscovery: the
	// probes cost more than a day of keep-alives on a device that
	// reconnects a few times a day).
	PathMTUDiscovery bool
	// SessionHold is how long a brokered session waits for its device to
	// come back; default 10m.
	SessionHold time.Duration
	// SessionBuffer bounds each session's replay buffer; default 4 MiB.
	SessionBuffer int
	// SessionBudget bounds all sessions' replay buffers together; default
	// 256 MiB.
	SessionBudget int
	// MaxHellos bounds the hellos answered at once (OnHello and Recheck,
	// which write to the store); default 64. A connection waits up to
	// HelloWait (default 8s) for its turn, then is told to come back
	// later, spread out, as when the fleet restarts: a crowd of devices
	// reconnecting at once (every replica restarted) queues instead of
	// timing out in the store and starting over.
	MaxHellos int
	HelloWait time.Duration
	// MaxHandshakes bounds the connections whose handshake is under way;
	// default 1024. Past it, a new connection is refused before its
	// handshake (QUIC's CONNECTION_REFUSED: no cryptography, one small
	// packet), and the agent backs off further than after other
	// failures. A connection waiting for its hello's turn has finished
	// its handshake: MaxHellos and HelloWait pace those.
	MaxHandshakes int
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server accepts device tunnels. Create it with New and call Serve.
type Server struct {
	cfg Config
	log *slog.Logger

	linkStats linkStats

	linkKey []byte

	mu           sync.Mutex // guards conns, sessions, boots, tags, left, stopping, sessionAdded and relay
	conns        map[string]*deviceConn
	tags         map[string]*deviceConn         // HelloAck.LinkTag → connection
	byAddr       map[string]*deviceConn         // where keep-alives came from → connection (checked on use)
	changed      chan struct{}                  // closed and replaced whenever conns changes
	sessions     map[string]map[string]*session // device ID → session ID →
	boots        map[string]string              // device ID → agent boot ID
	left         map[string]departure           // device ID → how its last connection ended
	sessionAdded chan struct{}                  // wakes watchStalls
	relay        ResumeRelay                    // RelayResumes
	budget       *resume.Budget
	stopping     string // the close reason once the fleet stops (stopReasonLocked)

	heardAgain chan struct{} // wakes watchPresence: a silent device was heard

	hellos      chan struct{} // a slot per hello being answered (Config.MaxHellos)
	waiting     atomic.Int64  // connections waiting for a slot
	turned      atomic.Int64  // connections told to come back later (Turned)
	handshaking atomic.Int64  // connections whose handshake is under way (admit)
	refused     atomic.Int64  // connections refused before their handshake (Refused)
}

// session is a brokered stream held for its device across reconnects.
type session struct {
	id     string
	secret []byte
	tag    [8]byte // proto.SessionTag(secret), named in link hurries
	conn   *resume.Conn
	// boot is the agent's boot ID when the session opened; "" if the
	// fleet did not know it. Another boot's connection ends the session.
	boot string
}

// ErrAgentRestarted ends the sessions of a device whose agent restarted.
// Its text is for users (see EndReason).
var ErrAgentRestarted = errors.New("the device's agent restarted, so the session could not be resumed")

// EndReason says, in words for the user, why a brokered session whose
// device side failed with err ended; "" for nil (a normal end).
func (s *Server) EndReason(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, ErrAgentRestarted):
		return ErrAgentRestarted.Error() + "; run the command again"
	case errors.Is(err, resume.ErrHoldExpired):
		return fmt.Sprintf("the link to the device did not come back within %v, so the session ended; run the command again once the device is online (tsh ls)", s.cfg.SessionHold)
	}
	return "the session failed on the device's side: " + err.Error()
}

// deviceConn is one device's live tunnel.
type deviceConn struct {
	qc      *quic.Conn
	since   time.Time
	ctrl    *ctrlStream
	linkKey []byte        // HelloAck.LinkKey: MACs this connection's hurries
	window  time.Duration // silent for longer: offline (presence.go)
	byAddr  []string      // its keys in Server.byAddr; guarded by Server.mu

	heard   atomic.Int64  // when the fleet last heard from the device (Unix ns)
	packets atomic.Uint64 // QUIC packets received when heard was last set from them
	silent  atomic.Bool   // OnSilence was last told the device fell silent

	mu        sync.Mutex // guards the fields below
	addr      string
	addrMoved time.Time
	stallFrom time.Time // when a session stalled (hurries are due); zero: none
	nextHurry time.Time
	hurrySeq  uint64
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
	// Online is false once the device has been silent for a few of its
	// keep-alive periods (presence.go), though the connection lingers
	// until its idle timeout in case the device comes back on it.
	Online bool
	// LastHeard is when the fleet last heard from the device: a keep-alive,
	// a heartbeat, or any QUIC packet (to within a few seconds).
	LastHeard time.Time
	// Boot is the agent's boot ID, from its hello.
	Boot string
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
		cfg.IdleTimeout = 25 * time.Minute
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
	if cfg.MaxHellos <= 0 {
		cfg.MaxHellos = 64
	}
	if cfg.HelloWait <= 0 {
		cfg.HelloWait = 8 * time.Second
	}
	if cfg.MaxHandshakes <= 0 {
		cfg.MaxHandshakes = 1024
	}
	linkKey := cfg.LinkKey
	if len(linkKey) == 0 {
		linkKey = make([]byte, 32)
		rand.Read(linkKey)
	}
	return &Server{
		cfg: cfg, log: cfg.Logger.With("component", "tunnel"), conns: map[string]*deviceConn{},
		sessions: map[string]map[string]*session{}, boots: map[string]string{}, tags: map[string]*deviceConn{},
		left: map[string]departure{}, byAddr: map[string]*deviceConn{}, changed: make(chan struct{}), sessionAdded: make(chan struct{}, 1),
		budget: resume.NewBudget(cfg.SessionBudget), linkKey: linkKey, hellos: make(chan struct{}, cfg.MaxHellos),
		heardAgain: make(chan struct{}, 1),
	}
}

// Serve accepts tunnels on pc until ctx is done.
func (s *Server) Serve(ctx context.Context, pc net.PacketConn) error {
	tlsConf := s.cfg.TLSConfig.Clone()
	tlsConf.NextProtos = []string{proto.ALPN}
	tlsConf.ClientAuth = tls.RequireAndVerifyClientCert
	tlsConf.MinVersion = tls.VersionTLS13
	tr := &quic.Transport{Conn: pc, StatelessResetKey: s.cfg.StatelessResetKey, TokenGeneratorKey: s.cfg.TokenKey, ConnContext: s.admit}
	defer tr.Close()
	// 0-RTT lets a reconnecting agent send its hello and resumes at once;
	// serveConn acts on nothing before the handshake is complete. Keep
	// TLSConfig's session ticket keys across restarts for it to work then.
	ln, err := tr.ListenEarly(tlsConf, &quic.Config{
		Allow0RTT:               true,
		MaxIdleTimeout:          s.cfg.IdleTimeout,
		HandshakeIdleTimeout:    10 * time.Second,
		MaxIncomingStreams:      maxSessionsPerDevice + 1, // control + resumes
		DisablePathMTUDiscovery: !s.cfg.PathMTUDiscovery,
		// As the agent's (firmware/tunnel): bulk copies start at speed.
		InitialStreamReceiveWindow:     2 << 20,
		InitialConnectionReceiveWindow: 3 << 20,
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
	wg.Add(4)
	go func() { defer wg.Done(); s.reportCrowd(ctx) }()
	go func() { defer wg.Done(); s.serveDatagrams(ctx, tr) }()
	go func() { defer wg.Done(); s.watchStalls(ctx, tr) }()
	go func() { defer wg.Done(); s.watchPresence(ctx) }()
	for {
		qc, err := ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				// No new connection from now on (a device dialling now
				// is refused at once, not left in the accept queue);
				// the ones accepted stay until closeAll.
				ln.Close()
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
		// Its place among the handshaking goes back now; a connection
		// that ends first gives it back then (admit).
		admitted(qc)
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
	// The control stream is read for as long as the device is connected:
	// its small messages need no more buffer than this (ReadMsg reads a
	// larger body straight through), and 10,000 devices save 35 MB.
	r := bufio.NewReaderSize(st, 512)
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
	release, ok := s.helloTurn(ctx, qc)
	if !ok {
		log.Debug("device told to come back later: too many hellos at once, or the fleet stops")
		return
	}
	// The slot is given back once the hello is answered (below), or on
	// any way out before that.
	release = sync.OnceFunc(release)
	defer release()
	// The hello is answered for as long as the connection lives: one that
	// waited for its turn may be gone by now, and a slot must not be spent
	// recording it.
	hctx, hcancel := context.WithCancel(ctx)
	defer hcancel()
	defer context.AfterFunc(qc.Context(), hcancel)()
	if hctx.Err() != nil || qc.Context().Err() != nil {
		return
	}
	ack, err := s.cfg.OnHello(hctx, id, qc.RemoteAddr(), hello)
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
	ack.LinkKey = make([]byte, proto.LinkKeySize)
	rand.Read(ack.LinkKey)
	ack.ResetToken = proto.LinkResetToken(s.linkKey, tag)
	// Register before answering: once the agent has the answer it counts as
	// up, and a stream may be opened to it at once.
	dc := &deviceConn{qc: qc, since: s.cfg.Now(), ctrl: ctrl, addr: qc.RemoteAddr().String(),
		linkKey: ack.LinkKey, window: silenceWindow(hello, ack)}
	dc.heard.Store(dc.since.UnixNano())
	dc.packets.Store(qc.ConnectionStats().PacketsReceived)
	var lost []*session
	s.mu.Lock()
	old := s.conns[id]
	s.conns[id] = dc
	s.tags[string(tag)] = dc
	s.setAddrLocked(dc, dc.addr)
	close(s.changed)
	s.changed = make(chan struct{})
	prev, known := s.boots[id]
	for _, ss := range s.sessions[id] {
		if ss.boot != "" && ss.boot != hello.BootID || ss.boot == "" && known && prev != hello.BootID {
			lost = append(lost, ss)
		}
	}
	s.boots[id] = hello.BootID
	delete(s.left, id)
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
		if err := s.cfg.Recheck(hctx, id); err != nil {
			s.mu.Lock()
			delete(s.tags, string(tag))
			for _, a := range dc.byAddr {
				if s.byAddr[a] == dc {
					delete(s.byAddr, a)
				}
			}
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
	release()
	if err := ctrl.send(ack); err != nil {
		qc.CloseWithError(quic.ApplicationErrorCode(proto.CodeInternal), "write hello ack")
	}
	log.Info("device connected", "name", hello.Name, "agent_version", hello.AgentVersion)

	cctx, cancel := context.WithCancel(ctx)
	go s.acceptResumes(cctx, id, qc, log)
	err = s.controlLoop(ctx, id, dc, r)
	cancel()
	heard := s.lastHeard(dc)
	s.mu.Lock()
	// When the fleet stops, this connection closes here with closeAll's
	// reason: closeAll may already have missed it in s.conns.
	var stopReason string
	stopping := ctx.Err() != nil
	if stopping {
		stopReason = s.stopReasonLocked()
	}
	delete(s.tags, string(tag))
	for _, a := range dc.byAddr {
		if s.byAddr[a] == dc {
			delete(s.byAddr, a)
		}
	}
	current := s.conns[id] == dc
	if current {
		delete(s.conns, id)
		s.left[id] = departure{at: s.cfg.Now(), lastHeard: heard, returning: returning(err)}
		close(s.changed)
		s.changed = make(chan struct{})
	}
	s.mu.Unlock()
	if stopping {
		qc.CloseWithError(quic.ApplicationErrorCode(proto.CodeUnavailable), stopReason)
	} else {
		qc.CloseWithError(closeOK, "")
	}
	if current {
		log.Info("device disconnected", "err", err, "last_heard", heard.UTC().Format(time.RFC3339))
		if s.cfg.OnDisconnect != nil {
			s.cfg.OnDisconnect(id, heard, err)
		}
	}
}

// helloTurn waits (up to Config.HelloWait) for a slot to answer a hello
// in; release gives it back. Without one in time the device is told, as
// when the fleet restarts, to come back within a spread sized to the crowd
// waiting, and ok is false.
func (s *Server) helloTurn(ctx context.Context, qc *quic.Conn) (release func(), ok bool) {
	release = func() { <-s.hellos }
	select {
	case s.hellos <- struct{}{}:
		return release, true
	default:
	}
	n := s.waiting.Add(1)
	defer s.waiting.Add(-1)
	t := time.NewTimer(s.cfg.HelloWait)
	defer t.Stop()
	select {
	case s.hellos <- struct{}{}:
		return release, true
	case <-t.C:
	case <-ctx.Done():
		// The fleet stops: this device goes elsewhere, spread out with
		// the others.
		s.mu.Lock()
		reason := s.stopReasonLocked()
		s.mu.Unlock()
		qc.CloseWithError(quic.ApplicationErrorCode(proto.CodeUnavailable), reason)
		return nil, false
	case <-qc.Context().Done():
		return nil, false
	}
	s.turned.Add(1)
	qc.CloseWithError(quic.ApplicationErrorCode(proto.CodeUnavailable), fmt.Sprintf(proto.BusyReason, spreadFor(int(n)+len(s.hellos)).Milliseconds()))
	return nil, false
}

// Turned counts the connections told to come back later because too many
// hellos were being answered at once (Config.MaxHellos).
func (s *Server) Turned() int64 { return s.turned.Load() }

// refuse tells the device why on the control stream, then closes.
func (s *Server) refuse(log *slog.Logger, qc *quic.Conn, st *quic.Stream, pe *proto.Error) {
	log.Warn("device refused", "code", pe.Code, "reason", pe.Message)
	st.SetWriteDeadline(time.Now().Add(2 * time.Second))
	proto.WriteMsg(st, pe)
	st.Close()
	qc.CloseWithError(quic.ApplicationErrorCode(pe.Code), pe.Message)
}

func (s *Server) controlLoop(ctx context.Context, id string, dc *deviceConn, r proto.ByteReader) error {
	ctrl := dc.ctrl
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
			s.heardNow(dc)
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
	ss := s.heldSession(id, req)
	if ss == nil {
		s.mu.Lock()
		relay := s.relay
		s.mu.Unlock()
		if relay != nil {
			taken, err := relay(ctx, id, req, conn)
			if taken {
				// Held by another replica, which answered; the relay is over.
				return nil
			}
			if err != nil {
				// Some replica did not answer: it may hold the session.
				// The agent keeps it and asks again.
				proto.WriteMsg(conn, &proto.ResumeAccept{Code: proto.CodeUnavailable, Message: "could not ask every fleet replica for the session; try again"})
				conn.CloseWrite()
				return fmt.Errorf("session %q: %w", req.SessionID, err)
			}
		}
		proto.WriteMsg(conn, &proto.ResumeAccept{Code: proto.CodeNotFound, Message: "the fleet holds no such session for this device"})
		conn.CloseWrite()
		return fmt.Errorf("session %q: unknown, or the secret is wrong", req.SessionID)
	}
	return s.reattach(id, ss, req, conn, qc.RemoteAddr())
}

// heldSession returns the session req resumes if this replica holds it
// for deviceID and req's secret is its own; nil otherwise.
func (s *Server) heldSession(deviceID string, req *proto.Resume) *session {
	s.mu.Lock()
	ss := s.sessions[deviceID][req.SessionID]
	s.mu.Unlock()
	if ss == nil || subtle.ConstantTimeCompare(ss.secret, req.Secret) != 1 {
		return nil
	}
	return ss
}

// reattach answers req, the agent's resume of ss, on conn and makes conn
// the session's transport.
func (s *Server) reattach(deviceID string, ss *session, req *proto.Resume, conn net.Conn, from net.Addr) error {
	ss.conn.Detach()
	have := ss.conn.Received()
	if req.Replaying && req.From > have {
		proto.WriteMsg(conn, &proto.ResumeAccept{Code: proto.CodeBadRequest,
			Message: fmt.Sprintf("replay from byte %d, but the fleet has only %d", req.From, have)})
		closeWrite(conn)
		return fmt.Errorf("session %q: the agent replays from %d, past the %d bytes the fleet has", req.SessionID, req.From, have)
	}
	if err := proto.WriteMsg(conn, &proto.ResumeAccept{Received: have}); err != nil {
		conn.Close()
		return err
	}
	attach := func() error { return ss.conn.Attach(conn, req.Received) }
	if req.Replaying {
		attach = func() error { return ss.conn.AttachFrom(conn, req.Received, req.From) }
	}
	if err := attach(); err != nil {
		conn.Close()
		if !errors.Is(err, io.EOF) {
			ss.conn.Abort(err)
		}
		return err
	}
	s.log.Info("session resumed", "device_id", deviceID, "session", ss.id, "addr", from)
	return nil
}

// closeWrite ends conn's sending side if it has one, else closes it.
func closeWrite(conn net.Conn) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
		return
	}
	conn.Close()
}

// ResumeRelay carries a device's resume stream, for a session this
// replica does not hold, to the replica that does (see RelayResumes).
type ResumeRelay func(ctx context.Context, deviceID string, req *proto.Resume, conn net.Conn) (taken bool, err error)

// RelayResumes sets how a resume of a session this replica does not hold
// reaches the replica that does (fleet/route): relay carries conn, the
// agent's resume stream (req already read from it), to that replica, and
// reports whether one took it; an error (not taken) says that some replica
// could not be asked, so the session may still be held: the agent is told
// to try again (proto.CodeUnavailable), not that the session is gone.
// Without it such resumes are refused.
func (s *Server) RelayResumes(relay ResumeRelay) {
	s.mu.Lock()
	s.relay = relay
	s.mu.Unlock()
}

// ResumeRelayed re-attaches a session held here to the agent's resume
// stream that another replica relays (it holds the device's tunnel, so it
// vouches for deviceID, and it read req from the stream). held is false,
// and accept is not called, when this replica holds no such session, or
// req's secret is not the session's; otherwise accept gives the stream,
// on which the session's answer goes.
func (s *Server) ResumeRelayed(deviceID string, req *proto.Resume, accept func() (net.Conn, error)) (held bool, err error) {
	ss := s.heldSession(deviceID, req)
	if ss == nil {
		return false, nil
	}
	conn, err := accept()
	if err != nil {
		return true, err
	}
	return true, s.reattach(deviceID, ss, req, conn, conn.RemoteAddr())
}

// DeviceBoot tells the server that deviceID's agent, with boot ID boot,
// connected to some replica: the sessions held here for an earlier boot of
// its agent end (ErrAgentRestarted), since the agent's side of them is
// gone. An empty boot changes nothing.
func (s *Server) DeviceBoot(deviceID, boot string) {
	if boot == "" {
		return
	}
	var lost []*session
	s.mu.Lock()
	for _, ss := range s.sessions[deviceID] {
		if ss.boot != "" && ss.boot != boot {
			lost = append(lost, ss)
		}
	}
	s.mu.Unlock()
	for _, ss := range lost {
		ss.conn.Abort(ErrAgentRestarted)
	}
	if len(lost) > 0 {
		s.log.Info("agent restarted on another replica; dropped its held sessions", "device_id", deviceID, "sessions", len(lost))
	}
}

// Sessions returns the number of sessions held for deviceID.
func (s *Server) Sessions(deviceID string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions[deviceID])
}

// EachLink calls fn with the counters of every live device tunnel and when
// its connection began (fleet/linkhealth samples them). fn runs without
// the server's lock held.
func (s *Server) EachLink(fn func(deviceID string, since time.Time, st quic.ConnectionStats)) {
	// A slice, not a map: this runs every second or so over every tunnel.
	type held struct {
		id string
		dc *deviceConn
	}
	s.mu.Lock()
	conns := make([]held, 0, len(s.conns))
	for id, dc := range s.conns {
		conns = append(conns, held{id, dc})
	}
	s.mu.Unlock()
	for _, h := range conns {
		fn(h.id, h.dc.since, h.dc.qc.ConnectionStats())
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

// closeAll tells every device the fleet is going, with a reconnect spread
// sized to the fleet (10 ms a device, 2 s to 2 min: fleetd serves a few
// hundred reconnects a second per core), and waits (up to closeWait) for the
// close frames to leave before the socket closes.
func (s *Server) closeAll() {
	s.mu.Lock()
	reason := s.stopReasonLocked()
	s.mu.Unlock()
	s.closeWith(reason)
}

// closeWith closes every device's connection with reason and waits (up to
// closeWait) for the close frames to leave; the closes go on after that
// until each connection's loop has ended (or the transport closes).
func (s *Server) closeWith(reason string) {
	s.mu.Lock()
	conns := make([]*deviceConn, 0, len(s.conns))
	for _, dc := range s.conns {
		conns = append(conns, dc)
	}
	s.mu.Unlock()
	// CloseWithError waits for the connection's loop to send the close
	// frame and end: one connection after another, 15,000 of them took
	// longer than a load balancer waits for a stopping replica. Closed
	// 64 at a time, each device hears within moments.
	done := make(chan struct{})
	go func() {
		defer close(done)
		var g errgroup.Group
		g.SetLimit(closers)
		for _, dc := range conns {
			g.Go(func() error {
				return dc.qc.CloseWithError(quic.ApplicationErrorCode(proto.CodeUnavailable), reason)
			})
		}
		g.Wait()
	}()
	select {
	case <-done:
	case <-time.After(closeWait):
	}
}

// closers is how many connections closeWith closes at once; closeWait is
// how long it waits for them.
const (
	closers   = 64
	closeWait = 5 * time.Second
)

// stopReasonLocked is the close reason for every connection once the fleet
// stops, fixed at the first call: a reconnect spread sized to the fleet
// then. s.mu is held.
func (s *Server) stopReasonLocked() string {
	if s.stopping == "" {
		s.stopping = restartReason(len(s.conns))
	}
	return s.stopping
}

// restartReason tells n devices to reconnect spread out over 10 ms a
// device, 2 s to 2 min (fleetd serves a few hundred reconnects a second per
// core).
func restartReason(n int) string {
	return fmt.Sprintf(proto.RestartReason, spreadFor(n).Milliseconds())
}

// spreadFor is the time over which n devices should come back: 10 ms a
// device, 2 s to 2 min.
func spreadFor(n int) time.Duration {
	return min(max(time.Duration(n)*10*time.Millisecond, 2*time.Second), 2*time.Minute)
}

// Shed closes every device's tunnel as closeAll does when the fleet stops
// (the agents reconnect, spread out, to whichever fleetd answers them), and
// goes on serving: a replica that can no longer record its devices sends
// them to another.
func (s *Server) Shed() {
	s.mu.Lock()
	reason := restartReason(len(s.conns))
	s.mu.Unlock()
	s.closeWith(reason)
}

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
