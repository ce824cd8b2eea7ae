package e2e

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/tools/harness"
	"remoteler.dev/edge/tools/kube/kubetest"
)

// echoShell is a shell on pi-1 that echoes what it is sent, through one
// of the fleet's clients.
type echoShell struct {
	p *harness.Proc
	w *io.PipeWriter
}

// startEchoShell starts path args... (ssh or tsh, with env) running "echo
// started; exec cat" on pi-1, and has it echo a line before the kill.
func startEchoShell(t *testing.T, name, path string, env []string, args ...string) *echoShell {
	t.Helper()
	in, w := io.Pipe()
	t.Cleanup(func() { w.Close() })
	p := harness.Start(t, harness.Cmd{Name: name, Path: bin.Path(path), Stdin: in, Env: env, Args: args})
	p.WaitLine(regexp.MustCompile(`^started$`), time.Minute)
	fmt.Fprintln(w, "before the kill")
	p.WaitLine(regexp.MustCompile(`^before the kill$`), 30*time.Second)
	return &echoShell{p: p, w: w}
}

// goesOn checks the shell echoes a line after the kill, echoed the line
// before it once, and exits cleanly when its input ends.
func (e *echoShell) goesOn(t *testing.T) {
	t.Helper()
	fmt.Fprintln(e.w, "after the kill")
	e.p.WaitLine(regexp.MustCompile(`^after the kill$`), time.Minute)
	if got := strings.Count(e.p.Output(), "before the kill"); got != 1 {
		t.Errorf("%s echoed the line before the kill %d times, want once", e.p.Name(), got)
	}
	e.w.Close()
	if err := e.p.Wait(time.Minute); err != nil {
		t.Errorf("%s ended with %v, want a clean exit once its input ended\n%s", e.p.Name(), err, e.p.Tail(10))
	}
}

// copies are an OpenSSH scp upload and a download of 48 MiB each, to and
// from pi-1, limited to copyRate.
type copies struct {
	up, down, upSrc, remoteSrc string
	upSum, srcSum              [32]byte
	scpUp, scpDown             *harness.Proc
}

const copySize = 48 << 20

// startCopies starts the copies with OpenSSH config cfg and waits until
// both are under way.
func startCopies(t *testing.T, cfg string) *copies {
	t.Helper()
	dir := t.TempDir()
	c := &copies{up: filepath.Join(dir, "uploaded"), down: filepath.Join(dir, "downloaded"), remoteSrc: filepath.Join(dir, "on-the-device")}
	var src string
	src, c.srcSum = randomFile(t, dir, copySize)
	if err := os.Rename(src, c.remoteSrc); err != nil {
		t.Fatal(err)
	}
	c.upSrc, c.upSum = randomFile(t, t.TempDir(), copySize)
	c.scpUp = start(t, "scp up", nil, "scp", "-F", cfg, "-o", "BatchMode=yes", "-q", "-l", copyRate, c.upSrc, "root@pi-1.fleet:"+c.up)
	c.scpDown = start(t, "scp down", nil, "scp", "-F", cfg, "-o", "BatchMode=yes", "-q", "-l", copyRate, "root@pi-1.fleet:"+c.remoteSrc, c.down)
	if !harness.Eventually(time.Minute, func() bool { return sizeOf(c.up) >= 4<<20 && sizeOf(c.down) >= 4<<20 }) {
		t.Fatalf("the copies did not get going: %d and %d bytes", sizeOf(c.up), sizeOf(c.down))
	}
	return c
}

