// Package kubeproxy is the agent's end of Kubernetes access: it serves the
// "kube" streams the fleet brokers down the tunnel by forwarding the HTTP
// requests on them to the device's own Kubernetes API server (k3s), with
// the cluster credentials from the device's kubeconfig, as the Kubernetes
// user and groups the fleet resolved for the user.
//
// Each stream carries HTTP/1.1 from the fleet (plain: the tunnel is already
// encrypted and authenticated). For every request the proxy
//
//   - drops every Impersonate-* (and X-Remote-*) header and any
//     Authorization header that came from the user, so no one gains what
//     the fleet did not grant;
//   - sets Impersonate-User and Impersonate-Group from the stream header's
//     fleet-verified identity (proto.Identity.KubeUser, KubeGroups), and
//     refuses a stream that names no Kubernetes user;
//   - adds the cluster credentials (client certificate, bearer token or
//     basic) and sends the request to the API server over TLS (HTTP/1.1).
//
// Responses stream through as they come (watches are flushed at once), and
// HTTP upgrades (SPDY/3.1 and WebSocket, as kubectl exec, attach and
// port-forward use) are passed through both ways.
//
// A user-held stream (proto.StreamHeader.UserHeld: tsh proxy kube holds
// the session, and the fleet only relays its bytes, so that kubectl's
// connection survives the loss of the fleet replica it crossed) carries
// kubectl's own requests, which no fleet replica saw. For those the proxy
// does here what the fleet does for the requests it forwards (held.go):
// it refuses impersonation other than the session's, audits every request
// in the device's audit trail (services.Trail, which the agent gives it)
// before it goes ahead or is answered (refused with 503 when the trail
// refuses: the agent's audit_when_full), records exec -it and attach -it
// terminals, and ends the request under way with the fleet's reason (an
// exec's error channel, a watch's ERROR event) when the fleet ends the
// session.
//
// The kubeconfig is parsed here, minimally, so the agent does not link
// client-go: it reads the current context's cluster (server, CA, TLS server
// name) and user (client certificate and key, token or token file, basic);
// exec and auth-provider plugins are refused. It is read again when the
// file changes (k3s rewrites it when it renews its certificates).
//
// Only firmware/... imports this package. The Proxy is the agent's "kube"
// service (firmware/services), in agent.Config.Services.
package kubeproxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"remoteler.dev/edge/firmware/services"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/kubestatus"
	"remoteler.dev/edge/proto/kubewire"
)

// DefaultKubeconfig is where k3s writes its admin kubeconfig.
const DefaultKubeconfig = "/etc/rancher/k3s/k3s.yaml"

// Config configures a Proxy. The zero value works on a k3s device.
type Config struct {
	// Kubeconfig is the file naming the cluster's API server and the
	// credentials to reach it with; default DefaultKubeconfig. Its
	// credentials must be allowed to impersonate (k3s's admin is).
	Kubeconfig string
	// Reload is how often, at most, the kubeconfig file is checked for
	// changes (on a new stream); default 10s.
	Reload time.Duration
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Proxy forwards kube streams to the cluster's API server. Create it with
// New; it is safe for concurrent use.
type Proxy struct {
	cfg Config
	log *slog.Logger
	srv *http.Server
	ln  *streamListener

	mu      sync.Mutex // guards cur and checked
	cur     *backend
	checked time.Time

	serveOnce sync.Once
	served    chan struct{} // closed when srv.Serve has returned

	trail atomic.Pointer[services.Trail] // audits user-held streams
}

// backend is one loaded kubeconfig and what forwards to its server.
type backend struct {
	target  *Target
	modTime time.Time
	size    int64
	proxy   *httputil.ReverseProxy
	tr      *http.Transport
}

// New loads the kubeconfig and returns a Proxy. It fails when the file is
// missing or unusable: the agent then does not offer Kubernetes.
func New(cfg Config) (*Proxy, error) {
	if cfg.Kubeconfig == "" {
		cfg.Kubeconfig = DefaultKubeconfig
	}
	if cfg.Reload <= 0 {
		cfg.Reload = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	p := &Proxy{cfg: cfg, log: cfg.Logger, ln: newStreamListener(), served: make(chan struct{})}
	b, err := p.load()
	if err != nil {
		return nil, err
	}
	p.cur, p.checked = b, cfg.Now()
	p.srv = &http.Server{
		Handler:           http.HandlerFunc(p.serveHTTP),
		ReadHeaderTimeout: 30 * time.Second,
		// The fleet closes idle connections after 90 s; this frees the
		// ones it abandoned.
		IdleTimeout:    5 * time.Minute,
		MaxHeaderBytes: 1 << 20,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if sc, ok := c.(*streamConn); ok {
				return context.WithValue(context.WithValue(ctx, headerKey{}, sc.h), streamKey{}, sc)
			}
			return ctx
		},
		ErrorLog: slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
	}
	p.log.Info("kubernetes access offered", "kubeconfig", cfg.Kubeconfig, "server", b.target.Server.String())
	return p, nil
}

// Server returns the API server URL of the loaded kubeconfig.
func (p *Proxy) Server() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cur.target.Server.String()
}

