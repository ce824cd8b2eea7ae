package fleetd

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/time/rate"

	"remoteler.dev/edge/fleet/admin"
	"remoteler.dev/edge/fleet/appjwt"
	"remoteler.dev/edge/fleet/apps"
	"remoteler.dev/edge/fleet/appsrv"
	fleetaudit "remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/authz"
	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/clusters"
	"remoteler.dev/edge/fleet/deviceauth"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/direct"
	"remoteler.dev/edge/fleet/httpapi"
	"remoteler.dev/edge/fleet/kubesrv"
	"remoteler.dev/edge/fleet/leader"
	"remoteler.dev/edge/fleet/leader/etcdleader"
	"remoteler.dev/edge/fleet/lifecycle"
	"remoteler.dev/edge/fleet/linkhealth"
	"remoteler.dev/edge/fleet/locks"
	"remoteler.dev/edge/fleet/metrics"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/releases"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/fleet/sourcelimit"
	"remoteler.dev/edge/fleet/sso"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/backend"
	"remoteler.dev/edge/fleet/store/etcdstore"
	"remoteler.dev/edge/fleet/ticket"
	"remoteler.dev/edge/fleet/tokens"
	"remoteler.dev/edge/fleet/trust"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/auditexport"
)

// Version is fleetd's version, set at build time.
var Version = "dev"

// AdminInfo is written to DATA_DIR/admin/fleet.json next to the admin
// identity, so fleetctl --data-dir knows where the fleet listens.
type AdminInfo struct {
	Addr    string `json:"addr"`
	CAPin   string `json:"ca_pin"`
	Cluster string `json:"cluster"`
}

// Run starts fleetd and serves until ctx is done. It prints where it listens
// and the CA pin to out once it is ready.
func Run(ctx context.Context, cfg Config, log *slog.Logger, out io.Writer) error {
	cfg.setDefaults()
	if cfg.DataDir == "" {
		return errors.New("fleetd: --data-dir is required")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "admin"), 0o700); err != nil {
		return fmt.Errorf("fleetd: data dir: %w", err)
	}
	spec, err := backend.Parse(backend.Config{URL: cfg.Store, DataDir: cfg.DataDir, TLS: cfg.StoreTLS})
	if err != nil {
		return fmt.Errorf("fleetd: %w", err)
	}
	log.Info("opening the store", "store", spec.String())
	st, err := backend.Open(ctx, spec, log)
	if err != nil {
		return fmt.Errorf("fleetd: %w", err)
	}
	defer st.Close()
	fmt.Fprintf(out, "Store: %s\n", spec)
	return run(ctx, cfg, st, log, out)
}

// elector returns the leader elector of job name on st: etcd's election
// for replicas on etcd, the store-based one for the embedded store.
func elector(st store.Store, name string) leader.Elector {
	id, _ := os.Hostname()
	if es, ok := st.(*etcdstore.Store); ok {
		return &etcdleader.Elector{Store: es, Name: name, ID: id}
	}
	return &leader.Local{Store: st, Name: name, ID: id}
}

