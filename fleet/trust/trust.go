// Package trust is a leaf fleet's side of trusted clusters: the root
// fleets it trusts, its tunnels to them, and what their users may do here.
//
//   - Put takes a trusted_cluster resource: it joins the root at once over
//     HTTPS (the root's CA must have the resource's pin; the token is
//     spent there and never kept here), and keeps what the two exchanged
//     under "trusted_clusters/NAME": the tunnel key and certificate the
//     root issued, the root's CA certificates and SSH user CA keys.
//   - Run keeps one tunnel up to each trusted root (firmware/tunnel: the
//     same resumable, reconnecting QUIC as a device's), renews its
//     certificate at half-life, and exchanges CA keys on every connect
//     (proto.ClusterInfo). It runs on one replica (leader election).
//   - The root opens a stream of service "cluster" down the tunnel for
//     every request of its users; nothing else is accepted, so the root
//     can never make this fleet dial anything. The stream carries
//     HTTP/1.1 to this fleet's own API (Config.Handler), with the caller
//     the root vouches for in the request's context (CallerFrom): the API
//     maps their roles with the trust's role_map (Roles) and decides with
//     this fleet's roles, as for its own users; its audit trail records
//     it all. Streams with target "app" carry requests to this fleet's web
//     apps instead (Caller.Target; fleet/appsrv's ServeRelayed), decided
//     and recorded here the same way.
//   - A session-end from the root ends the sessions of the request it
//     names (sessions.Session.Via); removing the trust here (Delete) ends
//     every session of the root's users at their next check.
//
// The root's side is fleet/clusters.
//
// Only fleet/... server packages import trust.
package trust

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/clusters"
	"remoteler.dev/edge/fleet/rolemap"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/pin"
)

const prefix = "trusted_clusters/"

// ErrNotFound is returned for a root this fleet does not trust. It also
// matches store.ErrNotFound.
var ErrNotFound error = &kindError{msg: "no such trusted cluster", kind: store.ErrNotFound}

type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

// InvalidError is a trusted_cluster resource that cannot be taken, or a
// join the root refused: its message says what to change.
type InvalidError struct{ Msg string }

func (e *InvalidError) Error() string { return e.Msg }

// InvalidInput marks the error as the caller's (an HTTP 400).
func (e *InvalidError) InvalidInput() bool { return true }

func invalid(format string, args ...any) error {
	return &InvalidError{Msg: fmt.Sprintf(format, args...)}
}

// record is a trusted root as kept in the store.
type record struct {
	// Name is the root's cluster name; Spec is the resource, without its
	// token.
	Name     string                 `json:"name"`
	Spec     api.TrustedClusterSpec `json:"spec"`
	JoinedAt time.Time              `json:"joined_at"`
	// Key (PKCS#8) and Cert (DER) are the tunnel's identity at the root.
	Key  []byte `json:"key"`
	Cert []byte `json:"cert"`
	// CACerts (DER) verify the root; UserCAKeys (SSH wire format) verify
	// its users' certificates on this fleet's devices.
	CACerts    [][]byte `json:"ca_certs"`
	UserCAKeys [][]byte `json:"user_ca_keys"`
}

// Recorder records an audit event (*audit.Recorder).
type Recorder interface {
	Record(ctx context.Context, e *proto.AuditEvent) error
}

