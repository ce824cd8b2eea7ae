// Package clusters is a root fleet's side of trusted clusters: the
// registry of its leaf clusters (the fleets that tunnel to it so that its
// users reach their devices), stored as JSON under "remote_clusters/NAME".
//
//   - Join: a leaf joins with a token of type trusted-cluster (used once),
//     proves possession of the key of its tunnel certificate, and gets the
//     certificate (kind "cluster", fleet/ca) with the root's CA
//     certificates and SSH user CA keys.
//   - The leaf's tunnel is a device tunnel in every other way (the same
//     resumable, reconnecting QUIC; fleet/tunnelsrv): Configure routes the
//     tunnel server's hooks for cluster certificates here (Hello, Recheck,
//     Renew, Disconnect, the cluster-info exchange) and leaves the others
//     to the device lifecycle. A leaf's tunnel is named TunnelID(NAME) in
//     the tunnel server, so the broker opens streams to it like to a
//     device (service "cluster").
//   - Delete ends the trust: the leaf's certificate is refused from then
//     on, and it must join again with a new token. A leaf that removes
//     its trust says so on its tunnel (proto.ClusterInfo.Leaving), and the
//     registry forgets it in the same way (Config.OnLeave ends what was
//     relayed to it).
//
// Each step is recorded in the audit trail. The leaf's side is
// fleet/trust.
//
// Only fleet/... server packages import clusters.
package clusters

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/lifecycle"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/tokens"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

const (
	prefix = "remote_clusters/"
	// TunnelPrefix starts the tunnel server's name of a leaf's tunnel;
	// device IDs are hex and never start with it.
	TunnelPrefix = "cluster:"
	maxRetries   = 32
)

// ErrNotFound is returned for a leaf the registry does not hold. It also
// matches store.ErrNotFound.
var ErrNotFound error = &kindError{msg: "no such leaf cluster", kind: store.ErrNotFound}

