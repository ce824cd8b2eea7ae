package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/harness"
)

// config is one run's settings.
type config struct {
	RTTRuns int           // exec round trips per path
	Size    int64         // scp payload bytes
	Copies  int           // copies per path and direction
	Bin     string        // prebuilt binaries; "" builds them
	Timeout time.Duration // bound on the whole run
}

// The root's role ops maps to the leaf's role operator: both allow every
// device with the user's logins.
const (
	rootRoles = `kind: role
version: v1
metadata: {name: ops}
spec:
  allow:
    device_labels: {"*": "*"}
    logins: ["{{internal.logins}}"]
`
	leafRoles = `kind: role
version: v1
metadata: {name: operator}
spec:
  allow:
    device_labels: {"*": "*"}
    logins: ["{{internal.logins}}"]
`
	trustFile = `kind: trusted_cluster
version: v1
metadata: {name: root}
spec:
  root_addr: %s
  token: %s
  ca_pin: %s
  role_map:
  - {remote: ops, local: [operator]}
`
	device = "plc-1"
	login  = "root"
)

// path is one way to the device: a user and the tsh flags that pick the
// cluster.
type path struct {
	name  string
	user  *harness.User
	flags []string
}

// measure starts a root and a leaf fleet, a device of the leaf, and
// measures both paths; it prints the report to out.
func measure(ctx context.Context, cfg config, out, logw io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	logf := func(format string, args ...any) { fmt.Fprintf(logw, "trustbench: "+format+"\n", args...) }
	return harness.Do(ctx, harness.DoConfig{Log: logw}, func(tb harness.TB) error {
		bin := harness.Bin(cfg.Bin)
		if bin == "" {
			logf("building fleetd, edge-agent, tsh and fleetctl")
			var err error
			if bin, err = harness.Build(tb.Context(), tb.TempDir(), nil, harness.Products...); err != nil {
				return err
			}
		}
		logf("starting the root and the leaf fleet and a device of the leaf")
		root := harness.StartFleet(tb, harness.FleetConfig{Bin: bin, LogLevel: "warn", Args: []string{"--cluster", "root"}})
		leaf := harness.StartFleet(tb, harness.FleetConfig{Bin: bin, LogLevel: "warn", Args: []string{"--cluster", "leaf"}})
		root.Ctl(rootRoles, "create", "-f", "-")
		leaf.Ctl(leafRoles, "create", "-f", "-")
		var tok api.Token
		if err := json.Unmarshal([]byte(root.Ctl("", "tokens", "add", "--type=trusted-cluster", "--ttl=5m", "--format=json")), &tok); err != nil {
			return fmt.Errorf("trusted-cluster token: %w", err)
		}
		leaf.Ctl(fmt.Sprintf(trustFile, root.Addr, tok.Token, root.Pin), "create", "-f", "-")
		if !harness.Eventually(time.Minute, func() bool { return leafOnline(root) }) {
			return fmt.Errorf("the leaf did not come online at the root within a minute:\n%s", root.Ctl("", "clusters", "ls"))
		}
		leaf.StartAgent(device, "site=north")
		leaf.WaitOnline(device)
		paths := []path{
			{name: "leaf → device (a leaf user)", user: leaf.Login("lee", leaf.AddUser("lee", "operator", login))},
			{name: "root → leaf → device (a root user, --cluster=leaf)", user: root.Login("alice", root.AddUser("alice", "ops", login)), flags: []string{"--cluster=leaf"}},
		}
		// Warm both paths (first connections, certificates fetched).
		for _, p := range paths {
			if out, errOut, err := p.user.TshErr("", append(append([]string{"ssh"}, p.flags...), login+"@"+device, "echo", "ok")...); err != nil || out != "ok\n" {
				return fmt.Errorf("tsh ssh %s: %q, %v\n%s", p.name, out, err, errOut)
			}
		}
		r := &report{cfg: cfg, start: time.Now(), load0: loadAverage()}
		var err error
		logf("exec round trips: %d per path, interleaved", cfg.RTTRuns)
		if r.rtt, err = measureRTT(tb, cfg, paths); err != nil {
			return err
		}
		logf("scp: %d copies of %d MiB per path and direction, interleaved", cfg.Copies, cfg.Size>>20)
		if r.up, r.down, err = measureCopies(tb, cfg, paths); err != nil {
			return err
		}
		r.load1 = loadAverage()
		r.names = []string{paths[0].name, paths[1].name}
		r.print(out)
		return nil
	})
}

// leafOnline reports whether root lists cluster leaf as online.
func leafOnline(root *harness.Fleet) bool {
	out, _, err := root.CtlErr("", "clusters", "ls", "--format=json")
	if err != nil {
		return false
	}
	var l api.List[api.Cluster]
	if json.Unmarshal([]byte(out), &l) != nil {
		return false
	}
	return slices.ContainsFunc(l.Items, func(c api.Cluster) bool { return c.Name == "leaf" && c.Online })
}

