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

// copyRate is the bandwidth limit of the copies that replica A's death
// interrupts (scp -l, Kbit/s): 8 MB/s, so that 48 MiB take about 6 s and
// A dies in the middle of both, on a fast machine too.
const copyRate = "64000"

// TestSessionsOutliveTheirReplica: pi-1's tunnel is on replica A, alice
// on replica C. In the middle of an OpenSSH scp upload and a download
// through C, with an OpenSSH shell, a tsh ssh shell and a kubectl exec
// open through C too, A is killed (kill -9). The device moves to B, B relays the agent's
// resumes to C, which holds the sessions: both copies complete with the
// right checksums, the shells and the exec go on where they were.
func TestSessionsOutliveTheirReplica(t *testing.T) {
	linkKubectl(t, &kubetest.Cluster{Kubectl: filepath.Join(kubetest.Binaries(t), "kubectl")})
	lf := startLockFleetWith(t, lockOptions{
		device:    harness.AgentConfig{Labels: "k3s=yes", Kubeconfig: kubeconfigFor(t, newExecServer(t))},
		resources: lockRoles,
		roles:     "lock-ops",
	})
	cfgC := lf.ssh[repC]
	dir := t.TempDir()
	const size = 48 << 20
	src, srcSum := randomFile(t, dir, size)
	remoteSrc := filepath.Join(dir, "on-the-device")
	if err := os.Rename(src, remoteSrc); err != nil {
		t.Fatal(err)
	}
	up, down := filepath.Join(dir, "uploaded"), filepath.Join(dir, "downloaded")
	upSrc, upSum := randomFile(t, t.TempDir(), size)

	// An OpenSSH shell through C that echoes what it is sent.
	shellIn, shellW := io.Pipe()
	t.Cleanup(func() { shellW.Close() })
	shell := harness.Start(t, harness.Cmd{Name: "ssh shell via C", Path: bin.Path("ssh"), Stdin: shellIn,
		Args: []string{"-F", cfgC, "-o", "BatchMode=yes", "root@pi-1.fleet", "echo started; exec cat"}})
	shell.WaitLine(regexp.MustCompile(`^started$`), time.Minute)
	fmt.Fprintln(shellW, "before the kill")
	shell.WaitLine(regexp.MustCompile(`^before the kill$`), 30*time.Second)

	// A tsh ssh shell through C, the same.
	tshIn, tshW := io.Pipe()
	t.Cleanup(func() { tshW.Close() })
	tshShell := harness.Start(t, harness.Cmd{Name: "tsh ssh via C", Path: bin.Path("tsh"), Stdin: tshIn, Env: lf.users[repC].Env(),
		Args: []string{"ssh", "root@pi-1", "echo started; exec cat"}})
	tshShell.WaitLine(regexp.MustCompile(`^started$`), time.Minute)

	// A kubectl exec through C.
	kx := startKubeExec(t, lf.users[repC], lf.kubeLogin(t, repC))

	scpUp := start(t, "scp up via C", nil, "scp", "-F", cfgC, "-o", "BatchMode=yes", "-q", "-l", copyRate, upSrc, "root@pi-1.fleet:"+up)
	scpDown := start(t, "scp down via C", nil, "scp", "-F", cfgC, "-o", "BatchMode=yes", "-q", "-l", copyRate, "root@pi-1.fleet:"+remoteSrc, down)
	sizeOf := func(path string) int64 {
		st, err := os.Stat(path)
		if err != nil {
			return 0
		}
		return st.Size()
	}
	if !harness.Eventually(time.Minute, func() bool { return sizeOf(up) >= 4<<20 && sizeOf(down) >= 4<<20 }) {
		t.Fatalf("the copies did not get going: %d and %d bytes", sizeOf(up), sizeOf(down))
	}
	cMark := lf.reps[repC].Proc.Mark()
	lf.reps[repA].Kill()
	upAt, downAt := sizeOf(up), sizeOf(down)
	killed := time.Now()
	t.Logf("replica A killed with %d of %d bytes uploaded and %d downloaded", upAt, size, downAt)
	if upAt >= size || downAt >= size || scpUp.Exited() || scpDown.Exited() {
		t.Fatalf("a copy was done before A died (up %d, down %d of %d bytes): nothing was tested", upAt, downAt, size)
	}

	if !harness.Eventually(time.Minute, func() bool { return replicaOf(lf.reps[repC], "pi-1") == "r-b" }) {
		t.Fatalf("pi-1 not on replica B within a minute of A's death: on %q", replicaOf(lf.reps[repC], "pi-1"))
	}
	t.Logf("pi-1 on replica B %v after A was killed", time.Since(killed).Round(time.Millisecond))
	// C held the sessions, and took them back through B.
	if l, _, err := lf.reps[repC].Proc.AwaitLine(t.Context(), cMark, regexp.MustCompile(`session resumed.*device_id=`), time.Minute); err != nil {
		t.Errorf("replica C logged no resumed session: %v", err)
	} else {
		t.Logf("replica C resumed a session %v after A was killed", l.At.Sub(killed).Round(time.Millisecond))
	}
	for _, p := range []*harness.Proc{scpUp, scpDown} {
		if err := p.Wait(3 * time.Minute); err != nil {
			t.Fatalf("%s across A's death: %v\n%s", p.Name(), err, p.Tail(10))
		}
		t.Logf("%s done %v after A was killed", p.Name(), time.Since(killed).Round(time.Millisecond))
	}
	if fileSum(t, up) != upSum {
		t.Error("the upload that A's death interrupted arrived with another checksum")
	}
	if fileSum(t, down) != srcSum {
		t.Error("the download that A's death interrupted arrived with another checksum")
	}

	fmt.Fprintln(shellW, "after the kill")
	shell.WaitLine(regexp.MustCompile(`^after the kill$`), 30*time.Second)
	if got := strings.Count(shell.Output(), "before the kill"); got != 1 {
		t.Errorf("the shell echoed the line before the kill %d times, want once", got)
	}
	shellW.Close()
	if err := shell.Wait(time.Minute); err != nil {
		t.Errorf("the OpenSSH shell through C ended with %v, want a clean exit once its input ended\n%s", err, shell.Tail(10))
	}
	fmt.Fprintln(tshW, "typed into tsh after the kill")
	tshShell.WaitLine(regexp.MustCompile(`^typed into tsh after the kill$`), 30*time.Second)
	tshW.Close()
	if err := tshShell.Wait(time.Minute); err != nil {
		t.Errorf("tsh ssh through C ended with %v, want a clean exit once its input ended\n%s", err, tshShell.Tail(10))
	}

	// The pod's shell echoes a line, then prompts (kubectl's terminal is
	// raw: nothing is echoed locally).
	io.WriteString(kx.in, "echo typed-after-the-kill\r")
	if !harness.Eventually(30*time.Second, func() bool { return strings.Contains(kx.out.String(), "typed-after-the-kill\r\npod$ ") }) {
		t.Errorf("the kubectl exec through C did not go on after A died: %q", kx.out.String())
	}
}

// TestRelayedSessionEndsWhenTheAgentRestarts: pi-1's tunnel on replica A,
// alice's tsh ssh through C, which holds the session. The agent dies
// (kill -9) and comes back, on A again: the new agent cannot resume the
// session, and C, told by the presence entry that names the new agent
// boot, ends it at once with the reason, rather than holding it for the
// ten minutes an outage may last.
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
	// C, which held the session, ended it when it heard of the new boot.
	if _, _, err := lf.reps[repC].Proc.AwaitLine(t.Context(), cMark, regexp.MustCompile(`agent restarted on another replica; dropped its held sessions.*sessions=1`), 10*time.Second); err != nil {
		t.Errorf("replica C did not drop the session for the new boot: %v", err)
	}
}