// sizeOf is the size of the file at path, 0 if there is none.
func sizeOf(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// killed notes that replica who was just killed, checks both copies were
// still under way, and returns when.
func (c *copies) killed(t *testing.T, who string) time.Time {
	t.Helper()
	upAt, downAt := sizeOf(c.up), sizeOf(c.down)
	at := time.Now()
	t.Logf("replica %s killed with %d of %d bytes uploaded and %d downloaded", who, upAt, copySize, downAt)
	if upAt >= copySize || downAt >= copySize || c.scpUp.Exited() || c.scpDown.Exited() {
		t.Fatalf("a copy was done before %s died (up %d, down %d of %d bytes): nothing was tested", who, upAt, downAt, copySize)
	}
	return at
}

// check waits for both copies and checks what arrived.
func (c *copies) check(t *testing.T, who string, killed time.Time) {
	t.Helper()
	for _, p := range []*harness.Proc{c.scpUp, c.scpDown} {
		if err := p.Wait(3 * time.Minute); err != nil {
			t.Fatalf("%s across %s's death: %v\n%s", p.Name(), who, err, p.Tail(10))
		}
		t.Logf("%s done %v after %s was killed", p.Name(), time.Since(killed).Round(time.Millisecond), who)
	}
	if fileSum(t, c.up) != c.upSum {
		t.Errorf("the upload that %s's death interrupted arrived with another checksum", who)
	}
	if fileSum(t, c.down) != c.srcSum {
		t.Errorf("the download that %s's death interrupted arrived with another checksum", who)
	}
}

// copyRate is the bandwidth limit of the copies that replica A's death
// interrupts (scp -l, Kbit/s): 8 MB/s, so that 48 MiB take about 6 s and
// A dies in the middle of both, on a fast machine too.
const copyRate = "64000"

// TestSessionsOutliveTheirReplica: pi-1's tunnel is on replica A, alice
// on replica C. In the middle of an OpenSSH scp upload and a download
// through C, with an OpenSSH shell, a tsh ssh shell and a kubectl exec
// open through C too, A is killed (kill -9). The device moves to B. tsh
// holds its sessions' resume state (and OpenSSH's, through tsh proxy
// ssh): it resumes them through C, which re-attaches them on the device
// through B; C holds the kubectl exec's, and B relays the agent's resume
// of it to C. Both copies complete with the right checksums, the shells
// and the exec go on where they were.
func TestSessionsOutliveTheirReplica(t *testing.T) {
	linkKubectl(t, &kubetest.Cluster{Kubectl: filepath.Join(kubetest.Binaries(t), "kubectl")})
	lf := startLockFleetWith(t, lockOptions{
		device:    harness.AgentConfig{Labels: "k3s=yes", Kubeconfig: kubeconfigFor(t, newExecServer(t))},
		resources: lockRoles,
		roles:     "lock-ops",
	})
	cfgC := lf.ssh[repC]
	// An OpenSSH shell and a tsh ssh shell through C that echo what they
	// are sent.
	shell := startEchoShell(t, "ssh shell via C", "ssh", nil, "-F", cfgC, "-o", "BatchMode=yes", "root@pi-1.fleet", "echo started; exec cat")
	tshShell := startEchoShell(t, "tsh ssh via C", "tsh", lf.users[repC].Env(), "ssh", "root@pi-1", "echo started; exec cat")

	// A kubectl exec through C.
	kx := startKubeExec(t, lf.users[repC], lf.kubeLogin(t, repC))

	cp := startCopies(t, cfgC)
	cMark := lf.reps[repC].Proc.Mark()
	lf.reps[repA].Kill()
	killed := cp.killed(t, "A")

	if !harness.Eventually(time.Minute, func() bool { return replicaOf(lf.reps[repC], "pi-1") == "r-b" }) {
		t.Fatalf("pi-1 not on replica B within a minute of A's death: on %q", replicaOf(lf.reps[repC], "pi-1"))
	}
	t.Logf("pi-1 on replica B %v after A was killed", time.Since(killed).Round(time.Millisecond))
	// C held the exec's session, and took it back through B.
	if l, _, err := lf.reps[repC].Proc.AwaitLine(t.Context(), cMark, regexp.MustCompile(`msg="session resumed".*device_id=`), time.Minute); err != nil {
		t.Errorf("replica C logged no resumed session: %v", err)
	} else {
		t.Logf("replica C resumed a session %v after A was killed", l.At.Sub(killed).Round(time.Millisecond))
	}
	cp.check(t, "A", killed)

	shell.goesOn(t)
	tshShell.goesOn(t)

	// The pod's shell echoes a line, then prompts (kubectl's terminal is
	// raw: nothing is echoed locally).
	io.WriteString(kx.in, "echo typed-after-the-kill\r")
	if !harness.Eventually(30*time.Second, func() bool { return strings.Contains(kx.out.String(), "typed-after-the-kill\r\npod$ ") }) {
		t.Errorf("the kubectl exec through C did not go on after A died: %q", kx.out.String())
	}
}

// TestRelayedSessionEndsWhenTheAgentRestarts: pi-1's tunnel on replica A,
// alice's tsh ssh through C, tsh holding the session. The agent dies
// (kill -9) and comes back, on A again: tsh's resume through C finds that
// the new agent does not hold the session, and the session ends at once
// with the reason (C records the refusal), rather than being tried for
// the ten minutes an outage may last.
func TestRelayedSessionEndsWhenTheAgentRestarts(t *testing.T) {
	lf := startLockFleet(t)
	ssh := start(t, "tsh ssh via C", lf.users[repC].Env(), "tsh", "ssh", "root@pi-1", "echo started; exec sleep 600")
	ssh.WaitLine(regexp.MustCompile(`^started$`), time.Minute)
	cMark := lf.reps[repC].Proc.Mark()
	killed := time.Now()
	lf.agent.Proc.Kill()
	lf.agent.Restart()
	select {
	case <-ssh.Done():
		t.Logf("tsh ssh ended %v after the agent was killed and started again", ssh.ExitedAt().Sub(killed).Round(time.Millisecond))
	case <-time.After(time.Minute):
		t.Fatal("tsh ssh through C still runs a minute after the agent restarted")
	}
	want := "the device's agent restarted, so the session could not be resumed"
	if !strings.Contains(ssh.Output(), want) {
		t.Errorf("tsh said %q, want %q", ssh.Output(), want)
	}
	if got := replicaOf(lf.reps[repC], "pi-1"); got != "r-a" {
		t.Errorf("pi-1 on %q after its restart, want r-a", got)
	}
	// C refused the resume, and recorded why.
	if _, _, err := lf.reps[repC].Proc.AwaitLine(t.Context(), cMark, regexp.MustCompile(`msg="access denied".*agent restarted, so the session could not be resumed.*action=resume.*resumed_session=`), 10*time.Second); err != nil {
		t.Errorf("replica C recorded no refused resume: %v", err)
	}
}
