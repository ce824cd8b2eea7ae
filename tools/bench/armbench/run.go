package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"

	"remoteler.dev/edge/tools/harness"
)

// hostPackages are the binaries armbench runs on this machine.
var hostPackages = []string{"./fleet/cmd/fleetd", "./fleet/cmd/fleetctl", "./firmware/cmd/edge-agent"}

// qemuTarget is the emulated agent's target and qemuBinary the emulator
// that cross/qemu-exec.sh runs it with.
const (
	qemuTarget = "linux-arm64"
	qemuBinary = "qemu-aarch64-static"
)

// agent is one edge-agent that armbench joins, leaves idle and restarts.
type agent struct {
	target   string   // cross/build.sh target of the binary
	emulated bool     // runs under qemu
	name     string   // device name
	launch   []string // program and arguments before "start"
	h        *harness.Agent

	first    time.Duration   // exec to tunnel up on the first start (join included)
	restarts []time.Duration // exec to tunnel up on each restart
	idleCPU  time.Duration   // CPU time over the idle window
	wakeups  int64           // context switches of its threads over the idle window
	window   time.Duration   // the idle window as measured
	mem      harness.Stat    // at the end of the idle window
	downs    int             // "tunnel down" lines in the idle window
}

var tunnelDownRE = regexp.MustCompile(`msg="tunnel down`)

// run measures and prints the report to out; progress goes to logw.
func run(ctx context.Context, cfg config, out, logw io.Writer) (err error) {
	if runtime.GOOS != "linux" {
		return errors.New("armbench runs on Linux only (it reads /proc)")
	}
	logf := func(format string, args ...any) { fmt.Fprintf(logw, "armbench: "+format+"\n", args...) }
	r := &report{cfg: cfg, start: time.Now()}

	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "armbench-")
	if err != nil {
		return err
	}
	if cfg.Keep {
		defer logf("kept %s", work)
	} else {
		defer os.RemoveAll(work)
	}
	logs := filepath.Join(work, "logs")
	if err := os.Mkdir(logs, 0o755); err != nil {
		return err
	}
	// Every process started below is stopped when the function returns.
	return harness.Do(ctx, harness.DoConfig{Log: logw, Dir: filepath.Join(work, "tmp")}, func(tb harness.TB) error {
		return measure(tb, cfg, r, root, work, logs, out, logf)
	})
}

// measure is run's body.
func measure(tb harness.TB, cfg config, r *report, root, work, logs string, out io.Writer, logf func(string, ...any)) error {
	ctx := tb.Context()
	r.machine = describeMachine(ctx)

	// What runs where. On an arm64 machine the native agent is the arm64
	// figure itself and qemu has nothing to add.
	native := "linux-" + runtime.GOARCH
	_, qemuErr := exec.LookPath(qemuBinary)
	switch {
	case runtime.GOARCH == "arm64":
		r.qemuNote = "this machine is arm64: the native row is the arm64 agent"
	case cfg.NoQEMU:
		r.qemuNote = "left out with -no-qemu"
	case qemuErr != nil:
		r.qemuNote = qemuBinary + " is not installed (Debian: apt-get install qemu-user-static)"
	}
	emulate := r.qemuNote == ""

	// Builds, bounded on their own: a cold build cache takes minutes.
	bctx, cancel := context.WithTimeout(ctx, cfg.BuildTimeout)
	defer cancel()
	bin, dist := filepath.Join(work, "bin"), filepath.Join(work, "dist")
	logf("building fleetd, fleetctl and edge-agent for this machine")
	if _, err := harness.RunErr(bctx, "", harness.Cmd{Path: "go", Dir: root, Env: []string{"CGO_ENABLED=0"}, Timeout: cfg.BuildTimeout,
		Args: append([]string{"build", "-trimpath", "-ldflags=-s -w", "-o", bin + string(filepath.Separator)}, hostPackages...)}); err != nil {
		return fmt.Errorf("build the host binaries: %w", err)
	}
	targets := slices.Clone(cfg.Targets)
	if emulate && !slices.Contains(targets, qemuTarget) {
		targets = append(targets, qemuTarget)
	}
	logf("cross-building %s with cross/build.sh", strings.Join(targets, " "))
	if _, err := harness.RunErr(bctx, "", harness.Cmd{Path: "bash", Dir: root, Env: []string{"OUT=" + dist}, Timeout: cfg.BuildTimeout,
		Args: append([]string{filepath.Join(root, "cross", "build.sh")}, targets...)}); err != nil {
		return fmt.Errorf("cross/build.sh: %w", err)
	}
	cancel()

	ctx, cancel = context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()

	// 1. Sizes.
	if _, err := exec.LookPath("xz"); err != nil {
		r.xzNote = "xz is not installed"
	}
	for _, t := range cfg.Targets {
		logf("compressing edge-agent-%s", t)
		s, err := measureSize(ctx, t, filepath.Join(dist, "edge-agent-"+t))
		if err != nil {
			return err
		}
		r.sizes = append(r.sizes, s)
	}

	// 2. Agents joined to one fleetd, idle together.
	f, err := harness.StartFleetErr(tb, harness.FleetConfig{Bin: harness.Bin(bin), DataDir: filepath.Join(work, "fleet"), LogLevel: "info", LogDir: logs})
	if err != nil {
		return err
	}
	logf("fleetd listening on %s", f.Addr)
	r.agents = []*agent{{target: native, name: "bench-" + strings.TrimPrefix(native, "linux-"), launch: []string{filepath.Join(bin, "edge-agent")}}}
	if emulate {
		r.agents = append(r.agents, &agent{target: qemuTarget, emulated: true, name: "bench-" + strings.TrimPrefix(qemuTarget, "linux-") + "-qemu",
			launch: []string{"bash", filepath.Join(root, "cross", "qemu-exec.sh"), qemuTarget, filepath.Join(dist, "edge-agent-"+qemuTarget)}})
	}
	for _, a := range r.agents {
		logf("starting %s (join)", a.label())
		a.h = f.StartAgentWith(harness.AgentConfig{Name: a.name, DataDir: filepath.Join(work, a.name), Launch: a.launch,
			LogLevel: "info", LogDir: logs, UpTimeout: a.timeout()})
		if a.first, err = a.upAfter(ctx); err != nil {
			return err
		}
		logf("%s online: %s from exec to tunnel up", a.label(), a.first.Round(time.Millisecond))
	}
	if err := idle(ctx, cfg, r.agents, logf); err != nil {
		return err
	}

	// 3. Restarts, interleaved so that load from elsewhere falls on both.
	for i := range cfg.Restarts {
		for _, a := range r.agents {
			a.h.Restart()
			d, err := a.upAfter(ctx)
			if err != nil {
				return err
			}
			a.restarts = append(a.restarts, d)
			logf("restart %d/%d of %s: %s to tunnel up", i+1, cfg.Restarts, a.label(), d.Round(time.Millisecond))
		}
	}
	for _, a := range r.agents {
		a.h.Stop()
	}
	f.Stop()
	r.machine.loadEnd = loadAverage()
	r.end = time.Now()
	r.print(out)
	return nil
}

