// Package broker is the one path every brokered service takes on the fleet:
// SSH, Kubernetes, web apps, and whatever comes next. For each session it
//
//  1. authorises the user against their current roles (Authorize: the
//     device exists and the user may reach it for this service, decided by
//     fleet/authz, the same rules that re-check live sessions later) and
//     the locks in force (fleet/locks);
//  2. records every refusal in the audit trail (Deny);
//  3. records the session's start, fail-closed, and registers it as live
//     (Start), so that the fleet ends it when access ends; the start is
//     committed before the device hears of the session, because the
//     device's own events about it are checked against it (fleet/audit's
//     claims);
//  4. opens the stream down the device's tunnel (Open), with the user's
//     fleet-verified identity in its header; each stream of a pooled
//     service (OpenPooled) is recorded the same way, start before open;
//  5. splices bytes for services that are plain byte streams (Splice);
//  6. records the session's end with its reason (Session.Done).
//
// HTTP handler packages (fleet/httpapi, fleet/kubesrv, fleet/appsrv) speak
// HTTP to users and call the broker; they never open tunnel streams or
// register sessions themselves. A new service that is a TCP-like stream
// needs: its rule in fleet/authz (Decide), an entry in the agent's service
// registry (firmware/services), and a handler that calls Authorize, Start,
// Open and Splice as the SSH handler does (fleet/httpapi/connect.go).
//
// Every access decision and session is recorded with the fleet's audit
// recorder (fleet/audit's Recorder: the hash-chained trail and a line on
// the audit logger, in one call); Record passes an event of a service's
// own to it.
//
// A leaf cluster (trusted clusters) is one more kind of destination: an
// Ask that names a Cluster is authorised against the cluster registry
// (fleet/clusters: the leaf exists), opened as a stream of service
// "cluster" down the leaf's tunnel with the caller the fleet vouches for
// (user, roles, traits), and registered as live, so that it ends when the
// caller's access here ends; the leaf decides everything else with its
// own roles and keeps the audit. On the leaf, the asks of a root's users
// carry their Origin, and their streams to devices name the root's SSH
// user CA keys, which the leaf trusts.
//
// Only fleet/... server packages import broker.
package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/authz"
	"remoteler.dev/edge/fleet/clusters"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/locks"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// Tunnels opens streams down device tunnels and sends control messages
// (*tunnelsrv.Server). A refusal from the device is a *proto.Error.
type Tunnels interface {
	Open(ctx context.Context, deviceID string, h *proto.StreamHeader) (net.Conn, error)
	Send(deviceID string, m proto.Message) error
	Online(deviceID string) bool
}

// Devices looks devices up by name (*devices.Registry); an unknown name is
// an error.
type Devices interface {
	ByName(ctx context.Context, name string) (devices.Device, error)
}

