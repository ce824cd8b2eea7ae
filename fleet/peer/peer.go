// Package peer is the connection between fleetd replicas: mutual TLS 1.3
// with replica certificates from the fleet's CA (fleet/ca's KindReplica),
// HTTP/2 on top, one pooled connection per pair of replicas. A replica
// calls its peers to reach a device whose tunnel another replica holds
// (fleet/route) and to ask them what only they know.
//
// Both ends check the other's certificate at every handshake against the
// CAs in force (a rotation reaches the peer connections at once): it must
// chain to the fleet's CA, be a replica's, and, on the calling side, name
// the replica the caller meant to reach (a replica's ID is its
// certificate's CN). No certificate of a user, device or admin is
// accepted, and no endpoint of users or devices accepts a replica's
// certificate.
//
// Stream gives a full-duplex byte stream on one HTTP/2 request: the request
// body carries bytes to the peer, the response body bytes back, each with
// its own end (CloseWrite), as a net.Conn.
//
// Only fleet/... server packages import peer.
package peer

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/ca"
)

// CA is what the peer connections need of the fleet's CA (*ca.Authority).
type CA interface {
	CertPool() *x509.CertPool
	Identify(cert *x509.Certificate) (ca.Identity, error)
	ReplicaCert(id string, hosts []string, ttl time.Duration) (tls.Certificate, error)
}

// Config configures a Node. CA, ID and Hosts are required.
type Config struct {
	CA CA
	// ID is this replica's ID (its certificate's CN).
	ID string
	// Hosts are the DNS names and IPs peers reach this replica at; they go
	// into its certificate.
	Hosts []string
	// Handler serves the peers' requests. The request's context carries
	// the calling replica's ID (Caller).
	Handler http.Handler
	// CertTTL is the replica certificate's lifetime; it is renewed at half
	// of it. Default 24h.
	CertTTL time.Duration
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
}

// Node is one replica's end of the peer connections: a server for its
// peers and a client of theirs. Create it with New.
type Node struct {
	cfg Config
	log *slog.Logger
	tr  *http.Transport

	mu      sync.Mutex // guards cert and renewAt
	cert    *tls.Certificate
	renewAt time.Time
}

// New returns a Node for cfg, with its first certificate issued.
func New(cfg Config) (*Node, error) {
	if cfg.CA == nil || cfg.ID == "" || len(cfg.Hosts) == 0 {
		return nil, errors.New("peer: CA, ID and Hosts are required")
	}
	if cfg.CertTTL <= 0 {
		cfg.CertTTL = 24 * time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Handler == nil {
		cfg.Handler = http.NotFoundHandler()
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("component", "peer")}
	if _, err := n.certificate(); err != nil {
		return nil, err
	}
	var h2only http.Protocols
	h2only.SetHTTP2(true)
	n.tr = &http.Transport{
		DialTLSContext:    func(ctx context.Context, network, addr string) (net.Conn, error) { return n.dial(ctx, network, addr) },
		ForceAttemptHTTP2: true,
		Protocols:         &h2only,
		HTTP2: &http.HTTP2Config{
			SendPingTimeout:  30 * time.Second,
			PingTimeout:      10 * time.Second,
			WriteByteTimeout: 30 * time.Second,
		},
	}
	return n, nil
}

// server is the HTTP server of the peer listener: HTTP/2 only, the
// caller's replica ID in each request's context.
func (n *Node) server(ctx context.Context) *http.Server {
	var h2only http.Protocols
	h2only.SetHTTP2(true)
	return &http.Server{
		Protocols: &h2only,
		TLSConfig: n.ServerTLS(),
		// Bounds the TLS handshake too.
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		HTTP2: &http.HTTP2Config{
			// Room for a stream's bytes in flight between replicas on
			// the same network: 4 MiB a stream, 64 MiB a connection.
			MaxReceiveBufferPerStream:     4 << 20,
			MaxReceiveBufferPerConnection: 64 << 20,
			MaxConcurrentStreams:          10000,
			SendPingTimeout:               30 * time.Second,
			PingTimeout:                   10 * time.Second,
		},
		BaseContext: func(net.Listener) context.Context { return ctx },
		ErrorLog:    slog.NewLogLogger(n.log.Handler(), slog.LevelWarn),
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// The handshake checked the chain (ServerTLS); this names
			// the replica.
			caller, err := n.verifyReplica(*r.TLS)
			if err != nil {
				http.Error(w, "peer: refused: "+err.Error(), http.StatusForbidden)
				return
			}
			n.cfg.Handler.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, caller)))
		}),
	}
}

