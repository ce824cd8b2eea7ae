package e2e

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"regexp"
	"remoteler.dev/edge/tools/harness"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/devsim"
	"remoteler.dev/edge/tools/otasim"
)

var rolloutIDRE = regexp.MustCompile(`Rollout (r-[0-9a-f]+)`)

// fakeRelease signs a release whose artefact is random bytes: simulated
// devices (tools/otasim) do not download it.
func fakeRelease(t *testing.T, key, version string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), version)
	os.MkdirAll(dir, 0o755)
	b := make([]byte, 4096)
	rand.Read(b)
	if err := os.WriteFile(filepath.Join(dir, "edge-agent-linux-amd64"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	(&fleetCtl{t}).ctlNoFleet("releases", "sign", "--key", key+".key", "--version", version, dir)
	return dir
}

// simFleet runs n simulated devices with OTA behaviour until the test
// ends (or stop is called).
func simFleet(t *testing.T, f *otaFleet, prefix string, n int, agents *otasim.Agents, dataDir string) (stop func()) {
	t.Helper()
	sim, err := devsim.New(devsim.Config{Fleet: f.Addr, Token: f.token("--uses=300", "--ttl=1h"), Count: n, DataDir: dataDir,
		Prefix: prefix, Labels: map[string]string{"fleet": "sim"}, OnUp: agents.OnUp, OnMessage: agents.OnMessage})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := sim.Run(ctx); err != nil {
			t.Error(err)
		}
	}()
	wctx, wcancel := context.WithTimeout(ctx, 3*time.Minute)
	defer wcancel()
	if err := sim.WaitUp(wctx, n); err != nil {
		t.Fatal(err)
	}
	var once bool
	stop = func() {
		if !once {
			once = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return stop
}

// waitRollout polls a rollout until cond holds.
func (f *otaFleet) waitRollout(id, what string, timeout time.Duration, cond func(api.Rollout) bool) api.Rollout {
	f.t.Helper()
	var ro api.Rollout
	if !harness.Eventually(timeout, func() bool { ro = f.rolloutStatus(id); return cond(ro) }) {
		f.t.Fatalf("rollout %s never got to %s: %+v", id, what, ro)
	}
	return ro
}

// TestOTARolloutOverSimulatedDevices: 200 simulated devices
// (tools/devsim, real tunnels to a real fleetd; tools/otasim answers the
// offers). A release that fails on 20% of them halts in its first stage,
// saying why; one that fails on 2% advances through its stages, and a
// device that was offline catches up when it returns.
func TestOTARolloutOverSimulatedDevices(t *testing.T) {
	key, pub := releaseKey(t, &fleetCtl{t}, "release")
	f := startOTAFleet(t, pub)
	f.ctl("", "releases", "add", fakeRelease(t, key, "v2.0.0"))
	f.ctl("", "releases", "add", fakeRelease(t, key, "v2.1.0"))

	agents := &otasim.Agents{Running: "v1.0.0", Target: "linux-amd64", FailEvery: 5}
	simFleet(t, f, "sim", 199, agents, t.TempDir())
	lateAgents := &otasim.Agents{Running: "v1.0.0", Target: "linux-amd64"}
	lateDir := t.TempDir()
	stopLate := simFleet(t, f, "late", 1, lateAgents, lateDir)
	stopLate() // joined, now offline

	create := func(version string, extra ...string) string {
		out := f.ctl("", append([]string{"rollouts", "create", "--release", version, "--selector", "fleet=sim"}, extra...)...)
		m := rolloutIDRE.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("rollouts create printed no ID: %s", out)
		}
		return m[1]
	}

	// 20% of the devices fail: the first stage (10%, 20 devices) crosses
	// the 5% threshold and the rollout stops itself there. (With 10%, the
	// offline device, when it is one of the first stage's 20, left 19
	// offers and one failure: 5%, not over, and the stage advanced.)
	id := create("v2.0.0", "--stages", "10%,50%,100%", "--soak", "0s", "--max-failure", "5%")
	ro := f.waitRollout(id, "halted", 2*time.Minute, func(r api.Rollout) bool { return r.State == api.RolloutHalted })
	if ro.Stage != 0 || ro.Assigned != 20 || !strings.Contains(ro.Reason, "more than the 5.0% allowed") {
		t.Errorf("halted at stage %d with %d devices, reason %q; want the first stage's 20 and the reason", ro.Stage, ro.Assigned, ro.Reason)
	}
	if n := agents.Offers(); n > 20 {
		t.Errorf("%d devices were offered the release; a halted first stage offers to 20", n)
	}
	out := f.ctl("", "rollouts", "status", id)
	if !strings.Contains(out, "State:       halted") && !strings.Contains(out, "halted") {
		t.Errorf("rollouts status does not say halted:\n%s", out)
	}
	f.ctl("", "rollouts", "abort", id)

	// 2% fail (every 50th offer, so that no stage can hold more than its
	// share: with four chosen devices failing, two of them among the first
	// stage's 20, a 10% stage, halted one run in twenty): the stages
	// advance after their soak; the offline device is pending until it
	// returns, then catches up.
	agents.SetFailure(50, nil)
	id = create("v2.1.0", "--stages", "10%,50%,100%", "--soak", "2s", "--max-failure", "5%")
	ro = f.waitRollout(id, "its last stage", 3*time.Minute, func(r api.Rollout) bool {
		return r.Stage == 2 && r.InProgress == 0 && r.Pending == 1
	})
	if ro.State != api.RolloutRunning {
		t.Fatalf("rollout %s: %s", ro.State, ro.Reason)
	}
	simFleet(t, f, "late", 1, lateAgents, lateDir)
	ro = f.waitRollout(id, "done", 2*time.Minute, func(r api.Rollout) bool { return r.State == api.RolloutDone })
	if n, _ := lateAgents.Committed(); n != 1 {
		t.Errorf("the device that was offline did not catch up")
	}
	if ro.Committed+ro.Failed != 200 || ro.Failed > 5 {
		t.Errorf("done with %d committed, %d failed of 200", ro.Committed, ro.Failed)
	}
	// The audit store has the rollout's stages.
	if n := types(f.search("--type", "rollout.change"))["rollout.change"]; n < 3 {
		t.Errorf("%d rollout.change audit events; want the halt, the abort and the stage advances", n)
	}
}
