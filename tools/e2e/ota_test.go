package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"remoteler.dev/edge/tools/harness"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/proto/api"
)

// OTA end-to-end: real edge-agent binaries of several versions, built
// here with a different version string each (-ldflags -X), updated through
// a real fleetd.
//
// "systemd restarts the unit": here a small supervisor (otaSupervisor)
// stands in for systemd. It runs the unit file's own ExecStartPre and
// ExecStart lines (images/device/edge-agent.service), with the install
// paths moved into the test's folder, and starts the agent again whenever
// it exits, as Restart=always does.
//
// Test builds set firmware/update's testFault with -ldflags (never set in
// release builds): "crash-at-start" makes a release that panics at once,
// "no-connect" one whose tunnel never comes up, and "env" lets a test kill
// the agent (SIGKILL) at a named step of an apply.

const (
	updatePkg    = "remoteler.dev/edge/firmware/update"
	buildinfoPkg = "remoteler.dev/edge/internal/buildinfo"
)

// agentTarget is the release target of the native agent builds.
func agentTarget() string { return "linux-" + runtime.GOARCH }

// buildAgent builds edge-agent VERSION into dir/edge-agent-TARGET as the
// release build does (static, stripped), with a test fault.
func buildAgent(t *testing.T, dir, version, fault string, env ...string) string {
	t.Helper()
	target := agentTarget()
	goarch := runtime.GOARCH
	for _, e := range env {
		if v, ok := strings.CutPrefix(e, "TARGET="); ok {
			target = v
		}
		if v, ok := strings.CutPrefix(e, "GOARCH="); ok {
			goarch = v
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "edge-agent-"+target)
	ld := fmt.Sprintf("-s -w -buildid= -X %s.Version=%s -X %s.Commit=test -X %s.Target=%s", buildinfoPkg, version, buildinfoPkg, buildinfoPkg, target)
	if fault != "" {
		ld += " -X " + updatePkg + ".testFault=" + fault
	}
	cmd := exec.Command("go", "build", "-trimpath", "-buildvcs=false", "-ldflags", ld, "-o", out, "remoteler.dev/edge/firmware/cmd/edge-agent")
	cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch), env...)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build edge-agent %s: %v\n%s", version, err, b)
	}
	return out
}

// otaRelease is a signed release directory.
type otaRelease struct {
	version string
	dir     string
	bin     string
}