// certificate returns the replica's certificate, issuing a new one when
// half its life has passed.
func (n *Node) certificate() (*tls.Certificate, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cert != nil && time.Now().Before(n.renewAt) {
		return n.cert, nil
	}
	c, err := n.cfg.CA.ReplicaCert(n.cfg.ID, n.cfg.Hosts, n.cfg.CertTTL)
	if err != nil {
		if n.cert != nil {
			n.log.Error("renew the replica certificate; keeping the current one", "err", err)
			return n.cert, nil
		}
		return nil, fmt.Errorf("peer: %w", err)
	}
	n.cert, n.renewAt = &c, time.Now().Add(n.cfg.CertTTL/2)
	return n.cert, nil
}

// ALPN is the protocol the peer connections negotiate.
const ALPN = "h2"

// verifyReplica checks a peer's certificate chain against the CAs in force
// and returns the replica it names.
func (n *Node) verifyReplica(cs tls.ConnectionState) (string, error) {
	if len(cs.PeerCertificates) == 0 {
		return "", errors.New("no certificate")
	}
	leaf := cs.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: n.cfg.CA.CertPool(), Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		return "", err
	}
	id, err := n.cfg.CA.Identify(leaf)
	if err != nil {
		return "", err
	}
	if id.Kind != ca.KindReplica {
		return "", fmt.Errorf("a %s certificate is not a replica's", id.Kind)
	}
	return id.Name, nil
}

// ServerTLS is the TLS config of the peer listener.
func (n *Node) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN},
		ClientAuth: tls.RequireAnyClientCert,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return n.certificate()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if _, err := n.verifyReplica(cs); err != nil {
				return fmt.Errorf("peer: refused: %w", err)
			}
			return nil
		},
	}
}

type callerKey struct{}

// Caller returns the ID of the replica that made a request served by the
// Node's handler.
func Caller(ctx context.Context) string {
	id, _ := ctx.Value(callerKey{}).(string)
	return id
}

// Serve serves peers on ln (a plain TCP listener: Serve does TLS) until ctx
// ends; then it closes every peer connection.
func (n *Node) Serve(ctx context.Context, ln net.Listener) error {
	srv := n.server(ctx)
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("peer: serve: %w", err)
	}
	return nil
}

// Target is a replica to call: its ID and where it listens for peers.
type Target struct {
	ID, Addr string
}

type targetKey struct{}

// dial connects to the replica the request's context names, checking
// that the certificate it shows is that replica's.
func (n *Node) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	t, _ := ctx.Value(targetKey{}).(Target)
	if t.ID == "" {
		return nil, errors.New("peer: dial without a target replica")
	}
	d := &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 15 * time.Second}
	raw, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	conf := &tls.Config{
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{ALPN},
		InsecureSkipVerify: true, // verifyReplica checks the chain, against the CAs in force
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return n.certificate()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			id, err := n.verifyReplica(cs)
			if err != nil {
				return err
			}
			if id != t.ID {
				return fmt.Errorf("%s answered as replica %q, want %q", addr, id, t.ID)
			}
			return nil
		},
	}
	c := tls.Client(raw, conf)
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("peer: handshake with replica %s at %s: %w", t.ID, addr, err)
	}
	return c, nil
}

