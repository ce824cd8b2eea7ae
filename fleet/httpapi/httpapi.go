// Package httpapi is fleetd's HTTPS API: open endpoints for ping, device join
// and user login; certificate-authenticated endpoints for listing devices and
// brokering connections down device tunnels; and the admin endpoints that
// fleetctl calls. The paths and JSON types are in proto/api.
//
// Every brokered connection is checked against the user's current roles
// before a stream is opened to the device. Every access decision, login and
// admin change is recorded in the audit log (Server.Events, package
// fleet/audit) as well as logged on the "audit" logger; a login or a session
// that cannot be recorded does not go ahead. GET /v1/audit searches the log
// and /v1/recordings serves session recordings.
//
// Only fleet/... imports this package.
package httpapi

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/admin"
	"remoteler.dev/edge/fleet/appjwt"
	"remoteler.dev/edge/fleet/apps"
	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/clusters"
	"remoteler.dev/edge/fleet/deviceauth"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/diskfloor"
	"remoteler.dev/edge/fleet/kubesrv"
	"remoteler.dev/edge/fleet/lifecycle"
	"remoteler.dev/edge/fleet/locks"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/recordings"
	"remoteler.dev/edge/fleet/releases"
	"remoteler.dev/edge/fleet/retention"
	"remoteler.dev/edge/fleet/rollouts"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/fleet/sourcelimit"
	"remoteler.dev/edge/fleet/sso"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/ticket"
	"remoteler.dev/edge/fleet/tokens"
	"remoteler.dev/edge/fleet/trust"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// Tunnels reaches devices: *tunnelsrv.Server on one fleetd, fleet/route's
// Router on several replicas.
type Tunnels interface {
	Open(ctx context.Context, deviceID string, h *proto.StreamHeader) (net.Conn, error)
	Send(deviceID string, m proto.Message) error
	Online(deviceID string) bool
	Info(deviceID string) (tunnelsrv.Info, bool)
	Count() int
	Disconnect(deviceID, reason string)
	// EndReason says, in words for the user, why a brokered session whose
	// device side failed with err ended (tunnelsrv.Server.EndReason).
	EndReason(err error) string
}

