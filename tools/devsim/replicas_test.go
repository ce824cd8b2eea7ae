package devsim

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/tools/harness"
	"remoteler.dev/edge/tools/logtest"
)

// TestMeasureReplicasTiny runs the replicas measurement end to end on a
// tiny fleet so the tool cannot rot: a real 3-member etcd cluster, three
// fleetd replicas built from this repository, eight devices split over two
// devsim processes, each behind its own balancer process. Every figure the
// report gives must have been measured: every device up and back, each
// replica's memory read, the killed replica's devices timed back on the
// others; the simulators run at the niceness asked for. Short device timers
// let devices learn of the dead replica within seconds; the figures are not
// the point.
func TestMeasureReplicasTiny(t *testing.T) {
	bin, err := harness.Build(t.Context(), t.TempDir(), nil, "remoteler.dev/edge/tools/cmd/devsim")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const count = 8
	var out strings.Builder
	r, err := MeasureReplicas(ctx, ReplicasConfig{RestartConfig: RestartConfig{
		Dir: t.TempDir(), Count: count, Procs: 2, Exe: bin.Path("devsim"), Nice: 1,
		Settle: 200 * time.Millisecond, Timeout: time.Minute,
		Keepalive: 500 * time.Millisecond, Liveness: time.Second, IdleTimeout: 3 * time.Second,
		Logger: logtest.Logger(t),
	}, LeaseTTL: 5 * time.Second}, &out)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", out.String())
	if len(r.Replicas) != 3 {
		t.Fatalf("%d replicas in the report, want 3", len(r.Replicas))
	}
	held := 0
	for _, rp := range r.Replicas {
		if rp.Idle.RSS <= 0 || rp.After.RSS <= 0 {
			t.Errorf("replica %s: RSS %d idle, %d after the restart; want both read", rp.ID, rp.Idle.RSS, rp.After.RSS)
		}
		held += rp.Devices
	}
	if held != count {
		t.Errorf("the replicas hold %d tunnels, want %d", held, count)
	}
	if r.SimRSS <= 0 || r.BalancerRSS <= 0 {
		t.Errorf("simulators' RSS %d, balancers' %d; want both read", r.SimRSS, r.BalancerRSS)
	}
	if own, err := harness.ReadStat(os.Getpid()); err != nil || r.SimNice != min(own.Nice+1, 19) {
		t.Errorf("simulators at niceness %d (this test's: %+v, %v), want 1 more than this test's", r.SimNice, own.Nice, err)
	}
	if r.Kill.Expected == 0 || r.Kill.Missing != 0 || r.Kill.Back.N != r.Kill.Expected || r.Kill.Back.Max <= 0 {
		t.Errorf("after the kill of %s: %+v; want every one of its devices (at least one) timed back", r.Killed, r.Kill)
	}
	if r.Restart.Expected != count || r.Restart.Missing != 0 || r.Restart.Back.N != count || r.Restart.Back.Max <= 0 {
		t.Errorf("after the restart of every replica: %+v; want all %d timed back", r.Restart, count)
	}
	for _, want := range []string{"over 3 fleetd replicas on etcd", "killed (SIGKILL)", "every replica restarted"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}