// request makes an HTTP request to replica t.
func (n *Node) request(ctx context.Context, t Target, method, path string, q url.Values, body io.Reader) (*http.Request, error) {
	u := url.URL{Scheme: "https", Host: t.Addr, Path: path, RawQuery: q.Encode()}
	// The transport pools connections by address; the target rides in
	// the context, for the dialler to check who answers.
	return http.NewRequestWithContext(context.WithValue(ctx, targetKey{}, t), method, u.String(), body)
}

// Do sends a request with body (nil: none) to replica t and returns the
// answer's body; a status other than 2xx is an *Error with the peer's
// message.
func (n *Node) Do(ctx context.Context, t Target, method, path string, q url.Values, body []byte) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := n.request(ctx, t, method, path, q, rd)
	if err != nil {
		return nil, fmt.Errorf("peer: %w", err)
	}
	resp, err := n.tr.RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("peer: %s %s on replica %s: %w", method, path, t.ID, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxAnswer+1))
	if err != nil {
		return nil, fmt.Errorf("peer: %s %s on replica %s: read answer: %w", method, path, t.ID, err)
	}
	if len(b) > MaxAnswer {
		return nil, fmt.Errorf("peer: %s %s on replica %s: answer over %d bytes", method, path, t.ID, MaxAnswer)
	}
	if resp.StatusCode/100 != 2 {
		return nil, &Error{Status: resp.StatusCode, Message: string(bytes.TrimSpace(b))}
	}
	return b, nil
}

// Get sends a GET to replica t and returns the answer's body as it comes
// (a recording, say); the caller closes it. A status other than 2xx is an
// *Error.
func (n *Node) Get(ctx context.Context, t Target, path string, q url.Values) (io.ReadCloser, error) {
	req, err := n.request(ctx, t, http.MethodGet, path, q, nil)
	if err != nil {
		return nil, fmt.Errorf("peer: %w", err)
	}
	resp, err := n.tr.RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("peer: GET %s on replica %s: %w", path, t.ID, err)
	}
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		return nil, &Error{Status: resp.StatusCode, Message: string(bytes.TrimSpace(b))}
	}
	return resp.Body, nil
}

// MaxAnswer bounds the answer Do reads.
const MaxAnswer = 64 << 20

// Error is a peer's refusal.
type Error struct {
	Status  int
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("peer: %d: %s", e.Status, e.Message) }

// Stream opens a full-duplex byte stream to replica t's handler at path:
// first (nil: nothing) is sent at once, for the handler to read before it
// answers; then what is written goes to the handler's request body, and
// what the handler writes comes back. It returns once the handler has
// answered (see Accept): a status other than 200 is an *Error. ctx bounds
// only the opening.
func (n *Node) Stream(ctx context.Context, t Target, path string, q url.Values, first []byte) (*Stream, error) {
	pr, pw := io.Pipe()
	req, err := n.request(context.WithoutCancel(ctx), t, http.MethodPost, path, q, pr)
	if err != nil {
		return nil, fmt.Errorf("peer: %w", err)
	}
	rctx, cancel := context.WithCancel(req.Context())
	req = req.WithContext(rctx)
	type result struct {
		resp *http.Response
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		resp, err := n.tr.RoundTrip(req)
		ch <- result{resp, err}
	}()
	wrote := make(chan error, 1)
	go func() {
		var err error
		if len(first) > 0 {
			_, err = pw.Write(first)
		}
		wrote <- err
	}()
	fail := func(err error) (*Stream, error) {
		cancel()
		pw.CloseWithError(err)
		return nil, err
	}
	var res result
	select {
	case res = <-ch:
	case <-ctx.Done():
		cancel()
		pw.CloseWithError(ctx.Err())
		if r := <-ch; r.resp != nil {
			r.resp.Body.Close()
		}
		return nil, fmt.Errorf("peer: open %s on replica %s: %w", path, t.ID, ctx.Err())
	}
	if res.err != nil {
		return fail(fmt.Errorf("peer: open %s on replica %s: %w", path, t.ID, res.err))
	}
	if res.resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(res.resp.Body, 64<<10))
		res.resp.Body.Close()
		return fail(&Error{Status: res.resp.StatusCode, Message: string(bytes.TrimSpace(b))})
	}
	// The handler answered after reading first, so the write is done (or
	// failed with the request).
	if err := <-wrote; err != nil {
		res.resp.Body.Close()
		return fail(fmt.Errorf("peer: open %s on replica %s: %w", path, t.ID, err))
	}
	return &Stream{r: res.resp.Body, w: pw, cancel: cancel, abort: cancel, remote: addr(t.Addr), Header: res.resp.Header}, nil
}