// Server serves the API. Fields without a default are required.
type Server struct {
	CA      *ca.Authority
	Users   *users.Service
	Roles   *rbac.Roles
	Tokens  *tokens.Service
	Devices *devices.Registry
	Tunnels Tunnels
	// Peers asks the fleet's other replicas, with several (searches and
	// verifications of the audit cover them all); nil on one fleetd.
	Peers Peers
	// Kube forwards Kubernetes API requests (kube.go); nil turns
	// Kubernetes access off.
	Kube *kubesrv.Server
	// Events is the audit log: access decisions, logins and admin changes
	// are recorded in it, and GET /v1/audit searches it. Nil records
	// nothing but the Audit log lines.
	Events *audit.Log
	// Recordings holds the session recordings /v1/recordings serves; nil
	// serves none.
	Recordings *recordings.Store
	// Apps lists the web apps on devices (GET /v1/apps, tsh apps login);
	// nil: none. AppKeys sign the JWTs apps get; nil: no rotation.
	Apps    *apps.Catalog
	AppKeys *appjwt.Keys
	// SSO is single sign-on (fleet/sso), Tickets the login tickets its
	// logins and headless logins end in, and DeviceAuth the headless
	// login's device flow; nil SSO and DeviceAuth turn them off.
	SSO        *sso.Service
	Tickets    *ticket.Service
	DeviceAuth *deviceauth.Server
	// Releases and Rollouts serve the OTA admin endpoints (ota.go) and
	// the devices' update state; nil turns them off.
	Releases *releases.Service
	Rollouts *rollouts.Engine
	// Retention is the storage policy /v1/retention reads and sets, and
	// Floor the free-space floor it reports; nil: none.
	Retention *retention.Service
	Floor     *diskfloor.Floor
	// LinkLoss gives a device tunnel's packet loss outside blackouts, in
	// percent, and its blackouts (fleet/linkhealth); nil, or ok false,
	// falls back to QUIC's count of every lost packet.
	LinkLoss func(deviceID string) (percent float64, blackouts int, ok bool)

	Cluster   string
	Version   string
	Listen    string
	StartedAt time.Time

	// UserCertTTL is the default lifetime of user certificates; default 8h.
	// Roles' max_session_ttl caps it.
	UserCertTTL time.Duration
	// DeviceCertTTL is the lifetime of device certificates; default 7 days.
	// Agents renew at half-life.
	DeviceCertTTL time.Duration

	// LoginLimit rate-limits logins per source address; nil means
	// DefaultLoginBurst and DefaultLoginEvery (a zero Limiter turns it
	// off).
	LoginLimit *sourcelimit.Limiter

	// BodyIdleTimeout is the longest pause allowed inside a request body,
	// and BodyTimeout the longest a body may take in all; defaults
	// DefaultBodyIdleTimeout and DefaultBodyTimeout (see limits.go).
	BodyIdleTimeout, BodyTimeout time.Duration

	// Logger receives operational logs; Audit receives access decisions.
	// Nil discards them.
	Logger *slog.Logger
	Audit  *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	loginOnce sync.Once // sets LoginLimit's default
	// Sessions is the registry of live brokered sessions: the fleet ends
	// them when access ends (fleet/sessions), and GET /v1/sessions/ID
	// says how they ended. Nil: one of the Server's own, which ends
	// sessions only at certificate expiry.
	Sessions *sessions.Registry
	// SessionEndGrace is how long, after telling a device to end a
	// session, the fleet waits before it closes the session's both sides
	// itself; default 2s (fleet/broker's EndGrace).
	SessionEndGrace time.Duration

	// Locks is this replica's view of the locks in force: a locked user
	// gets no certificate and no answer from the API. LockStore writes
	// and lists them (/v1/locks). Nil: no locks.
	Locks     *locks.Set
	LockStore *locks.Service

	// Broker brokers sessions (fleet/broker). Nil: one of the Server's
	// own, built from the fields above.
	Broker *broker.Broker
	// Lifecycle joins devices (fleet/lifecycle). Nil: one of the
	// Server's own, built from the fields above.
	Lifecycle *lifecycle.Lifecycle

	// Admin takes admin actions (fleet/admin). Nil: one of the Server's
	// own, built from the fields above.
	Admin *admin.Admin

	// Clusters are the leaf clusters this fleet is the root of, and
	// Trust the root clusters it trusts (trusted clusters, clusters.go);
	// nil: none.
	Clusters *clusters.Registry
	Trust    *trust.Service

	ownSessions  sync.Once
	ownBroker    sync.Once
	ownLifecycle sync.Once
	ownAdmin     sync.Once
}

func (s *Server) actions() *admin.Admin {
	s.ownAdmin.Do(func() {
		if s.Admin == nil {
			s.Admin = admin.New(admin.Config{Users: s.Users, Roles: s.Roles, Tokens: s.Tokens, Devices: s.Devices,
				CAPin: s.CA.Pin, Disconnect: s.Tunnels.Disconnect, Changed: s.changed,
				Audit: &audit.Recorder{Log: s.Events, Cluster: s.Cluster, Logger: s.Audit}})
		}
	})
	return s.Admin
}

func (s *Server) lifecycle() *lifecycle.Lifecycle {
	s.ownLifecycle.Do(func() {
		if s.Lifecycle == nil {
			cfg := lifecycle.Config{CA: s.CA, Devices: s.Devices, Tokens: s.Tokens, Cluster: s.Cluster,
				CertTTL: s.DeviceCertTTL, Audit: &audit.Recorder{Log: s.Events, Cluster: s.Cluster, Logger: s.Audit},
				Logger: s.Logger, Now: s.Now}
			if s.Releases != nil {
				cfg.ReleaseKeys = func(ctx context.Context) []string { return s.Releases.TrustedKeys(ctx).Strings() }
			}
			s.Lifecycle = lifecycle.New(cfg)
		}
	})
	return s.Lifecycle
}

func (s *Server) sessions() *sessions.Registry {
	s.ownSessions.Do(func() {
		if s.Sessions == nil {
			s.Sessions = sessions.New(sessions.Config{Logger: s.Logger, Now: s.Now})
		}
	})
	return s.Sessions
}