func run(ctx context.Context, cfg Config, st store.Store, log *slog.Logger, out io.Writer) error {
	now := time.Now
	auth, err := ca.LoadOrCreate(ctx, st, cfg.Cluster, now)
	if err != nil {
		return fmt.Errorf("fleetd: %w", err)
	}
	roles := &rbac.Roles{Store: st, Logger: log}
	if err := roles.EnsurePresets(ctx); err != nil {
		return fmt.Errorf("fleetd: %w", err)
	}
	keys, err := loadQUICKeys(ctx, st, now())
	if err != nil {
		return fmt.Errorf("fleetd: %w", err)
	}
	ticketKeys := newTicketKeys()
	ticketKeys.set(keys.active(now()))

	tcp, udp, err := listen(cfg.Listen)
	if err != nil {
		return fmt.Errorf("fleetd: %w", err)
	}
	defer tcp.Close()
	defer udp.Close()
	addr := tcp.Addr().String()

	publicURL, err := publicURLOf(cfg, addr)
	if err != nil {
		return fmt.Errorf("fleetd: %w", err)
	}
	appAddr := webAddr(cfg, publicURL)
	hosts := append(serverHosts(cfg), appAddr.Domain, "*."+appAddr.Domain)
	certs := &certHolder{}
	if err := certs.renew(auth, hosts); err != nil {
		return fmt.Errorf("fleetd: server certificate: %w", err)
	}
	serverTLS := &tls.Config{
		GetCertificate: certs.get,
		// Client CAs are read per handshake so CA rotation takes effect.
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			// HTTP/2 for browsers on apps' addresses; HTTP/1.1 elsewhere
			// (connect and Kubernetes upgrades take over the connection).
			protos := []string{"http/1.1"}
			if _, _, ok := appAddr.Parse(hello.ServerName); ok {
				protos = []string{"h2", "http/1.1"}
			}
			return &tls.Config{
				GetCertificate: certs.get,
				ClientAuth:     tls.VerifyClientCertIfGiven,
				ClientCAs:      auth.CertPool(),
				NextProtos:     protos,
				MinVersion:     tls.VersionTLS12,
			}, nil
		},
		MinVersion: tls.VersionTLS12,
	}

	audit := log.With("logger", "audit")
	ckKey, err := loadCheckpointKey(ctx, st)
	if err != nil {
		return fmt.Errorf("fleetd: %w", err)
	}
	sto := newStorage(cfg, st, now)
	// On etcd this fleetd is one replica of the fleet (replicas.go).
	_, onEtcd := st.(*etcdstore.Store)
	var reps *replicas
	var replica string
	var auditReps auditReplicas
	if onEtcd {
		if replica, err = replicaID(cfg); err != nil {
			return fmt.Errorf("fleetd: %w", err)
		}
		auditReps = auditReplicas{heads: fleetaudit.StoreHeads{Store: st}, replica: replica,
			brokered: func(ctx context.Context, deviceID, session string) (*proto.AuditEvent, error) {
				return reps.brokered(ctx, deviceID, session)
			}}
	}
	// The metrics: counters fed by the audit log's and the broker's hooks,
	// gauges read from the fleet's parts (set below).
	met := metrics.New(metrics.Sources{})
	events, recs, err := openAudit(cfg, ckKey, sto, auditReps, met.Stored, log, now)
	if err != nil {
		return fmt.Errorf("fleetd: %w", err)
	}
	defer events.Close()
	// The one audit recorder: the trail and a line on the audit logger.
	recorder := &fleetaudit.Recorder{Log: events, Cluster: cfg.Cluster, Logger: audit}
	// On etcd the registry keeps a copy of each record, so that a
	// device's reconnect is one write and no read (replicas.md).
	reg := &devices.Registry{Store: st, Now: now, Copies: onEtcd}
	toks := &tokens.Service{Store: st, Now: now, Logger: log}
	tunnelTLS := &tls.Config{GetCertificate: certs.get, ClientCAs: auth.CertPool()}
	// Ticket keys from the store, rotated daily: agents resume their TLS
	// sessions (0-RTT, no certificate signatures) across restarts and
	// replicas, and a leaked key opens only the tickets of its two days.
	ticketKeys.install(tunnelTLS)
	tcfg := tunnelsrv.Config{
		TLSConfig:         tunnelTLS,
		StatelessResetKey: &keys.Reset,
		TokenKey:          &keys.Token,
		LinkKey:           keys.Link[:],
		SessionHold:       time.Duration(cfg.SessionHold),
		PathMTUDiscovery:  cfg.TunnelPathMTUDiscovery,
		Logger:            log,
		Now:               now,
	}
	// The locks in force, as this replica sees them in the store (OnLock
	// is set once the sessions and tunnels exist).
	lockSet := &locks.Set{Logger: log, Now: now}
	lockSvc := &locks.Service{Store: st, Devices: reg, Now: now}
	// The device lifecycle: join (through the HTTPS API), hello, renew,
	// disconnect (through the tunnel server).
	directNets, err := parsePrefixes(cfg.DirectNetworks)
	if err != nil {
		return fmt.Errorf("fleetd: direct_networks: %w", err)
	}
	// A joining device pins the release keys the fleet trusts (the OTA
	// service, made below, holds them).
	var otaSvc *otaParts
	releaseKeys := func(ctx context.Context) []string { return otaSvc.releases.TrustedKeys(ctx).Strings() }
	life := lifecycle.New(lifecycle.Config{CA: auth, Devices: reg, Tokens: toks, Cluster: cfg.Cluster, Locks: lockSet,
		CertTTL: time.Duration(cfg.DeviceCertTTL), Keepalive: time.Duration(cfg.DeviceKeepalive), Liveness: time.Duration(cfg.DeviceLiveness),
		Apps: apps.Policy{Hosts: cfg.AppURIHosts}, DirectNetworks: directNets, ReleaseKeys: releaseKeys,
		Audit: recorder, Logger: log, Now: now})
	life.Configure(&tcfg)
	var tunnels *tunnelsrv.Server
	// Set when fleetd stops: the tunnels end first (see the end of run).
	var stopping atomic.Bool
	// Devices are reached through the router on several replicas: on this
	// replica or on the one holding their tunnel.
	var reach reacher
	if onEtcd {
		// Presence: a device's tunnel is recorded once it is registered,
		// before its hello is answered, and released when it ends; a
		// device that has moved to another replica did not go offline.
		recheck, disconnect := tcfg.Recheck, tcfg.OnDisconnect
		// reps is made further down: the claim reaches its presence then.
		claim := func(ctx context.Context, id, addr, boot string, since time.Time, opts ...store.WriteOption) error {
			return reps.pres.Claim(ctx, id, addr, boot, since, opts...)
		}
		tcfg.Recheck = recheckOnEtcd(reg.Guard, life.CheckLock, recheck, claim, func(id string) (tunnelsrv.Info, bool) { return tunnels.Info(id) })
		// A device silent on this replica is offline on every replica.
		tcfg.OnSilence = func(ctx context.Context, id string, since time.Time, silent bool) error {
			ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			defer cancel()
			err := reps.pres.Mark(ctx, id, since, silent)
			if err != nil {
				log.Warn("record a device's silence; trying again at the next sweep", "device_id", id, "silent", silent, "err", err)
			}
			return err
		}
		tcfg.OnDisconnect = func(id string, lastHeard time.Time, err error) {
			if stopping.Load() {
				// Every tunnel ends at once: the lease, revoked once
				// they are closed, takes all their entries in one write.
				if e, ok := reps.pres.Lookup(id); ok && e.Replica != replica {
					return // it has already moved to another replica
				}
				disconnect(id, lastHeard, err)
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			elsewhere, rerr := reps.pres.Release(ctx, id)
			cancel()
			if rerr != nil {
				log.Warn("release a device's presence", "device_id", id, "err", rerr)
			}
			if elsewhere {
				log.Info("device moved to another replica", "device_id", id)
				return
			}
			disconnect(id, lastHeard, err)
		}
	}
	tcfg.OnMessage = auditMessages(events, recs, log, tcfg.OnMessage)
	// On several replicas, release blobs come from the replica holding
	// them (replicas.go).
	// A device whose tunnel another replica holds is offered its
	// release by that replica.
	var blobPeers releases.Peers
	var heldElsewhere func(string) bool
	if onEtcd {
		blobPeers = &replicaBlobs{id: replica, reps: func() *replicas { return reps }}
		heldElsewhere = func(id string) bool {
			if reps == nil {
				return false
			}
			_, ok := reps.elsewhere(id)
			return ok
		}
	}
	otaSvc, err = newOTA(ctx, cfg, st, reg, events, func(id string, m proto.Message) error { return reach.Send(id, m) }, blobPeers, heldElsewhere, &tcfg, log, now)
	if err != nil {
		return fmt.Errorf("fleetd: ota: %w", err)
	}
	// Devices report the sessions they hold for away users (set below,
	// once the broker exists, before any tunnel runs).
	var serveHeld func(ctx context.Context, id string, conn net.Conn)
	ota := tcfg.OnAgentStream
	tcfg.OnAgentStream = func(ctx context.Context, id, service string, conn net.Conn) {
		if service == proto.ServiceHeld {
			serveHeld(ctx, id, conn)
			return
		}
		ota(ctx, id, service, conn)
	}
	// Trusted clusters, as a root: leaves tunnel in like devices, with
	// certificates of their own kind.
	// A leaf that removes its trust says so: the sessions relayed to it
	// end with that reason (live is set below, before any tunnel runs).
	var live *sessions.Registry
	leaves := clusters.New(clusters.Config{Store: st, CA: auth, Tokens: toks, Cluster: cfg.Cluster,
		CertTTL: time.Duration(cfg.DeviceCertTTL), Audit: recorder, Logger: log, Now: now,
		OnLeave: func(name, reason string) {
			live.End(func(s *sessions.Session) bool { return s.Cluster == name }, reason)
		}})
	leaves.Configure(&tcfg)
	tunnels = tunnelsrv.New(tcfg)
	// Trusted clusters, as a leaf: set below, once the API it serves the
	// roots' users exists.
	var roots *trust.Service
	reach = tunnels
	if onEtcd {
		// Ends when fleetd starts to stop (ctx is re-bound further down, to
		// the context that outlives the stop's first steps).
		untilStop := ctx
		reps, err = newReplicas(cfg, replica, st, auth, tunnels, log, func() {
			// Cut off from the store: the devices here cannot be found by
			// the other replicas; send them to one that can record them.
			go afterLeaseLost(untilStop, life.Drain, tunnels.Shed, func(ctx context.Context) error { return reps.pres.WaitReady(ctx) }, life.Flush, log)
		})
		if err != nil {
			return fmt.Errorf("fleetd: %w", err)
		}
		reach = reps.router
		reps.mux.HandleFunc("GET "+pathBrokered, serveBrokered(events))
		reps.mux.Handle("GET "+releases.PeerBlobPath("{sum}"), otaSvc.releases.PeerHandler())
	}
	us := &users.Service{Store: st, Now: now, Logger: log}
	// The live sessions, checked again whenever users or roles change, and
	// ended at their certificate's expiry.
	var kube *kubesrv.Server
	authorizer := &authz.Authorizer{Users: us, Roles: roles, Devices: reg, Locks: lockSet, LocalLabels: func() map[string]string {
		if l := kube.Local(); l != nil {
			return l.Labels
		}
		return nil
	},
		Leaves: func(ctx context.Context, name string) error {
			_, err := leaves.Get(ctx, name)
			return err
		},
		Remote: func(ctx context.Context, origin string, r []string) ([]string, error) {
			return roots.Roles(ctx, origin, r)
		},
	}
	live = sessions.New(sessions.Config{Check: authorizer.Check, Logger: log, Now: now})
	defer live.Close()
	lockSet.OnLock = enforceLocks(live, tunnels, log)
	// Direct nodes hold no tunnel: the fleet dials them.
	dialer := direct.New(direct.Config{CA: auth, Devices: reg, Logger: log, Now: now})
	defer dialer.Close()
	router := &direct.Router{Tunnels: reach, Direct: dialer, Devices: reg, Now: now}
	// One broker for every service: SSH, Kubernetes and apps.
	brk := broker.New(broker.Config{
		Tunnels: router, Offline: tunnelsrv.ErrOffline, NoAnswer: tunnelsrv.ErrNoAnswer, Devices: reg, Sessions: live, Locks: lockSet,
		Local: func() (string, map[string]string, bool) {
			if l := kube.Local(); l != nil {
				return l.Name, l.Labels, true
			}
			return "", nil, false
		},
		Audit: recorder, Cluster: cfg.Cluster, Bytes: met.Bytes, Logger: log, Now: now, UserHeld: reps != nil,
		Clusters: leaves, OriginKeys: func(origin string) [][]byte { return roots.UserCAKeys(origin) },
	})
	serveHeld = brk.ServeHeld
	kube = newKube(cfg, brk, log, now, recs)
	defer kube.Close()

	links := linkSampler(tunnels)
	// One home for admin actions: the API's and the dashboard's.
	adm := admin.New(admin.Config{Users: us, Roles: roles, Tokens: toks, Devices: reg, CAPin: auth.Pin,
		Disconnect: reach.Disconnect, Changed: live.Changed, Audit: recorder})
	tickets := &ticket.Service{Store: st, Now: now}
	refuseLocked := func(user string, roles []string) error { return lockSet.Check(locks.Subject{User: user, Roles: roles}) }
	single := sso.New(sso.Config{Store: st, Users: us, Roles: roles, RedirectURL: publicURL + api.PathSSOCallback, Refuse: refuseLocked,
		UserCertTTL: time.Duration(cfg.UserCertTTL), Audit: recorder, Cluster: cfg.Cluster, Logger: log, Now: now})
	log.Info("single sign-on", "redirect_url", publicURL+api.PathSSOCallback, "headless_approval", publicURL+api.PathDeviceVerify)
	apiSrv := &httpapi.Server{
		CA:            auth,
		Users:         us,
		Roles:         roles,
		Tokens:        toks,
		Devices:       reg,
		Tunnels:       reach,
		Cluster:       cfg.Cluster,
		Version:       Version,
		Listen:        addr,
		StartedAt:     now().UTC(),
		UserCertTTL:   time.Duration(cfg.UserCertTTL),
		DeviceCertTTL: time.Duration(cfg.DeviceCertTTL),
		Logger:        log,
		Audit:         audit,
		Events:        events,
		Recordings:    recs,
		Releases:      otaSvc.releases,
		Rollouts:      otaSvc.rollouts,
		LinkLoss:      links.Loss,
		Sessions:      live,
		Broker:        brk,
		Lifecycle:     life,
		Admin:         adm,
		Now:           now,

		BodyIdleTimeout: time.Duration(cfg.HTTPBodyIdleTimeout),
		BodyTimeout:     time.Duration(cfg.HTTPBodyTimeout),
		LoginLimit:      loginLimit(cfg),
		Retention:       sto.policy,
		Floor:           sto.floor,
		SSO:             single,
		Tickets:         tickets,
		Locks:           lockSet,
		LockStore:       lockSvc,
	}
	apiSrv.Kube = kube
	if reps != nil {
		apiSrv.Peers = reps
		apiSrv.PeerRoutes(reps.mux)
	}
	// The browser side: the login, web apps, the keys apps verify their
	// JWTs with.
	appKeys, err := appjwt.Open(ctx, st, now)
	if err != nil {
		return fmt.Errorf("fleetd: %w", err)
	}
	catalog := &apps.Catalog{Devices: reg, Online: router.Online, Addr: appAddr}
	apiSrv.Apps, apiSrv.AppKeys = catalog, appKeys
	web := newWeb(cfg, st, appAddr, us, roles, auth, brk, recorder, appKeys, catalog, apiSrv.AllowLogin,
		func(u api.User) error { return refuseLocked(u.Name, u.Roles) }, single, func(r *http.Request) (appsrv.Remote, error) {
			return remoteAppUser(r, roots)
		}, log, now)
	defer web.apps.Close()
	// Trusted clusters, as a leaf: the roots' streams reach the API, and
	// this fleet's apps (the streams for apps).
	roots = trust.New(trust.Config{Store: st, CA: auth, Cluster: cfg.Cluster, Version: Version, Handler: relayRoute(web.apps, apiSrv.Handler()),
		Sessions: live, Audit: recorder, Logger: log, Now: now})
	apiSrv.Clusters, apiSrv.Trust = leaves, roots
	// The dashboard (its terminal, the link history), behind the login. It
	// reaches devices through the broker (the router); a device whose
	// tunnel another replica holds shows online, as a direct node does.
	var elsewhere func(string) (time.Time, bool)
	if reps != nil {
		elsewhere = reps.elsewhere
	}
	dsh, err := newDash(cfg, dashDeps{reg: reg, tunnels: tunnels, elsewhere: elsewhere, links: links, live: live, brk: brk, auth: auth, users: us, roles: roles,
		tokens: toks, events: events, recs: recs, recorder: recorder, admin: adm, login: webLogin{web.login}, web: appAddr,
		listen: tcp.Addr(), releases: otaSvc.releases, rollouts: otaSvc.rollouts}, log, now)
	if err != nil {
		return fmt.Errorf("fleetd: %w", err)
	}
	defer dsh.history.Close()
	dsh.register(web.mux)
	met.SetSources(metrics.Sources{View: dsh.view, Tunnels: tunnels.Count, Sessions: live, Backlog: events.Backlog})
	apiSrv.DeviceAuth = deviceauth.New(deviceauth.Config{Store: st, Tickets: tickets, Users: us, PublicURL: publicURL, SSO: single,
		Refuse: func(u api.User) error { return refuseLocked(u.Name, u.Roles) },
		Limit:  apiSrv.AllowLogin, Audit: recorder, Cluster: cfg.Cluster, Logger: log, Now: now})
	ready := func() bool { return true }
	if reps != nil {
		ready = reps.pres.Ready
	}
	httpSrv := &http.Server{
		Handler:           met.Instrument(readyHandler(replica, ready, web.route(apiSrv.Handler()))),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.With("component", "http").Handler(), slog.LevelDebug),
	}

	if err := writeAdmin(cfg.DataDir, auth, AdminInfo{Addr: clientAddr(addr), CAPin: auth.Pin(), Cluster: cfg.Cluster}); err != nil {
		return fmt.Errorf("fleetd: admin identity: %w", err)
	}

	// A stop ends the device tunnels first, while this replica still holds
	// its lease and passes its readiness check, so that load balancers
	// still carry the close frames that tell the devices to reconnect
	// elsewhere; then everything else (shutdown, at the end).
	parent := ctx
	ctx, cancel := context.WithCancel(context.WithoutCancel(parent))
	defer cancel()
	tctx, tcancel := context.WithCancel(ctx)
	defer tcancel()
	tunnelsDone := make(chan struct{})
	var tunnelsStarted atomic.Bool
	shutdown := sync.OnceFunc(func() {
		if tunnelsStarted.Load() {
			stopping.Store(true)
			// The tunnels close without waiting on the store; their
			// devices' last seen is written once they are closed.
			life.Drain()
			t0 := time.Now()
			tcancel()
			select {
			case <-tunnelsDone:
			case <-time.After(stopBudget):
				log.Warn("device tunnels still closing; stopping anyway")
			}
			log.Info("device tunnels closed", "took", time.Since(t0).Round(time.Millisecond).String())
			budget, bcancel := context.WithTimeout(context.Background(), stopBudget)
			if n := life.Flush(budget); n > 0 {
				log.Warn("stopped before recording every device's last seen; theirs stays at when they connected", "devices", n)
			}
			bcancel()
		}
		cancel()
	})
	defer context.AfterFunc(parent, shutdown)()
	var wg sync.WaitGroup
	// The locks are loaded before anything is served, and followed from
	// then on: a lock written on any replica reaches this one within the
	// store's watch latency.
	followLocks(ctx, st, lockSet, wg.Go)
	if ctx.Err() != nil {
		wg.Wait()
		return nil
	}
	if reps != nil {
		reps.run(ctx, &wg)
		// Take devices and users once this replica is registered (the
		// store answers: Open waited for it).
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		if err := reps.pres.WaitReady(wctx); err != nil {
			log.Warn("this replica is not registered in the store yet; it refuses devices and users until it is", "err", err)
		}
		wcancel()
		log.Info("replica", "id", replica, "peers_at", reps.pres.Self().Addr)
	}
	wg.Go(func() { events.Run(ctx) })
	otaSvc.run(ctx, &wg, elector(st, "rollouts"), st, log)
	wg.Go(func() { recs.Run(ctx) })
	wg.Go(func() { links.Run(ctx) })
	wg.Go(func() { web.login.Run(ctx) })
	wg.Go(func() { web.apps.Run(ctx) })
	dsh.run(ctx, &wg)
	if cfg.MetricsListen != "" {
		token, err := metricsToken(cfg)
		if err != nil {
			return fmt.Errorf("fleetd: %w", err)
		}
		wg.Go(func() {
			err := met.Serve(ctx, metrics.ServeConfig{Listen: cfg.MetricsListen, Token: token, Logger: log}, func(a net.Addr) {
				log.Info("metrics served", "addr", "http://"+a.String()+"/metrics", "token", token != "")
				fmt.Fprintf(out, "Metrics: http://%s/metrics\n", a)
			})
			if err != nil {
				log.Error("metrics not served", "err", err)
			}
		})
	}
	errc := make(chan error, 3)
	wg.Add(3)
	go func() {
		defer wg.Done()
		limited := &sourcelimit.Listener{Listener: tcp, Max: cfg.MaxConnsPerSource, OnRefuse: func(src string) {
			log.Debug("connection refused: too many from its source", "source", src, "max", cfg.MaxConnsPerSource)
		}}
		err := httpSrv.Serve(tls.NewListener(limited, serverTLS))
		if !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("fleetd: https: %w", err)
		}
	}()
	tunnelsStarted.Store(true)
	go func() {
		defer wg.Done()
		defer close(tunnelsDone)
		if err := tunnels.Serve(tctx, udp); err != nil {
			errc <- fmt.Errorf("fleetd: tunnels: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		refresh(ctx, log, func() error {
			// Every replica reads the ticket keys, rotated by whichever
			// gets there first.
			if k, err := loadQUICKeys(ctx, st, now()); err != nil {
				log.Warn("rotate session ticket keys", "err", err)
			} else {
				ticketKeys.set(k.active(now()))
			}
			if err := certs.renew(auth, hosts); err != nil {
				return err
			}
			return writeAdmin(cfg.DataDir, auth, AdminInfo{Addr: clientAddr(addr), CAPin: auth.Pin(), Cluster: cfg.Cluster})
		})
	}()

	// The roots' users' requests, served by this fleet's API; the tunnels
	// to the roots, once for the fleet, by the leader.
	wg.Go(func() { roots.Serve(ctx) })
	wg.Go(func() {
		leader.Run(ctx, "trusted-clusters", elector(st, "trusted-clusters"), st, log, func(ctx context.Context, fenced store.Store) error {
			return roots.Run(ctx, fenced)
		})
	})
	// CA rotation steps taken on another replica reach this one.
	wg.Go(func() { followCA(ctx, st, auth, log) })
	// Logins that were started and never finished (single sign-on,
	// tickets, headless) are pruned once for the fleet, by the leader.
	wg.Go(func() {
		leader.Run(ctx, "login-pruning", elector(st, "login-pruning"), st, log, func(ctx context.Context, fenced store.Store) error {
			every(ctx, 5*time.Minute, func() {
				for what, prune := range map[string]func(context.Context, store.Store) (int, error){
					"single sign-on logins": single.Prune, "login tickets": tickets.Prune, "headless logins": apiSrv.DeviceAuth.Prune,
					"expired browser sessions": func(ctx context.Context, _ store.Store) (int, error) { return web.login.Prune(ctx) },
					"expired app sessions":     func(ctx context.Context, _ store.Store) (int, error) { return web.apps.Prune(ctx) },
				} {
					if _, err := prune(ctx, fenced); err != nil {
						log.Warn("prune "+what, "err", err)
					}
				}
			})
			return nil
		})
	})
	// Expired locks are deleted, and their expiry recorded, once for the
	// fleet, by the leader.
	wg.Go(func() {
		leader.Run(ctx, "lock-expiry", elector(st, "lock-expiry"), st, log, expireLocks(lockSvc, recorder, 5*time.Second, log))
	})
	// Expired join tokens are pruned once for the fleet, by the leader.
	wg.Go(func() {
		leader.Run(ctx, "token-pruning", elector(st, "token-pruning"), st, log, func(ctx context.Context, fenced store.Store) error {
			pruner := &tokens.Service{Store: fenced, Now: now, Logger: log}
			refresh(ctx, log, func() error {
				if _, err := pruner.Prune(ctx); err != nil {
					log.Warn("prune join tokens", "err", err)
				}
				return nil
			})
			return nil
		})
	})

	log.Info("fleetd started", "listen", addr, "cluster", cfg.Cluster, "ca_pin", auth.Pin(), "version", Version)
	fmt.Fprintf(out, "fleetd %s: fleet %q listening on %s (HTTPS on TCP, device tunnels on UDP)\n", Version, cfg.Cluster, addr)
	if reps != nil {
		fmt.Fprintf(out, "Replica %s: peers at %s\n", replica, reps.pres.Self().Addr)
	}
	fmt.Fprintf(out, "CA pin: %s\n", auth.Pin())
	fmt.Fprintf(out, "Audit checkpoint key: %s\n", auditexport.KeyString(events.CheckpointKey()))
	fmt.Fprintf(out, "Admin identity: %s (used by fleetctl --data-dir %s)\n", filepath.Join(cfg.DataDir, "admin", "identity.pem"), cfg.DataDir)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	shutdown()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	httpSrv.Shutdown(sctx)
	scancel()
	httpSrv.Close()
	// The tunnel server returns once it has told every device it is going;
	// the socket closes after that (deferred), or the close frames are lost.
	wg.Wait()
	finalCheckpoint(events, log)
	log.Info("fleetd stopped")
	return runErr
}