// measureRTT times tsh ssh DEVICE true on each path, the paths taking
// turns so that load from elsewhere falls on both alike.
func measureRTT(tb harness.TB, cfg config, paths []path) ([][]time.Duration, error) {
	out := make([][]time.Duration, len(paths))
	for range cfg.RTTRuns {
		for i, p := range paths {
			t0 := time.Now()
			if _, errOut, err := p.user.TshErr("", append(append([]string{"ssh"}, p.flags...), login+"@"+device, "true")...); err != nil {
				return nil, fmt.Errorf("tsh ssh %s: %v\n%s", p.name, err, errOut)
			}
			out[i] = append(out[i], time.Since(t0))
		}
	}
	return out, nil
}

// measureCopies copies a random payload up and down with tsh scp on each
// path, taking turns, and checks every copy.
func measureCopies(tb harness.TB, cfg config, paths []path) (up, down [][]float64, err error) {
	dir := tb.TempDir()
	payload := filepath.Join(dir, "payload")
	sum, err := harness.WritePayload(payload, cfg.Size)
	if err != nil {
		return nil, nil, err
	}
	up, down = make([][]float64, len(paths)), make([][]float64, len(paths))
	mbps := func(d time.Duration) float64 { return float64(cfg.Size) / 1e6 / d.Seconds() }
	for range cfg.Copies {
		for i, p := range paths {
			remote := filepath.Join(dir, fmt.Sprintf("up-%d", i))
			local := filepath.Join(dir, fmt.Sprintf("down-%d", i))
			for _, c := range []struct {
				src, dst, check string
				into            *[][]float64
			}{
				{payload, login + "@" + device + ":" + remote, remote, &up},
				{login + "@" + device + ":" + remote, local, local, &down},
			} {
				t0 := time.Now()
				if _, errOut, err := p.user.TshErr("", append(append([]string{"scp"}, p.flags...), "-q", c.src, c.dst)...); err != nil {
					return nil, nil, fmt.Errorf("tsh scp %s: %v\n%s", p.name, err, errOut)
				}
				d := time.Since(t0)
				if err := harness.CheckFile(c.check, cfg.Size, &sum); err != nil {
					return nil, nil, err
				}
				(*c.into)[i] = append((*c.into)[i], mbps(d))
			}
		}
	}
	return up, down, nil
}

// loadAverage returns the first field of /proc/loadavg, or "?".
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := bytes.Fields(b)
	if len(f) == 0 {
		return "?"
	}
	return string(f[0])
}

// report holds the samples; print writes them as Markdown.
type report struct {
	cfg          config
	start        time.Time
	load0, load1 string
	names        []string
	rtt          [][]time.Duration
	up, down     [][]float64
}

func (r *report) print(w io.Writer) {
	fmt.Fprintf(w, "## Trusted clusters: through the root against the leaf alone\n\n")
	fmt.Fprintf(w, "machine: %d CPUs, %s/%s; load average %s at the start, %s at the end; %s\n\n",
		runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, r.load0, r.load1, time.Since(r.start).Round(time.Second))
	fmt.Fprintf(w, "| path | exec round trip p50 | p90 | p50 vs leaf | scp up MB/s (range) | up vs leaf | scp down MB/s (range) | down vs leaf |\n")
	fmt.Fprintf(w, "|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for i, name := range r.names {
		p50, p90 := quantile(r.rtt[i], 0.5), quantile(r.rtt[i], 0.9)
		base := quantile(r.rtt[0], 0.5)
		up, down := median(r.up[i]), median(r.down[i])
		fmt.Fprintf(w, "| %s | %s | %s | %.2f× | %.1f (%.1f–%.1f) | %.2f× | %.1f (%.1f–%.1f) | %.2f× |\n", name,
			ms(p50), ms(p90), float64(p50)/float64(base),
			up, slices.Min(r.up[i]), slices.Max(r.up[i]), up/median(r.up[0]),
			down, slices.Min(r.down[i]), slices.Max(r.down[i]), down/median(r.down[0]))
	}
	fmt.Fprintf(w, "\nexec round trip: `tsh ssh root@%s true`, a new tsh process and connection each time, %d per path, the paths taking turns; scp: `tsh scp` of %d MiB, %d copies per path and direction, median.\n",
		device, r.cfg.RTTRuns, r.cfg.Size>>20, r.cfg.Copies)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1e3) }

// quantile returns the q-quantile of ds (nearest rank).
func quantile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s)) + 0.5)
	return s[min(max(i-1, 0), len(s)-1)]
}

func median(fs []float64) float64 {
	s := slices.Clone(fs)
	slices.Sort(s)
	return s[len(s)/2]
}