func (s *Server) broker() *broker.Broker {
	s.ownBroker.Do(func() {
		if s.Broker != nil {
			return
		}
		var local func() (string, map[string]string, bool)
		if s.Kube != nil && s.Kube.Local() != nil {
			l := s.Kube.Local()
			local = func() (string, map[string]string, bool) { return l.Name, l.Labels, true }
		}
		s.Broker = broker.New(broker.Config{
			Tunnels: s.Tunnels, Offline: tunnelsrv.ErrOffline, NoAnswer: tunnelsrv.ErrNoAnswer, Devices: s.Devices, Sessions: s.sessions(), Locks: s.Locks, Local: local,
			Audit:   &audit.Recorder{Log: s.Events, Cluster: s.Cluster, Logger: s.Audit},
			Cluster: s.Cluster, EndGrace: s.SessionEndGrace, Logger: s.Logger, Now: s.Now,
		})
	})
	return s.Broker
}

// changed tells the session registry that users or roles changed, so
// that the sessions they no longer allow end.
func (s *Server) changed() { s.sessions().Changed() }

// maxBody bounds every request body.
const maxBody = 1 << 20

func (s *Server) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Server) log() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.New(slog.DiscardHandler)
}

func (s *Server) audit() *slog.Logger {
	if s.Audit != nil {
		return s.Audit
	}
	return slog.New(slog.DiscardHandler)
}

func (s *Server) userTTL() time.Duration {
	if s.UserCertTTL > 0 {
		return s.UserCertTTL
	}
	return 8 * time.Hour
}

// Handler returns the API's HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathPing, s.ping)
	mux.HandleFunc("POST "+api.PathJoin, s.join)
	mux.HandleFunc("POST "+api.PathLogin, s.login)

	mux.Handle("GET "+api.PathWhoami, s.authed(s.whoami))
	mux.Handle("GET "+api.PathDevices, s.authed(s.listDevices))
	mux.Handle("GET "+api.PathConnect, s.authed(s.connect))
	mux.HandleFunc("GET "+api.PathSessions+"/{id}", s.sessionEnd)

	mux.Handle("GET "+api.PathUsers, s.admin(s.listUsers))
	mux.Handle("POST "+api.PathUsers, s.admin(s.addUser))
	mux.Handle("DELETE "+api.PathUsers+"/{name}", s.admin(s.deleteUser))
	mux.Handle("GET "+api.PathRoles, s.admin(s.listRoles))
	mux.Handle("PUT "+api.PathRoles, s.admin(s.putRole))
	mux.Handle("DELETE "+api.PathRoles+"/{name}", s.admin(s.deleteRole))
	mux.Handle("GET "+api.PathTokens, s.admin(s.listTokens))
	mux.Handle("POST "+api.PathTokens, s.admin(s.addToken))
	mux.Handle("DELETE "+api.PathTokens+"/{id}", s.admin(s.deleteToken))
	mux.Handle("DELETE "+api.PathDevices+"/{name}", s.admin(s.deleteDevice))
	mux.Handle("GET "+api.PathStatus, s.admin(s.status))
	s.kubeRoutes(mux)
	s.appRoutes(mux)
	s.auditRoutes(mux)
	s.otaRoutes(mux)
	s.retentionRoutes(mux)
	s.ssoRoutes(mux)
	s.lockRoutes(mux)
	s.clusterRoutes(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("no such API endpoint: %s %s", r.Method, r.URL.Path))
	})
	return s.limitBodies(mux)
}

// caller is the authenticated party behind a request.
type caller struct {
	id      ca.Identity
	user    api.User      // for KindUser
	checker *rbac.Checker // for KindUser
	// remote is the caller a trusted root fleet vouches for (clusters.go):
	// a user whose roles the trust's role_map gave (user, checker), or
	// the root's admin identity (no checker). auditSearch says the trust
	// lets the root's admins search this fleet's audit trail.
	remote      *trust.Caller
	auditSearch bool
}

// isAdmin reports whether the caller may use the admin API: never a
// root's caller, who reaches this fleet's devices and, when the trust
// allows it, its audit (auditReader).
func (c *caller) isAdmin() bool {
	if c.remote != nil {
		return false
	}
	return c.id.Kind == ca.KindAdmin || (c.id.Kind == ca.KindUser && c.checker.IsAdmin())
}

// remoteAdmin reports whether the caller is a trusted root's admin
// identity.
func (c *caller) remoteAdmin() bool { return c.remote != nil && c.remote.Identity.Admin }