// Config configures a Broker. Tunnels, Devices and Sessions are required.
type Config struct {
	Tunnels Tunnels
	// Offline is the error Tunnels.Open wraps for a device without a
	// tunnel (tunnelsrv.ErrOffline), and NoAnswer the one for a device the
	// fleet waited for in vain (tunnelsrv.ErrNoAnswer); nil treats every
	// failure alike. Either error may say when the fleet last heard from
	// the device (a LastHeardAt() time.Time method).
	Offline  error
	NoAnswer error
	Devices  Devices
	Sessions *sessions.Registry
	// Locks are the locks in force: a session they shut out is refused,
	// and one a lock catches as it registers ends at once. Nil: none.
	Locks *locks.Set
	// Local describes the Kubernetes cluster fleetd itself runs in, which
	// is no device: its name and labels, and whether there is one. Nil:
	// none.
	Local func() (name string, labels map[string]string, ok bool)
	// Audit records events (*audit.Recorder); an error means the event
	// was not recorded. Nil records nothing.
	Audit Recorder
	// Cluster names the fleet in audit events and stream headers.
	Cluster string
	// OpenTimeout bounds opening a stream, waiting for the device;
	// default api.ConnectWait (35 s): an idle device whose NAT mapping
	// changed answers at its next keep-alive (25 s by default), and
	// clients wait longer than that for the fleet's answer.
	OpenTimeout time.Duration
	// EndGrace is how long, after telling a device to end a session, the
	// broker waits before it closes the session's both sides itself;
	// default 2s. The user's input stops at once (Session.OnCut, Splicer);
	// the grace is the time the device has to tell the user why, which a
	// busy device needs (see Splicer).
	EndGrace time.Duration
	// UserHeld offers user-held sessions (CanHold) to clients that ask:
	// set with several replicas, where a session must outlive the replica
	// its user reached. One fleetd holds sessions itself, which lets it
	// hurry a stalled transfer after a link outage (fleet/tunnelsrv's link
	// hurries). Kubernetes sessions through /v1/connect are user-held
	// either way (CanHold).
	UserHeld bool
	// Bytes, when set, is told of the bytes every stream carries as they
	// pass: up to the device, down from it (fleet/metrics counts them by
	// service). It must not block.
	Bytes func(service string, up, down int)
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Clusters finds the leaf clusters this fleet reaches (trusted
	// clusters, *clusters.Registry); nil reaches none.
	Clusters Clusters
	// OriginKeys returns the SSH user CA keys (wire format) of a root
	// fleet this fleet trusts: the streams of that root's users carry
	// them to the device (proto.Identity.UserCAKeys). Nil: none.
	OriginKeys func(origin string) [][]byte
}

// Clusters looks leaf clusters up by name (*clusters.Registry); an unknown
// name is an error.
type Clusters interface {
	Get(ctx context.Context, name string) (clusters.Cluster, error)
}

// Recorder records an audit event (*audit.Recorder).
type Recorder interface {
	Record(ctx context.Context, e *proto.AuditEvent) error
}

// Broker brokers sessions. Create it with New; its methods are safe for
// concurrent use.
type Broker struct {
	cfg Config
	log *slog.Logger

	heldMu sync.Mutex
	held   map[string]net.Conn // each device's ServeHeld stream
}

// New returns a Broker for cfg.
func New(cfg Config) *Broker {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.OpenTimeout <= 0 {
		cfg.OpenTimeout = api.ConnectWait
	}
	if cfg.EndGrace <= 0 {
		cfg.EndGrace = 2 * time.Second
	}
	return &Broker{cfg: cfg, log: cfg.Logger.With("component", "broker")}
}

// Sessions returns the registry of live sessions.
func (b *Broker) Sessions() *sessions.Registry { return b.cfg.Sessions }

// Online reports whether a device's tunnel is up.
func (b *Broker) Online(deviceID string) bool { return b.cfg.Tunnels.Online(deviceID) }

// NewID returns a fresh session ID.
func NewID() string {
	var id [16]byte
	rand.Read(id[:])
	return hex.EncodeToString(id[:])
}

// Ask is what a user asks for: a session of a service on a device. The
// HTTP layer fills it in from an authenticated request.
type Ask struct {
	// Service is proto.ServiceSSH, ServiceKube or ServiceApp.
	Service string
	// Kind says what runs, for session lists ("ssh", "exec", "app").
	Kind string
	// User is the fleet user, as stored now; Checker their roles.
	User    api.User
	Checker *rbac.Checker
	// Device is the device's name (or the local Kubernetes cluster's).
	Device string
	// Login is the device login (SSH).
	Login string
	// App is the web app's name (service app).
	App string
	// ClientAddr is the user's address.
	ClientAddr string
	// Expires is when the user's credential (certificate, web session)
	// expires; the session ends then.
	Expires time.Time
	// Action describes the request for a refusal's audit event
	// ("connect", "GET /api/v1/pods"); default "connect".
	Action string
	// Fields are added to every audit event of the session.
	Fields map[string]string

	// Cluster, when set, is a leaf cluster to reach instead of a device
	// (service proto.ServiceCluster); Admin says the caller is the
	// fleet's admin identity rather than a user (it may reach a leaf's
	// audit trail, which the leaf decides).
	Cluster string
	Admin   bool
	// Token says the caller shows a session's token, not a certificate:
	// it may only ask a leaf how that session ended, which the leaf
	// checks.
	Token bool
	// Origin, OriginRoles and Via describe the ask of a root fleet's user
	// on a leaf (sessions.Session): the root, the roles it vouched for
	// (User.Roles are this fleet's, from its role_map), and the root's
	// relayed stream.
	Origin      string
	OriginRoles []string
	Via         string
}

// Grant is an authorised Ask: the session to be, the device, and what the
// user's roles give there.
type Grant struct {
	Ask Ask
	// Cluster is the fleet's name, for the stream header.
	Cluster string
	// Session is the session as it will be registered; its ID is new.
	Session sessions.Session
	// Device is the device reached; zero for the local cluster.
	Device devices.Device
	// Labels are what roles matched: the device's labels, or for an app
	// the app's merged with its device's.
	Labels map[string]string
	// App is the app reached (service app).
	App *proto.App
	// KubeUsers and KubeGroups are what the user's roles allow in the
	// cluster (service kube); the handler resolves which of them the
	// request acts as and sets Session.KubeUser and KubeGroups.
	KubeUsers, KubeGroups []string
	// Leaf is the leaf cluster reached (service cluster).
	Leaf clusters.Cluster
	// originKeys are the root's SSH user CA keys, for a root's user.
	originKeys [][]byte
}

// Status classifies a refusal, for the HTTP layer to map to a status.
type Status int

// Refusal statuses.
const (
	StatusBadRequest   Status = iota + 1 // the ask is malformed
	StatusUnauthorized                   // the credential is expired or gone
	StatusForbidden                      // roles or the device refuse
	StatusNotFound                       // no such device or app the user can see
	StatusOffline                        // the device has no tunnel
	StatusNoAnswer                       // the device did not answer
	StatusUnavailable                    // the audit trail cannot be written: try later
	StatusInternal                       // the fleet failed
)

// Refusal is a refused ask. Msg is what the user is told; Fields say, for
// the audit, which rule refused. It implements error.
type Refusal struct {
	Status Status
	Msg    string
	Fields map[string]string
}

func (r *Refusal) Error() string { return r.Msg }

// AuditDown is the message of a session that could not be recorded.
const AuditDown = "the fleet cannot write its audit log right now; try again later"

// Authorize decides an ask against the user's current roles and the
// device's current labels, with the rules of fleet/authz. A refusal is a
// *Refusal, already recorded in the audit trail. A device the user may not
// see is refused as one that does not exist.
func (b *Broker) Authorize(ctx context.Context, ask Ask) (*Grant, error) {
	g, ref := b.authorize(ctx, ask)
	if ref != nil {
		b.Deny(ctx, ask, ref)
		return nil, ref
	}
	return g, nil
}

func (b *Broker) authorize(ctx context.Context, ask Ask) (*Grant, *Refusal) {
	if ask.Cluster != "" {
		return b.authorizeCluster(ctx, ask)
	}
	if ask.Checker == nil {
		what := "devices"
		if ask.Service == proto.ServiceKube {
			what = "Kubernetes clusters"
		}
		return nil, &Refusal{Status: StatusForbidden, Msg: "only users can reach " + what + ": run tsh login"}
	}
	g := &Grant{Ask: ask, Cluster: b.cfg.Cluster}
	g.Session = sessions.Session{
		ID: NewID(), Service: ask.Service, Kind: ask.Kind, User: ask.User.Name, Roles: ask.User.Roles,
		Login: ask.Login, App: ask.App, DeviceName: ask.Device, ClientAddr: ask.ClientAddr, Expires: ask.Expires,
		Traits: ask.User.Traits, Origin: ask.Origin, OriginRoles: ask.OriginRoles, Via: ask.Via,
	}
	if ask.Origin != "" && b.cfg.OriginKeys != nil {
		g.originKeys = b.cfg.OriginKeys(ask.Origin)
	}
	if g.Session.Kind == "" {
		g.Session.Kind = ask.Service
	}
	// A locked user or role is refused before anything about the device
	// is looked at.
	if ref := b.locked(authz.Subject(&g.Session, nil)); ref != nil {
		return nil, ref
	}
	what := "device"
	switch ask.Service {
	case proto.ServiceKube:
		what = "Kubernetes cluster"
	case proto.ServiceApp:
		what = "app"
	}
	notFound := &Refusal{Status: StatusNotFound, Msg: notFoundMsg(ask), Fields: map[string]string{"rule": "no such " + what}}
	if name, labels, ok := b.local(); ok && ask.Service == proto.ServiceKube && ask.Device == name {
		g.Labels = labels
	} else {
		dev, err := b.cfg.Devices.ByName(ctx, ask.Device)
		if err != nil {
			return nil, notFound
		}
		g.Device, g.Session.DeviceID, g.Labels = dev, dev.ID, dev.Labels
	}
	if ask.Service == proto.ServiceApp {
		app := g.Device.App(ask.App)
		if app == nil {
			return nil, notFound
		}
		g.App = app
		g.Labels = rbac.AppLabels(app.Labels, g.Device.Labels)
	}
	if !authz.Offered(ask.Service, g.Device.Services) && g.Session.DeviceID != "" {
		if !authz.Visible(ask.Checker, &g.Session, g.Labels) {
			return nil, notFound
		}
		return nil, &Refusal{Status: StatusForbidden, Msg: notOffered(ask), Fields: map[string]string{"rule": "no " + ask.Service + " service"}}
	}
	d, err := authz.Decide(ask.Checker, &g.Session, g.Labels)
	if err != nil {
		var fields map[string]string
		var ad *rbac.AccessDenied
		if errors.As(err, &ad) {
			fields = ad.AuditFields()
			if ad.Rule == rbac.RuleDenyLogins || ad.Rule == rbac.RuleAllowLogins {
				fields["login"] = ask.Login
			}
		}
		if !authz.Visible(ask.Checker, &g.Session, g.Labels) {
			notFound.Fields = fields
			return nil, notFound
		}
		return nil, &Refusal{Status: StatusForbidden, Msg: err.Error(), Fields: fields}
	}
	// A locked login or device, once the user may otherwise reach it.
	if ref := b.locked(authz.Subject(&g.Session, nil)); ref != nil {
		return nil, ref
	}
	g.KubeUsers, g.KubeGroups = d.KubeUsers, d.KubeGroups
	g.Session.PortForwarding = ask.Checker.PortForwarding()
	g.Session.FileCopy = ask.Checker.FileCopy()
	g.Session.RecordInput = ask.Checker.RecordInput()
	return g, nil
}

// locked is the refusal of a lock that shuts out subj, or nil.
func (b *Broker) locked(subj locks.Subject) *Refusal {
	var l *locks.Locked
	if err := b.cfg.Locks.Check(subj); errors.As(err, &l) {
		return &Refusal{Status: StatusForbidden, Msg: l.Error(), Fields: l.AuditFields()}
	}
	return nil
}

// authorizeCluster decides an ask to reach a leaf cluster: the leaf must
// be trusted here, and the caller a user or the admin identity. What the
// caller may do there is the leaf's decision.
func (b *Broker) authorizeCluster(ctx context.Context, ask Ask) (*Grant, *Refusal) {
	g := &Grant{Ask: ask, Cluster: b.cfg.Cluster}
	roles := ask.User.Roles
	if ask.Checker != nil {
		// Vouch only for roles this fleet still has: a removed role's name
		// may linger on the user, and the leaf's role_map would map it.
		have := ask.Checker.Roles()
		roles = slices.DeleteFunc(slices.Clone(roles), func(r string) bool { return !slices.Contains(have, r) })
	}
	g.Session = sessions.Session{
		ID: NewID(), Service: proto.ServiceCluster, Kind: "cluster", User: ask.User.Name, Roles: roles,
		Traits: ask.User.Traits, Admin: ask.Admin, Cluster: ask.Cluster, ClientAddr: ask.ClientAddr, Expires: ask.Expires,
	}
	if ask.Checker == nil && !ask.Admin && !ask.Token {
		return nil, &Refusal{Status: StatusForbidden, Msg: "only users can reach leaf clusters: run tsh login"}
	}
	if ask.Token {
		g.Session.User = "" // nobody: the registry checks no user
	}
	if ref := b.locked(authz.Subject(&g.Session, nil)); ref != nil {
		return nil, ref
	}
	notFound := &Refusal{Status: StatusNotFound, Msg: fmt.Sprintf("no cluster %q trusts this fleet: see tsh clusters", ask.Cluster),
		Fields: map[string]string{"rule": "no such cluster"}}
	if b.cfg.Clusters == nil {
		return nil, notFound
	}
	leaf, err := b.cfg.Clusters.Get(ctx, ask.Cluster)
	if err != nil {
		return nil, notFound
	}
	g.Leaf, g.Session.DeviceID = leaf, clusters.TunnelID(leaf.Name)
	return g, nil
}

func (b *Broker) local() (string, map[string]string, bool) {
	if b.cfg.Local == nil {
		return "", nil, false
	}
	return b.cfg.Local()
}

// notFoundMsg is the same answer for what does not exist and what the
// user may not see.
func notFoundMsg(ask Ask) string {
	switch ask.Service {
	case proto.ServiceKube:
		return fmt.Sprintf("no Kubernetes cluster %q that you can reach: see tsh kube ls", ask.Device)
	case proto.ServiceApp:
		return fmt.Sprintf("no app %q on device %q that you can reach: see tsh apps ls", ask.App, ask.Device)
	}
	return fmt.Sprintf("no device %q that you can reach: see tsh ls", ask.Device)
}

func notOffered(ask Ask) string {
	if ask.Service == proto.ServiceKube {
		return fmt.Sprintf("device %q does not offer Kubernetes (its agent found no kubeconfig)", ask.Device)
	}
	return fmt.Sprintf("device %q does not offer %s", ask.Device, ask.Service)
}

// Identity is the identity the stream header carries to the device for a
// grant.
func (g *Grant) Identity() proto.Identity {
	s := &g.Session
	id := proto.Identity{
		User: s.User, Roles: s.Roles, Login: s.Login, Cluster: g.Cluster,
		KubeUser: s.KubeUser, KubeGroups: s.KubeGroups, RecordInput: s.RecordInput,
		NoPortForwarding: !s.PortForwarding, NoFileCopy: !s.FileCopy,
	}
	if !s.Expires.IsZero() {
		id.Expires = s.Expires.UnixMilli()
	}
	if s.Service == proto.ServiceCluster {
		// What a leaf needs to decide: who, with which roles and traits
		// here. Nothing of a device.
		id = proto.Identity{User: g.Ask.User.Name, Roles: s.Roles, Traits: s.Traits, Admin: s.Admin, Cluster: g.Cluster, Expires: id.Expires}
	}
	if s.Origin != "" {
		// A root's user: the root verified them, and the device checks
		// their certificate against the root's user CA too.
		id.Cluster, id.UserCAKeys = s.Origin, g.originKeys
	}
	return id
}

// Deny records a refusal of ask in the audit trail (and on the audit
// logger). Authorize calls it for its own refusals; handlers call it for
// refusals of their own (a malformed request) and for those of Open that
// they count as access decisions.
func (b *Broker) Deny(ctx context.Context, ask Ask, ref *Refusal) {
	action := ask.Action
	if action == "" {
		action = "connect"
	}
	f := map[string]string{"device_name": ask.Device, "service": ask.Service, "action": action}
	if ask.App != "" {
		f["app"] = ask.App
	}
	if ask.Cluster != "" {
		f["cluster"], f["service"] = ask.Cluster, proto.ServiceCluster
		delete(f, "device_name")
	}
	if ask.Origin != "" {
		f["user_cluster"] = ask.Origin
	}
	for k, v := range ask.Fields {
		f[k] = v
	}
	for k, v := range ref.Fields {
		f[k] = v
	}
	user := ask.User.Name
	b.Record(ctx, &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, User: user, Login: ask.Login,
		Addr: ask.ClientAddr, Message: ref.Msg, Fields: f})
}

