// Package agent is edge-agent's main loop: it joins the fleet once with a
// token, keeps its identity in bbolt in the data dir, keeps the QUIC tunnel
// up, serves the SSH sessions the fleet brokers down it, renews its
// certificates before they expire, and tells systemd how it is doing.
// The edge-agent command is a thin main around Run.
//
// Only firmware/cmd/edge-agent and tests import this package.
package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/firmware/apps"
	"remoteler.dev/edge/firmware/identity"
	"remoteler.dev/edge/firmware/netwatch"
	"remoteler.dev/edge/firmware/services"
	"remoteler.dev/edge/firmware/sshd"
	"remoteler.dev/edge/firmware/tunnel"
	"remoteler.dev/edge/firmware/update"
	"remoteler.dev/edge/internal/buildinfo"
	"remoteler.dev/edge/proto"
)

// Notifier is what the agent tells its supervisor (service.Notifier).
type Notifier interface {
	Ready() error
	Stopping() error
	Status(string) error
	RunWatchdog(ctx context.Context, healthy func() bool)
}

// Agent is a running agent; see Run.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	store *identity.Store
	clock *Clock

	mu sync.Mutex // guards id
	id *identity.Identity

	tunnel *tunnel.Client
	ssh    *sshd.Server
	// services is the registry of what the device offers: ssh, the web
	// apps and cfg.Services.
	services *services.Registry
	audit    *auditor
	live     liveSessions
	updater  *update.Updater // nil when self-update could not start
	restart  atomic.Pointer[string]
	// fleetUpdates is the last hello answer's Updates: the fleet takes
	// update statuses.
	fleetUpdates atomic.Bool
	// started is when Run began.
	started time.Time
	// tick is when the maintenance loop last ran (Unix nanoseconds); the
	// watchdog is fed only while it keeps ticking.
	tick atomic.Int64
	// checkInNow asks a direct node to check in (events were queued);
	// directAddr is where it listens, as bound.
	checkInNow chan struct{}
	directAddr atomic.Value // string
}

// Run starts the agent and runs it until ctx is done.
func Run(ctx context.Context, cfg Config) error {
	a, err := New(ctx, cfg)
	if err != nil {
		return err
	}
	defer a.Close()
	return a.Run(ctx)
}

// New opens the agent's state and joins the fleet if the device has not
// joined yet.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.Name == "" {
		return nil, errors.New("agent: no --name, and the host has no name")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: data dir: %w", err)
	}
	st, err := identity.Open(filepath.Join(cfg.DataDir, "agent.db"), 5*time.Second)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, store: st, checkInNow: make(chan struct{}, 1)}
	a.clock = newClock(cfg.Now, a.log)
	id, err := st.Load()
	switch {
	case errors.Is(err, identity.ErrNotJoined):
		id, err = a.join(ctx)
		if err != nil {
			st.Close()
			return nil, err
		}
	case err != nil:
		st.Close()
		return nil, fmt.Errorf("agent: %w", err)
	default:
		if cfg.Token != "" {
			a.log.Info("device already joined; ignoring the join token", "device", id.Name, "device_id", id.DeviceID)
		}
		if cfg.Name != id.Name && cfg.Name != "" {
			a.log.Warn("device keeps the name it joined with", "name", id.Name, "configured", cfg.Name)
		}
	}
	a.id = id
	a.clock.setOffset(id.ClockOffset)
	if err := a.openAudit(); err != nil {
		st.Close()
		return nil, err
	}
	return a, nil
}

// Close releases the agent's state.
func (a *Agent) Close() error { return errors.Join(a.closeAudit(), a.store.Close()) }

func (a *Agent) identity() *identity.Identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.id
}

// fleetAddr is the fleet's address: --fleet, else the one the device
// joined. The fleet's certificate is verified for its host name.
func (a *Agent) fleetAddr() string {
	if a.cfg.Fleet != "" {
		return a.cfg.Fleet
	}
	return a.identity().Fleet
}

// tunnelAddr is where the tunnel dials: --tunnel-addr, else the fleet's
// address.
func (a *Agent) tunnelAddr() string {
	if a.cfg.TunnelAddr != "" {
		return a.cfg.TunnelAddr
	}
	return a.fleetAddr()
}

