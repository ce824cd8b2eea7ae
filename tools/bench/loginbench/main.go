// Command loginbench measures what a flood of logins does to the fleet,
// with the real code on loopback: fleetd's HTTPS API (fleet/httpapi with
// fleet/users, argon2id at the production settings of 64 MiB, the audit
// log on disk, the per-source connection cap), served over TLS on
// 127.0.0.1. A flood of wrong-password logins for made-up users comes from
// many source addresses (127.1.x.y; the whole 127/8 is loopback), each
// sending its next login as soon as the last is answered, while a real
// user, alice, logs in with her right password once a second, each time
// from an address the fleet has not seen before (127.2.x.y: the hard case,
// a user at a new place), with the fleet's client (which tries again, a
// few times, when the fleet says it is busy).
//
// It prints, with the defences on (per-source rate limit, a short queue for
// the password hashes answering "busy", per-account lock-outs) and off (the
// fleet as it was: no rate limit, every login waits for a hash however
// long the queue):
//
//   - the flood: requests answered per second, and how many of them had
//     their password checked (guesses) per second;
//   - alice: logins that got in, and their latency (p50, p99, max), retries
//     included;
//   - the bench process's peak RSS (fleet and clients together).
//
// Usage:
//
//	go run ./tools/bench/loginbench [-sources 256] [-duration 20s] [-modes on,off]
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/httpapi"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/sourcelimit"
	"remoteler.dev/edge/fleet/store/boltstore"
	"remoteler.dev/edge/fleet/tokens"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/proto/api"
)

func main() {
	sources := flag.Int("sources", 256, "flooding source addresses (127.1.x.y), one login in flight each")
	duration := flag.Duration("duration", 20*time.Second, "how long each mode floods")
	modes := flag.String("modes", "on,off", "which modes to run: on (the defences), off (the fleet as it was), or both")
	cheap := flag.Bool("cheap-hashes", false, "argon2id at 64 KiB instead of 64 MiB (for a quick check of the command itself)")
	flag.Parse()
	var rs []result
	for _, m := range strings.Split(*modes, ",") {
		if m != "on" && m != "off" {
			fmt.Fprintf(os.Stderr, "loginbench: -modes: %q is neither on nor off\n", m)
			os.Exit(2)
		}
		fmt.Fprintf(os.Stderr, "loginbench: defences %s, %d sources, %v\n", m, *sources, *duration)
		r, err := measure(m == "on", *sources, *duration, *cheap)
		if err != nil {
			fmt.Fprintln(os.Stderr, "loginbench:", err)
			os.Exit(1)
		}
		rs = append(rs, r)
	}
	report(rs, *sources, *duration)
}

// result is one mode's figures.
type result struct {
	defences bool
	// The flood: answers by status, and the seconds it ran.
	answered, checked, limited, busy, other int64
	seconds                                 float64
	// Alice: latencies of her logins that got in, and those that did not.
	latencies []time.Duration
	failed    int
	failure   string        // the first failure
	waiting   time.Duration // how long the login in flight when the flood ended had waited
	peakRSS   float64       // MB
}

func (r result) mode() string {
	if r.defences {
		return "on"
	}
	return "off (as before)"
}

func pct(v []time.Duration, p float64) time.Duration {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	i := int(p * float64(len(s)-1))
	return s[i]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d.Microseconds())/1000) }

