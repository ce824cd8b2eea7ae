// Package lifecycle is the one home of a device's life in the fleet:
//
//   - Join: a new device proves possession of its keys with a join token
//     and gets its identity (an X.509 client certificate for the tunnel's
//     mutual TLS and an SSH host certificate);
//   - Hello: on each tunnel connection the device is checked (still in the
//     fleet, not locked (fleet/locks), the name its certificate names) and its labels, services and
//     web apps are taken from its hello (apps through the fleet's policy,
//     fleet/apps);
//   - Renew: the device's certificates are renewed over the tunnel;
//   - Disconnect: its last-seen time is kept.
//
// Each step is recorded in the audit trail (fleet/audit's Recorder). The
// HTTPS API calls Join; the tunnel server calls the others (Configure).
//
// Only fleet/... server packages import lifecycle.
package lifecycle

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sync/errgroup"

	"remoteler.dev/edge/fleet/apps"
	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/locks"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/tokens"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// Recorder records an audit event (*audit.Recorder).
type Recorder interface {
	Record(ctx context.Context, e *proto.AuditEvent) error
}

// Config configures a Lifecycle. CA, Devices and Tokens are required.
type Config struct {
	CA      *ca.Authority
	Devices *devices.Registry
	Tokens  *tokens.Service
	// Cluster names the fleet: devices are DEVICE.CLUSTER to OpenSSH.
	Cluster string
	// CertTTL is the lifetime of device certificates; default 7 days.
	// Agents renew at half-life.
	CertTTL time.Duration
	// Keepalive and Liveness, when set, are pushed to every agent at
	// hello (proto.HelloAck).
	Keepalive, Liveness time.Duration
	// Apps is what app URIs the fleet accepts from devices.
	Apps apps.Policy
	// DirectNetworks are where direct nodes may ask to be dialled besides
	// loopback, private (RFC 1918, RFC 4193) and link-local addresses:
	// the fleet's own network. A direct node elsewhere is refused.
	DirectNetworks []netip.Prefix
	// ReleaseKeys are the keys devices trust for agent releases, given at
	// join (OTA); nil gives none.
	ReleaseKeys func(ctx context.Context) []string
	// Locks are the locks in force: a locked device's tunnel is refused at
	// hello and its certificates are not renewed. Nil: none.
	Locks *locks.Set
	// Audit records events; nil records nothing.
	Audit Recorder
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Lifecycle runs devices' lifecycle. Create it with New.
type Lifecycle struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	pending map[string]time.Time // since Drain: device ID → last heard, for Flush
}

// drainWriters bounds the last-seen writes in flight in Flush.
const drainWriters = 32

// New returns a Lifecycle for cfg.
func New(cfg Config) *Lifecycle {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CertTTL <= 0 {
		cfg.CertTTL = 7 * 24 * time.Hour
	}
	return &Lifecycle{cfg: cfg, log: cfg.Logger.With("component", "lifecycle")}
}

// Drain defers the store writes of the disconnects a stop brings, when
// every device's tunnel ends at once: from now on Disconnect records the
// device's offline event and keeps its last seen for Flush, so that the
// tunnels close (and their devices hear so) without waiting on the store,
// and the store's lease keep-alives are not starved meanwhile.
func (l *Lifecycle) Drain() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pending == nil {
		l.pending = map[string]time.Time{}
	}
}

// Flush writes the last seen of the devices that disconnected since Drain,
// 32 at a time, until ctx is done; it returns how many it left out (their
// last seen stays at their connect). Disconnects after Flush write their
// own again. When Drain was called again while it ran (a stop beginning
// during the flush after a shed), what it left out goes back for the next
// Flush.
func (l *Lifecycle) Flush(ctx context.Context) (skipped int) {
	l.mu.Lock()
	pending := l.pending
	l.pending = nil
	l.mu.Unlock()
	var g errgroup.Group
	g.SetLimit(drainWriters)
	var (
		mu   sync.Mutex
		left = map[string]time.Time{}
	)
	for id, heard := range pending {
		g.Go(func() error {
			if ctx.Err() != nil || l.writeLastSeen(ctx, id, heard) != nil {
				mu.Lock()
				left[id] = heard
				mu.Unlock()
			}
			return nil
		})
	}
	g.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.pending != nil {
		for id, heard := range left {
			if _, newer := l.pending[id]; !newer {
				l.pending[id] = heard
			}
		}
	}
	return len(left)
}

// errSeenSince: a device's record already has a later last seen (it
// connected again, here or on another replica): nothing to write.
var errSeenSince = errors.New("seen since")