// Up reports whether the tunnel is connected.
func (a *Agent) Up() bool { return a.tunnel != nil && a.tunnel.Up() }

// Run serves until ctx is done.
func (a *Agent) Run(ctx context.Context) error {
	id := a.identity()
	log := a.log.With("device", id.Name, "device_id", id.DeviceID)
	a.ssh = sshd.New(sshd.Config{
		HostSigner: func() ssh.Signer {
			s, _ := a.identity().HostSigner()
			return s
		},
		UserCAKeys: func() []ssh.PublicKey {
			k, _ := a.identity().UserCAs()
			return k
		},
		Logger:      a.log.With("component", "sshd"),
		Now:         a.clock.Now,
		SFTPCommand: a.cfg.SFTPCommand,
		DialCommand: a.cfg.DialCommand,
		PasswdFile:  a.cfg.PasswdFile,
		Audit:       a.sshAudit,
		Record:      a.record,
	})
	list := append([]services.Service{a.ssh}, a.cfg.Services...)
	if len(a.cfg.Apps) > 0 {
		web, err := apps.New(apps.Config{Apps: a.cfg.Apps, Logger: a.log})
		if err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		list = append(list, web)
	}
	for _, s := range list {
		// A service that audits its streams' requests itself (the
		// Kubernetes requests of a user-held stream) does it here.
		if au, ok := s.(services.Audited); ok {
			au.UseTrail(services.Trail{Audit: a.emit, Record: a.record})
		}
	}
	reg, err := services.New(a.clock.Now, sshd.DefaultClockSkew, list...)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.services = reg
	a.tunnel = tunnel.New(tunnel.Config{
		Addr:       a.tunnelAddr(),
		TLSConfig:  a.tunnelTLS,
		Hello:      a.hello,
		Check:      a.checkAudited,
		Handle:     a.handleAudited,
		OnHelloAck: a.helloAck,
		OnMessage:  a.onMessage,
		OnState: func(up bool) {
			if up {
				a.linkUp()
			}
			if a.updater != nil {
				// Only a fleet that said so in its hello answer takes
				// update statuses.
				a.updater.LinkUp(up && a.fleetUpdates.Load())
			}
			if a.cfg.Notify != nil {
				s := "tunnel down, reconnecting"
				if up {
					s = "tunnel up to " + a.tunnelAddr()
				}
				a.cfg.Notify.Status(s)
			}
		},
		Keepalive:        a.cfg.Keepalive,
		Liveness:         a.cfg.Liveness,
		SessionHold:      a.cfg.SessionHold,
		PathMTUDiscovery: a.cfg.PathMTUDiscovery,
		Logger:           a.log,
		Now:              a.cfg.Now,
	})
	a.started = a.cfg.Now()
	log.Info("edge-agent starting", "version", buildinfo.String(), "fleet", a.fleetAddr(), "tunnel", a.tunnelAddr())

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	// Before the tunnel runs: its callbacks use the updater.
	a.runUpdate(ctx, cancel, &wg)
	if a.cfg.Mode == ModeDirect {
		if err := a.startDirect(ctx, &wg); err != nil {
			cancel()
			wg.Wait()
			return err
		}
	} else {
		wg.Go(func() { a.tunnel.Run(ctx) })
	}
	wg.Go(func() { a.renewLoop(ctx) })
	wg.Add(1)
	go func() {
		defer wg.Done()
		// Address and link changes make the tunnel react at once instead
		// of after its timers.
		if err := netwatch.Watch(ctx, a.tunnel.LinkChanged); err != nil {
			log.Info("not watching network changes", "err", err)
		}
	}()
	a.runAudit(ctx, &wg)
	a.serveMetrics(ctx, &wg)
	if a.cfg.Notify != nil {
		// Ready once state is loaded and the loops run: a flaky link must
		// not fail the start.
		a.cfg.Notify.Ready()
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.cfg.Notify.RunWatchdog(ctx, a.healthy)
		}()
	}
	<-ctx.Done()
	if a.cfg.Notify != nil {
		a.cfg.Notify.Stopping()
	}
	log.Info("edge-agent stopping")
	a.stopAudit()
	wg.Wait()
	if r := a.restart.Load(); r != nil {
		return &RestartError{Reason: *r}
	}
	return nil
}

