package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/demoapp"
	"remoteler.dev/edge/tools/harness"
)

// target is one way to the app: its base URL and how to dial it.
type target struct {
	name string
	base string             // http(s)://host:port
	tls  func() *tls.Config // nil for plain HTTP
	addr string             // the address to dial instead of base's host, if any
}

func (t target) client() *http.Client {
	tr := &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true, ForceAttemptHTTP2: false}
	if t.tls != nil {
		tr.TLSClientConfig = t.tls()
	}
	if t.addr != "" {
		d := &net.Dialer{}
		addr := t.addr
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) { return d.DialContext(ctx, "tcp", addr) }
	}
	return &http.Client{Transport: tr}
}

func run(tb harness.TB, cfg config) error {
	ctx := tb.Context()
	out := os.Stdout
	tb.Logf("building the products")
	bin, err := harness.Build(ctx, filepath.Join(tb.TempDir(), "bin"), nil, harness.Products...)
	if err != nil {
		return err
	}
	// The demo app, in this process.
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	appSrv := &http.Server{Handler: demoapp.Handler(nil)}
	go appSrv.Serve(appLn)
	tb.Cleanup(func() { appSrv.Close() })
	appAddr := appLn.Addr().String()

	// The fleet, a device offering the app, a user with an app
	// certificate.
	fcfg := filepath.Join(tb.TempDir(), "fleetd.yaml")
	os.WriteFile(fcfg, []byte("apps_domain: fleet.test\npublic_addrs: [fleet.test, 127.0.0.1]\n"), 0o600)
	f, err := harness.StartFleetErr(tb, harness.FleetConfig{Bin: bin, LogLevel: "warn", Args: []string{"--config", fcfg}})
	if err != nil {
		return err
	}
	f.StartAgentWith(harness.AgentConfig{Name: "pi-1", LogLevel: "info", Args: []string{"--app", "hello=http://" + appAddr}})
	alice := f.Login("alice", f.AddUser("alice", "access", "root"))
	alice.Tsh("apps", "login", "hello")
	_, port, _ := net.SplitHostPort(f.Addr)
	prof := filepath.Join(alice.Home, "keys", f.Addr, "alice")
	appCert, err := tls.LoadX509KeyPair(filepath.Join(prof, "apps", "hello--pi-1.crt"), filepath.Join(prof, "apps", "hello--pi-1.key"))
	if err != nil {
		return err
	}
	casPEM, _ := os.ReadFile(filepath.Join(prof, "cas.pem"))
	cas := x509.NewCertPool()
	cas.AppendCertsFromPEM(casPEM)
	const appHost = "hello--pi-1.fleet.test"
	fleetTLS := func(cert tls.Certificate) func() *tls.Config {
		return func() *tls.Config {
			return &tls.Config{ServerName: appHost, RootCAs: cas, Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}
		}
	}
	targets := []target{
		{name: "direct", base: "http://" + appAddr},
		{name: "fleet", base: "https://" + appHost + ":" + port, tls: fleetTLS(appCert), addr: f.Addr},
	}
	if ng, err := startNginx(tb, appAddr); err != nil {
		tb.Logf("no nginx figures: %v", err)
	} else {
		targets = append(targets, ng)
	}

	fmt.Fprintf(out, "### Web apps through the fleet (appbench, %s)\n\n", time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(out, "Loopback, %d CPUs (%s/%s), load average %s at the start; every request HTTP/1.1 on kept-alive connections.\n\n",
		runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, loadAvg())

	// Small GETs.
	fmt.Fprintf(out, "| small GET (`/small`, 3 bytes) | p50 | p99 | requests/s (%d clients, %s) |\n|---|---|---|---|\n", cfg.Clients, cfg.Dur)
	lat := map[string][2]time.Duration{}
	rps := map[string]float64{}
	for _, t := range targets {
		tb.Logf("small GETs: %s", t.name)
		p50, p99, err := sequential(t, cfg.N)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		r, err := throughput(t, cfg.Clients, cfg.Dur)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		lat[t.name], rps[t.name] = [2]time.Duration{p50, p99}, r
		fmt.Fprintf(out, "| %s | %s | %s | %.0f |\n", t.name, ms(p50), ms(p99), r)
	}
	fmt.Fprintf(out, "\nThe fleet adds %s at p50 and %s at p99 to the direct path (target: at most 2 ms at p50); requests/s: fleet/direct %.2f",
		ms(lat["fleet"][0]-lat["direct"][0]), ms(lat["fleet"][1]-lat["direct"][1]), rps["fleet"]/rps["direct"])
	if n, ok := lat["nginx"]; ok {
		fmt.Fprintf(out, ", fleet/nginx %.2f; nginx adds %s at p50", rps["fleet"]/rps["nginx"], ms(n[0]-lat["direct"][0]))
	}
	fmt.Fprint(out, ".\n\n")

	// The download.
	fmt.Fprintf(out, "| %s download (`/download`) | time | throughput |\n|---|---|---|\n", size(cfg.Size))
	thr := map[string]float64{}
	for _, t := range targets {
		tb.Logf("download: %s", t.name)
		d, err := download(t, cfg.Size)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		thr[t.name] = float64(cfg.Size) / d.Seconds() / 1e6
		fmt.Fprintf(out, "| %s | %.2f s | %.0f MB/s |\n", t.name, d.Seconds(), thr[t.name])
	}
	fmt.Fprintf(out, "\nfleet/direct: %.2f.\n\n", thr["fleet"]/thr["direct"])

	// Websocket round trips.
	fmt.Fprintf(out, "| websocket echo (`/ws`, 16 bytes) | p50 | p99 |\n|---|---|---|\n")
	rtt := map[string]time.Duration{}
	for _, t := range targets {
		tb.Logf("websocket: %s", t.name)
		p50, p99, err := echoes(ctx, t, cfg.Echoes)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		rtt[t.name] = p50
		fmt.Fprintf(out, "| %s | %s | %s |\n", t.name, ms(p50), ms(p99))
	}
	fmt.Fprintf(out, "\nThe fleet adds %s to a round trip at p50.\n\n", ms(rtt["fleet"]-rtt["direct"]))

	// Memory per open app session.
	tb.Logf("memory: %d app sessions", cfg.Sessions)
	per, before, after, err := sessionMemory(ctx, f, prof, cas, port, cfg.Sessions)
	if err != nil {
		return fmt.Errorf("memory: %w", err)
	}
	fmt.Fprintf(out, "Memory: fleetd's RSS went from %d MiB to %d MiB with %d open app sessions (each its own app certificate, TLS connection and websocket, and a tunnel stream): %.1f KiB a session.\n",
		before>>20, after>>20, cfg.Sessions, per/1024)
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func size(n int64) string {
	if n%(1<<30) == 0 {
		return fmt.Sprintf("%d GiB", n>>30)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

func percentile(d []time.Duration, p float64) time.Duration {
	slices.Sort(d)
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

func get(c *http.Client, u string) error {
	resp, err := c.Get(u)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	return err
}

// sequential times n small GETs on one kept-alive connection, after a
// warm-up.
func sequential(t target, n int) (p50, p99 time.Duration, err error) {
	c := t.client()
	defer c.CloseIdleConnections()
	for range 200 {
		if err := get(c, t.base+"/small"); err != nil {
			return 0, 0, err
		}
	}
	d := make([]time.Duration, n)
	for i := range d {
		start := time.Now()
		if err := get(c, t.base+"/small"); err != nil {
			return 0, 0, err
		}
		d[i] = time.Since(start)
	}
	return percentile(d, 0.5), percentile(d, 0.99), nil
}

// throughput counts small GETs by clients concurrent clients for dur.
func throughput(t target, clients int, dur time.Duration) (float64, error) {
	var n atomic.Int64
	var firstErr atomic.Value
	deadline := time.Now().Add(dur)
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			c := t.client()
			defer c.CloseIdleConnections()
			for time.Now().Before(deadline) {
				if err := get(c, t.base+"/small"); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, err
	}
	return float64(n.Load()) / dur.Seconds(), nil
}

func download(t target, n int64) (time.Duration, error) {
	c := t.client()
	defer c.CloseIdleConnections()
	start := time.Now()
	resp, err := c.Get(fmt.Sprintf("%s/download?size=%d", t.base, n))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	got, err := io.Copy(io.Discard, resp.Body)
	if err != nil || got != n {
		return 0, fmt.Errorf("download: %d of %d bytes: %v", got, n, err)
	}
	return time.Since(start), nil
}

func wsURL(t target) string {
	return strings.Replace(strings.Replace(t.base, "https://", "wss://", 1), "http://", "ws://", 1) + "/ws"
}

// echoes times n websocket round trips on one connection.
func echoes(ctx context.Context, t target, n int) (p50, p99 time.Duration, err error) {
	c := t.client()
	defer c.CloseIdleConnections()
	ws, _, err := websocket.Dial(ctx, wsURL(t), &websocket.DialOptions{HTTPClient: c})
	if err != nil {
		return 0, 0, err
	}
	defer ws.CloseNow()
	msg := []byte("0123456789abcdef")
	d := make([]time.Duration, n)
	for i := -50; i < n; i++ { // 50 to warm up
		start := time.Now()
		if err := ws.Write(ctx, websocket.MessageBinary, msg); err != nil {
			return 0, 0, err
		}
		if _, _, err := ws.Read(ctx); err != nil {
			return 0, 0, err
		}
		if i >= 0 {
			d[i] = time.Since(start)
		}
	}
	ws.Close(websocket.StatusNormalClosure, "")
	return percentile(d, 0.5), percentile(d, 0.99), nil
}

// sessionMemory opens n app sessions, each with an app certificate of its
// own and an open websocket, and returns fleetd's RSS growth per session.
func sessionMemory(ctx context.Context, f *harness.Fleet, prof string, cas *x509.CertPool, port string, n int) (per float64, before, after int64, err error) {
	userCert, err := tls.LoadX509KeyPair(filepath.Join(prof, "tls.crt"), filepath.Join(prof, "tls.key"))
	if err != nil {
		return 0, 0, 0, err
	}
	casPEM, _ := os.ReadFile(filepath.Join(prof, "cas.pem"))
	caCerts, err := client.ParseCertsPEM(casPEM)
	if err != nil {
		return 0, 0, 0, err
	}
	conf, err := client.CATLS(f.Addr, caCerts, &userCert)
	if err != nil {
		return 0, 0, 0, err
	}
	c, err := client.New(client.Config{Addr: f.Addr, TLS: conf})
	if err != nil {
		return 0, 0, 0, err
	}
	defer c.Close()
	certs := make([]tls.Certificate, n)
	for i := range certs {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "alice"}}, key)
		resp, err := c.AppLogin(ctx, &api.AppLoginRequest{App: "hello--pi-1", CSR: csr})
		if err != nil {
			return 0, 0, 0, err
		}
		certs[i] = tls.Certificate{Certificate: [][]byte{resp.Cert}, PrivateKey: key}
	}
	pid := f.Proc.PID()
	runtime.GC()
	time.Sleep(2 * time.Second) // let fleetd settle after the runs above; a measurement, not synchronisation
	before, err = rss(pid)
	if err != nil {
		return 0, 0, 0, err
	}
	var open []*websocket.Conn
	defer func() {
		for _, ws := range open {
			ws.CloseNow()
		}
	}()
	for _, cert := range certs {
		t := target{base: "https://hello--pi-1.fleet.test:" + port, addr: f.Addr, tls: func() *tls.Config {
			return &tls.Config{ServerName: "hello--pi-1.fleet.test", RootCAs: cas, Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}
		}}
		ws, resp, err := websocket.Dial(ctx, wsURL(t), &websocket.DialOptions{HTTPClient: t.client()})
		if err != nil {
			if resp != nil && resp.Body != nil {
				b, _ := io.ReadAll(resp.Body)
				err = fmt.Errorf("session %d: %w: %s", len(open)+1, err, b)
			}
			return 0, 0, 0, err
		}
		if err := ws.Write(ctx, websocket.MessageText, []byte("hi")); err != nil {
			return 0, 0, 0, err
		}
		if _, _, err := ws.Read(ctx); err != nil {
			return 0, 0, 0, err
		}
		open = append(open, ws)
	}
	time.Sleep(2 * time.Second)
	after, err = rss(pid)
	if err != nil {
		return 0, 0, 0, err
	}
	return float64(after-before) / float64(n), before, after, nil
}

func rss(pid int) (int64, error) {
	st, err := harness.ReadStat(pid)
	return st.RSS, err
}

// startNginx runs Debian's nginx as a TLS reverse proxy in front of the
// app (kept-alive HTTP/1.1 upstream) and returns it as a target.
func startNginx(tb harness.TB, appAddr string) (target, error) {
	path, err := exec.LookPath("nginx")
	if err != nil {
		return target{}, errors.New("nginx is not installed: apt-get install nginx-light (tools/bench/run.sh does)")
	}
	dir := tb.TempDir()
	certPEM, keyPEM, pool, err := selfSigned("nginx.test")
	if err != nil {
		return target{}, err
	}
	os.WriteFile(filepath.Join(dir, "cert.pem"), certPEM, 0o600)
	os.WriteFile(filepath.Join(dir, "key.pem"), keyPEM, 0o600)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return target{}, err
	}
	addr := ln.Addr().String()
	ln.Close()
	conf := fmt.Sprintf(`daemon off;
worker_processes auto;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  upstream app { server %[2]s; keepalive 64; }
  map $http_upgrade $connection_upgrade { default upgrade; '' ''; }
  server {
    listen %[3]s ssl;
    ssl_certificate %[1]s/cert.pem;
    ssl_certificate_key %[1]s/key.pem;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Host $host;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 300s;
    }
  }
}
`, dir, appAddr, addr)
	cf := filepath.Join(dir, "nginx.conf")
	os.WriteFile(cf, []byte(conf), 0o600)
	harness.Start(tb, harness.Cmd{Name: "nginx", Path: path, Args: []string{"-c", cf, "-e", filepath.Join(dir, "error.log")}})
	if !harness.Eventually(30*time.Second, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}) {
		return target{}, errors.New("nginx did not listen")
	}
	return target{name: "nginx", base: "https://nginx.test:" + strings.Split(addr, ":")[1], addr: addr,
		tls: func() *tls.Config {
			return &tls.Config{ServerName: "nginx.test", RootCAs: pool, NextProtos: []string{"http/1.1"}}
		}}, nil
}

// selfSigned makes a P-256 certificate for name, like the fleet's.
func selfSigned(name string) (certPEM, keyPEM []byte, pool *x509.CertPool, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	kd, _ := x509.MarshalPKCS8PrivateKey(key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), pool, nil
}