// Config configures a Service. Store, CA, Cluster and Handler are
// required.
type Config struct {
	Store store.Store
	// CA is this fleet's: its host CA keys go to the roots.
	CA *ca.Authority
	// Cluster is this fleet's name; Version its fleetd version.
	Cluster, Version string
	// Handler is this fleet's API, which the roots' streams reach.
	Handler http.Handler
	// Sessions is the registry of live sessions: a root's session-end
	// ends those of the request it names.
	Sessions *sessions.Registry
	// EndGrace is how long after a root's session-end the request's
	// stream is closed, so that the service can tell the user why;
	// default 500ms.
	EndGrace time.Duration
	// DialTimeout bounds a join; default 30s.
	DialTimeout time.Duration
	// Audit records events; nil records nothing.
	Audit Recorder
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Service is a leaf's trust in its roots. Create it with New.
type Service struct {
	cfg Config
	log *slog.Logger
	srv *http.Server
	ln  *streamListener

	mu      sync.Mutex // guards uplinks and maps
	uplinks map[string]*uplink
	maps    map[string]compiled // role maps by root, compiled from the spec
}

type compiled struct {
	spec string // the JSON of the role_map it was compiled from
	m    *rolemap.Map
}

// New returns a Service for cfg.
func New(cfg Config) *Service {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.EndGrace <= 0 {
		cfg.EndGrace = 500 * time.Millisecond
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 30 * time.Second
	}
	s := &Service{cfg: cfg, log: cfg.Logger.With("component", "trust"), uplinks: map[string]*uplink{}, maps: map[string]compiled{}}
	s.ln = newStreamListener()
	s.srv = &http.Server{
		Handler:           cfg.Handler,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ConnContext:       connContext,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	return s
}

func (s *Service) record(ctx context.Context, e *proto.AuditEvent) {
	if e.Outcome == "" {
		e.Outcome = proto.OutcomeSuccess
	}
	if s.cfg.Audit != nil {
		s.cfg.Audit.Record(ctx, e)
	}
}

// Put trusts the root a trusted_cluster resource names: it checks the
// resource, joins the root (unless this fleet has joined it already, in
// which case it only takes the new role_map and audit_search), and keeps
// the trust. by names the admin, for the audit. Run brings the tunnel up.
func (s *Service) Put(ctx context.Context, tc api.TrustedCluster, by, addr string) error {
	spec, err := s.check(tc)
	if err != nil {
		return err
	}
	name := tc.Metadata.Name
	old, oldBytes, err := s.get(ctx, name)
	switch {
	case err == nil:
		if old.Spec.RootAddr != spec.RootAddr || old.Spec.CAPin != spec.CAPin {
			return invalid("this fleet trusts the root %q at %s (pin %s) already: remove it (fleetctl clusters rm %s) before you trust it at another address or pin",
				name, old.Spec.RootAddr, old.Spec.CAPin, name)
		}
		next := *old
		next.Spec = spec
		b, _ := json.Marshal(next)
		if err := s.cfg.Store.CompareAndSwap(ctx, prefix+name, oldBytes, b); err != nil {
			return fmt.Errorf("trust: put %q: %w", name, err)
		}
		s.record(ctx, &proto.AuditEvent{Type: proto.EventTrustPut, User: by, Addr: addr,
			Fields: map[string]string{"cluster": name, "root_addr": spec.RootAddr, "change": "role_map"}})
		s.changed()
		return nil
	case !errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("trust: put %q: %w", name, err)
	}
	if tc.Spec.Token == "" {
		return invalid("spec.token is required to join the root %q: on the root, run fleetctl tokens add --type=trusted-cluster", name)
	}
	rec, err := s.join(ctx, name, spec, tc.Spec.Token)
	if err != nil {
		s.record(ctx, &proto.AuditEvent{Type: proto.EventTrustPut, Outcome: proto.OutcomeFailure, User: by, Addr: addr, Message: err.Error(),
			Fields: map[string]string{"cluster": name, "root_addr": spec.RootAddr}})
		return err
	}
	b, _ := json.Marshal(rec)
	if err := s.cfg.Store.Create(ctx, prefix+name, b); errors.Is(err, store.ErrExists) {
		return invalid("the root %q was trusted at the same time by another request", name)
	} else if err != nil {
		return fmt.Errorf("trust: put %q: %w", name, err)
	}
	s.record(ctx, &proto.AuditEvent{Type: proto.EventTrustPut, User: by, Addr: addr,
		Fields: map[string]string{"cluster": name, "root_addr": spec.RootAddr, "ca_pin": spec.CAPin}})
	s.log.Info("joined a root cluster", "cluster", name, "root_addr", spec.RootAddr)
	return nil
}

// check checks a resource and returns its spec without the token.
func (s *Service) check(tc api.TrustedCluster) (api.TrustedClusterSpec, error) {
	spec := tc.Spec
	spec.Token = ""
	switch {
	case tc.Kind != api.TrustedClusterKind:
		return spec, invalid("kind is %q, want %s", tc.Kind, api.TrustedClusterKind)
	case tc.Version != "v1":
		return spec, invalid("version %q is not supported; use version: v1", tc.Version)
	}
	if err := clusters.CheckName(tc.Metadata.Name); err != nil {
		return spec, invalid("metadata.name: %v (it is the root fleet's cluster name)", err)
	}
	if tc.Metadata.Name == s.cfg.Cluster {
		return spec, invalid("metadata.name %q is this fleet's own name: a fleet cannot trust itself", tc.Metadata.Name)
	}
	host, port, err := net.SplitHostPort(spec.RootAddr)
	if err != nil || host == "" || port == "" {
		return spec, invalid("spec.root_addr %q is not HOST:PORT (the root fleet's address, as tsh --proxy takes it)", spec.RootAddr)
	}
	if _, err := pin.Parse(spec.CAPin); err != nil {
		return spec, invalid("spec.ca_pin: %v (on the root, fleetctl status shows it)", err)
	}
	if len(spec.RoleMap) == 0 {
		return spec, invalid("spec.role_map is empty: map at least one of the root's roles to one of this fleet's, or none of its users gets in")
	}
	if _, err := rolemap.Compile(spec.RoleMap); err != nil {
		return spec, invalid("spec.%v", err)
	}
	return spec, nil
}

// join joins the root with token and returns what to keep.
func (s *Service) join(ctx context.Context, name string, spec api.TrustedClusterSpec, token string) (*record, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("trust: join: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: s.cfg.Cluster}}, key)
	if err != nil {
		return nil, fmt.Errorf("trust: join: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("trust: join: %w", err)
	}
	conf, err := client.PinnedTLS(spec.RootAddr, spec.CAPin, nil)
	if err != nil {
		return nil, invalid("trust: join %q: %v", name, err)
	}
	c, err := client.New(client.Config{Addr: spec.RootAddr, TLS: conf, Timeout: s.cfg.DialTimeout, UserAgent: "fleetd/" + s.cfg.Version})
	if err != nil {
		return nil, invalid("trust: join %q: %v", name, err)
	}
	defer c.Close()
	req := &api.ClusterJoinRequest{Token: token, Cluster: s.cfg.Cluster, Root: name, CSR: csr, Version: s.cfg.Version}
	for _, k := range s.cfg.CA.HostCAKeys() {
		req.HostCAKeys = append(req.HostCAKeys, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))))
	}
	resp, err := c.JoinCluster(ctx, req)
	if err != nil {
		var ae *api.Error
		if errors.As(err, &ae) && ae.Code != api.CodeInternal {
			return nil, invalid("the root %q at %s refused to join: %s", name, spec.RootAddr, ae.Message)
		}
		if errors.Is(err, pin.ErrMismatch) {
			return nil, invalid("the fleet at %s is not the root you named: its CA does not have the pin %s (%v); check spec.ca_pin (on the root, fleetctl status shows it)", spec.RootAddr, spec.CAPin, err)
		}
		return nil, invalid("could not join the root %q at %s: %v", name, spec.RootAddr, err)
	}
	if resp.Cluster != name {
		return nil, invalid("the fleet at %s is %q, not %q", spec.RootAddr, resp.Cluster, name)
	}
	rec := &record{Name: name, Spec: spec, JoinedAt: s.cfg.Now().UTC(), Key: keyDER, Cert: resp.Cert, CACerts: resp.CACerts}
	if _, err := x509.ParseCertificate(resp.Cert); err != nil {
		return nil, invalid("the root %q sent a bad certificate: %v", name, err)
	}
	for _, k := range resp.UserCAKeys {
		pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k))
		if err != nil {
			return nil, invalid("the root %q sent a bad user CA key: %v", name, err)
		}
		rec.UserCAKeys = append(rec.UserCAKeys, pub.Marshal())
	}
	return rec, nil
}