// healthy reports whether the maintenance loop ran recently.
func (a *Agent) healthy() bool {
	return time.Since(time.Unix(0, a.tick.Load())) < 3*maintenanceTick
}

func (a *Agent) hello() *proto.Hello {
	id := a.identity()
	h := &proto.Hello{
		Name:         id.Name,
		AgentVersion: buildinfo.Version,
		OS:           runtime.GOOS,
		Arch:         runtime.GOARCH,
		Labels:       a.cfg.Labels,
		Time:         a.cfg.Now().UnixMilli(),
	}
	if a.cfg.Mode == ModeDirect {
		h.Direct, _ = a.directAddr.Load().(string)
	}
	a.services.Hello(h)
	return h
}

func (a *Agent) helloAck(ack *proto.HelloAck) {
	a.fleetUpdates.Store(ack.Updates)
	off := time.UnixMilli(ack.ServerTime).Sub(a.cfg.Now())
	a.clock.setOffset(off)
	a.mu.Lock()
	id := *a.id
	id.ClockOffset = a.clock.Offset()
	a.id = &id
	a.mu.Unlock()
	if err := a.store.Save(&id); err != nil {
		a.log.Warn("save clock offset", "err", err)
	}
}

// tunnelTLS is the client TLS config for the next tunnel dial.
func (a *Agent) tunnelTLS() (*tls.Config, error) {
	id := a.identity()
	cert, err := id.TLSCertificate()
	if err != nil {
		return nil, err
	}
	pool, err := id.CertPool()
	if err != nil {
		return nil, err
	}
	host, _, err := net.SplitHostPort(a.fleetAddr())
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ServerName:   host,
		MinVersion:   tls.VersionTLS13,
		// The chain is verified against the fleet's CAs at the fleet's
		// time, which a device without a real-time clock may not know.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyChain(raw, pool, host, a.clock.VerifyTime)
		},
	}, nil
}

// verifyChain checks a server chain against pool for host at the time
// at(leaf) gives.
func verifyChain(raw [][]byte, pool *x509.CertPool, host string, at func(leaf *x509.Certificate) time.Time) error {
	_, err := verifyPeer(raw, pool, at, x509.VerifyOptions{DNSName: host, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, "fleet")
	return err
}

// verifyPeer parses the chain raw that a peer sent and verifies its leaf
// against pool, at the time at(leaf) gives, with the name and key usages
// of opts; who names the peer in errors ("fleet", "client"). A device may
// not know the time, which is why the TLS stack's own check is off.
func verifyPeer(raw [][]byte, pool *x509.CertPool, at func(leaf *x509.Certificate) time.Time, opts x509.VerifyOptions, who string) (*x509.Certificate, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("agent: the %s sent no certificate", who)
	}
	leaf, err := x509.ParseCertificate(raw[0])
	if err != nil {
		return nil, fmt.Errorf("agent: %s certificate: %w", who, err)
	}
	opts.Intermediates = x509.NewCertPool()
	for _, r := range raw[1:] {
		if c, err := x509.ParseCertificate(r); err == nil {
			opts.Intermediates.AddCert(c)
		}
	}
	opts.Roots, opts.CurrentTime = pool, at(leaf)
	if _, err := leaf.Verify(opts); err != nil {
		return nil, fmt.Errorf("agent: verify %s certificate: %w", who, err)
	}
	return leaf, nil
}

// liveSessions are the brokered sessions the agent serves, by session ID,
// so that the fleet can end them.
type liveSessions struct {
	mu sync.Mutex // guards m
	m  map[string]context.CancelCauseFunc
}

func (l *liveSessions) add(id string, cancel context.CancelCauseFunc) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]context.CancelCauseFunc{}
	}
	l.m[id] = cancel
}

func (l *liveSessions) remove(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.m, id)
}

// end ends session id with the fleet's message; false when there is no
// such session.
func (l *liveSessions) end(id, msg string) bool {
	l.mu.Lock()
	cancel := l.m[id]
	l.mu.Unlock()
	if cancel == nil {
		return false
	}
	cancel(&services.Ended{Message: msg})
	return true
}
