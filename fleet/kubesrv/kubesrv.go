// Package kubesrv is the fleet's Kubernetes endpoint: it forwards the
// Kubernetes API requests of users (kubectl with the kubeconfig that tsh
// kube login wrote) down a device's tunnel to the device's cluster, or to
// the cluster fleetd itself runs in, as the Kubernetes user and groups the
// user's roles map them to.
//
// The HTTPS API (fleet/httpapi) authenticates the user's X.509 certificate
// and has the broker (fleet/broker) check their roles; Serve then
//
//   - drops the client's own Impersonate-* and Authorization headers (the
//     user already chose among what they may act as: see Resolve);
//   - for a device, sends the request as HTTP/1.1 on a "kube" stream that
//     the broker opens down the device's tunnel, whose header names the
//     user, their roles and the Kubernetes user and groups; the agent (firmware/kubeproxy) adds the
//     impersonation headers and the cluster's credentials. Streams are
//     pooled per device and identity (keep-alive), ride the resume layer
//     like every brokered stream, and so outlive link drops;
//   - for the local cluster, adds impersonation headers and the service
//     account's token itself and sends the request to the API server;
//   - streams responses (watches) as they come and passes upgrades (SPDY,
//     WebSocket: exec, attach, port-forward) through both ways;
//   - registers long-running requests (watches, followed logs, exec,
//     attach, port-forward) as live sessions with the broker, which end
//     when the user's certificate expires or their access is removed: a
//     JSON watch with an ERROR event whose Status says why, a WebSocket
//     exec with that Status on its error channel (kubectl prints it);
//   - audits every request (user, device, verb, resource, namespace, name,
//     response code), each session's start and end, and fails closed:
//     nothing goes ahead unrecorded (Serve);
//   - records kubectl exec -it and attach -it terminals (asciicast v2).
//
// Only fleet/... server packages import kubesrv.
package kubesrv

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"time"

	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/proto/kubewire"
)

// Config configures a Server. Broker is required.
type Config struct {
	// Broker opens the streams down device tunnels and registers the
	// long-running requests as live sessions. A request to a device the
	// fleet knows to be offline (Broker.Online) fails at once (503)
	// instead of waiting on a pooled stream for the device to come back;
	// requests already under way (watches, exec) keep waiting, up to the
	// tunnel's session hold time.
	Broker *broker.Broker
	// Local is the cluster fleetd runs in (DetectLocal); nil when none.
	Local *Local
	// Audit records an event per request (two for a request that changes
	// the cluster: before and after) and per session's start and end
	// (Serve has the rules); an error means the event was not recorded,
	// and what it describes does not go ahead. Nil records them with the
	// broker (kubewire.Event.AuditEvent, broker.Record).
	Audit func(kubewire.Event) error
	// Recordings, when set, records the terminal of every kubectl exec -it
	// and attach -it that speaks a WebSocket remote command protocol
	// (asciicast v2, like SSH sessions).
	Recordings RecordingSink
	// IdleTimeout closes pooled streams idle this long; default 90s.
	IdleTimeout time.Duration
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server forwards Kubernetes API requests. Create it with New.
type Server struct {
	cfg    Config
	log    *slog.Logger
	tr     *http.Transport
	device *httputil.ReverseProxy
	local  *httputil.ReverseProxy
}

// New returns a Server for cfg.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 90 * time.Second
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	s.tr = &http.Transport{
		DialContext:         s.dial,
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     cfg.IdleTimeout,
		DisableCompression:  true,
		Proxy:               nil,
	}
	s.device = &httputil.ReverseProxy{
		Rewrite:        s.rewriteDevice,
		Transport:      s.tr,
		FlushInterval:  -1,
		ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		ErrorHandler:   s.proxyError,
		ModifyResponse: s.modifyResponse,
	}
	if cfg.Local != nil {
		s.local = &httputil.ReverseProxy{
			Rewrite:        cfg.Local.rewrite,
			Transport:      cfg.Local.tr,
			FlushInterval:  -1,
			ErrorLog:       slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
			ErrorHandler:   s.proxyError,
			ModifyResponse: s.modifyResponse,
		}
	}
	return s
}

// Local returns the local cluster, or nil.
func (s *Server) Local() *Local { return s.cfg.Local }