// releaseKey makes a release key pair and returns its prefix and public
// key line.
func releaseKey(t *testing.T, f *fleetCtl, name string) (string, string) {
	t.Helper()
	prefix := filepath.Join(t.TempDir(), name)
	out := f.ctlNoFleet("releases", "keygen", "--no-password", prefix)
	m := regexp.MustCompile(`Release key: (\S+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("releases keygen printed no key:\n%s", out)
	}
	return prefix, m[1]
}

// fleetCtl runs fleetctl commands that need no fleet.
type fleetCtl struct{ t *testing.T }

func (f *fleetCtl) ctlNoFleet(args ...string) string {
	f.t.Helper()
	out, errOut, err := run("", nil, "fleetctl", args...)
	if err != nil {
		f.t.Fatalf("fleetctl %s: %v\n%s\n%s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// makeRelease builds and signs a release.
func makeRelease(t *testing.T, root, version, fault, key string, env ...string) otaRelease {
	t.Helper()
	dir := filepath.Join(root, version+fault)
	bin := buildAgent(t, dir, version, fault, env...)
	(&fleetCtl{t}).ctlNoFleet("releases", "sign", "--key", key+".key", "--version", version, dir)
	return otaRelease{version: version, dir: dir, bin: bin}
}

// otaDevice is an installed agent under the stand-in supervisor.
type otaDevice struct {
	t       *testing.T
	name    string
	root    string // stands for /
	binPath string // ROOT/usr/local/bin/edge-agent
	config  string
	dataDir string
	launch  []string // runs the binary (qemu for ARM)
	out     *lineBuf // the supervisor's captured output

	mu     sync.Mutex // guards killAt, starts and cur
	killAt string     // EDGE_AGENT_TEST_KILL_AT for the next start
	starts int
	cur    *exec.Cmd // the agent running now
	stop   context.CancelFunc
	done   chan struct{}
}

// unitCommands reads ExecStartPre and ExecStart of the device unit.
func unitCommands(t *testing.T) (pre, start string) {
	t.Helper()
	b, err := os.ReadFile("../../images/device/edge-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "ExecStartPre="); ok {
			pre = v
		}
		if v, ok := strings.CutPrefix(l, "ExecStart="); ok {
			start = v
		}
	}
	if pre == "" || start == "" {
		t.Fatal("the unit has no ExecStartPre or ExecStart")
	}
	return pre, start
}

// installDevice installs bin as ROOT/usr/local/bin/edge-agent with a
// config, and starts the supervisor.
func installDevice(t *testing.T, f *otaFleet, name, bin, key string, launch []string, extra string) *otaDevice {
	return installDeviceAt(t, f, f.Addr, name, bin, key, launch, extra)
}

// installDeviceAt is installDevice with the fleet reached at addr.
func installDeviceAt(t *testing.T, f *otaFleet, addr, name, bin, key string, launch []string, extra string) *otaDevice {
	t.Helper()
	root := t.TempDir()
	d := &otaDevice{t: t, name: name, root: root, binPath: filepath.Join(root, "usr/local/bin/edge-agent"),
		config: filepath.Join(root, "etc/edge-agent/config.yaml"), dataDir: filepath.Join(root, "var/lib/edge-agent"), launch: launch}
	for _, p := range []string{filepath.Dir(d.binPath), filepath.Dir(d.config)} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, bin, d.binPath, 0o755)
	cfg := fmt.Sprintf("fleet: %s\ntoken: %q\ndata_dir: %s\nname: %s\nlog_level: debug\nlabels:\n  ota: test\n%s",
		addr, f.token(), d.dataDir, name, extra)
	if key != "" {
		// Else the device pins the keys the fleet gives at join.
		cfg += fmt.Sprintf("release_key: [%q]\n", key)
	}
	if err := os.WriteFile(d.config, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	d.supervise()
	t.Cleanup(d.shutdown)
	return d
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// local moves a unit path into the device's root.
func (d *otaDevice) local(cmd string) []string {
	var out []string
	for _, f := range strings.Fields(cmd) {
		if strings.HasPrefix(f, "/usr/local/bin/") || strings.HasPrefix(f, "/etc/edge-agent/") {
			f = filepath.Join(d.root, f)
		}
		out = append(out, f)
	}
	return out
}

// supervise runs the unit's commands in a loop, as systemd does with
// Restart=always (without RestartSec's 5 s wait).
func (d *otaDevice) supervise() {
	pre, start := unitCommands(d.t)
	ignorePre := strings.HasPrefix(pre, "-")
	preArgs, startArgs := d.local(strings.TrimPrefix(pre, "-")), d.local(start)
	ctx, cancel := context.WithCancel(context.Background())
	d.stop, d.done = cancel, make(chan struct{})
	d.out = &lineBuf{}
	go func() {
		defer close(d.done)
		for ctx.Err() == nil {
			if _, err := os.Stat(preArgs[0]); err == nil {
				cmd := exec.CommandContext(ctx, d.launch[0], append(d.launch[1:], preArgs...)...)
				cmd.Stdout, cmd.Stderr = d.out, d.out
				if err := cmd.Run(); err != nil && !ignorePre {
					fmt.Fprintf(d.out, "supervisor: ExecStartPre failed: %v\n", err)
				}
			}
			d.mu.Lock()
			killAt := d.killAt
			d.killAt = ""
			d.starts++
			d.mu.Unlock()
			cmd := exec.Command(d.launch[0], append(d.launch[1:], startArgs...)...)
			cmd.Env = append(os.Environ(), "EDGE_AGENT_TEST_KILL_AT="+killAt)
			pr, pw, _ := os.Pipe()
			cmd.Stdout, cmd.Stderr = pw, pw
			if err := cmd.Start(); err != nil {
				fmt.Fprintf(d.out, "supervisor: start: %v\n", err)
				pw.Close()
				pr.Close()
				time.Sleep(200 * time.Millisecond)
				continue
			}
			pw.Close()
			d.mu.Lock()
			d.cur = cmd
			d.mu.Unlock()
			go func() {
				sc := bufio.NewScanner(pr)
				sc.Buffer(make([]byte, 64<<10), 1<<20)
				for sc.Scan() {
					fmt.Fprintln(d.out, sc.Text())
				}
			}()
			stopped := context.AfterFunc(ctx, func() { cmd.Process.Signal(os.Interrupt) })
			err := cmd.Wait()
			stopped()
			fmt.Fprintf(d.out, "supervisor: the agent exited: %v\n", err)
			if ctx.Err() == nil {
				time.Sleep(200 * time.Millisecond)
			}
		}
	}()
}

func (d *otaDevice) shutdown() {
	d.stop()
	<-d.done
	if d.t.Failed() {
		d.t.Logf("--- %s:\n%s", d.name, d.out.Output())
	}
}

func binSum(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		return "missing"
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// device returns the fleet's view of the named device.
func (f *otaFleet) device(name string) api.Device {
	for _, d := range f.devices() {
		if d.Name == name {
			return d
		}
	}
	return api.Device{}
}

// waitUpdate waits until the device reports update state state for
// version (and, when running is set, runs it and is online).
func (f *otaFleet) waitUpdate(d *otaDevice, version, state, running string, timeout time.Duration) api.Device {
	f.t.Helper()
	var last api.Device
	ok := harness.Eventually(timeout, func() bool {
		last = f.device(d.name)
		u := last.Update
		if u == nil || u.State != state || (version != "" && u.Target != version) {
			return false
		}
		return running == "" || (last.Online && last.AgentVersion == running)
	})
	if !ok {
		f.t.Fatalf("%s: want update %s %s running %q; the fleet shows version %q online %v update %+v\n%s",
			d.name, version, state, running, last.AgentVersion, last.Online, last.Update, d.out.Output())
	}
	return last
}

// rollout creates a one-stage rollout for the device's label and returns
// its ID.
func (f *otaFleet) rollout(version string, extra ...string) string {
	f.t.Helper()
	out := f.ctl("", append([]string{"rollouts", "create", "--release", version, "--selector", "ota=test", "--stages", "100%", "--soak", "0s"}, extra...)...)
	m := regexp.MustCompile(`Rollout (r-[0-9a-f]+)`).FindStringSubmatch(out)
	if m == nil {
		f.t.Fatalf("rollouts create printed no ID: %s", out)
	}
	return m[1]
}

func (f *otaFleet) rolloutStatus(id string) api.Rollout {
	f.t.Helper()
	var ro api.Rollout
	if err := json.Unmarshal([]byte(f.ctl("", "rollouts", "status", id, "--format=json")), &ro); err != nil {
		f.t.Fatal(err)
	}
	return ro
}

// endRollout aborts a rollout that is still active, so the device may
// join the next.
func (f *otaFleet) endRollout(id string) {
	f.t.Helper()
	if st := f.rolloutStatus(id).State; st == api.RolloutRunning || st == api.RolloutHalted || st == api.RolloutPaused {
		f.ctl("", "rollouts", "abort", id)
	}
}

// otaFleet is a fleetd with the OTA helpers of these tests.
type otaFleet struct {
	*harness.Fleet
	t *testing.T
}

func (f *otaFleet) ctl(stdin string, args ...string) string { return f.Ctl(stdin, args...) }
func (f *otaFleet) ctlErr(stdin string, args ...string) (string, string, error) {
	return f.CtlErr(stdin, args...)
}
func (f *otaFleet) token(args ...string) string            { return f.Token(args...) }
func (f *otaFleet) devices() []api.Device                  { return f.Devices() }
func (f *otaFleet) online(name string) bool                { return f.Online(name) }
func (f *otaFleet) waitOnline(name string)                 { f.WaitOnline(name) }
func (f *otaFleet) search(args ...string) []api.AuditEvent { return search(f.t, f.Fleet, args...) }

// startOTAFleet starts fleetd trusting the release keys.
func startOTAFleet(t *testing.T, keys ...string) *otaFleet {
	t.Helper()
	return &otaFleet{Fleet: startFleetArgs(t, nil, "--release-key", strings.Join(keys, ",")), t: t}
}

// TestOTAUpdates updates one device through a real fleetd: refusals leave
// the binary untouched; a good release commits (by delta); a release that
// crashes at start and one that never connects roll back by themselves;
// every step is in the fleet's audit store.
func TestOTAUpdates(t *testing.T) {
	ctl := &fleetCtl{t}
	key, pub := releaseKey(t, ctl, "release")
	otherKey, otherPub := releaseKey(t, ctl, "other")
	root := t.TempDir()
	v100 := makeRelease(t, root, "v1.0.0", "env", key)
	v110 := makeRelease(t, root, "v1.1.0", "env", key)
	v120 := makeRelease(t, root, "v1.2.0", "crash-at-start", key)
	v130 := makeRelease(t, root, "v1.3.0", "no-connect", key)
	// The release key is rotated to a new one, signed by the old; v1.4.0
	// is signed by the new key only.
	newKey, _ := releaseKey(t, ctl, "rotated")
	v140 := makeRelease(t, root, "v1.4.0", "env", newKey)
	old := makeRelease(t, root, "v0.9.0", "env", key)
	unknown := makeRelease(t, root, "v1.5.0", "env", otherKey)

	// The fleet trusts both keys; the device pins only the first.
	f := startOTAFleet(t, pub, otherPub)
	for _, r := range []otaRelease{v100, v110, v120, v130, old, unknown} {
		f.ctl("", "releases", "add", "--version", r.version, r.dir)
	}
	// A release whose artefact signature is wrong never gets in.
	bad := makeRelease(t, root, "v1.6.0", "env", key)
	sig := filepath.Join(bad.dir, "edge-agent-"+agentTarget()+".minisig")
	copyFile(t, filepath.Join(v110.dir, "edge-agent-"+agentTarget()+".minisig"), sig, 0o644)
	if _, errOut, err := f.ctlErr("", "releases", "add", bad.dir); err == nil || !strings.Contains(errOut, "signature") {
		t.Errorf("releases add with a bad artefact signature: err %v, stderr %q; want a refusal about the signature", err, errOut)
	}
	// Wait for the delta v1.0.0 → v1.1.0.
	if !harness.Eventually(2*time.Minute, func() bool {
		return strings.Contains(f.ctl("", "releases", "ls"), "from v1.0.0: ")
	}) {
		t.Fatalf("no delta prepared:\n%s", f.ctl("", "releases", "ls"))
	}

	dev := installDevice(t, f, "ota-1", v100.bin, pub, []string{"env"}, "")
	f.waitOnline(dev.name)
	v100sum := binSum(t, dev.binPath)

	untouched := func(t *testing.T) {
		t.Helper()
		if got := binSum(t, dev.binPath); got != v100sum {
			t.Errorf("the agent binary changed: %s, want %s", got, v100sum)
		}
		for _, p := range []string{".edge-agent.new", ".edge-agent.prev"} {
			if _, err := os.Stat(filepath.Join(filepath.Dir(dev.binPath), p)); err == nil {
				t.Errorf("%s was written", p)
			}
		}
	}
	refusals := []struct {
		name    string
		version string
		prepare func()
		want    string
	}{
		{"downgrade", old.version, nil, "downgrades are refused"},
		{"unknown key", unknown.version, nil, "does not trust"},
		{"corrupted delta", v110.version, func() {
			// Damage the delta on the fleet's disk: the agent's hash check
			// must catch it before anything is written.
			for _, d := range releaseOf(t, f, v110.version).Deltas {
				if d.SHA256 != "" {
					p := filepath.Join(f.DataDir, "releases", "blobs", d.SHA256)
					b, _ := os.ReadFile(p)
					b[len(b)/2] ^= 0xff
					os.WriteFile(p, b, 0o600)
				}
			}
		}, "corrupted"},
	}
	for _, tt := range refusals {
		t.Run("refused/"+tt.name, func(t *testing.T) {
			if tt.prepare != nil {
				tt.prepare()
			}
			id := f.rollout(tt.version)
			got := f.waitUpdate(dev, tt.version, "refused", "", 3*time.Minute)
			if !strings.Contains(got.Update.Reason, tt.want) {
				t.Errorf("reason %q, want it to say %q", got.Update.Reason, tt.want)
			}
			untouched(t)
			f.endRollout(id)
		})
	}
	// Repair the delta for what follows.
	for _, d := range releaseOf(t, f, v110.version).Deltas {
		if d.SHA256 != "" {
			p := filepath.Join(f.DataDir, "releases", "blobs", d.SHA256)
			b, _ := os.ReadFile(p)
			b[len(b)/2] ^= 0xff
			os.WriteFile(p, b, 0o600)
		}
	}

	t.Run("good release commits", func(t *testing.T) {
		id := f.rollout(v110.version)
		f.waitUpdate(dev, v110.version, "committed", v110.version, 3*time.Minute)
		if got, want := binSum(t, dev.binPath), binSum(t, v110.bin); got != want {
			t.Errorf("binary %s, want v1.1.0's %s", got, want)
		}
		if got := binSum(t, filepath.Join(filepath.Dir(dev.binPath), ".edge-agent.prev")); got != v100sum {
			t.Errorf("the old binary was not kept: %s", got)
		}
		if ro := f.rolloutStatus(id); ro.State != api.RolloutDone || ro.Committed != 1 {
			t.Errorf("rollout %+v, want done with 1 committed", ro)
		}
		// tsh ls -v and fleetctl devices ls -v show running and target
		// versions and the update state.
		out := f.ctl("", "devices", "ls", "-v")
		if !regexp.MustCompile(`ota-1 .* v1\.1\.0\s+v1\.1\.0\s+committed`).MatchString(out) {
			t.Errorf("devices ls -v does not show the update:\n%s", out)
		}
		evs := types(f.search("--device", dev.name))
		for _, typ := range []string{"update.offered", "update.downloaded", "update.applied", "update.committed", "update.refused"} {
			if evs[typ] == 0 {
				t.Errorf("no %s audit event in the fleet's store: %v", typ, evs)
			}
		}
		dl := f.search("--device", dev.name, "--type", "update.downloaded")
		if len(dl) == 0 || dl[len(dl)-1].Fields["delta"] != "true" {
			t.Errorf("the update was not downloaded as a delta: %+v", dl)
		}
	})

	for _, tt := range []struct {
		name    string
		rel     otaRelease
		extra   []string
		reasonW string
	}{
		{"crashing release rolls back", v120, nil, "stopped before it was healthy"},
		{"release that never connects rolls back", v130, []string{"--health-timeout", "20s"}, "not healthy"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			id := f.rollout(tt.rel.version, tt.extra...)
			got := f.waitUpdate(dev, tt.rel.version, "rolled_back", v110.version, 4*time.Minute)
			if !strings.Contains(got.Update.Reason, tt.reasonW) {
				t.Errorf("reason %q, want it to say %q", got.Update.Reason, tt.reasonW)
			}
			if got, want := binSum(t, dev.binPath), binSum(t, v110.bin); got != want {
				t.Errorf("binary after the rollback %s, want v1.1.0's %s", got, want)
			}
			ro := f.rolloutStatus(id)
			if ro.State != api.RolloutHalted || !strings.Contains(ro.Reason, "1 of 1 devices failed") {
				t.Errorf("rollout %s %q, want halted saying why", ro.State, ro.Reason)
			}
			if evs := types(f.search("--device", dev.name, "--type", "update.rolled_back")); evs["update.rolled_back"] == 0 {
				t.Error("no update.rolled_back audit event")
			}
			f.endRollout(id)
		})
	}

	t.Run("release signed by a rotated key commits", func(t *testing.T) {
		// Before the rotation the fleet refuses the release.
		if _, errOut, err := f.ctlErr("", "releases", "add", v140.dir); err == nil || !strings.Contains(errOut, "not trust") {
			t.Fatalf("a release by an unrotated key was added: %v %s", err, errOut)
		}
		f.ctl("", "releases", "rotate-key", "--key", key+".key", newKey+".pub")
		f.ctl("", "releases", "add", v140.dir)
		f.rollout(v140.version)
		f.waitUpdate(dev, v140.version, "committed", v140.version, 3*time.Minute)
		if evs := types(f.search("--device", dev.name, "--type", "update.key_rotated")); evs["update.key_rotated"] == 0 {
			t.Error("the device did not audit the key rotation")
		}
	})
}

func releaseOf(t *testing.T, f *otaFleet, version string) api.Release {
	t.Helper()
	var rels api.List[api.Release]
	if err := json.Unmarshal([]byte(f.ctl("", "releases", "ls", "--format=json")), &rels); err != nil || rels.Kind != "releases" {
		t.Fatalf("releases ls --format=json: kind %q, %v", rels.Kind, err)
	}
	for _, r := range rels.Items {
		if r.Version == version {
			return r
		}
	}
	t.Fatalf("no release %s", version)
	return api.Release{}
}

// TestOTAKilledDuringApply kills the agent (SIGKILL, as a power cut) at
// every step of an apply, between each rename: each time the device starts
// again on the old or the new binary, and ends on the new one.
func TestOTAKilledDuringApply(t *testing.T) {
	ctl := &fleetCtl{t}
	key, pub := releaseKey(t, ctl, "release")
	root := t.TempDir()
	steps := []string{"prepared", "state-applying", "between-renames", "renamed", "state-trial"}
	rels := []otaRelease{makeRelease(t, root, "v2.0.0", "env", key)}
	for i := range steps {
		rels = append(rels, makeRelease(t, root, fmt.Sprintf("v2.%d.0", i+1), "env", key))
	}
	f := startOTAFleet(t, pub)
	for _, r := range rels {
		f.ctl("", "releases", "add", r.dir)
	}
	// The device's config names no release key: it pins the fleet's at
	// join.
	dev := installDevice(t, f, "ota-kill", rels[0].bin, "", []string{"env"}, "")
	f.waitOnline(dev.name)
	cur := rels[0]
	for i, step := range steps {
		from, to := cur, rels[i+1]
		t.Run(step, func(t *testing.T) {
			dev.mu.Lock()
			dev.killAt = step
			starts := dev.starts
			dev.mu.Unlock()
			// The kill applies from the next start: restart the agent.
			restartAgent(t, dev, starts)
			f.waitOnline(dev.name)
			id := f.rollout(to.version)
			defer f.endRollout(id)
			if !harness.Eventually(3*time.Minute, func() bool { return strings.Contains(dev.out.Output(), "signal: killed") }) {
				t.Fatalf("the agent was not killed at %s", step)
			}
			// After the kill the device starts on the old or the new
			// binary, never on neither, and says how its update ended.
			var got api.Device
			if !harness.Eventually(3*time.Minute, func() bool {
				got = f.device(dev.name)
				return got.Online && got.Update != nil && got.Update.Target == to.version &&
					(got.Update.State == "committed" || got.Update.State == "failed" || got.Update.State == "rolled_back") &&
					(got.AgentVersion == from.version || got.AgentVersion == to.version)
			}) {
				t.Fatalf("after a kill at %s: %+v\n%s", step, got, dev.out.Output())
			}
			want := map[string]string{from.version: binSum(t, from.bin), to.version: binSum(t, to.bin)}[got.AgentVersion]
			if binSum(t, dev.binPath) != want {
				t.Errorf("running %s but the binary in place is another", got.AgentVersion)
			}
			t.Logf("killed at %s: the device runs %s (update %s %s)", step, got.AgentVersion, got.Update.State, got.Update.Reason)
			if got.AgentVersion == to.version {
				cur = to
			}
			dev.resetOutput()
		})
	}
}

// restartAgent makes the supervisor start the agent again (it exits on
// SIGINT and the supervisor starts it) and waits for the new start.
func restartAgent(t *testing.T, d *otaDevice, starts int) {
	t.Helper()
	d.mu.Lock()
	if d.cur != nil {
		d.cur.Process.Signal(os.Interrupt)
	}
	d.mu.Unlock()
	if !harness.Eventually(time.Minute, func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return d.starts > starts
	}) {
		t.Fatal("the agent was not started again")
	}
}

// kill kills the running agent (SIGKILL); the supervisor starts it again.
func (d *otaDevice) kill() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cur != nil {
		d.cur.Process.Kill()
	}
}

func (d *otaDevice) resetOutput() { d.out.Reset() }

// lineBuf keeps what the supervisor and the agents it runs print.
type lineBuf struct {
	mu  sync.Mutex // guards buf
	buf bytes.Buffer
}

func (b *lineBuf) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Output returns everything written so far.
func (b *lineBuf) Output() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Reset forgets what was written.
func (b *lineBuf) Reset() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Reset()
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