// writeLastSeen writes when the fleet last heard from device id, unless
// its record already says later: a device that has connected again since
// (to another replica, while this one stopped) keeps its newer last seen.
func (l *Lifecycle) writeLastSeen(ctx context.Context, id string, heard time.Time) error {
	_, err := l.cfg.Devices.Update(ctx, id, func(dv *devices.Device) error {
		if !heard.After(dv.LastSeen) {
			return errSeenSince
		}
		dv.LastSeen = heard.UTC()
		return nil
	})
	if errors.Is(err, errSeenSince) {
		return nil
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		if ctx.Err() == nil {
			l.log.Warn("update device last seen", "device_id", id, "err", err)
		}
		return err
	}
	return nil
}

// record records an event. A failure is logged by the recorder: the fleet
// does not refuse devices because its audit log cannot be written.
func (l *Lifecycle) record(ctx context.Context, e *proto.AuditEvent) {
	if e.Outcome == "" {
		e.Outcome = proto.OutcomeSuccess
	}
	if l.cfg.Audit != nil {
		l.cfg.Audit.Record(ctx, e)
	}
}

// HostPrincipals are the names a device's SSH host certificate is valid
// for: its name, its name under the cluster (for OpenSSH's Host *.cluster
// block) and its ID.
func HostPrincipals(name, cluster, id string) []string {
	return []string{name, name + "." + cluster, id}
}

// JoinError is a refused join (a device's, or a leaf cluster's): Code is
// an api.Code* for the answer, Msg what the agent or the leaf's admin is
// shown.
type JoinError struct {
	Code string
	Msg  string
}

func (e *JoinError) Error() string { return e.Msg }

// Join registers a new device with a join token and issues its
// certificates. remote is the agent's address, for the audit. A refusal
// is a *JoinError, recorded; other errors are the fleet's (its store).
func (l *Lifecycle) Join(ctx context.Context, req *api.JoinRequest, remote string) (*api.JoinResponse, error) {
	refuse := func(code, msg string) error {
		l.record(ctx, &proto.AuditEvent{Type: proto.EventDeviceJoin, Outcome: proto.OutcomeDenied, Addr: remote,
			Message: msg, Fields: map[string]string{"name": req.Name}})
		return &JoinError{Code: code, Msg: msg}
	}
	sshPub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(req.SSHPublicKey))
	if err != nil {
		return nil, refuse(api.CodeBadRequest, "bad ssh_public_key: "+err.Error())
	}
	if err := devices.CheckName(req.Name); err != nil {
		return nil, refuse(api.CodeBadRequest, err.Error())
	}
	if err := proto.CheckDeviceInfo(req.AgentVersion, "", "", req.Labels); err != nil {
		return nil, refuse(api.CodeBadRequest, "the device's "+err.Error())
	}
	if _, err := l.cfg.Devices.ByName(ctx, req.Name); err == nil {
		return nil, refuse(api.CodeConflict, "a device called "+req.Name+" is already in the fleet: remove it with `fleetctl devices rm "+req.Name+"` or start the agent with another --name")
	}
	// The token first (a bad one is refused as such, whatever else the
	// request holds), then everything the request alone decides, then
	// the use is spent: a refused join leaves the token as it was.
	if err := l.cfg.Tokens.Check(ctx, req.Token, api.TokenDevice); err != nil {
		if tokens.Refused(err) {
			return nil, refuse(api.CodeUnauthorized, err.Error())
		}
		return nil, fmt.Errorf("lifecycle: join: %w", err)
	}
	if err := ca.CheckCSR(req.CSR); err != nil {
		return nil, refuse(api.CodeBadRequest, err.Error())
	}
	tokenLabels, err := l.cfg.Tokens.Consume(ctx, req.Token)
	if err != nil {
		if tokens.Refused(err) {
			return nil, refuse(api.CodeUnauthorized, err.Error())
		}
		return nil, fmt.Errorf("lifecycle: join: %w", err)
	}
	labels := mergeLabels(req.Labels, tokenLabels)
	dev, err := l.cfg.Devices.Register(ctx, devices.Device{
		Name: req.Name, Labels: labels, TokenLabels: tokenLabels, TokenID: tokens.IDOf(req.Token),
		AgentVersion: req.AgentVersion, Addr: remote,
	})
	if err != nil {
		l.refund(ctx, req.Token)
		if errors.Is(err, devices.ErrNameTaken) {
			return nil, refuse(api.CodeConflict, err.Error())
		}
		return nil, fmt.Errorf("lifecycle: join: %w", err)
	}
	resp, err := l.certs(dev, req.CSR, sshPub)
	if err == nil && l.cfg.ReleaseKeys != nil {
		resp.ReleaseKeys = l.cfg.ReleaseKeys(ctx)
	}
	if err != nil {
		l.cfg.Devices.Delete(ctx, dev.ID)
		l.refund(ctx, req.Token)
		return nil, refuse(api.CodeBadRequest, err.Error())
	}
	l.record(ctx, &proto.AuditEvent{Type: proto.EventDeviceJoin, Device: dev.ID, Addr: remote,
		Fields: map[string]string{"name": dev.Name, "token_id": tokens.IDOf(req.Token)}})
	return resp, nil
}

