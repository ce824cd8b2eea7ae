package e2e

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/tools/kube/kubetest"
)

// TestKubeBenchmark measures what the fleet and the tunnel add to
// Kubernetes requests, against the same API server reached directly:
//
//   - kubectl get: wall time of whole kubectl runs (process start, the
//     exec credential plugin for the fleet, TLS, one list), p50 and p99;
//   - one request: a list over a kept-alive connection, in process, so
//     only the fleet, the tunnel and the agent's forwarding differ;
//   - watch delay: from creating an object to its event arriving on a
//     watch through the fleet, and on one straight to the API server.
//
// Everything runs on loopback (no link impairment), so the figures are the
// software's own cost. It runs in CI with few samples (so it cannot rot)
// and prints its figures with -v; set KUBE_BENCH_N for more:
//
//	KUBE_BENCH_N=300 go test -count=1 -v -run TestKubeBenchmark ./tools/e2e
func TestKubeBenchmark(t *testing.T) {
	n := 20
	if s := os.Getenv("KUBE_BENCH_N"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 5 {
			t.Fatalf("KUBE_BENCH_N=%q: want a number of at least 5", s)
		}
		n = v
	}
	kc := kubetest.Start(t, kubetest.Options{})
	linkKubectl(t, kc)
	kc.KubectlAdmin(t, teamRBAC, "apply", "-f", "-")
	for i := range 10 {
		kc.KubectlAdmin(t, "", "-n", "team", "create", "configmap", fmt.Sprintf("bench-%d", i), "--from-literal=k=v")
	}
	f := startFleetArgs(t, nil, "--log-level", "warn")
	f.Ctl(kubeRoles, "roles", "create", "-f", "-")
	alice := f.Login("alice", f.AddUser("alice", "access,kube-dev", "alice"))
	startKubeAgent(f, "pi-1", "k3s=yes", f.Addr, kc.AdminKubeconfig)
	kcfg := filepath.Join(t.TempDir(), "config")
	tshKube(t, alice, kcfg, "kube", "login", "pi-1")

	// kubectl get, whole runs.
	kubectlRuns := func(env []string, args ...string) []time.Duration {
		var out []time.Duration
		for i := range n + 3 {
			start := time.Now()
			if o, e, err := run("", env, "kubectl", args...); err != nil {
				t.Fatalf("kubectl %s: %v\n%s%s", strings.Join(args, " "), err, o, e)
			}
			if i >= 3 { // warm-up: discovery cache, page cache
				out = append(out, time.Since(start))
			}
		}
		return out
	}
	direct := kubectlRuns([]string{"KUBECACHEDIR=" + filepath.Join(t.TempDir(), "cache")},
		"--kubeconfig="+kc.AdminKubeconfig, "-n", "team", "get", "configmaps", "-o", "name")
	fleet := kubectlRuns(kubeEnv(alice, kcfg), "-n", "team", "get", "configmaps", "-o", "name")
	creds := make([]time.Duration, 0, n)
	for range n {
		start := time.Now()
		tshKube(t, alice, "", "kube", "credentials", "--proxy="+f.Addr, "--user="+alice.Name)
		creds = append(creds, time.Since(start))
	}

	// One request over a kept-alive connection.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(kc.CAPEM)
	directClient := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: false, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
	fleetClient := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsCreds(t, alice)}}
	t.Cleanup(directClient.CloseIdleConnections)
	t.Cleanup(fleetClient.CloseIdleConnections)
	directURL := kc.URL + "/api/v1/namespaces/team/configmaps"
	fleetURL := "https://" + f.Addr + "/v1/kube/pi-1/api/v1/namespaces/team/configmaps"
	get := func(c *http.Client, url string, token bool) time.Duration {
		req, _ := http.NewRequest("GET", url, nil)
		if token {
			req.Header.Set("Authorization", "Bearer "+kc.AdminToken)
		}
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", url, resp.Status)
		}
		return time.Since(start)
	}
	var directReq, fleetReq []time.Duration
	for i := range 10*n + 10 {
		d, fl := get(directClient, directURL, true), get(fleetClient, fleetURL, false)
		if i >= 10 {
			directReq, fleetReq = append(directReq, d), append(fleetReq, fl)
		}
	}

	// Watch event delivery.
	openWatch := func(c *http.Client, url string, token bool) *bufio.Reader {
		req, _ := http.NewRequest("GET", url+"?watch=true&resourceVersion=0&fieldSelector=metadata.name%3Dticker", nil)
		if token {
			req.Header.Set("Authorization", "Bearer "+kc.AdminToken)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return bufio.NewReaderSize(resp.Body, 1<<20)
	}
	directWatch := openWatch(directClient, directURL, true)
	fleetWatch := openWatch(fleetClient, fleetURL, false)
	writer := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	t.Cleanup(writer.CloseIdleConnections)
	var directWatchD, fleetWatchD []time.Duration
	for i := range n + 1 {
		body := fmt.Sprintf(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"ticker"},"data":{"i":"%d"}}`, i)
		method, url := http.MethodPut, directURL+"/ticker"
		if i == 0 {
			method, url = http.MethodPost, directURL
		}
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+kc.AdminToken)
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := writer.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode >= 300 {
			t.Fatalf("%s ticker: %s", method, resp.Status)
		}
		// The fleet's watch is read after the direct one, so its delay
		// is never below the direct one's: the figure errs upwards.
		dw := readEvent(t, directWatch, start)
		fw := readEvent(t, fleetWatch, start)
		if i > 0 {
			directWatchD, fleetWatchD = append(directWatchD, dw), append(fleetWatchD, fw)
		}
	}

	ratio := func(a, b []time.Duration) string {
		return fmt.Sprintf("%.2fx", float64(pct(a, 50))/float64(pct(b, 50)))
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n%-38s %10s %10s %8s\n", "Kubernetes through the fleet (loopback)", "p50", "p99", "p50 ratio")
	row := func(name string, d []time.Duration, base []time.Duration) {
		r := ""
		if base != nil {
			r = ratio(d, base)
		}
		fmt.Fprintf(&sb, "%-38s %10s %10s %8s\n", name, pct(d, 50).Round(10*time.Microsecond), pct(d, 99).Round(10*time.Microsecond), r)
	}
	row(fmt.Sprintf("kubectl get, direct (n=%d)", len(direct)), direct, nil)
	row("kubectl get, via fleet+tunnel", fleet, direct)
	row("  of which tsh kube credentials", creds, nil)
	row(fmt.Sprintf("one list request, direct (n=%d)", len(directReq)), directReq, nil)
	row("one list request, via fleet+tunnel", fleetReq, directReq)
	row(fmt.Sprintf("watch event delay, direct (n=%d)", len(directWatchD)), directWatchD, nil)
	row("watch event delay, via fleet+tunnel", fleetWatchD, directWatchD)
	fmt.Fprintf(&sb, "added by fleet+tunnel (p50): kubectl get %s, one request %s, watch event %s\n",
		(pct(fleet, 50) - pct(direct, 50)).Round(10*time.Microsecond),
		(pct(fleetReq, 50) - pct(directReq, 50)).Round(10*time.Microsecond),
		(pct(fleetWatchD, 50) - pct(directWatchD, 50)).Round(10*time.Microsecond))
	t.Log(sb.String())
}

// readEvent reads one watch event line and returns its delay since start.
func readEvent(t *testing.T, r *bufio.Reader, start time.Time) time.Duration {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	if !strings.Contains(line, `"ticker"`) {
		t.Fatalf("watch: unexpected event %.200s", line)
	}
	return time.Since(start)
}

// pct returns the p-th percentile of ds (nearest rank).
func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(i-1, 0)]
}