// load reads the kubeconfig and builds a backend for it.
func (p *Proxy) load() (*backend, error) {
	st, err := os.Stat(p.cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("kubeproxy: %w", err)
	}
	t, err := LoadKubeconfig(p.cfg.Kubeconfig)
	if err != nil {
		return nil, err
	}
	b := &backend{target: t, modTime: st.ModTime(), size: st.Size()}
	b.tr = &http.Transport{
		TLSClientConfig: t.TLS.Clone(),
		// Never HTTP/2: upgrades need HTTP/1.1 connections.
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
	}
	b.proxy = &httputil.ReverseProxy{
		Rewrite:        func(pr *httputil.ProxyRequest) { rewrite(pr, t) },
		Transport:      b.tr,
		FlushInterval:  -1, // watches: every event as it comes
		ErrorLog:       slog.NewLogLogger(p.log.Handler(), slog.LevelDebug),
		ModifyResponse: p.modifyResponse,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, kubewire.ErrNotAudited) {
				kubewire.WriteStatus(w, r, http.StatusServiceUnavailable, auditRefusal)
				return
			}
			p.log.Warn("kubernetes API request failed", "method", r.Method, "path", r.URL.Path, "err", err)
			if errors.Is(err, context.Canceled) {
				return
			}
			WriteStatus(w, http.StatusBadGateway, "the device's Kubernetes API server did not answer: "+err.Error())
		},
	}
	return b, nil
}

// backend returns the current backend, reloading the kubeconfig when it
// changed (checked at most every cfg.Reload).
func (p *Proxy) backend() *backend {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.cfg.Now()
	if now.Sub(p.checked) < p.cfg.Reload {
		return p.cur
	}
	p.checked = now
	st, err := os.Stat(p.cfg.Kubeconfig)
	if err != nil || (st.ModTime().Equal(p.cur.modTime) && st.Size() == p.cur.size) {
		return p.cur
	}
	b, err := p.load()
	if err != nil {
		p.log.Warn("kubeconfig changed but cannot be used; keeping the previous one", "err", err)
		return p.cur
	}
	p.log.Info("kubeconfig reloaded", "server", b.target.Server.String())
	old := p.cur
	p.cur = b
	old.tr.CloseIdleConnections()
	return b
}

// rewrite turns a request from the fleet into one to the API server.
func rewrite(pr *httputil.ProxyRequest, t *Target) {
	pr.SetURL(t.Server)
	h := pr.Out.Header
	StripImpersonation(h)
	h.Del("Authorization")
	id := pr.In.Context().Value(headerKey{}).(*proto.StreamHeader).Identity
	h.Set("Impersonate-User", id.KubeUser)
	for _, g := range id.KubeGroups {
		h.Add("Impersonate-Group", g)
	}
	switch {
	case t.Token != "":
		h.Set("Authorization", "Bearer "+t.Token)
	case t.Username != "":
		pr.Out.SetBasicAuth(t.Username, t.Password)
	}
}