// refund gives back the use of the token a refused join spent.
func (l *Lifecycle) refund(ctx context.Context, token string) {
	// Given back even when the joining device has hung up.
	if err := l.cfg.Tokens.Refund(context.WithoutCancel(ctx), token); err != nil {
		l.log.Warn("give back a join token's use", "token_id", tokens.IDOf(token), "err", err)
	}
}

// certs issues a device's X.509 client certificate and SSH host
// certificate.
func (l *Lifecycle) certs(dev devices.Device, csr []byte, sshPub ssh.PublicKey) (*api.JoinResponse, error) {
	auth := l.cfg.CA
	cert, err := auth.SignDeviceX509(csr, dev.ID, l.cfg.CertTTL)
	if err != nil {
		return nil, err
	}
	hostCert, err := auth.SignHostSSH(sshPub, dev.ID, HostPrincipals(dev.Name, l.cfg.Cluster, dev.ID), l.cfg.CertTTL)
	if err != nil {
		return nil, err
	}
	resp := &api.JoinResponse{
		DeviceID:    dev.ID,
		Name:        dev.Name,
		Cluster:     l.cfg.Cluster,
		Cert:        cert,
		SSHHostCert: string(ssh.MarshalAuthorizedKey(hostCert)),
		ServerTime:  l.cfg.Now().UTC(),
	}
	for _, c := range auth.CACerts() {
		resp.CACerts = append(resp.CACerts, c.Raw)
	}
	for _, k := range auth.UserCAKeys() {
		resp.UserCAKeys = append(resp.UserCAKeys, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))))
	}
	return resp, nil
}

// mergeLabels returns the agent's labels overridden by the labels the join
// token fixed: an admin's labels cannot be changed from the device.
func mergeLabels(agent, fixed map[string]string) map[string]string {
	out := maps.Clone(agent)
	if out == nil {
		out = map[string]string{}
	}
	maps.Copy(out, fixed)
	return out
}

// Configure sets the tunnel server's device hooks in cfg: Authenticate,
// OnHello, Recheck, OnRenew, OnDisconnect.
func (l *Lifecycle) Configure(cfg *tunnelsrv.Config) {
	cfg.Authenticate = l.Authenticate
	cfg.OnHello = l.Hello
	cfg.Recheck = l.Recheck
	cfg.OnRenew = l.Renew
	cfg.OnDisconnect = l.Disconnect
}

// Authenticate maps a tunnel's verified client certificate to its device
// ID.
func (l *Lifecycle) Authenticate(cs tls.ConnectionState) (string, error) {
	if len(cs.PeerCertificates) == 0 {
		return "", errors.New("no client certificate")
	}
	id, err := l.cfg.CA.Identify(cs.PeerCertificates[0])
	if err != nil {
		return "", err
	}
	if id.Kind != ca.KindDevice {
		return "", fmt.Errorf("a %s certificate cannot open a device tunnel", id.Kind)
	}
	return id.Name, nil
}