type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`)

// CheckName reports whether name is a valid cluster name for trust: 1 to
// 63 lower-case letters, digits, '.' and '-', starting and ending with a
// letter or digit (it names the cluster in host patterns: DEVICE.NAME).
func CheckName(name string) error {
	if !nameRE.MatchString(name) || strings.Contains(name, "..") {
		return fmt.Errorf("cluster name %q must be 1 to 63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit", name)
	}
	return nil
}

// TunnelID is the tunnel server's name of leaf cluster name's tunnel.
func TunnelID(name string) string { return TunnelPrefix + name }

// NameOf returns the leaf cluster a tunnel ID names, if it names one.
func NameOf(tunnelID string) (string, bool) {
	return strings.CutPrefix(tunnelID, TunnelPrefix)
}

// Cluster is a leaf as the root keeps it.
type Cluster struct {
	Name     string    `json:"name"`
	JoinedAt time.Time `json:"joined_at"`
	TokenID  string    `json:"token_id"`
	// LastSeen is when its tunnel last said hello or ended; Addr and
	// Version are from then.
	LastSeen time.Time `json:"last_seen,omitzero"`
	Addr     string    `json:"addr,omitempty"`
	Version  string    `json:"version,omitempty"`
	// HostCAKeys are the leaf's SSH host CA keys (authorized_keys
	// format), from its join and its cluster-info: users verify its
	// devices with them.
	HostCAKeys []string `json:"host_ca_keys,omitempty"`
	Connects   int      `json:"connects"`
}

// Recorder records an audit event (*audit.Recorder).
type Recorder interface {
	Record(ctx context.Context, e *proto.AuditEvent) error
}

// Config configures a Registry. Store, CA and Tokens are required.
type Config struct {
	Store  store.Store
	CA     *ca.Authority
	Tokens *tokens.Service
	// Cluster is this (the root) fleet's name.
	Cluster string
	// CertTTL is the lifetime of leaves' tunnel certificates; default 7
	// days. Leaves renew at half-life over the tunnel.
	CertTTL time.Duration
	// Audit records events; nil records nothing.
	Audit Recorder
	// OnLeave is called when a leaf tells this fleet that it removed its
	// trust (proto.ClusterInfo.Leaving), after the registry forgot it,
	// with the reason for the users: the caller ends the sessions relayed
	// to it. Nil: they end at their next check.
	OnLeave func(name, reason string)
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Registry holds a root's leaf clusters. Create it with New; its methods
// are safe for concurrent use, also across replicas sharing a store.
type Registry struct {
	cfg Config
	log *slog.Logger
}

// New returns a Registry for cfg.
func New(cfg Config) *Registry {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CertTTL <= 0 {
		cfg.CertTTL = 7 * 24 * time.Hour
	}
	return &Registry{cfg: cfg, log: cfg.Logger.With("component", "clusters")}
}

func (r *Registry) record(ctx context.Context, e *proto.AuditEvent) {
	if e.Outcome == "" {
		e.Outcome = proto.OutcomeSuccess
	}
	if r.cfg.Audit != nil {
		r.cfg.Audit.Record(ctx, e)
	}
}

// Join registers a leaf with a trusted-cluster token and issues its
// tunnel certificate. remote is the leaf's address, for the audit. A
// refusal is a *lifecycle.JoinError (as a device's), recorded; other errors are the fleet's.
func (r *Registry) Join(ctx context.Context, req *api.ClusterJoinRequest, remote string) (*api.ClusterJoinResponse, error) {
	refuse := func(code, msg string) error {
		r.record(ctx, &proto.AuditEvent{Type: proto.EventClusterJoin, Outcome: proto.OutcomeDenied, Addr: remote, Message: msg,
			Fields: map[string]string{"cluster": req.Cluster}})
		return &lifecycle.JoinError{Code: code, Msg: msg}
	}
	if req.Root != r.cfg.Cluster {
		return nil, refuse(api.CodeBadRequest, fmt.Sprintf("this is the fleet %q, not %q: name the trusted cluster after the root (metadata.name: %s)", r.cfg.Cluster, req.Root, r.cfg.Cluster))
	}
	if err := CheckName(req.Cluster); err != nil {
		return nil, refuse(api.CodeBadRequest, err.Error())
	}
	if req.Cluster == r.cfg.Cluster {
		return nil, refuse(api.CodeBadRequest, fmt.Sprintf("the leaf is called %q like this fleet: give one of them another cluster name", req.Cluster))
	}
	hostKeys, err := parseAuthorizedKeys(req.HostCAKeys)
	if err != nil {
		return nil, refuse(api.CodeBadRequest, "host CA keys: "+err.Error())
	}
	if _, err := r.Get(ctx, req.Cluster); err == nil {
		return nil, refuse(api.CodeConflict, fmt.Sprintf("a leaf cluster called %s has joined already: remove it with `fleetctl clusters rm %s` on this fleet first", req.Cluster, req.Cluster))
	}
	if _, err := r.cfg.Tokens.ConsumeAs(ctx, req.Token, api.TokenTrustedCluster); err != nil {
		if tokens.Refused(err) {
			return nil, refuse(api.CodeUnauthorized, err.Error())
		}
		return nil, fmt.Errorf("clusters: join: %w", err)
	}
	cert, err := r.cfg.CA.SignClusterX509(req.CSR, req.Cluster, r.cfg.CertTTL)
	if err != nil {
		return nil, refuse(api.CodeBadRequest, err.Error())
	}
	c := Cluster{Name: req.Cluster, JoinedAt: r.cfg.Now().UTC(), TokenID: tokens.IDOf(req.Token), Addr: remote,
		Version: req.Version, HostCAKeys: hostKeys}
	b, _ := json.Marshal(c)
	if err := r.cfg.Store.Create(ctx, prefix+c.Name, b); errors.Is(err, store.ErrExists) {
		return nil, refuse(api.CodeConflict, fmt.Sprintf("a leaf cluster called %s joined at the same time", c.Name))
	} else if err != nil {
		return nil, fmt.Errorf("clusters: join: %w", err)
	}
	resp := &api.ClusterJoinResponse{Cluster: r.cfg.Cluster, Cert: cert}
	for _, c := range r.cfg.CA.CACerts() {
		resp.CACerts = append(resp.CACerts, c.Raw)
	}
	for _, k := range r.cfg.CA.UserCAKeys() {
		resp.UserCAKeys = append(resp.UserCAKeys, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))))
	}
	r.record(ctx, &proto.AuditEvent{Type: proto.EventClusterJoin, Addr: remote,
		Fields: map[string]string{"cluster": c.Name, "token_id": c.TokenID, "version": req.Version}})
	r.log.Info("leaf cluster joined", "cluster", c.Name, "addr", remote)
	return resp, nil
}

// parseAuthorizedKeys checks SSH public keys in authorized_keys format and
// returns them trimmed.
func parseAuthorizedKeys(in []string) ([]string, error) {
	if len(in) > proto.MaxClusterKeys {
		return nil, fmt.Errorf("%d keys; at most %d", len(in), proto.MaxClusterKeys)
	}
	var out []string
	for _, k := range in {
		pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k))
		if err != nil {
			return nil, err
		}
		out = append(out, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))))
	}
	return out, nil
}

// Get returns the leaf called name, or an error matching ErrNotFound.
func (r *Registry) Get(ctx context.Context, name string) (Cluster, error) {
	c, _, err := r.get(ctx, name)
	return c, err
}

func (r *Registry) get(ctx context.Context, name string) (Cluster, []byte, error) {
	var c Cluster
	if CheckName(name) != nil {
		return c, nil, fmt.Errorf("clusters: get %q: %w", name, ErrNotFound)
	}
	b, err := r.cfg.Store.Get(ctx, prefix+name)
	if errors.Is(err, store.ErrNotFound) {
		return c, nil, fmt.Errorf("clusters: get %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return c, nil, fmt.Errorf("clusters: get %q: %w", name, err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, nil, fmt.Errorf("clusters: get %q: decode: %w", name, err)
	}
	return c, b, nil
}

// List returns every leaf, sorted by name.
func (r *Registry) List(ctx context.Context) ([]Cluster, error) {
	items, err := r.cfg.Store.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("clusters: list: %w", err)
	}
	out := make([]Cluster, 0, len(items))
	for _, it := range items {
		var c Cluster
		if err := json.Unmarshal(it.Value, &c); err != nil {
			return nil, fmt.Errorf("clusters: list: decode %q: %w", it.Key, err)
		}
		out = append(out, c)
	}
	slices.SortFunc(out, func(a, b Cluster) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Delete removes the leaf called name: its certificate is refused from
// now on. The caller ends its sessions and closes its tunnel.
func (r *Registry) Delete(ctx context.Context, name string) error {
	if CheckName(name) != nil {
		return fmt.Errorf("clusters: delete %q: %w", name, ErrNotFound)
	}
	err := r.cfg.Store.Delete(ctx, prefix+name)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("clusters: delete %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("clusters: delete %q: %w", name, err)
	}
	r.log.Info("leaf cluster removed", "cluster", name)
	return nil
}

// update changes the stored leaf called name with fn, retrying on
// conflicts.
func (r *Registry) update(ctx context.Context, name string, fn func(*Cluster)) error {
	for range maxRetries {
		c, old, err := r.get(ctx, name)
		if err != nil {
			return err
		}
		fn(&c)
		next, _ := json.Marshal(c)
		err = r.cfg.Store.CompareAndSwap(ctx, prefix+name, old, next)
		if !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
	return fmt.Errorf("clusters: update %q: too many concurrent changes", name)
}

// Configure routes the tunnel server's hooks in cfg for leaves' tunnels
// here, and leaves every other tunnel to the hooks cfg holds (the device
// lifecycle's, which must be set first).
func (r *Registry) Configure(cfg *tunnelsrv.Config) {
	auth, hello, recheck, renew, disc, msg, hb, agent := cfg.Authenticate, cfg.OnHello, cfg.Recheck, cfg.OnRenew, cfg.OnDisconnect, cfg.OnMessage, cfg.OnHeartbeat, cfg.OnAgentStream
	cfg.Authenticate = func(cs tls.ConnectionState) (string, error) {
		if len(cs.PeerCertificates) > 0 {
			if id, err := r.cfg.CA.Identify(cs.PeerCertificates[0]); err == nil && id.Kind == ca.KindCluster {
				return TunnelID(id.Name), nil
			}
		}
		return auth(cs)
	}
	cfg.OnHello = func(ctx context.Context, id string, addr net.Addr, h *proto.Hello) (*proto.HelloAck, error) {
		if name, ok := NameOf(id); ok {
			return r.hello(ctx, name, addr, h)
		}
		return hello(ctx, id, addr, h)
	}
	cfg.Recheck = func(ctx context.Context, id string) error {
		if name, ok := NameOf(id); ok {
			return r.recheck(ctx, name)
		}
		if recheck == nil {
			return nil
		}
		return recheck(ctx, id)
	}
	cfg.OnRenew = func(ctx context.Context, id string, req *proto.RenewRequest) *proto.RenewResponse {
		if name, ok := NameOf(id); ok {
			return r.renew(ctx, name, req)
		}
		if renew == nil {
			return &proto.RenewResponse{Err: proto.Errorf(proto.CodeUnavailable, "renewal is not offered")}
		}
		return renew(ctx, id, req)
	}
	cfg.OnDisconnect = func(id string, lastHeard time.Time, err error) {
		if name, ok := NameOf(id); ok {
			r.disconnect(name, lastHeard, err)
			return
		}
		if disc != nil {
			disc(id, lastHeard, err)
		}
	}
	cfg.OnMessage = func(ctx context.Context, id string, m proto.Message) (proto.Message, error) {
		if name, ok := NameOf(id); ok {
			return r.message(ctx, name, m)
		}
		if msg == nil {
			return nil, fmt.Errorf("unexpected %s on the control stream", m.Kind())
		}
		return msg(ctx, id, m)
	}
	cfg.OnHeartbeat = func(id string, h *proto.Heartbeat) {
		if _, ok := NameOf(id); !ok && hb != nil {
			hb(id, h)
		}
	}
	cfg.OnAgentStream = func(ctx context.Context, id, service string, conn net.Conn) {
		if _, ok := NameOf(id); ok || agent == nil {
			conn.Close()
			return
		}
		agent(ctx, id, service, conn)
	}
}

// removed is what a leaf whose trust was removed is told.
func (r *Registry) removed(name string) error {
	return proto.Errorf(proto.CodeForbidden, "the root fleet %q no longer trusts the leaf cluster %q (it was removed there); join again with a new token", r.cfg.Cluster, name)
}

func (r *Registry) hello(ctx context.Context, name string, addr net.Addr, h *proto.Hello) (*proto.HelloAck, error) {
	if h.Name != name {
		return nil, proto.Errorf(proto.CodeForbidden, "this certificate belongs to the leaf cluster %q, not %q", name, h.Name)
	}
	if err := proto.CheckDeviceInfo(h.AgentVersion, h.OS, h.Arch, nil); err != nil {
		return nil, proto.Errorf(proto.CodeBadRequest, "hello: %v", err)
	}
	now := r.cfg.Now().UTC()
	err := r.update(ctx, name, func(c *Cluster) {
		c.LastSeen, c.Addr, c.Version = now, addr.String(), h.AgentVersion
		c.Connects++
	})
	if errors.Is(err, store.ErrNotFound) {
		r.record(ctx, &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, Addr: addr.String(),
			Message: "leaf cluster removed", Fields: map[string]string{"action": "tunnel", "cluster": name}})
		return nil, r.removed(name)
	}
	if err != nil {
		return nil, proto.Errorf(proto.CodeInternal, "cluster registry: %v", err)
	}
	r.record(ctx, &proto.AuditEvent{Type: proto.EventClusterOnline, Addr: addr.String(),
		Fields: map[string]string{"cluster": name, "version": h.AgentVersion}})
	return &proto.HelloAck{DeviceID: TunnelID(name), ServerTime: now.UnixMilli()}, nil
}

func (r *Registry) recheck(ctx context.Context, name string) error {
	_, err := r.Get(ctx, name)
	if errors.Is(err, store.ErrNotFound) {
		return r.removed(name)
	}
	if err != nil {
		return proto.Errorf(proto.CodeInternal, "cluster registry: %v", err)
	}
	return nil
}

func (r *Registry) renew(ctx context.Context, name string, req *proto.RenewRequest) *proto.RenewResponse {
	if _, err := r.Get(ctx, name); err != nil {
		return &proto.RenewResponse{Err: proto.Errorf(proto.CodeForbidden, "the leaf cluster %q is not trusted here", name)}
	}
	cert, err := r.cfg.CA.SignClusterX509(req.CSR, name, r.cfg.CertTTL)
	if err != nil {
		return &proto.RenewResponse{Err: proto.Errorf(proto.CodeBadRequest, "%v", err)}
	}
	resp := &proto.RenewResponse{Cert: cert}
	for _, c := range r.cfg.CA.CACerts() {
		resp.CACerts = append(resp.CACerts, c.Raw)
	}
	for _, k := range r.cfg.CA.UserCAKeys() {
		resp.UserCAKeys = append(resp.UserCAKeys, k.Marshal())
	}
	r.record(ctx, &proto.AuditEvent{Type: proto.EventCertIssued, Fields: map[string]string{"cluster": name, "kind": "cluster"}})
	return resp
}

func (r *Registry) disconnect(name string, lastHeard time.Time, err error) {
	ctx := context.Background()
	if lastHeard.IsZero() {
		lastHeard = r.cfg.Now()
	}
	if uerr := r.update(ctx, name, func(c *Cluster) { c.LastSeen = lastHeard.UTC() }); uerr != nil && !errors.Is(uerr, store.ErrNotFound) {
		r.log.Warn("update leaf last seen", "cluster", name, "err", uerr)
	}
	reason := ""
	if err != nil {
		reason = err.Error()
	}
	r.record(ctx, &proto.AuditEvent{Type: proto.EventClusterOffline, Message: reason, Fields: map[string]string{"cluster": name}})
}

// leave forgets a leaf that removed its trust in this fleet (its admin
// did, for the reason it sends), and has the sessions relayed to it ended
// with a message that says so. The leaf closes its tunnel next; it must
// join again with a new token.
func (r *Registry) leave(ctx context.Context, name, why string) (proto.Message, error) {
	err := r.cfg.Store.Delete(ctx, prefix+name)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return nil, proto.Errorf(proto.CodeInternal, "cluster registry: %v", err)
	}
	reason := fmt.Sprintf("the leaf cluster %q no longer trusts %s: its admin removed the trust", name, r.cfg.Cluster)
	r.log.Info("leaf cluster left: it removed its trust", "cluster", name, "leaf_reason", why)
	r.record(ctx, &proto.AuditEvent{Type: proto.EventClusterDelete, Message: reason,
		Fields: map[string]string{"cluster": name, "kind": api.ClusterLeaf, "by": "leaf"}})
	if r.cfg.OnLeave != nil {
		r.cfg.OnLeave(name, reason)
	}
	return &proto.ClusterInfo{Cluster: r.cfg.Cluster}, nil
}

// message answers a leaf's control messages: its cluster-info, with the
// root's. Anything else is a protocol error.
func (r *Registry) message(ctx context.Context, name string, m proto.Message) (proto.Message, error) {
	info, ok := m.(*proto.ClusterInfo)
	if !ok {
		return nil, proto.Errorf(proto.CodeBadRequest, "a leaf cluster's tunnel takes no %s", m.Kind())
	}
	if err := info.Check(); err != nil {
		return nil, proto.Errorf(proto.CodeBadRequest, "%v", err)
	}
	if info.Leaving != "" {
		return r.leave(ctx, name, info.Leaving)
	}
	var keys []string
	for _, b := range info.HostCAKeys {
		k, err := ssh.ParsePublicKey(b)
		if err != nil {
			return nil, proto.Errorf(proto.CodeBadRequest, "cluster-info: host CA key: %v", err)
		}
		keys = append(keys, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))))
	}
	if len(keys) > 0 {
		if err := r.update(ctx, name, func(c *Cluster) { c.HostCAKeys = keys }); err != nil {
			return nil, proto.Errorf(proto.CodeInternal, "cluster registry: %v", err)
		}
	}
	out := &proto.ClusterInfo{Cluster: r.cfg.Cluster}
	for _, k := range r.cfg.CA.UserCAKeys() {
		out.UserCAKeys = append(out.UserCAKeys, k.Marshal())
	}
	for _, c := range r.cfg.CA.CACerts() {
		out.CACerts = append(out.CACerts, c.Raw)
	}
	return out, nil
}