// stopBudget bounds how long a stop waits for the device tunnels to close,
// then for their last seen to be written: a replica with thousands of
// devices stops within seconds, not after thousands of writes.
const stopBudget = 10 * time.Second

// reacher reaches devices: the tunnel server on one fleetd, the router
// (fleet/route) on several replicas.
type reacher interface {
	broker.Tunnels
	httpapi.Tunnels
}

// loginLimit is the per-source login limit cfg asks for; nil means
// httpapi's default.
func loginLimit(cfg Config) *sourcelimit.Limiter {
	switch every := time.Duration(cfg.LoginEvery); {
	case every < 0:
		return &sourcelimit.Limiter{} // off
	case every == 0 && cfg.LoginBurst == 0:
		return nil
	default:
		if every == 0 {
			every = httpapi.DefaultLoginEvery
		}
		burst := cfg.LoginBurst
		if burst <= 0 {
			burst = httpapi.DefaultLoginBurst
		}
		return &sourcelimit.Limiter{Rate: rate.Every(every), Burst: burst}
	}
}

// parsePrefixes parses CIDR prefixes.
func parsePrefixes(in []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range in {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// every runs f every d until ctx is done.
func every(ctx context.Context, d time.Duration, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f()
		}
	}
}

// publicURLOf is cfg's PublicURL, or its default for the fleet listening
// at addr.
func publicURLOf(cfg Config, addr string) (string, error) {
	if cfg.PublicURL != "" {
		u, err := url.Parse(cfg.PublicURL)
		if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return "", fmt.Errorf("public_url %q must be https://HOST[:PORT]", cfg.PublicURL)
		}
		return "https://" + u.Host, nil
	}
	_, port, _ := net.SplitHostPort(addr)
	if len(cfg.PublicAddrs) > 0 && cfg.PublicAddrs[0] != "" {
		return "https://" + net.JoinHostPort(cfg.PublicAddrs[0], port), nil
	}
	return "https://" + clientAddr(addr), nil
}

