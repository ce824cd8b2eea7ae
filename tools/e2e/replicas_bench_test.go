package e2e

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/tools/harness"
)

// TestReplicasBenchmark measures what a hop between replicas costs and how
// long a device takes to come back when its replica dies, on three
// replicas over a three-member etcd (startReplicas), device tunnels on
// replica A:
//
//   - exec round trip: tsh ssh root@pi-1 true (a new connection each
//     time, whole command) for a user logged in at replica A, which holds
//     the device's tunnel, and for one logged in at C, whose streams go
//     over the peer connection to A; interleaved;
//   - echo round trip on an open session (tsh ssh root@pi-1 cat, a line
//     written and read back), the same two ways: the data path alone;
//   - download: tsh ssh root@pi-1 'head -c SIZE /dev/zero', whole command,
//     the same two ways;
//   - failover: A is killed (SIGKILL); the time until another replica
//     holds the tunnel of an idle device (pi-3, which never had a
//     session) and of a device that is sending (pi-2, with a session
//     printing every 50 ms), as C's device list says.
//
// It runs in CI with few samples (so it cannot rot) and prints its figures
// with -v; set REPLICA_BENCH_N for more samples:
//
//	REPLICA_BENCH_N=50 go test -count=1 -v -run TestReplicasBenchmark ./tools/e2e
func TestReplicasBenchmark(t *testing.T) {
	n, size := 5, 8_000_000
	if s := os.Getenv("REPLICA_BENCH_N"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 5 {
			t.Fatalf("REPLICA_BENCH_N=%q: want a number of at least 5", s)
		}
		n, size = v, 64_000_000
	}
	rf := startReplicas(t)
	rf.device(t, "pi-1")
	rf.device(t, "pi-2")
	rf.device(t, "pi-3")
	direct := rf.loginVia(t, "alice", rf.reps[repA].Addr)
	hop := rf.loginVia(t, "bob", rf.reps[repC].Addr)
	for _, d := range []string{"pi-1", "pi-2", "pi-3"} {
		if got := replicaOf(rf.reps[repC], d); got != "r-a" {
			t.Fatalf("%s on %q, want r-a", d, got)
		}
	}

	timed := func(f func()) time.Duration {
		start := time.Now()
		f()
		return time.Since(start)
	}
	var execDirect, execHop []time.Duration
	for i := range n + 2 {
		d := timed(func() { direct.Tsh("ssh", "root@pi-1", "true") })
		h := timed(func() { hop.Tsh("ssh", "root@pi-1", "true") })
		if i >= 2 { // warm-up
			execDirect, execHop = append(execDirect, d), append(execHop, h)
		}
	}
	echoDirect := echoRoundTrips(t, direct, 10*n)
	echoHop := echoRoundTrips(t, hop, 10*n)
	cmd := fmt.Sprintf("head -c %d /dev/zero", size)
	var dlDirect, dlHop []time.Duration
	for range 3 {
		for _, c := range []struct {
			u   *harness.User
			out *[]time.Duration
		}{{direct, &dlDirect}, {hop, &dlHop}} {
			var got int
			*c.out = append(*c.out, timed(func() { got = len(c.u.Tsh("ssh", "root@pi-1", cmd)) }))
			if got != size {
				t.Fatalf("downloaded %d bytes, want %d", got, size)
			}
		}
	}

	// pi-2 sends: a session prints every 50 ms until A dies.
	busy := start(t, "tsh-busy", hop.Env(), "tsh", "ssh", "root@pi-2", "sh", "-c", "while :; do echo tick; sleep 0.05; done")
	busy.WaitOutput("tick", time.Minute)
	c := rf.reps[repC]
	killed := time.Now()
	rf.reps[repA].Kill()
	back := map[string]time.Duration{}
	deadline := killed.Add(2 * time.Minute)
	for (back["pi-2"] == 0 || back["pi-3"] == 0) && time.Now().Before(deadline) {
		ds, err := c.DevicesErr()
		if err != nil {
			continue
		}
		for _, d := range ds {
			if _, ok := back[d.Name]; !ok && d.Online && d.Replica != "" && d.Replica != "r-a" {
				back[d.Name] = time.Since(killed)
			}
		}
	}
	if back["pi-2"] == 0 || back["pi-3"] == 0 {
		t.Fatalf("devices back on another replica within 2 minutes of A's death: %v, want pi-2 and pi-3", back)
	}

	mbps := func(ds []time.Duration) float64 { return float64(size) / pct(ds, 50).Seconds() / 1e6 }
	var sb strings.Builder
	fmt.Fprintf(&sb, "\n| path | exec round trip p50 | p90 | download %d MB, median of 3 |\n|---|---:|---:|---:|\n", size/1e6)
	fmt.Fprintf(&sb, "| user on A, device on A (no hop) | %s | %s | %.0f MB/s |\n", pct(execDirect, 50).Round(100*time.Microsecond), pct(execDirect, 90).Round(100*time.Microsecond), mbps(dlDirect))
	fmt.Fprintf(&sb, "| user on C, device on A (peer hop) | %s | %s | %.0f MB/s |\n", pct(execHop, 50).Round(100*time.Microsecond), pct(execHop, 90).Round(100*time.Microsecond), mbps(dlHop))
	fmt.Fprintf(&sb, "| echo round trip on an open session, no hop | %s | %s | |\n", pct(echoDirect, 50).Round(10*time.Microsecond), pct(echoDirect, 90).Round(10*time.Microsecond))
	fmt.Fprintf(&sb, "| echo round trip on an open session, peer hop | %s | %s | |\n", pct(echoHop, 50).Round(10*time.Microsecond), pct(echoHop, 90).Round(10*time.Microsecond))
	fmt.Fprintf(&sb, "added by the hop (p50): exec %s (%d runs each), echo %s (%d each)\n",
		(pct(execHop, 50) - pct(execDirect, 50)).Round(100*time.Microsecond), len(execHop),
		(pct(echoHop, 50) - pct(echoDirect, 50)).Round(10*time.Microsecond), len(echoHop))
	fmt.Fprintf(&sb, "replica A killed: the sending device back on %s after %s, the idle one after %s (as replica C lists them)\n",
		replicaOf(c, "pi-2"), back["pi-2"].Round(10*time.Millisecond), back["pi-3"].Round(10*time.Millisecond))
	t.Log(sb.String())
}

// echoRoundTrips opens tsh ssh root@pi-1 cat as u and times n lines
// written and read back, after a few to warm up.
func echoRoundTrips(t *testing.T, u *harness.User, n int) []time.Duration {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), bin.Path("tsh"), "ssh", "root@pi-1", "cat")
	cmd.Env = append(os.Environ(), u.Env()...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errOut strings.Builder
	cmd.Stderr = &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		in.Close()
		cmd.Wait()
	}()
	out := bufio.NewReader(outPipe)
	var ds []time.Duration
	for i := range n + 5 {
		line := fmt.Sprintf("line %d\n", i)
		start := time.Now()
		if _, err := io.WriteString(in, line); err != nil {
			t.Fatalf("write to tsh ssh cat: %v\n%s", err, errOut.String())
		}
		got, err := out.ReadString('\n')
		if err != nil || got != line {
			t.Fatalf("tsh ssh cat echoed %q, %v; want %q\n%s", got, err, line, errOut.String())
		}
		if i >= 5 {
			ds = append(ds, time.Since(start))
		}
	}
	return ds
}
