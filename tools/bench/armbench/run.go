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
	dataDir  string   // its state
	launch   []string // program and arguments before "start"
	proc     *proc
	starts   int // processes started so far, to name their logs

	first    time.Duration   // exec to tunnel up on the first start (join included)
	restarts []time.Duration // exec to tunnel up on each restart
	idleCPU  time.Duration   // CPU time over the idle window
	wakeups  int64           // context switches of its threads over the idle window
	window   time.Duration   // the idle window as measured
	mem      memory          // at the end of the idle window
	downs    int             // "tunnel down" lines in the idle window
}

var (
	tunnelUpRE   = regexp.MustCompile(`msg="tunnel up"`)
	tunnelDownRE = regexp.MustCompile(`msg="tunnel down`)
)

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
	ps := &procs{dir: filepath.Join(work, "logs")}
	if err := os.Mkdir(ps.dir, 0o755); err != nil {
		return err
	}
	defer ps.stopAll()
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
	if _, err := runCmdIn(bctx, root, []string{"CGO_ENABLED=0"}, "go", append([]string{"build", "-trimpath", "-ldflags=-s -w", "-o", bin + string(filepath.Separator)}, hostPackages...)...); err != nil {
		return fmt.Errorf("build the host binaries: %w", err)
	}
	targets := slices.Clone(cfg.Targets)
	if emulate && !slices.Contains(targets, qemuTarget) {
		targets = append(targets, qemuTarget)
	}
	logf("cross-building %s with cross/build.sh", strings.Join(targets, " "))
	if _, err := runCmdIn(bctx, root, []string{"OUT=" + dist}, "bash", append([]string{filepath.Join(root, "cross", "build.sh")}, targets...)...); err != nil {
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
	f, err := startFleet(ctx, ps, bin, filepath.Join(work, "fleet"))
	if err != nil {
		return err
	}
	logf("fleetd listening on %s", f.addr)
	r.agents = []*agent{{target: native, name: "bench-" + strings.TrimPrefix(native, "linux-"), launch: []string{filepath.Join(bin, "edge-agent")}}}
	if emulate {
		r.agents = append(r.agents, &agent{target: qemuTarget, emulated: true, name: "bench-" + strings.TrimPrefix(qemuTarget, "linux-") + "-qemu",
			launch: []string{"bash", filepath.Join(root, "cross", "qemu-exec.sh"), qemuTarget, filepath.Join(dist, "edge-agent-"+qemuTarget)}})
	}
	for _, a := range r.agents {
		a.dataDir = filepath.Join(work, a.name)
		tok, err := f.token(ctx)
		if err != nil {
			return err
		}
		logf("starting %s (join)", a.label())
		if a.first, err = a.start(ctx, ps, f.addr, "--token", tok); err != nil {
			return err
		}
		if err := f.waitOnline(ctx, a.name, a.proc, a.timeout()); err != nil {
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
			a.proc.stop()
			d, err := a.start(ctx, ps, f.addr)
			if err != nil {
				return err
			}
			a.restarts = append(a.restarts, d)
			logf("restart %d/%d of %s: %s to tunnel up", i+1, cfg.Restarts, a.label(), d.Round(time.Millisecond))
		}
	}
	ps.stopAll()
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
// start-up (crypto above all) 5 to 20 times slower.
func (a *agent) timeout() time.Duration {
	if a.emulated {
		return 2 * time.Minute
	}
	return 30 * time.Second
}

// start execs the agent, joined already unless extra holds --token, and
// returns the time from the exec to its "tunnel up" log line.
func (a *agent) start(ctx context.Context, ps *procs, fleetAddr string, extra ...string) (time.Duration, error) {
	logName := fmt.Sprintf("%s-%d", a.name, a.starts)
	a.starts++
	args := append(slices.Clone(a.launch[1:]), "start", "--fleet", fleetAddr, "--data-dir", a.dataDir, "--name", a.name)
	args = append(args, extra...)
	p, err := ps.start(logName, nil, a.launch[0], args...)
	if err != nil {
		return 0, err
	}
	a.proc = p
	up, _, err := p.waitLine(ctx, tunnelUpRE, a.timeout())
	if err != nil {
		return 0, fmt.Errorf("%s: %w", a.label(), err)
	}
	return up.at.Sub(p.started), nil
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
		var err error
		t0[i] = time.Now()
		if cpu0[i], err = readCPU(a.proc.pid()); err != nil {
			return err
		}
		if sw0[i], err = readSwitches(a.proc.pid()); err != nil {
			return err
		}
	}
	if err := sleep(ctx, cfg.Idle); err != nil {
		return err
	}
	for i, a := range agents {
		if a.proc.exited() {
			return fmt.Errorf("%s ended while idle:\n%s", a.label(), a.proc.tail(20))
		}
		cpu1, err := readCPU(a.proc.pid())
		if err != nil {
			return err
		}
		sw1, err := readSwitches(a.proc.pid())
		if err != nil {
			return err
		}
		a.window = time.Since(t0[i])
		a.idleCPU = cpu1 - cpu0[i]
		a.wakeups = max(0, sw1-sw0[i])
		if a.mem, err = readMemory(a.proc.pid()); err != nil {
			return err
		}
		a.proc.mu.Lock()
		for _, l := range a.proc.lines {
			if !l.at.Before(t0[i]) && tunnelDownRE.MatchString(l.text) {
				a.downs++
			}
		}
		a.proc.mu.Unlock()
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
	out, err := runCmd(ctx, nil, "go", "env", "GOMOD")
	if err != nil {
		return "", fmt.Errorf("find the module (run armbench inside the repository): %w", err)
	}
	gomod := strings.TrimSpace(out)
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("find the module: not inside one (run armbench inside the repository)")
	}
	root := filepath.Dir(gomod)
	if _, err := os.Stat(filepath.Join(root, "cross", "build.sh")); err != nil {
		return "", fmt.Errorf("find the module: %w", err)
	}
	return root, nil
}

// runCmdIn is runCmd in directory dir.
func runCmdIn(ctx context.Context, dir string, env []string, path string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = childAttr()
	var b strings.Builder
	cmd.Stdout, cmd.Stderr = &b, &b
	if err := cmd.Run(); err != nil {
		return b.String(), fmt.Errorf("%s %s: %w\n%s", filepath.Base(path), strings.Join(args, " "), err, indent(b.String()))
	}
	return b.String(), nil
}
