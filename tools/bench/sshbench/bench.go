package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"remoteler.dev/edge/tools/harness"
)

// config is one run's settings; defaultConfig holds a full run's.
type config struct {
	Size       int64         // payload bytes
	Runs       int           // copies per path and direction
	RTTRuns    int           // exec round trips per mode
	Idle       time.Duration // idle time before RSS is read
	Bin        string        // directory of prebuilt binaries; "" builds them
	CPUProfile string        // directory for CPU profiles; "" takes none
	Timeout    time.Duration // bound on the whole run
	Keep       bool          // keep the temporary directory
}

// device is the name the agent joins with.
const device = "dev1"

// run measures and prints the report to out; progress goes to logw.
func run(ctx context.Context, cfg config, out, logw io.Writer) (err error) {
	if runtime.GOOS != "linux" {
		return errors.New("sshbench runs on Linux only (it reads /proc and starts Debian's sshd)")
	}
	if err := needTools(cfg.Bin == "" || cfg.CPUProfile != ""); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	logf := func(format string, args ...any) { fmt.Fprintf(logw, "sshbench: "+format+"\n", args...) }

	work, err := os.MkdirTemp("", "sshbench-")
	if err != nil {
		return err
	}
	if cfg.Keep {
		defer logf("kept %s", work)
	} else {
		defer os.RemoveAll(work)
	}
	return harness.Do(ctx, harness.DoConfig{Log: logw, Dir: filepath.Join(work, "tmp")}, func(tb harness.TB) error {
		return measure(tb, cfg, work, out, logf)
	})
}