// Close closes idle pooled streams.
func (s *Server) Close() {
	s.tr.CloseIdleConnections()
	if s.cfg.Local != nil {
		s.cfg.Local.tr.CloseIdleConnections()
	}
}

type grantKey struct{}

// poolHost names the connection pool of a grant: requests share pooled
// streams only when the stream header would be the same.
func poolHost(g *broker.Grant) string {
	h := sha256.New()
	id := g.Identity()
	// The expiry too: the agent ends a stream at the expiry its header
	// gives, so a new login's requests must not ride an old login's.
	expires := strconv.FormatInt(id.Expires, 10)
	for _, s := range append([]string{g.Session.DeviceID, id.User, id.Cluster, id.KubeUser, strings.Join(id.Roles, ","), expires, strconv.FormatBool(id.RecordInput)}, id.KubeGroups...) {
		fmt.Fprintf(h, "%d:%s;", len(s), s)
	}
	return hex.EncodeToString(h.Sum(nil)[:16]) + ".kube.invalid"
}

// dial has the broker open a kube stream down the device's tunnel for the
// grant the request carries in its context.
func (s *Server) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	g, _ := ctx.Value(grantKey{}).(*broker.Grant)
	if g == nil || g.Session.DeviceID == "" {
		return nil, errors.New("kubesrv: dial without a device grant")
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	return s.cfg.Broker.OpenPooled(ctx, g, "")
}

// stripClientAuth removes what the client may not pass on: its own
// impersonation and credentials.
func stripClientAuth(h http.Header) {
	for k := range h {
		if len(k) >= len("Impersonate-") && strings.EqualFold(k[:len("Impersonate-")], "Impersonate-") {
			delete(h, k)
		}
	}
	h.Del("Authorization")
}

func (s *Server) rewriteDevice(pr *httputil.ProxyRequest) {
	g := pr.In.Context().Value(grantKey{}).(*broker.Grant)
	pr.Out.URL.Scheme = "http"
	pr.Out.URL.Host = poolHost(g)
	pr.Out.Host = "kube"
	stripClientAuth(pr.Out.Header)
}

// proxyError answers a failed forward with a Kubernetes Status.
func (s *Server) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	g, _ := r.Context().Value(grantKey{}).(*broker.Grant)
	name := ""
	if g != nil {
		name = g.Session.DeviceName
	}
	var ref *broker.Refusal
	switch {
	case errors.Is(err, kubewire.ErrNotAudited):
		kubewire.WriteStatus(w, r, http.StatusServiceUnavailable, auditRefusal)
	case errors.Is(err, context.Canceled):
		return // the client went away, or the fleet ended the session
	case errors.Is(err, context.DeadlineExceeded) && g != nil && !g.Session.Expires.IsZero() && !s.cfg.Now().Before(g.Session.Expires):
		kubewire.WriteStatus(w, r, http.StatusUnauthorized, "your fleet certificate expired: run tsh login")
	case errors.As(err, &ref) && ref.Status == broker.StatusOffline:
		kubewire.WriteStatus(w, r, http.StatusServiceUnavailable, fmt.Sprintf("device %q is offline; it reconnects by itself when its link is back", name))
	case errors.As(err, &ref) && ref.Status == broker.StatusNotFound:
		kubewire.WriteStatus(w, r, http.StatusNotFound, fmt.Sprintf("device %q does not offer Kubernetes: %s", name, ref.Msg))
	case errors.As(err, &ref) && ref.Status == broker.StatusForbidden:
		kubewire.WriteStatus(w, r, http.StatusForbidden, fmt.Sprintf("device %q refused: %s", name, strings.TrimPrefix(ref.Msg, "the device refused: ")))
	default:
		s.log.Warn("kubernetes request failed", "cluster", name, "path", r.URL.Path, "err", err)
		kubewire.WriteStatus(w, r, http.StatusBadGateway, fmt.Sprintf("cannot reach the Kubernetes API of %q: %v", name, err))
	}
}

// audit records ev; an error means it could not be.
func (s *Server) audit(ev kubewire.Event) error {
	record := s.cfg.Audit
	if record == nil {
		record = func(ev kubewire.Event) error {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return s.cfg.Broker.Record(ctx, ev.AuditEvent())
		}
	}
	if err := record(ev); err != nil {
		s.log.Error("kubernetes audit event not recorded", "type", ev.Type, "user", ev.User, "cluster", ev.Cluster, "err", err)
		return err
	}
	return nil
}