// auditReader reports whether the caller may search the audit trail: an
// admin, or a trusted root's admin (its admin identity, or a user whose
// roles here are admin's) when the trust allows it.
func (c *caller) auditReader() bool {
	if c.remote != nil {
		return c.auditSearch && (c.remote.Identity.Admin || (c.checker != nil && c.checker.IsAdmin()))
	}
	return c.isAdmin()
}

// actor is the caller as fleet/admin records it.
func (c *caller) actor(r *http.Request) admin.Actor {
	return admin.Actor{Name: c.name(), Addr: r.RemoteAddr}
}

func (c *caller) name() string {
	switch {
	case c.remoteAdmin():
		return "admin:" + c.remote.Identity.User + "@" + c.remote.Root
	case c.id.Kind == ca.KindUser:
		return c.id.Name
	}
	return string(c.id.Kind) + ":" + c.id.Name
}

// fill puts what the ask of a root's user carries besides the user: the
// root, the roles it vouched for and the request it relayed.
func (c *caller) fill(ask *broker.Ask) {
	if c.remote == nil {
		return
	}
	ask.Origin, ask.OriginRoles, ask.Via = c.remote.Root, c.remote.Identity.Roles, c.remote.Via
	if ask.Fields == nil {
		ask.Fields = map[string]string{}
	}
	ask.Fields["user_cluster"] = c.remote.Root
}

type handlerFunc func(w http.ResponseWriter, r *http.Request, c *caller)

// identify authenticates the request's client certificate. Users are
// looked up afresh: a removed user or a changed role takes effect at once.
func (s *Server) identify(r *http.Request) (*caller, error) {
	if rc, ok := trust.CallerFrom(r.Context()); ok {
		return s.identifyRemote(r.Context(), rc)
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil, errors.New("this endpoint needs a client certificate: run tsh login")
	}
	cert := r.TLS.PeerCertificates[0]
	id, err := s.CA.Identify(cert)
	if err != nil {
		if s.now().After(cert.NotAfter) {
			return nil, fmt.Errorf("your certificate expired at %s: run tsh login", cert.NotAfter.UTC().Format(time.RFC3339))
		}
		return nil, fmt.Errorf("bad client certificate: %v", err)
	}
	c := &caller{id: id}
	switch id.Kind {
	case ca.KindUser:
		u, err := s.Users.Get(r.Context(), id.Name)
		if err != nil {
			return nil, fmt.Errorf("user %q no longer exists", id.Name)
		}
		checker, err := s.checker(r.Context(), u)
		if err != nil {
			return nil, err
		}
		c.user, c.checker = u, checker
	case ca.KindAdmin:
	case ca.KindApp:
		return nil, errors.New("an app certificate works only at its app's address: this endpoint needs your user certificate (tsh login)")
	default:
		return nil, fmt.Errorf("a %s certificate cannot call this endpoint", id.Kind)
	}
	return c, nil
}

// checker builds the access checker from the user's current roles.
func (s *Server) checker(ctx context.Context, u api.User) (*rbac.Checker, error) {
	var roles []api.Role
	for _, name := range u.Roles {
		role, err := s.Roles.Get(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			s.log().Warn("user has a role that does not exist; ignoring it", "user", u.Name, "role", name)
			continue
		}
		if err != nil {
			return nil, err
		}
		roles = append(roles, role)
	}
	return rbac.NewChecker(roles, u.Traits), nil
}

func (s *Server) authed(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := s.caller(w, r)
		if !ok {
			return
		}
		if c.remoteAdmin() {
			s.refuseRemote(w, r, c, "a root cluster's admin identity reaches only this fleet's audit trail (fleetctl audit search --cluster), and only when its trusted_cluster has audit_search: true")
			return
		}
		if c.id.Kind == ca.KindUser && s.refuseLocked(w, r, c.user.Name, c.user.Roles, r.Method+" "+r.URL.Path) {
			return
		}
		h(w, r, c)
	})
}