// StripImpersonation removes every header that could name who a request
// acts as: Impersonate-* (user, group, uid, extra) and the front proxy's
// X-Remote-* (which an API server honours only from its front-proxy
// client, never from the agent; removed all the same), whatever their
// spelling.
func StripImpersonation(h http.Header) {
	for k := range h {
		if hasPrefixFold(k, "Impersonate-") || hasPrefixFold(k, "X-Remote-") {
			delete(h, k)
		}
	}
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

type headerKey struct{}

func (p *Proxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	h, _ := r.Context().Value(headerKey{}).(*proto.StreamHeader)
	if h == nil || h.Identity.KubeUser == "" {
		WriteStatus(w, http.StatusForbidden, "the fleet named no Kubernetes user for this request")
		return
	}
	if r.ProtoMajor != 1 {
		WriteStatus(w, http.StatusBadRequest, "kube streams carry HTTP/1.1")
		return
	}
	b := p.backend()
	p.log.Debug("kubernetes request", "session", h.SessionID, "user", h.Identity.User,
		"kube_user", h.Identity.KubeUser, "method", r.Method, "path", r.URL.Path)
	if h.UserHeld {
		sc, _ := r.Context().Value(streamKey{}).(*streamConn)
		p.serveHeld(w, r, sc, b)
		return
	}
	b.proxy.ServeHTTP(w, r)
}

// ServeStream serves one kube stream: the HTTP/1.1 requests on conn, until
// either side closes it or ctx ends. It closes conn. Use it as
// the agent's "kube" service (Serve).
func (p *Proxy) ServeStream(ctx context.Context, h *proto.StreamHeader, conn net.Conn) {
	p.serveOnce.Do(func() {
		go func() {
			defer close(p.served)
			p.srv.Serve(p.ln)
		}()
	})
	sc := &streamConn{Conn: conn, h: h, ctx: ctx, done: make(chan struct{})}
	if !p.ln.push(sc) {
		conn.Close()
		return
	}
	select {
	case <-sc.done:
	case <-ctx.Done():
		// The fleet ended the session: the request under way hears why.
		var end *services.Ended
		if errors.As(context.Cause(ctx), &end) {
			sc.endHeld(end.Message)
		}
		sc.Close()
	}
}

// Close stops serving: open streams are closed.
func (p *Proxy) Close() error {
	p.ln.Close()
	err := p.srv.Close()
	p.mu.Lock()
	p.cur.tr.CloseIdleConnections()
	p.mu.Unlock()
	return err
}

// streamConn is a tunnel stream handed to the HTTP server; done is closed
// when the server (or an upgrade) closes it.
type streamConn struct {
	net.Conn
	h    *proto.StreamHeader
	ctx  context.Context // the stream's: its session, for the audit trail
	once sync.Once
	done chan struct{}
	// current is the request a user-held stream is serving.
	current atomic.Pointer[heldRequest]
}

type streamKey struct{}

func (c *streamConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.done) })
	return err
}

// CloseWrite passes a half-close on when the stream supports it.
func (c *streamConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Close()
}

// streamListener hands streams to http.Server.Serve.
type streamListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newStreamListener() *streamListener {
	return &streamListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

// push hands c to the server; false when the listener is closed.
func (l *streamListener) push(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.closed:
		return false
	}
}

func (l *streamListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *streamListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *streamListener) Addr() net.Addr { return streamAddr{} }

type streamAddr struct{}

func (streamAddr) Network() string { return "tunnel" }
func (streamAddr) String() string  { return "kube-streams" }

// WriteStatus answers with a Kubernetes Status object (what kubectl prints
// as "Error from server (Reason): message").
func WriteStatus(w http.ResponseWriter, code int, msg string) { kubestatus.Write(w, code, msg) }

// UseTrail implements services.Audited: the agent's audit trail, for the
// requests of user-held streams.
func (p *Proxy) UseTrail(t services.Trail) { p.trail.Store(&t) }

// Name is the service's name in the agent's registry (firmware/services).
func (p *Proxy) Name() string { return proto.ServiceKube }

// Check accepts every kube stream: the cluster's own RBAC decides what
// the impersonated user may do.
func (p *Proxy) Check(*proto.StreamHeader) error { return nil }

// Serve serves one kube stream (ServeStream).
func (p *Proxy) Serve(ctx context.Context, h *proto.StreamHeader, conn net.Conn) {
	p.ServeStream(ctx, h, conn)
}