// refresh runs f every hour until ctx is done, logging its errors.
func refresh(ctx context.Context, log *slog.Logger, f func() error) {
	every(ctx, time.Hour, func() {
		if err := f(); err != nil {
			log.Error("refresh certificates", "err", err)
		}
	})
}

// listen opens TCP and UDP on the same port. With port 0 it retries until
// it finds a port free for both.
func listen(addr string) (net.Listener, net.PacketConn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("listen address %q: %w", addr, err)
	}
	for range 20 {
		tcp, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("listen tcp: %w", err)
		}
		p := strconv.Itoa(tcp.Addr().(*net.TCPAddr).Port)
		udp, err := net.ListenPacket("udp", net.JoinHostPort(host, p))
		if err == nil {
			if uc, ok := udp.(*net.UDPConn); ok {
				// quic-go wants large buffers; failure only costs speed.
				uc.SetReadBuffer(4 << 20)
				uc.SetWriteBuffer(4 << 20)
			}
			return tcp, udp, nil
		}
		tcp.Close()
		if port != "0" {
			return nil, nil, fmt.Errorf("listen udp: %w", err)
		}
	}
	return nil, nil, errors.New("listen: no port free for both TCP and UDP")
}

// clientAddr turns a wildcard listen address into one a local client dials.
func clientAddr(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

func serverHosts(cfg Config) []string {
	if len(cfg.PublicAddrs) > 0 {
		return cfg.PublicAddrs
	}
	hosts := []string{"localhost", "127.0.0.1", "::1"}
	if h, err := os.Hostname(); err == nil {
		hosts = append(hosts, h)
	}
	if host, _, err := net.SplitHostPort(cfg.Listen); err == nil {
		if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
			hosts = append(hosts, host)
		}
	}
	return hosts
}