// measure is run's body: every process it starts is stopped when it
// returns.
func measure(tb harness.TB, cfg config, work string, out io.Writer, logf func(string, ...any)) (err error) {
	ctx := tb.Context()
	var env []string
	bin := cfg.Bin
	switch {
	case cfg.CPUProfile != "":
		bin = filepath.Join(work, "bin")
		logf("building the binaries with a pprof listener into %s", bin)
		if env, err = buildProfiled(ctx, bin, work); err != nil {
			return err
		}
	case bin == "":
		bin = filepath.Join(work, "bin")
		logf("building fleetd, edge-agent, tsh and fleetctl")
		if err := build(ctx, bin); err != nil {
			return err
		}
	}
	for _, b := range binaries {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			return fmt.Errorf("no %s in %s: %w", b, bin, err)
		}
	}

	login, err := currentLogin()
	if err != nil {
		return err
	}
	rep := &report{cfg: cfg, login: login, start: time.Now()}
	rep.machine = describeMachine(ctx)

	logf("starting fleetd, edge-agent %s and sshd on 127.0.0.1 (login %s)", device, login)
	f, err := startFleet(tb, bin, work, login, device, env)
	if err != nil {
		return err
	}
	p, err := startPeer(tb, work, login)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			err = fmt.Errorf("%w\nfleetd log:\n%s\nedge-agent log:\n%s\nsshd log:\n%s", err, f.Proc.Tail(15), f.agent.Proc.Tail(15), p.sshd.Proc.Tail(10))
		}
	}()

	payload := filepath.Join(work, "payload")
	logf("writing a %s payload", humanSize(cfg.Size))
	sum, err := harness.WritePayload(payload, cfg.Size)
	if err != nil {
		return err
	}

	if rep.algDirect, err = negotiated(ctx, append(p.sshArgs(), peerHost)...); err != nil {
		return err
	}
	if rep.algFleet, err = negotiated(ctx, append(f.sshArgs(), f.sshTarget())...); err != nil {
		return err
	}

	if cfg.Idle > 0 {
		logf("letting fleetd and the agent idle for %s", cfg.Idle.Round(time.Second))
		select {
		case <-time.After(cfg.Idle):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, pr := range []*harness.Proc{f.Proc, f.agent.Proc, p.sshd.Proc} {
		m, err := pr.Stat()
		if err != nil {
			return err
		}
		rep.idle = append(rep.idle, m)
	}

	if rep.copies, err = measureCopies(ctx, cfg, f, p, work, payload, sum, logf); err != nil {
		return err
	}
	if rep.rtts, err = measureRTT(ctx, tb, cfg, f, p, rep.algDirect, rep.algFleet, work, logf); err != nil {
		return err
	}
	for _, pr := range []*harness.Proc{f.Proc, f.agent.Proc, p.sshd.Proc} {
		m, err := pr.Stat()
		if err != nil {
			return err
		}
		rep.after = append(rep.after, m)
	}
	rep.end = time.Now()
	rep.machine.loadEnd = loadAverage()
	rep.print(out)

	if cfg.CPUProfile != "" {
		if err := profile(ctx, cfg, f, work, payload, out, logf); err != nil {
			return err
		}
	}
	return nil
}

// currentLogin is the login used on both servers: the current user (root
// when run as root).
func currentLogin() (string, error) {
	u, err := user.Current()
	if err != nil {
		return "", fmt.Errorf("find the current user: %w", err)
	}
	return u.Username, nil
}

// copyPath is one way of copying a file to and from the device.
type copyPath struct {
	name string
	// cmd returns the command that copies src to dst, where a remote
	// side is written as remote(path).
	cmd func(src, dst string) (env []string, path string, args []string)
	// remote turns a path on the device into a remote copy argument.
	remote func(path string) string
	// serverCPU is the CPU time used so far by the server side.
	serverCPU func() (time.Duration, error)
	// serverPIDs are the server processes whose children must be gone
	// before serverCPU counts them.
	serverPIDs []int
}

// copyStats are the samples of one path in one direction.
type copyStats struct {
	elapsed   []time.Duration
	serverCPU []time.Duration
	clientCPU []time.Duration
}

// copyResult is one path's samples, up (to the device) and down.
type copyResult struct {
	name     string
	up, down copyStats
}

// measureCopies copies the payload up and down cfg.Runs times on each
// path, interleaving the paths so that load from elsewhere on the machine
// falls on all of them alike.
func measureCopies(ctx context.Context, cfg config, f *fleet, p *peer, work, payload string, sum [32]byte, logf func(string, ...any)) ([]copyResult, error) {
	remoteDir, localDir := filepath.Join(work, "remote"), filepath.Join(work, "local")
	for _, d := range []string{remoteDir, localDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	// CPU time of a process and the children it has waited for.
	cpu := func(p *harness.Proc) (time.Duration, error) {
		st, err := p.Stat()
		return st.CPU + st.ChildCPU, err
	}
	sshdCPU := func() (time.Duration, error) { return cpu(p.sshd.Proc) }
	fleetCPU := func() (time.Duration, error) {
		a, err := cpu(f.Proc)
		if err != nil {
			return 0, err
		}
		b, err := cpu(f.agent.Proc)
		return a + b, err
	}
	scp := func(args []string) func(src, dst string) ([]string, string, []string) {
		return func(src, dst string) ([]string, string, []string) {
			return nil, "scp", append(append([]string{}, args...), "-q", src, dst)
		}
	}
	paths := []copyPath{
		{
			name:       "OpenSSH scp → sshd (direct, TCP)",
			cmd:        scp(p.sshArgs()),
			remote:     func(path string) string { return peerHost + ":" + path },
			serverCPU:  sshdCPU,
			serverPIDs: []int{p.sshd.Proc.PID()},
		},
		{
			name:       "OpenSSH scp → tsh proxy → fleetd → QUIC → agent",
			cmd:        scp(f.sshArgs()),
			remote:     func(path string) string { return f.sshTarget() + ":" + path },
			serverCPU:  fleetCPU,
			serverPIDs: []int{f.Proc.PID(), f.agent.Proc.PID()},
		},
		{
			name: "tsh scp (sftp) → fleetd → QUIC → agent",
			cmd: func(src, dst string) ([]string, string, []string) {
				return f.tshEnv(), f.tsh(), []string{"scp", "-q", src, dst}
			},
			remote:     func(path string) string { return f.tshTarget() + ":" + path },
			serverCPU:  fleetCPU,
			serverPIDs: []int{f.Proc.PID(), f.agent.Proc.PID()},
		},
	}
	results := make([]copyResult, len(paths))
	for i, cp := range paths {
		results[i].name = cp.name
	}
	for run := range cfg.Runs {
		for _, up := range []bool{true, false} {
			for i, cp := range paths {
				dir := "down"
				src, dst, check := cp.remote(payload), filepath.Join(localDir, fmt.Sprintf("down-%d", i)), ""
				if up {
					dir = "up"
					src, dst = payload, cp.remote(filepath.Join(remoteDir, fmt.Sprintf("up-%d", i)))
					check = filepath.Join(remoteDir, fmt.Sprintf("up-%d", i))
				} else {
					check = dst
				}
				env, path, args := cp.cmd(src, dst)
				cpu0, err := cp.serverCPU()
				if err != nil {
					return nil, err
				}
				r, err := harness.RunErr(ctx, "", harness.Cmd{Path: path, Args: args, Env: env, Timeout: time.Hour})
				if err != nil {
					return nil, fmt.Errorf("copy %s with %s: %w", dir, cp.name, err)
				}
				for _, pid := range cp.serverPIDs {
					waitNoChildren(pid, 2*time.Second)
				}
				cpu1, err := cp.serverCPU()
				if err != nil {
					return nil, err
				}
				var want *[32]byte
				if run == 0 {
					want = &sum
				}
				if err := harness.CheckFile(check, cfg.Size, want); err != nil {
					return nil, fmt.Errorf("copy %s with %s: %w", dir, cp.name, err)
				}
				os.Remove(check)
				s := &results[i].down
				if up {
					s = &results[i].up
				}
				s.elapsed = append(s.elapsed, r.Took)
				s.serverCPU = append(s.serverCPU, cpu1-cpu0)
				s.clientCPU = append(s.clientCPU, r.CPU)
				logf("copy %d/%d %-4s %6.1f MB/s  %s", run+1, cfg.Runs, dir, mbps(cfg.Size, r.Took), cp.name)
			}
		}
	}
	return results, nil
}

// waitNoChildren waits, at most timeout, until process pid has no child
// processes, so that their CPU time has been added to its own.
func waitNoChildren(pid int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
		busy := false
		for _, t := range tasks {
			if b, err := os.ReadFile(t); err == nil && len(bytes.TrimSpace(b)) > 0 {
				busy = true
				break
			}
		}
		if !busy {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rttMode is one way of running a tiny command on the device.
type rttMode struct {
	name string
	// base is the index of the mode this one is compared with (-1: none).
	base int
	env  []string
	path string
	args []string
}

// rttResult is one mode's samples.
type rttResult struct {
	name    string
	base    int
	elapsed []time.Duration // of the runs that succeeded
	// failed counts runs that did not exit 0; firstErr is the first one's
	// error.
	failed   int
	firstErr error
}

// measureRTT runs "true" on the device cfg.RTTRuns times in each mode,
// interleaved, after one warm-up run each.
func measureRTT(ctx context.Context, tb harness.TB, cfg config, f *fleet, p *peer, algDirect, algFleet algorithms, work string, logf func(string, ...any)) ([]rttResult, error) {
	directSock, fleetSock := filepath.Join(work, "cm-direct"), filepath.Join(work, "cm-fleet")
	var masters []*harness.Proc
	for _, m := range []struct {
		name, sock string
		args       []string
	}{
		{"ssh-master-direct", directSock, append(p.sshArgs(), peerHost)},
		{"ssh-master-fleet", fleetSock, append(f.sshArgs(), f.sshTarget())},
	} {
		master, err := startMaster(ctx, tb, work, m.name, m.sock, m.args)
		if err != nil {
			return nil, err
		}
		masters = append(masters, master)
	}
	ssh := func(opts []string, extra ...string) []string {
		return append(append(append([]string{}, opts...), extra...), "true")
	}
	modes := []rttMode{
		{name: "ssh → sshd (direct), new connection", base: -1, path: "ssh", args: ssh(p.sshArgs(), peerHost)},
		{name: "ssh → tsh proxy → fleet → agent, new connection", base: 0, path: "ssh", args: ssh(f.sshArgs(), f.sshTarget())},
		{name: "tsh ssh → fleet → agent, new connection", base: 0, env: f.tshEnv(), path: f.tsh(), args: []string{"ssh", f.tshTarget(), "true"}},
	}
	if algFleet.Kex != "" && algFleet.Kex != algDirect.Kex {
		modes = append(modes, rttMode{
			name: "ssh → sshd (direct), new connection, KEX " + algFleet.Kex + " as via the fleet", base: -1,
			path: "ssh", args: ssh(p.sshArgs(), "-o", "KexAlgorithms="+algFleet.Kex, peerHost),
		})
	}
	open := len(modes)
	modes = append(modes,
		rttMode{name: "ssh → sshd (direct), open connection (ControlMaster)", base: -1, path: "ssh",
			args: ssh(p.sshArgs(), "-o", "ControlMaster=no", "-S", directSock, peerHost)},
		rttMode{name: "ssh → tsh proxy → fleet → agent, open connection (ControlMaster)", base: open, path: "ssh",
			args: ssh(f.sshArgs(), "-o", "ControlMaster=no", "-S", fleetSock, f.sshTarget())},
	)
	results := make([]rttResult, len(modes))
	for i, m := range modes {
		results[i] = rttResult{name: m.name, base: m.base}
		if _, err := harness.RunErr(ctx, "", harness.Cmd{Path: m.path, Args: m.args, Env: m.env}); err != nil {
			return nil, fmt.Errorf("exec round trip, %s: %w", m.name, err)
		}
	}
	logf("timing %d exec round trips in each of %d modes", cfg.RTTRuns, len(modes))
	for range cfg.RTTRuns {
		for i, m := range modes {
			r, err := harness.RunErr(ctx, "", harness.Cmd{Path: m.path, Args: m.args, Env: m.env})
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			// A failed run is counted and reported, not fatal: the
			// figures of the others still stand.
			if err != nil {
				if results[i].failed == 0 {
					results[i].firstErr = err
				}
				results[i].failed++
				logf("exec round trip failed, %s: %v", m.name, err)
				continue
			}
			results[i].elapsed = append(results[i].elapsed, r.Took)
		}
	}
	// ssh falls back to a new connection when the master is gone: make
	// sure the open-connection figures were that.
	for _, m := range masters {
		if m.Exited() {
			return nil, fmt.Errorf("exec round trip: the ssh ControlMaster %s ended during the run:\n%s", m.Name(), m.Tail(10))
		}
	}
	return results, nil
}

// startMaster starts an OpenSSH ControlMaster on socket sock (a child of
// sshbench, stopped with the rest) and waits until it accepts sessions.
func startMaster(ctx context.Context, tb harness.TB, dir, name, sock string, args []string) (*harness.Proc, error) {
	master, err := harness.StartErr(tb, harness.Cmd{Name: name, Path: "ssh", Args: append([]string{"-M", "-N", "-S", sock, "-o", "ControlPersist=no"}, args...), LogDir: filepath.Join(dir, "logs")})
	if err != nil {
		return nil, err
	}
	check := append([]string{"-S", sock, "-O", "check"}, args...)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := harness.RunErr(ctx, "", harness.Cmd{Path: "ssh", Args: check}); err == nil {
			return master, nil
		}
		if master.Exited() || time.Now().After(deadline) {
			return nil, fmt.Errorf("start the ssh ControlMaster %s:\n%s", name, master.Tail(10))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// machine describes where the figures come from.
type machine struct {
	cpu       string
	cores     int
	kernel    string
	goVersion string
	openssh   string
	loadStart string
	loadEnd   string
}

// describeMachine reads the CPU model, core count, kernel and versions.
func describeMachine(ctx context.Context) machine {
	m := machine{cores: runtime.NumCPU(), goVersion: runtime.Version(), loadStart: loadAverage()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	if r, err := harness.RunErr(ctx, "", harness.Cmd{Path: "ssh", Args: []string{"-V"}}); err == nil {
		m.openssh = strings.TrimSpace(r.Stderr)
	}
	return m
}

// loadAverage is the 1-minute load average.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}