// label names the agent in progress lines.
func (a *agent) label() string {
	if a.emulated {
		return a.target + " agent under qemu"
	}
	return a.target + " agent"
}

// timeout is how long the agent may take to come up: emulation makes
// start-up (crypto above all) 5 to 20 times slower, and a busy machine
// slower still. The waits end as soon as the tunnel is up.
func (a *agent) timeout() time.Duration {
	if a.emulated {
		return 5 * time.Minute
	}
	return 2 * time.Minute
}

// upAfter returns the time from the exec of the agent's current process
// to its "tunnel up" log line.
func (a *agent) upAfter(ctx context.Context) (time.Duration, error) {
	p := a.h.Proc
	up, _, err := p.AwaitLine(ctx, 0, harness.TunnelUpRE, a.timeout())
	if err != nil {
		return 0, fmt.Errorf("%s: %w", a.label(), err)
	}
	return up.At.Sub(p.Started), nil
}

// idle lets the joined agents settle, then measures their CPU time over
// the idle window and reads their memory at its end.
func idle(ctx context.Context, cfg config, agents []*agent, logf func(string, ...any)) error {
	if err := sleep(ctx, cfg.Settle); err != nil {
		return err
	}
	logf("idle for %s", cfg.Idle)
	cpu0 := make([]time.Duration, len(agents))
	sw0 := make([]int64, len(agents))
	t0 := make([]time.Time, len(agents))
	for i, a := range agents {
		t0[i] = time.Now()
		st, err := a.h.Proc.Stat()
		if err != nil {
			return err
		}
		cpu0[i] = st.CPU
		if sw0[i], err = harness.ReadSwitches(a.h.Proc.PID()); err != nil {
			return err
		}
	}
	if err := sleep(ctx, cfg.Idle); err != nil {
		return err
	}
	for i, a := range agents {
		p := a.h.Proc
		if p.Exited() {
			return fmt.Errorf("%s ended while idle:\n%s", a.label(), p.Tail(20))
		}
		st, err := p.Stat()
		if err != nil {
			return err
		}
		sw1, err := harness.ReadSwitches(p.PID())
		if err != nil {
			return err
		}
		a.window = time.Since(t0[i])
		a.idleCPU = st.CPU - cpu0[i]
		a.wakeups = max(0, sw1-sw0[i])
		a.mem = st
		for _, l := range p.Lines() {
			if !l.At.Before(t0[i]) && tunnelDownRE.MatchString(l.Text) {
				a.downs++
			}
		}
		logf("%s: VmRSS %.2f MB, CPU %s and %d context switches over %s", a.label(), mb(a.mem.RSS), a.idleCPU, a.wakeups, a.window.Round(time.Millisecond))
	}
	return nil
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// moduleRoot is the directory of the go.mod that armbench runs in.
func moduleRoot(ctx context.Context) (string, error) {
	r, err := harness.RunErr(ctx, "", harness.Cmd{Path: "go", Args: []string{"env", "GOMOD"}})
	if err != nil {
		return "", fmt.Errorf("find the module (run armbench inside the repository): %w", err)
	}
	gomod := strings.TrimSpace(r.Stdout)
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("find the module: not inside one (run armbench inside the repository)")
	}
	root := filepath.Dir(gomod)
	if _, err := os.Stat(filepath.Join(root, "cross", "build.sh")); err != nil {
		return "", fmt.Errorf("find the module: %w", err)
	}
	return root, nil
}
