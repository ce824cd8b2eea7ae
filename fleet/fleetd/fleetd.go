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
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/httpapi"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/boltstore"
	"remoteler.dev/edge/fleet/tokens"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/fleet/users"
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
	st, err := boltstore.Open(filepath.Join(cfg.DataDir, "fleet.db"), boltstore.Options{Logger: log})
	if err != nil {
		return fmt.Errorf("fleetd: %w", err)
	}
	defer st.Close()
	return run(ctx, cfg, st, log, out)
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
	tickets := newTicketKeys()
	tickets.set(keys.active(now()))

	tcp, udp, err := listen(cfg.Listen)
	if err != nil {
		return fmt.Errorf("fleetd: %w", err)
	}
	defer tcp.Close()
	defer udp.Close()
	addr := tcp.Addr().String()

	hosts := serverHosts(cfg)
	certs := &certHolder{}
	if err := certs.renew(auth, hosts); err != nil {
		return fmt.Errorf("fleetd: server certificate: %w", err)
	}
	serverTLS := &tls.Config{
		GetCertificate: certs.get,
		// Client CAs are read per handshake so CA rotation takes effect.
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return &tls.Config{
				GetCertificate: certs.get,
				ClientAuth:     tls.VerifyClientCertIfGiven,
				ClientCAs:      auth.CertPool(),
				NextProtos:     []string{"http/1.1"},
				MinVersion:     tls.VersionTLS12,
			}, nil
		},
		MinVersion: tls.VersionTLS12,
	}

	audit := log.With("logger", "audit")
	events, recs, err := openAudit(cfg, log, now)
	if err != nil {
		return fmt.Errorf("fleetd: %w", err)
	}
	defer events.Close()
	reg := &devices.Registry{Store: st, Now: now}
	tunnelTLS := &tls.Config{GetCertificate: certs.get, ClientCAs: auth.CertPool()}
	// Ticket keys from the store, rotated daily: agents resume their TLS
	// sessions (0-RTT, no certificate signatures) across restarts and
	// replicas, and a leaked key opens only the tickets of its two days.
	tickets.install(tunnelTLS)
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
	dh := &deviceHooks{auth: auth, reg: reg, cluster: cfg.Cluster, ttl: time.Duration(cfg.DeviceCertTTL), audit: audit, events: events, log: log, now: now,
		keepalive: time.Duration(cfg.DeviceKeepalive), liveness: time.Duration(cfg.DeviceLiveness)}
	dh.configure(&tcfg)
	tcfg.OnMessage = auditMessages(events, recs, log, tcfg.OnMessage)
	tunnels := tunnelsrv.New(tcfg)
	kube := newKube(cfg, tunnels, audit, log, now)
	defer kube.Close()

	toks := &tokens.Service{Store: st, Now: now, Logger: log}
	apiSrv := &httpapi.Server{
		CA:            auth,
		Users:         &users.Service{Store: st, Now: now, Logger: log},
		Roles:         roles,
		Tokens:        toks,
		Devices:       reg,
		Tunnels:       tunnels,
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
		Now:           now,
	}
	apiSrv.Kube = kube
	httpSrv := &http.Server{
		Handler:           apiSrv.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.With("component", "http").Handler(), slog.LevelDebug),
	}

	if err := writeAdmin(cfg.DataDir, auth, AdminInfo{Addr: clientAddr(addr), CAPin: auth.Pin(), Cluster: cfg.Cluster}); err != nil {
		return fmt.Errorf("fleetd: admin identity: %w", err)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() { events.Run(ctx) })
	errc := make(chan error, 3)
	wg.Add(3)
	go func() {
		defer wg.Done()
		err := httpSrv.Serve(tls.NewListener(tcp, serverTLS))
		if !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("fleetd: https: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := tunnels.Serve(ctx, udp); err != nil {
			errc <- fmt.Errorf("fleetd: tunnels: %w", err)
		}
	}()
	go func() {
		defer wg.Done()
		refresh(ctx, log, func() error {
			if _, err := toks.Prune(ctx); err != nil {
				log.Warn("prune join tokens", "err", err)
			}
			if k, err := loadQUICKeys(ctx, st, now()); err != nil {
				log.Warn("rotate session ticket keys", "err", err)
			} else {
				tickets.set(k.active(now()))
			}
			if err := certs.renew(auth, hosts); err != nil {
				return err
			}
			return writeAdmin(cfg.DataDir, auth, AdminInfo{Addr: clientAddr(addr), CAPin: auth.Pin(), Cluster: cfg.Cluster})
		})
	}()

	log.Info("fleetd started", "listen", addr, "cluster", cfg.Cluster, "ca_pin", auth.Pin(), "version", Version)
	fmt.Fprintf(out, "fleetd %s: fleet %q listening on %s (HTTPS on TCP, device tunnels on UDP)\n", Version, cfg.Cluster, addr)
	fmt.Fprintf(out, "CA pin: %s\n", auth.Pin())
	fmt.Fprintf(out, "Admin identity: %s (used by fleetctl --data-dir %s)\n", filepath.Join(cfg.DataDir, "admin", "identity.pem"), cfg.DataDir)

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-errc:
	}
	cancel()
	sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
	httpSrv.Shutdown(sctx)
	scancel()
	httpSrv.Close()
	// The tunnel server returns once it has told every device it is going;
	// the socket closes after that (deferred), or the close frames are lost.
	wg.Wait()
	log.Info("fleetd stopped")
	return runErr
}

// refresh runs f every hour until ctx is done.
func refresh(ctx context.Context, log *slog.Logger, f func() error) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := f(); err != nil {
				log.Error("refresh certificates", "err", err)
			}
		}
	}
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