// report prints the figures as Markdown tables.
func report(rs []result, sources int, duration time.Duration) {
	fmt.Printf("**The flood** (%d source addresses, one wrong-password login in flight each, for made-up users; %v per mode):\n\n", sources, duration)
	fmt.Println("| defences | answers/s | passwords checked/s (guesses) | refused: rate limit | refused: busy | other |")
	fmt.Println("|---|---|---|---|---|---|")
	for _, r := range rs {
		fmt.Printf("| %s | %.0f | %.1f | %d | %d | %d |\n", r.mode(), float64(r.answered)/r.seconds, float64(r.checked)/r.seconds, r.limited, r.busy, r.other)
	}
	fmt.Printf("\n**A real user during the flood** (alice, right password, one login a second, each from an address new to the fleet; latency of the logins that got in, the client's retries on \"busy\" included):\n\n")
	fmt.Println("| defences | logins in | failed | p50 ms | p99 ms | max ms | in flight at the end, waiting (s) | peak RSS of the bench (MB) |")
	fmt.Println("|---|---|---|---|---|---|---|---|")
	for _, r := range rs {
		p50, p99, top := "-", "-", "-"
		if len(r.latencies) > 0 {
			p50, p99, top = ms(pct(r.latencies, 0.5)), ms(pct(r.latencies, 0.99)), ms(pct(r.latencies, 1))
		}
		fmt.Printf("| %s | %d | %d | %s | %s | %s | %.1f | %.0f |\n", r.mode(), len(r.latencies), r.failed,
			p50, p99, top, r.waiting.Seconds(), r.peakRSS)
	}
	for _, r := range rs {
		if r.failure != "" {
			fmt.Printf("\nDefences %s: alice's first failed login: %s\n", r.mode(), r.failure)
		}
	}
}

// fleet is the HTTPS API under test.
type fleet struct {
	addr  string
	certs []*x509.Certificate
	close func()
}

func startFleet(dir string, defences, cheap bool) (*fleet, error) {
	ctx := context.Background()
	quiet := slog.New(slog.DiscardHandler)
	st, err := boltstore.Open(filepath.Join(dir, "fleet.db"), boltstore.Options{Logger: quiet})
	if err != nil {
		return nil, err
	}
	auth, err := ca.LoadOrCreate(ctx, st, "bench", time.Now)
	if err != nil {
		return nil, err
	}
	roles := &rbac.Roles{Store: st, Logger: quiet}
	if err := roles.EnsurePresets(ctx); err != nil {
		return nil, err
	}
	us := &users.Service{Store: st, Logger: quiet}
	if cheap {
		us.HashParams = users.HashParams{MemoryKiB: 64, Threads: 1}
	}
	var limit *sourcelimit.Limiter // nil: the default
	if !defences {
		// As before: no rate limit, and every login waits for a hash.
		limit = &sourcelimit.Limiter{}
		us.MaxHashQueue, us.HashWait = 1<<30, time.Hour
	}
	if _, err := us.Add(ctx, api.AddUserRequest{Name: "alice", Password: "alice's real password", Roles: []string{"access"}, Logins: []string{"root"}}); err != nil {
		return nil, err
	}
	events, err := audit.Open(audit.Config{Path: filepath.Join(dir, "audit.db"), Logger: quiet})
	if err != nil {
		return nil, err
	}
	srv := &httpapi.Server{
		CA: auth, Users: us, Roles: roles, Tokens: &tokens.Service{Store: st},
		Devices: &devices.Registry{Store: st}, Tunnels: tunnelsrv.New(tunnelsrv.Config{}),
		Events: events, Cluster: "bench", LoginLimit: limit, Logger: quiet, Audit: quiet,
	}
	cert, err := auth.ServerCert([]string{"127.0.0.1"}, 24*time.Hour)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	limited := &sourcelimit.Listener{Listener: ln, Max: 128}
	hs := &http.Server{Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(quiet.Handler(), slog.LevelDebug)}
	go hs.Serve(tls.NewListener(limited, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}}))
	return &fleet{addr: ln.Addr().String(), certs: auth.CACerts(), close: func() {
		hs.Close()
		events.Close()
		st.Close()
	}}, nil
}