// certHolder keeps the fleet's current TLS server certificate.
type certHolder struct {
	mu   sync.Mutex // guards cert
	cert *tls.Certificate
}

func (h *certHolder) renew(auth *ca.Authority, hosts []string) error {
	c, err := auth.ServerCert(hosts, 30*24*time.Hour)
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.cert = &c
	h.mu.Unlock()
	return nil
}

func (h *certHolder) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cert, nil
}

// writeAdmin writes the admin identity (24 h, renewed hourly) and where the
// fleet listens, for fleetctl --data-dir.
func writeAdmin(dataDir string, auth *ca.Authority, info AdminInfo) error {
	certPEM, keyPEM, err := auth.AdminIdentity(24 * time.Hour)
	if err != nil {
		return err
	}
	dir := filepath.Join(dataDir, "admin")
	// Leaf first, then the CAs fleetctl verifies the fleet with, then the key.
	id := append([]byte{}, certPEM...)
	for _, c := range auth.CACerts() {
		id = append(id, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	id = append(id, keyPEM...)
	if err := writeFileAtomic(filepath.Join(dir, "identity.pem"), id, 0o600); err != nil {
		return err
	}
	b, _ := json.MarshalIndent(info, "", "  ")
	return writeFileAtomic(filepath.Join(dir, "fleet.json"), append(b, '\n'), 0o600)
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// linkSampler measures every tunnel's loss outside blackouts, for the
// device listing's LOSS.
func linkSampler(tunnels *tunnelsrv.Server) *linkhealth.Sampler {
	return &linkhealth.Sampler{Links: func(fn func(string, time.Time, linkhealth.Counters)) {
		tunnels.EachLink(func(id string, since time.Time, st quic.ConnectionStats) {
			fn(id, since, linkhealth.Counters{Sent: st.PacketsSent, Lost: st.PacketsLost, Received: st.PacketsReceived})
		})
	}}
}