// Record records one event with the fleet's audit recorder. Callers that
// must not go ahead unrecorded check the error.
func (b *Broker) Record(ctx context.Context, e *proto.AuditEvent) error {
	if e.Cluster == "" {
		e.Cluster = b.cfg.Cluster
	}
	if b.cfg.Audit == nil {
		return nil
	}
	return b.cfg.Audit.Record(ctx, e)
}

// Open opens the session's stream down its device's tunnel; target names
// what on the device (an app's name). The stream carries the session's
// ID, so that the device can end it when told (proto.SessionEnd): it is
// for services with one stream per session (SSH). Failures are a *Refusal
// (not recorded: see Deny), or the context's error when the user went
// away.
func (b *Broker) Open(ctx context.Context, g *Grant, target string) (net.Conn, error) {
	return b.open(ctx, g, target, g.Session.ID)
}

// OpenPooled is Open for services that open several streams per session
// (pooled HTTP connections: Kubernetes, apps): each stream gets an ID of
// its own, and the fleet ends the session by closing them.
//
// Each stream's session.start is recorded before the device hears of it,
// and its session.end when it closes: the device's own events about the
// stream name its ID, and are checked against the fleet's record (see
// fleet/audit's claims.go). A stream the audit trail cannot record is not
// opened.
//
// A pooled stream to a leaf cluster (a root's user at a leaf's web app) is
// recorded by the leaf, which decides it: here it is only opened.
func (b *Broker) OpenPooled(ctx context.Context, g *Grant, target string) (net.Conn, error) {
	id := NewID()
	if g.Session.Service == proto.ServiceCluster {
		return b.open(ctx, g, target, id)
	}
	ev := func(typ, outcome, msg string) *proto.AuditEvent {
		s := &g.Session
		f := map[string]string{"service": s.Service, "device_name": s.DeviceName, "kind": "stream"}
		if s.ID != "" {
			f["parent"] = s.ID
		}
		if target != "" {
			f["app"] = target
		}
		if s.KubeUser != "" {
			f["kube_user"], f["kube_groups"] = s.KubeUser, strings.Join(s.KubeGroups, ",")
		}
		return &proto.AuditEvent{Type: typ, Outcome: outcome, User: s.User, Session: id, Device: s.DeviceID,
			Addr: s.ClientAddr, Message: msg, Fields: f}
	}
	if err := b.Record(ctx, ev(proto.EventSessionStart, proto.OutcomeSuccess, "")); err != nil {
		return nil, &Refusal{Status: StatusUnavailable, Msg: AuditDown}
	}
	conn, err := b.open(ctx, g, target, id)
	if err != nil {
		b.Record(ctx, ev(proto.EventSessionEnd, proto.OutcomeFailure, err.Error()))
		return nil, err
	}
	return &recordedConn{Conn: conn, end: func() { b.Record(context.Background(), ev(proto.EventSessionEnd, proto.OutcomeSuccess, "")) }}, nil
}