func (s *Service) get(ctx context.Context, name string) (*record, []byte, error) {
	if clusters.CheckName(name) != nil {
		return nil, nil, fmt.Errorf("trust: get %q: %w", name, ErrNotFound)
	}
	b, err := s.cfg.Store.Get(ctx, prefix+name)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil, fmt.Errorf("trust: get %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("trust: get %q: %w", name, err)
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, nil, fmt.Errorf("trust: get %q: decode: %w", name, err)
	}
	return &r, b, nil
}

// Trusts reports whether this fleet trusts the root called name.
func (s *Service) Trusts(ctx context.Context, name string) (bool, error) {
	_, _, err := s.get(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

func (s *Service) list(ctx context.Context) ([]*record, error) {
	items, err := s.cfg.Store.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("trust: list: %w", err)
	}
	var out []*record
	for _, it := range items {
		var r record
		if err := json.Unmarshal(it.Value, &r); err != nil {
			return nil, fmt.Errorf("trust: list: decode %q: %w", it.Key, err)
		}
		out = append(out, &r)
	}
	return out, nil
}

// Resources lists the trusted_cluster resources, without tokens.
func (s *Service) Resources(ctx context.Context) ([]api.TrustedCluster, error) {
	recs, err := s.list(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.TrustedCluster{}
	for _, r := range recs {
		out = append(out, api.TrustedCluster{Kind: api.TrustedClusterKind, Version: "v1", Metadata: api.Metadata{Name: r.Name}, Spec: r.Spec})
	}
	return out, nil
}

// Clusters lists the trusted roots with their tunnels' state, as this
// replica knows it (the tunnels run on one).
func (s *Service) Clusters(ctx context.Context) ([]api.Cluster, error) {
	recs, err := s.list(ctx)
	if err != nil {
		return nil, err
	}
	out := []api.Cluster{}
	for _, r := range recs {
		c := api.Cluster{Name: r.Name, Kind: api.ClusterRoot, Addr: r.Spec.RootAddr, Since: r.JoinedAt}
		s.mu.Lock()
		u := s.uplinks[r.Name]
		s.mu.Unlock()
		if u != nil {
			c.Online, c.LastSeen = u.state()
		}
		out = append(out, c)
	}
	return out, nil
}

// Delete ends the trust in the root called name: its tunnel closes (on
// the replica that runs it, when it sees the change) and the sessions of
// its users end. by names the admin, for the audit.
func (s *Service) Delete(ctx context.Context, name, by, addr string) error {
	if clusters.CheckName(name) != nil {
		return fmt.Errorf("trust: delete %q: %w", name, ErrNotFound)
	}
	err := s.cfg.Store.Delete(ctx, prefix+name)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("trust: delete %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("trust: delete %q: %w", name, err)
	}
	s.record(ctx, &proto.AuditEvent{Type: proto.EventClusterDelete, User: by, Addr: addr, Fields: map[string]string{"cluster": name, "kind": api.ClusterRoot}})
	s.log.Info("root cluster no longer trusted", "cluster", name)
	s.retire(name)
	s.changed()
	return nil
}

// changed has the live sessions checked again (the trusts changed).
func (s *Service) changed() {
	if s.cfg.Sessions != nil {
		s.cfg.Sessions.Changed()
	}
}

// Roles maps the roles the root called origin vouched for to this fleet's
// with the trust's current role_map. It is authz.Authorizer.Remote: a
// removed trust and a map that gives nothing are refusals with the message
// the user is shown; a store that does not answer wraps
// sessions.ErrUndecided.
func (s *Service) Roles(ctx context.Context, origin string, roles []string) ([]string, error) {
	m, _, err := s.roleMap(ctx, origin)
	if err != nil {
		return nil, err
	}
	return m.Map(origin, roles)
}

// roleMap returns the trust's compiled role map and whether it lets the
// root's admins search the audit.
func (s *Service) roleMap(ctx context.Context, origin string) (*rolemap.Map, bool, error) {
	r, _, err := s.get(ctx, origin)
	if errors.Is(err, store.ErrNotFound) {
		return nil, false, fmt.Errorf("this fleet no longer trusts the cluster %q", origin)
	}
	if err != nil {
		return nil, false, fmt.Errorf("%w: %v", sessions.ErrUndecided, err)
	}
	spec, _ := json.Marshal(r.Spec.RoleMap)
	s.mu.Lock()
	c, ok := s.maps[origin]
	s.mu.Unlock()
	if !ok || c.spec != string(spec) {
		m, err := rolemap.Compile(r.Spec.RoleMap)
		if err != nil {
			return nil, false, fmt.Errorf("the role_map of trusted cluster %q is broken: %v", origin, err)
		}
		c = compiled{spec: string(spec), m: m}
		s.mu.Lock()
		s.maps[origin] = c
		s.mu.Unlock()
	}
	return c.m, r.Spec.AuditSearch, nil
}

// UserCAKeys returns the SSH user CA keys (wire format) of the root
// called origin, which this fleet's devices accept for its users: the
// broker's OriginKeys.
func (s *Service) UserCAKeys(origin string) [][]byte {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r, _, err := s.get(ctx, origin)
	if err != nil {
		return nil
	}
	return slices.Clone(r.UserCAKeys)
}