// Hello checks a device's hello and keeps what it says: address, agent
// version, labels (the join token's win), services and the apps the
// fleet's policy accepts. Each app it refuses is recorded with why.
func (l *Lifecycle) Hello(ctx context.Context, id string, addr net.Addr, h *proto.Hello) (*proto.HelloAck, error) {
	deny := func(msg string) {
		l.record(ctx, &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, Device: id, Addr: addr.String(),
			Message: msg, Fields: map[string]string{"action": "tunnel", "name": h.Name}})
	}
	if lk := l.locked(id); lk != nil {
		f := lk.AuditFields()
		f["action"], f["name"] = "tunnel", h.Name
		l.record(ctx, &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, Device: id, Addr: addr.String(),
			Message: lk.Error(), Fields: f})
		return nil, proto.Errorf(proto.CodeForbidden, "%s", lk.Error())
	}
	if err := h.Check(); err != nil {
		deny("hello: " + err.Error())
		return nil, proto.Errorf(proto.CodeBadRequest, "hello: %v", err)
	}
	direct := ""
	if h.Direct != "" {
		var err error
		if direct, err = l.directAddr(h.Direct, addr); err != nil {
			deny("direct node: " + err.Error())
			return nil, proto.Errorf(proto.CodeForbidden, "direct node: %v", err)
		}
	}
	// The device is updated with one write of the store per connect (a
	// fleet restart reconnects every device): the registry starts from
	// its followed copy of the record, and reads it only when that is out
	// of date.
	var (
		accepted []proto.App
		refused  []apps.Refused
		misnamed error // the hello names another device: nothing is written
	)
	now := l.cfg.Now().UTC()
	dev, err := l.cfg.Devices.Update(ctx, id, func(dv *devices.Device) error {
		misnamed = nil // fn may run again, on a fresher record
		if h.Name != dv.Name {
			misnamed = proto.Errorf(proto.CodeForbidden, "this certificate belongs to device %q, not %q", dv.Name, h.Name)
			return misnamed
		}
		accepted, refused = l.cfg.Apps.Accept(dv.Name, h.Apps)
		if dv.Connects > 0 && dv.Addr != addr.String() {
			dv.AddrChangedAt = now
		}
		dv.Connects++
		dv.LastSeen, dv.Addr = now, addr.String()
		dv.AgentVersion, dv.OS, dv.Arch = h.AgentVersion, h.OS, h.Arch
		dv.Labels = mergeLabels(h.Labels, dv.TokenLabels)
		dv.Services = cleanServices(h.Services)
		dv.Apps = accepted
		dv.DirectAddr = direct
		return nil
	})
	switch {
	case errors.Is(err, store.ErrNotFound):
		deny("device removed from the fleet")
		return nil, proto.Errorf(proto.CodeForbidden, "device %s was removed from the fleet; join it again with a new token", id)
	case misnamed != nil:
		deny("hello names another device")
		return nil, misnamed
	case err != nil:
		return nil, proto.Errorf(proto.CodeInternal, "device registry: %v", err)
	}
	for _, r := range refused {
		l.record(ctx, &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, Device: id, Addr: addr.String(),
			Message: r.Err.Error(), Fields: map[string]string{"action": "declare app", "app": r.Name, "name": dev.Name, "service": proto.ServiceApp}})
	}
	skew := time.UnixMilli(h.Time).Sub(now)
	f := map[string]string{"name": dev.Name, "agent_version": h.AgentVersion, "clock_skew": skew.Round(time.Second).String()}
	if direct != "" {
		f["direct_addr"] = direct
	}
	if len(accepted) > 0 {
		names := make([]string, len(accepted))
		for i, a := range accepted {
			names[i] = a.Name
		}
		f["apps"] = strings.Join(names, ",")
	}
	l.record(ctx, &proto.AuditEvent{Type: proto.EventDeviceOnline, Device: id, Addr: addr.String(), Fields: f})
	return &proto.HelloAck{DeviceID: id, ServerTime: now.UnixMilli(),
		KeepaliveMillis: l.cfg.Keepalive.Milliseconds(), LivenessMillis: l.cfg.Liveness.Milliseconds()}, nil
}

// locked is the lock that shuts device id out, or nil.
func (l *Lifecycle) locked(id string) *locks.Locked {
	var lk *locks.Locked
	if err := l.cfg.Locks.Check(locks.Subject{DeviceID: id}); errors.As(err, &lk) {
		return lk
	}
	return nil
}

// CheckLock refuses device id when a lock shuts it out: Recheck's first
// step, for a caller that checks the registry its own way.
func (l *Lifecycle) CheckLock(id string) error {
	if lk := l.locked(id); lk != nil {
		return proto.Errorf(proto.CodeForbidden, "%s", lk.Error())
	}
	return nil
}

// Recheck refuses a connection whose device was removed while its hello
// was being answered (tunnelsrv.Config.Recheck): one read of the registry
// per connection.
func (l *Lifecycle) Recheck(ctx context.Context, id string) error {
	if err := l.CheckLock(id); err != nil {
		return err
	}
	_, err := l.cfg.Devices.Get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return proto.Errorf(proto.CodeForbidden, "device %s was removed from the fleet; join it again with a new token", id)
	}
	if err != nil {
		return proto.Errorf(proto.CodeInternal, "device registry: %v", err)
	}
	return nil
}