// floodSource sends wrong-password logins from src until ctx is done.
func floodSource(ctx context.Context, f *fleet, src net.IP, r *result, mu *sync.Mutex) {
	pool := x509.NewCertPool()
	for _, c := range f.certs {
		pool.AddCert(c)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: src}, Timeout: 10 * time.Second}
	hc := &http.Client{Timeout: time.Minute, Transport: &http.Transport{
		DialContext: d.DialContext, TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}, MaxIdleConnsPerHost: 1,
	}}
	defer hc.CloseIdleConnections()
	for i := 0; ctx.Err() == nil; i++ {
		body := fmt.Sprintf(`{"user":"guess-%s-%d","password":"not the password %d"}`, src, i, i)
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+f.addr+api.PathLogin, strings.NewReader(body))
		resp, err := hc.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			mu.Lock()
			r.other++
			mu.Unlock()
			time.Sleep(100 * time.Millisecond) // a refused connection: do not spin
			continue
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		mu.Lock()
		r.answered++
		switch resp.StatusCode {
		case http.StatusUnauthorized:
			r.checked++
		case http.StatusTooManyRequests:
			r.limited++
		case http.StatusServiceUnavailable:
			r.busy++
		default:
			r.other++
		}
		mu.Unlock()
	}
}

// aliceRequest is a login request with fresh keys.
func aliceRequest() (*api.LoginRequest, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, err
	}
	pub, err := ssh.NewPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	return &api.LoginRequest{User: "alice", Password: "alice's real password", CSR: csr,
		SSHPublicKey: string(ssh.MarshalAuthorizedKey(pub))}, nil
}

// alice logs in once a second, n times (0: until ctx is done), each time
// from a new address.
func alice(ctx context.Context, f *fleet, r *result, n int) error {
	conf, err := client.CATLS(f.addr, f.certs, nil)
	if err != nil {
		return err
	}
	req, err := aliceRequest()
	if err != nil {
		return err
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for i := 1; ; i++ {
		src := &net.TCPAddr{IP: net.IPv4(127, 2, byte(i/250), byte(1+i%250))}
		c, err := client.New(client.Config{Addr: f.addr, TLS: conf, Timeout: time.Minute, LocalAddr: src})
		if err != nil {
			return err
		}
		start := time.Now()
		resp, err := c.Login(ctx, req)
		c.Close()
		if ctx.Err() != nil {
			r.waiting = time.Since(start)
			return nil
		}
		if err == nil && resp.User == "alice" {
			r.latencies = append(r.latencies, time.Since(start))
		} else {
			r.failed++
			if r.failure == "" {
				r.failure = fmt.Sprint(err)
			}
		}
		if i == n {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// rssMB is the process's resident set size now.
func rssMB() float64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return float64(m.Sys) / 1e6
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
			return kb / 1000
		}
	}
	return 0
}

func measure(defences bool, sources int, duration time.Duration, cheap bool) (res result, err error) {
	res.defences = defences
	dir, err := os.MkdirTemp("", "loginbench-")
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)
	f, err := startFleet(dir, defences, cheap)
	if err != nil {
		return res, err
	}
	defer f.close()
	// One login before the flood, so that alice's first figure is not the
	// first TLS handshake's.
	warm, cancelWarm := context.WithTimeout(context.Background(), time.Minute)
	defer cancelWarm()
	var w result
	if err := alice(warm, f, &w, 1); err != nil || w.failed > 0 {
		return res, errors.Join(err, fmt.Errorf("alice cannot log in before the flood: %s", w.failure))
	}

	ctx, cancel := context.WithTimeout(context.Background(), duration)
	defer cancel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for i := range sources {
		src := net.IPv4(127, 1, byte(1+i/250), byte(1+i%250))
		wg.Go(func() { floodSource(ctx, f, src, &res, &mu) })
	}
	var peak atomic.Uint64
	wg.Go(func() {
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			if v := uint64(rssMB() * 1000); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	})
	var aliceErr error
	wg.Go(func() {
		// Let the flood fill the queue before alice's first login.
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
		aliceErr = alice(ctx, f, &res, 0)
	})
	wg.Wait()
	mu.Lock()
	res.seconds = time.Since(start).Seconds()
	mu.Unlock()
	res.peakRSS = float64(peak.Load()) / 1000
	return res, aliceErr
}