// Accept answers a stream's opening (Stream returns on it) and returns the
// handler's side of the stream, which reads from body (the request's body,
// or a buffered reader on it that read what Stream sent first; nil: the
// request's body).
func Accept(w http.ResponseWriter, r *http.Request, body io.Reader) (*Stream, error) {
	rc := http.NewResponseController(w)
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return nil, fmt.Errorf("peer: accept stream: %w", err)
	}
	rd := io.ReadCloser(r.Body)
	if body != nil {
		rd = readCloser{Reader: body, Closer: r.Body}
	}
	// An abort unblocks a write stuck on the peer's flow control (a peer
	// that stopped reading): Close alone would wait for it.
	abort := func() { rc.SetWriteDeadline(time.Unix(1, 0)) }
	return &Stream{r: rd, w: &flushWriter{w: w, rc: rc}, abort: abort, remote: addr(r.RemoteAddr)}, nil
}

type readCloser struct {
	io.Reader
	io.Closer
}

type flushWriter struct {
	mu     sync.Mutex // guards closed, and serialises writes
	w      io.Writer
	rc     *http.ResponseController
	closed bool
}

func (f *flushWriter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0, net.ErrClosed
	}
	n, err := f.w.Write(p)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}

// Close stops writes; the handler returning ends the response.
func (f *flushWriter) Close() error {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	return nil
}

// Stream is one end of a full-duplex stream between replicas. It is a
// net.Conn with CloseWrite; deadlines are not supported (they return an
// error): close the stream instead.
type Stream struct {
	// Header is the handler's answer's header, on the caller's side
	// (what the handler set before Accept); nil on the handler's side.
	Header http.Header

	r      io.ReadCloser
	w      io.WriteCloser
	cancel context.CancelFunc // the caller's side: ends the request
	abort  func()             // fails writes in progress
	remote net.Addr
	once   sync.Once
}

func (s *Stream) Read(p []byte) (int, error)  { return s.r.Read(p) }
func (s *Stream) Write(p []byte) (int, error) { return s.w.Write(p) }

// CloseWrite ends the bytes to the other side; it can still read.
func (s *Stream) CloseWrite() error { return s.w.Close() }

// Close ends the stream both ways.
func (s *Stream) Close() error {
	s.once.Do(func() {
		s.w.Close()
		s.r.Close()
		if s.cancel != nil {
			s.cancel()
		}
	})
	return nil
}

// Abort ends the stream at once: a write blocked on the other side's
// flow control fails, where Close would wait for it.
func (s *Stream) Abort() {
	if s.abort != nil {
		s.abort()
	}
	s.Close()
}

// LocalAddr returns a placeholder address.
func (s *Stream) LocalAddr() net.Addr { return addr("peer") }

// RemoteAddr returns the other replica's address.
func (s *Stream) RemoteAddr() net.Addr { return s.remote }

// SetDeadline is not supported.
func (s *Stream) SetDeadline(time.Time) error { return os.ErrNoDeadline }

// SetReadDeadline is not supported.
func (s *Stream) SetReadDeadline(time.Time) error { return os.ErrNoDeadline }

// SetWriteDeadline is not supported.
func (s *Stream) SetWriteDeadline(time.Time) error { return os.ErrNoDeadline }

type addr string

func (a addr) Network() string { return "peer" }
func (a addr) String() string  { return string(a) }

// CloseIdle closes the idle pooled connections.
func (n *Node) CloseIdle() { n.tr.CloseIdleConnections() }