// directAddr checks where a direct node says it listens (its hello's
// Direct) and returns where the fleet dials it: an IP literal and a port,
// where an unspecified IP means the address the node checked in from. It
// must be on the fleet's own network (DirectNetworks).
func (l *Lifecycle) directAddr(listen string, from net.Addr) (string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("listen address %q is not IP:PORT", listen)
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return "", fmt.Errorf("listen address %q has no valid port", listen)
	}
	ip := netip.IPv6Unspecified()
	if host != "" {
		if ip, err = netip.ParseAddr(host); err != nil || ip.Zone() != "" {
			return "", fmt.Errorf("listen address %q must name an IP address, not a host name", listen)
		}
	}
	if ip.IsUnspecified() {
		ap, err := netip.ParseAddrPort(from.String())
		if err != nil {
			return "", fmt.Errorf("the node's own address %s is not IP:PORT", from)
		}
		ip = ap.Addr()
	}
	ip = ip.Unmap()
	ok := ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast()
	for _, p := range l.cfg.DirectNetworks {
		ok = ok || p.Contains(ip)
	}
	if !ok {
		return "", fmt.Errorf("%s is not on the fleet's own network (loopback, private or link-local, or fleetd's direct_networks); run the agent on a tunnel instead", ip)
	}
	return netip.AddrPortFrom(ip, uint16(n)).String(), nil
}

var serviceRE = regexp.MustCompile(`^[a-z0-9-]{1,32}$`)

// cleanServices keeps the well-formed service names of a hello, at most
// 16, sorted.
func cleanServices(in []string) []string {
	var out []string
	for _, s := range in {
		if serviceRE.MatchString(s) && !slices.Contains(out, s) && len(out) < 16 {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}

// Renew issues fresh certificates for the new keys a device sent.
func (l *Lifecycle) Renew(ctx context.Context, id string, req *proto.RenewRequest) *proto.RenewResponse {
	dev, err := l.cfg.Devices.Get(ctx, id)
	if err != nil {
		return &proto.RenewResponse{Err: proto.Errorf(proto.CodeForbidden, "device %s is not in the fleet", id)}
	}
	if lk := l.locked(id); lk != nil {
		f := lk.AuditFields()
		f["action"], f["name"] = "renew", dev.Name
		l.record(ctx, &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, Device: id, Message: lk.Error(), Fields: f})
		return &proto.RenewResponse{Err: proto.Errorf(proto.CodeForbidden, "%s", lk.Error())}
	}
	pub, err := ssh.ParsePublicKey(req.SSHPublicKey)
	if err != nil {
		return &proto.RenewResponse{Err: proto.Errorf(proto.CodeBadRequest, "bad ssh public key: %v", err)}
	}
	auth := l.cfg.CA
	cert, err := auth.SignDeviceX509(req.CSR, id, l.cfg.CertTTL)
	if err != nil {
		return &proto.RenewResponse{Err: proto.Errorf(proto.CodeBadRequest, "%v", err)}
	}
	hostCert, err := auth.SignHostSSH(pub, id, HostPrincipals(dev.Name, l.cfg.Cluster, id), l.cfg.CertTTL)
	if err != nil {
		return &proto.RenewResponse{Err: proto.Errorf(proto.CodeBadRequest, "%v", err)}
	}
	resp := &proto.RenewResponse{Cert: cert, SSHHostCert: hostCert.Marshal()}
	for _, c := range auth.CACerts() {
		resp.CACerts = append(resp.CACerts, c.Raw)
	}
	for _, k := range auth.UserCAKeys() {
		resp.UserCAKeys = append(resp.UserCAKeys, k.Marshal())
	}
	l.record(ctx, &proto.AuditEvent{Type: proto.EventCertIssued, Device: id, Fields: map[string]string{"name": dev.Name, "kind": "device"}})
	return resp
}

// Disconnect keeps when the fleet last heard from a device whose
// connection ended, and records that it went offline.
func (l *Lifecycle) Disconnect(id string, lastHeard time.Time, err error) {
	reason := ""
	if err != nil {
		reason = strings.TrimSpace(err.Error())
	}
	// Last seen is the last time the fleet heard from the device, not the
	// time it noticed the device was gone.
	if lastHeard.IsZero() {
		lastHeard = l.cfg.Now()
	}
	ctx := context.Background()
	l.mu.Lock()
	draining := l.pending != nil
	if draining {
		l.pending[id] = lastHeard
	}
	l.mu.Unlock()
	if !draining {
		l.writeLastSeen(ctx, id, lastHeard)
	}
	l.record(ctx, &proto.AuditEvent{Type: proto.EventDeviceOffline, Device: id, Message: reason})
}