// caller identifies the request's caller, or answers the refusal (which
// it records) and returns false.
func (s *Server) caller(w http.ResponseWriter, r *http.Request) (*caller, bool) {
	c, err := s.identify(r)
	if err == nil {
		return c, true
	}
	rc, remote := trust.CallerFrom(r.Context())
	ev := &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, Addr: r.RemoteAddr,
		Message: err.Error(), Fields: map[string]string{"action": r.Method + " " + r.URL.Path}}
	status, code := http.StatusUnauthorized, api.CodeUnauthorized
	if remote {
		// A root's caller whose certificate the root verified: this
		// fleet refuses them (no role maps, the trust is gone).
		ev.User, ev.Fields["user_cluster"] = rc.Identity.User, rc.Root
		status, code = http.StatusForbidden, api.CodeForbidden
	}
	s.audit().Warn("request refused", "event", "auth.denied", "path", r.URL.Path, "remote", r.RemoteAddr, "user", ev.User, "reason", err.Error())
	s.record(r.Context(), ev)
	writeError(w, status, code, err.Error())
	return nil, false
}

// refuseRemote refuses a root's caller what this fleet keeps to itself.
func (s *Server) refuseRemote(w http.ResponseWriter, r *http.Request, c *caller, msg string) {
	s.audit().Warn("request refused", "event", "admin.denied", "user", c.name(), "method", r.Method, "path", r.URL.Path)
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, User: c.name(), Addr: r.RemoteAddr,
		Message: msg, Fields: map[string]string{"action": r.Method + " " + r.URL.Path, "user_cluster": c.remote.Root}})
	writeError(w, http.StatusForbidden, api.CodeForbidden, msg)
}

// auditor serves the audit trail to its readers (caller.auditReader): a
// trusted root's admins where the trust allows it, and this fleet's
// admins; with users, every user too (recordings, which h filters).
func (s *Server) auditor(h handlerFunc, users bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := s.caller(w, r)
		if !ok {
			return
		}
		switch {
		case c.auditReader():
			h(w, r, c)
		case c.remoteAdmin() || (c.remote != nil && !users):
			s.refuseRemote(w, r, c, "this fleet does not let its root cluster's admins search its audit trail (its trusted_cluster for the root sets audit_search: false, or your roles here are not admin)")
		case users:
			h(w, r, c)
		default:
			s.admin(h).ServeHTTP(w, r) // refuses, as every admin endpoint does
		}
	})
}

func (s *Server) admin(h handlerFunc) http.Handler {
	return s.authed(func(w http.ResponseWriter, r *http.Request, c *caller) {
		if c.remote != nil {
			s.refuseRemote(w, r, c, "a root cluster's users do not administer this fleet: its own admins do")
			return
		}
		if !c.isAdmin() {
			s.audit().Warn("admin request refused", "event", "admin.denied", "user", c.name(), "method", r.Method, "path", r.URL.Path)
			s.record(r.Context(), &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, User: c.name(), Addr: r.RemoteAddr,
				Message: "this needs a fleet admin role", Fields: map[string]string{"action": r.Method + " " + r.URL.Path}})
			writeError(w, http.StatusForbidden, api.CodeForbidden, "this needs a fleet admin role")
			return
		}
		h(w, r, c)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, &api.Error{Code: code, Message: msg})
}

// readJSON decodes a bounded request body, refusing unknown fields.
func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, errBodyTimeout) {
			writeError(w, http.StatusRequestTimeout, api.CodeBadRequest, err.Error()+": send it again")
			return false
		}
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "bad request body: "+err.Error())
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "bad request body: trailing data")
		return false
	}
	return true
}

// storeError answers an error from a service, mapping the store's sentinel
// errors to statuses.
func (s *Server) storeError(w http.ResponseWriter, op string, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeError(w, http.StatusNotFound, api.CodeNotFound, err.Error())
	case errors.Is(err, store.ErrExists), errors.Is(err, store.ErrConflict):
		writeError(w, http.StatusConflict, api.CodeConflict, err.Error())
	default:
		var ve interface{ InvalidInput() bool }
		if errors.As(err, &ve) && ve.InvalidInput() {
			writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
			return
		}
		s.log().Error(op, "err", err)
		writeError(w, http.StatusInternalServerError, api.CodeInternal, op+": internal error (see fleetd's log)")
	}
}

func derCerts(certs []*x509.Certificate) [][]byte {
	out := make([][]byte, len(certs))
	for i, c := range certs {
		out[i] = c.Raw
	}
	return out
}

func (s *Server) ping(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, api.Ping{
		Cluster: s.Cluster, Version: s.Version, ProtocolVersion: proto.Version, CAPin: s.CA.Pin(), ServerTime: s.now().UTC(),
	})
}