// countedConn tells the bytes it carries.
type countedConn struct {
	net.Conn
	service string
	tell    func(service string, up, down int)
}

func (c *countedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.tell(c.service, 0, n)
	}
	return n, err
}

func (c *countedConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.tell(c.service, n, 0)
	}
	return n, err
}

// CloseWrite half-closes the stream, when the stream can.
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// recordedConn calls end once, when it is first closed.
type recordedConn struct {
	net.Conn
	once sync.Once
	end  func()
}

func (c *recordedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.end)
	return err
}

// CloseWrite half-closes the stream, when the stream can.
func (c *recordedConn) CloseWrite() error {
	if cw, ok := c.Conn.(closeWriter); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

func (b *Broker) open(ctx context.Context, g *Grant, target, streamID string) (net.Conn, error) {
	if g.Session.DeviceID == "" {
		return nil, &Refusal{Status: StatusNotFound, Msg: "no device to open a stream to"}
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.OpenTimeout)
	defer cancel()
	conn, err := b.cfg.Tunnels.Open(ctx, g.Session.DeviceID, &proto.StreamHeader{
		Service:    g.Session.Service,
		Target:     target,
		SessionID:  streamID,
		Identity:   g.Identity(),
		ClientAddr: g.Session.ClientAddr,
	})
	if err == nil {
		return b.counted(g, conn), nil
	}
	return nil, b.openError(ctx, g, err)
}

// counted counts conn's bytes for the fleet's metrics, when it keeps them.
func (b *Broker) counted(g *Grant, conn net.Conn) net.Conn {
	if b.cfg.Bytes != nil {
		return &countedConn{Conn: conn, service: g.Session.Service, tell: b.cfg.Bytes}
	}
	return conn
}

// openError says, as a *Refusal, why g's stream did not open (or is the
// context's error when the user went away).
func (b *Broker) openError(ctx context.Context, g *Grant, err error) error {
	what, lastSeen, refuser := fmt.Sprintf("device %q", g.Device.Name), g.Device.LastSeen, "the device"
	if g.Session.Cluster != "" {
		what, lastSeen = fmt.Sprintf("the leaf cluster %q", g.Leaf.Name), g.Leaf.LastSeen
		refuser = what
	}
	var pe *proto.Error
	switch {
	case b.cfg.Offline != nil && errors.Is(err, b.cfg.Offline):
		return &Refusal{Status: StatusOffline, Msg: fmt.Sprintf("%s is offline: last seen %s", what, b.lastSeen(err, lastSeen))}
	case b.cfg.NoAnswer != nil && errors.Is(err, b.cfg.NoAnswer):
		return &Refusal{Status: StatusNoAnswer, Msg: fmt.Sprintf("%s did not answer within %v (last seen %s); its link may be down",
			what, b.cfg.OpenTimeout, b.lastSeen(err, lastSeen))}
	case errors.As(err, &pe) && pe.Code == proto.CodeForbidden:
		return &Refusal{Status: StatusForbidden, Msg: refuser + " refused: " + pe.Message, Fields: map[string]string{"rule": "device"}}
	case errors.As(err, &pe) && pe.Code == proto.CodeNotFound:
		return &Refusal{Status: StatusNotFound, Msg: fmt.Sprintf("%s does not offer it: %s", what, pe.Message), Fields: map[string]string{"rule": "device"}}
	case ctx.Err() != nil && errors.Is(err, context.Canceled):
		return err // the user went away
	default:
		return &Refusal{Status: StatusNoAnswer, Msg: fmt.Sprintf("%s did not answer: %v", what, err)}
	}
}

// EndAtLeaf tells the leaf cluster of g that the session ended, with
// reason: the leaf ends (and records the end of) what it keeps for it,
// such as a web app's session, whose pooled streams carry IDs of their
// own.
func (b *Broker) EndAtLeaf(g *Grant, reason string) error {
	if g.Session.Service != proto.ServiceCluster {
		return nil
	}
	return b.cfg.Tunnels.Send(g.Session.DeviceID, &proto.SessionEnd{SessionID: g.Session.ID, Message: reason})
}

// lastSeen says when an unreachable device was last heard from: err knows
// (the tunnel server's errors), else the registry's record.
func (b *Broker) lastSeen(err error, registry time.Time) string {
	at := registry
	if lh, ok := errors.AsType[interface {
		error
		LastHeardAt() time.Time
	}](err); ok && !lh.LastHeardAt().IsZero() {
		at = lh.LastHeardAt()
	}
	if at.IsZero() {
		return "never"
	}
	return fmt.Sprintf("%s ago (%s)", b.cfg.Now().Sub(at).Round(time.Second), at.UTC().Format(time.RFC3339))
}

// Session is a live brokered session: recorded at its start, registered
// in the session registry, and recorded again by Done.
type Session struct {
	b     *Broker
	g     *Grant
	live  *sessions.Live
	start time.Time

	mu     sync.Mutex // guards closer, cutter, cutWhy and ended
	closer []func()
	cutter []func(reason string)
	cutWhy string // the reason of the registry's end, once it came
	ended  bool
}

// StartOptions adjust Start.
type StartOptions struct {
	// End ends the session in the way its service can tell the user why
	// (a message on an SSH session's standard error, an ERROR event on a
	// watch). It is called at most once, when the registry ends the
	// session; nil sends proto.SessionEnd to the device (for services
	// whose agent side ends its own streams). In any case the broker
	// closes what OnEnd registered after Config.EndGrace.
	End func(reason string)
	// NoEvents leaves the start and end events to the caller, for a
	// service whose events say more (Kubernetes records its own).
	NoEvents bool
}

// Start records the session's start (fail-closed: a session that cannot
// be recorded does not start, and the error is a *Refusal) and registers
// it as live. The caller must call Done.
func (b *Broker) Start(ctx context.Context, g *Grant, opt StartOptions) (*Session, error) {
	s := &Session{b: b, g: g, start: b.cfg.Now()}
	g.Session.Started = s.start
	if !opt.NoEvents {
		if b.Record(ctx, s.event(proto.EventSessionStart, map[string]string{})) != nil {
			return nil, &Refusal{Status: StatusUnavailable, Msg: AuditDown}
		}
	}
	end := opt.End
	if end == nil {
		end = func(reason string) { b.EndOnDevice(g, reason) }
	}
	live, err := b.cfg.Sessions.Register(g.Session, func(reason string) {
		s.cut(reason)
		end(reason)
		time.AfterFunc(b.cfg.EndGrace, s.closeAll)
	})
	if err != nil {
		ref := &Refusal{Status: StatusUnauthorized, Msg: err.Error()}
		if !opt.NoEvents {
			b.Record(ctx, s.event(proto.EventSessionEnd, map[string]string{"reason": err.Error()}))
		}
		return nil, ref
	}
	s.live = live
	// A lock that came after Authorize and before Register: the lock's
	// own pass over the registry may have run before this session was
	// in it.
	if ref := b.locked(authz.Subject(&g.Session, nil)); ref != nil {
		if opt.NoEvents {
			s.DoneSilently(ref.Msg)
		} else {
			s.Done(ctx, ref.Msg, Stats{})
		}
		b.Deny(ctx, g.Ask, ref)
		return nil, ref
	}
	return s, nil
}

// ID is the session's ID.
func (s *Session) ID() string { return s.g.Session.ID }

// Token is the secret that lets the session's client ask how it ended
// (sessions.Live.Token).
func (s *Session) Token() string { return s.live.Token() }

// Ending returns why the fleet ended the session, or "" while it has not.
func (s *Session) Ending() string { return s.live.Ending() }

// Started is when the session started.
func (s *Session) Started() time.Time { return s.start }

// OnEnd registers f (closing a connection, cancelling a context) to run
// when the fleet ends the session, after the grace period; at once if it
// has ended already.
func (s *Session) OnEnd(f func()) {
	s.mu.Lock()
	if !s.ended {
		s.closer = append(s.closer, f)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	f()
}

// OnCut registers f to run at once when the fleet ends the session, with
// the reason, before the device is told and before the grace period (a
// Splicer's Cut: the user's input stops, a framing client is told why);
// at once if the fleet has ended it already.
func (s *Session) OnCut(f func(reason string)) {
	s.mu.Lock()
	if s.cutWhy == "" {
		s.cutter = append(s.cutter, f)
		s.mu.Unlock()
		return
	}
	why := s.cutWhy
	s.mu.Unlock()
	f(why)
}

func (s *Session) cut(reason string) {
	s.mu.Lock()
	s.cutWhy = reason
	list := s.cutter
	s.cutter = nil
	s.mu.Unlock()
	for _, f := range list {
		f(reason)
	}
}

func (s *Session) closeAll() {
	s.mu.Lock()
	s.ended = true
	list := s.closer
	s.closer = nil
	s.mu.Unlock()
	for _, f := range list {
		f()
	}
}

func (s *Session) event(typ string, f map[string]string) *proto.AuditEvent {
	g := &s.g.Session
	f["service"], f["device_name"] = g.Service, g.DeviceName
	if g.App != "" {
		f["app"] = g.App
	}
	for k, v := range s.g.Ask.Fields {
		f[k] = v
	}
	return &proto.AuditEvent{Type: typ, User: g.User, Login: g.Login, Session: g.ID, Device: g.DeviceID, Addr: g.ClientAddr, Fields: f}
}

// Stats are what a session carried, for its end event.
type Stats struct {
	Up, Down int64 // bytes to the device and back
	// Fields add to the end event.
	Fields map[string]string
}

// Done ends the session: it is removed from the registry and its end is
// recorded with reason ("" when one side closed it; the registry's reason
// when the fleet ended it). It returns the reason recorded.
func (s *Session) Done(ctx context.Context, reason string, st Stats) string {
	reason = s.DoneSilently(reason)
	f := map[string]string{
		"bytes_up": strconv.FormatInt(st.Up, 10), "bytes_down": strconv.FormatInt(st.Down, 10),
		"duration": s.b.cfg.Now().Sub(s.start).Round(time.Millisecond).String(),
	}
	for k, v := range st.Fields {
		f[k] = v
	}
	if reason != "" {
		f["reason"] = reason
	}
	s.b.Record(ctx, s.event(proto.EventSessionEnd, f))
	return reason
}

// MarkDone tells the registry the session has ended, with reason, before
// Done records it: a client that asks why (sessions.Registry.Ended) as
// soon as its connection closes finds the reason.
func (s *Session) MarkDone(reason string) {
	if why := s.live.Ending(); why != "" {
		reason = why
	}
	s.live.Done(reason)
}

// DoneSilently is Done for a session whose events its service records
// itself (StartOptions.NoEvents), and for one that never started on the
// device (its refusal is the record).
func (s *Session) DoneSilently(reason string) string {
	if why := s.live.Ending(); why != "" {
		reason = why
	}
	s.live.Done(reason)
	s.mu.Lock()
	s.ended = true
	s.closer = nil
	s.mu.Unlock()
	return reason
}
