package e2e

import (
	"io"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/harness"
	"remoteler.dev/edge/tools/kube/kubetest"
)

// TestSessionsOutliveTheUsersReplica: pi-1's tunnel is on replica A;
// alice reaches the fleet through the balancer, which sends users to C.
// In the middle of an OpenSSH scp upload and a download (tsh proxy ssh),
// with a tsh ssh shell open, C, which carries all three, is killed (kill
// -9). tsh holds each session's resume state (user-held sessions), so it
// connects again, the balancer sends it to B, and B re-attaches the
// sessions on the device: both copies complete with the right checksums,
// and the shell goes on where it was, each line echoed once.
func TestSessionsOutliveTheUsersReplica(t *testing.T) {
	rf := startReplicas(t)
	rf.device(t, "pi-1")
	alice := rf.login(t, "alice")
	cfg := openSSHConfig(t, alice)
	if got := replicaOf(rf.reps[repB], "pi-1"); got != "r-a" {
		t.Fatalf("pi-1 on %q, want r-a", got)
	}
	shell := startEchoShell(t, "tsh ssh", "tsh", alice.Env(), "ssh", "root@pi-1", "echo started; exec cat")
	cp := startCopies(t, cfg)
	// C carries the three sessions: its death is the users' replica's.
	if n := strings.Count(rf.reps[repC].Proc.Output(), `msg="session started"`); n < 3 {
		t.Fatalf("replica C started %d sessions, want the 3 through it\n%s", n, rf.reps[repC].Proc.Tail(20))
	}
	bMark := rf.reps[repB].Proc.Mark()
	rf.reps[repC].Kill()
	killed := cp.killed(t, "C")
	// B took the sessions back: each resumed connection is a session
	// start of its own in the audit trail, marked resumed.
	if l, _, err := rf.reps[repB].Proc.AwaitLine(t.Context(), bMark, regexp.MustCompile(`session started.*resumed=true`), 10*time.Second); err != nil {
		t.Errorf("replica B recorded no resumed session: %v", err)
	} else {
		t.Logf("replica B resumed a session %v after C was killed", l.At.Sub(killed).Round(time.Millisecond))
	}
	cp.check(t, "C", killed)
	// In the audit trail, not only on B's log: a session.start of alice's,
	// marked user-held and resumed.
	resumed := false
	for _, e := range auditSearch(t, rf.reps[repB], "--type=session.start", "--user=alice").Events {
		if e.Fields["user_held"] == "true" && e.Fields["resumed"] == "true" {
			resumed = true
		}
	}
	if !resumed {
		t.Error("no session.start in the audit trail marked user_held=true resumed=true")
	}
	shell.goesOn(t)
	if !strings.Contains(shell.p.Output(), "session resumed") {
		t.Errorf("tsh did not say it resumed the session:\n%s", shell.p.Tail(10))
	}
}

// TestLockWhileTheUserIsAway: alice's tsh ssh through C holds its
// session; C is killed, and while tsh cannot reach any replica (it was
// logged in through C alone), alice is locked through A. When C is back,
// tsh's resume is refused with the lock's message, the refusal is
// recorded, and the device has ended its side of the session, rather
// than holding it, and its command running, for the ten minutes of its
// hold time.
func TestLockWhileTheUserIsAway(t *testing.T) {
	lf := startLockFleet(t)
	ssh := start(t, "tsh ssh via C", lf.users[repC].Env(), "tsh", "ssh", "root@pi-1", "echo started; exec sleep 600")
	ssh.WaitLine(regexp.MustCompile(`^started$`), time.Minute)
	lf.reps[repC].Kill()
	ssh.WaitLine(regexp.MustCompile(`resuming the session`), 30*time.Second)
	const msg = "laptop reported stolen"
	agentMark := lf.agent.Proc.Mark()
	lf.lock(t, repA, "--user=alice", "--message="+msg)
	lf.reps[repC].Start()
	select {
	case <-ssh.Done():
	case <-time.After(time.Minute):
		t.Fatalf("tsh ssh still runs a minute after C came back under the lock:\n%s", ssh.Tail(10))
	}
	if !strings.Contains(ssh.Output(), "the session to pi-1 ended: ") || !strings.Contains(ssh.Output(), msg) {
		t.Errorf("tsh said %q, want the session ended with the lock's message %q", ssh.Output(), msg)
	}
	// The refusal is in the audit trail, naming the session.
	refused := false
	for _, e := range auditSearch(t, lf.reps[repA], "--type=access.denied", "--user=alice").Events {
		if e.Fields["action"] == "resume" && e.Fields["resumed_session"] != "" && strings.Contains(e.Message, msg) {
			refused = true
		}
	}
	if !refused {
		t.Error("no access.denied event for the refused resume, with action=resume, the session and the lock's message")
	}
	// The device ended the session's command: at the lock's write, since
	// A knew the device held it for alice (TestLockReachesASessionWhoseUserIsGone),
	// or at the refused resume, had the lock come first.
	if _, _, err := lf.agent.Proc.AwaitLine(t.Context(), agentMark, regexp.MustCompile(`the fleet ended a session.*`+msg), 30*time.Second); err != nil {
		t.Errorf("the device did not end the session: %v", err)
	}
	if _, _, err := lf.agent.Proc.AwaitLine(t.Context(), agentMark, regexp.MustCompile(`sshd: session ended.*user=alice`), 30*time.Second); err != nil {
		t.Errorf("the session's command still runs on the device: %v", err)
	}
}

// TestLockReachesASessionWhoseUserIsGone: alice's tsh ssh through C holds
// its session; then her laptop goes (tsh is killed), and C with it. The
// device holds the session for her (its hold time is ten minutes) and
// tells A, the replica its tunnel is on, which keeps it in its session
// registry. A lock on alice written through B ends it on the device
// within sessionCut of the lock's write, with the lock's message: a
// session whose user is away is not out of a lock's reach.
func TestLockReachesASessionWhoseUserIsGone(t *testing.T) {
	lf := startLockFleet(t)
	ssh := start(t, "tsh ssh via C", lf.users[repC].Env(), "tsh", "ssh", "root@pi-1", "echo started; exec sleep 600")
	ssh.WaitLine(regexp.MustCompile(`^started$`), time.Minute)
	aMark := lf.reps[repA].Proc.Mark()
	ssh.Kill()
	lf.reps[repC].Kill()
	if _, _, err := lf.reps[repA].Proc.AwaitLine(t.Context(), aMark, regexp.MustCompile(`the device holds a session for its away user.*user=alice`), 30*time.Second); err != nil {
		t.Fatalf("replica A did not learn that pi-1 holds alice's session: %v\n%s", err, lf.reps[repA].Proc.Tail(20))
	}
	const msg = "laptop reported stolen"
	agentMark := lf.agent.Proc.Mark()
	l := lf.lock(t, repB, "--user=alice", "--message="+msg)
	line, _, err := lf.agent.Proc.AwaitLine(t.Context(), agentMark, regexp.MustCompile(`the fleet ended a session.*`+msg), 30*time.Second)
	if err != nil {
		t.Fatalf("the device did not end the session of alice, who is away: %v\n%s", err, lf.agent.Proc.Tail(20))
	}
	took := line.At.Sub(l.Created)
	t.Logf("the device ended the session of alice, who is away, %s after the lock's write on replica B", took.Round(time.Millisecond))
	if took > sessionCut {
		t.Errorf("the device ended the session %s after the lock's write, want within %s", took.Round(time.Millisecond), sessionCut)
	}
	if _, _, err := lf.agent.Proc.AwaitLine(t.Context(), agentMark, regexp.MustCompile(`sshd: session ended.*user=alice`), 30*time.Second); err != nil {
		t.Errorf("the session's command still runs on the device: %v", err)
	}
	// The device's own session.end, with the lock's message as its
	// reason, is in the audit trail (read through B). It is the device's
	// word about a session whose start only C recorded, and C is down:
	// the fleet keeps it as unverified (docs/audit.md), out of a search
	// by user, so it is searched by device.
	var end api.AuditEvent
	deviceEnd := func() bool {
		for _, e := range auditSearch(t, lf.reps[repB], "--type=session.end", "--device=pi-1").Events {
			if e.Source != api.SourceFleet && e.User == "alice" && strings.Contains(e.Fields["reason"], msg) {
				end = e
				return true
			}
		}
		return false
	}
	if !harness.Eventually(30*time.Second, deviceEnd) {
		t.Error("no session.end of alice's from the device in the audit trail with the lock's message as its reason")
	} else if end.Unverified != "" {
		t.Logf("the device's session.end is kept unverified: %s", end.Unverified)
	}
	// A counted the session among those the lock ended.
	if _, _, err := lf.reps[repA].Proc.AwaitLine(t.Context(), aMark, regexp.MustCompile(`lock enforced.*sessions_ended=1`), 10*time.Second); err != nil {
		t.Errorf("replica A did not count the session among those the lock ended: %v", err)
	}
}

// heldKubeAudited waits for the audit trail (events) to hold what a
// kubectl session through tsh proxy kube leaves there: the device's
// kube.request of a get of pod shell, its kube.session.start of the exec
// and its recorded kube.session.end, all verified; and the fleet's
// session.start of the resumed user-held session.
func heldKubeAudited(t *testing.T, events func() []api.AuditEvent) {
	t.Helper()
	var get, start, end, resumed bool
	if !harness.Eventually(time.Minute, func() bool {
		for _, e := range events() {
			fromDevice := e.AssertedBy != api.SourceFleet && e.Unverified == ""
			switch {
			case fromDevice && e.Type == "kube.request" && e.Fields["verb"] == "get" && e.Fields["name"] == "shell" && e.Fields["code"] == "200":
				get = true
			case fromDevice && e.Type == "kube.session.start" && e.Fields["subresource"] == "exec":
				start = true
			case fromDevice && e.Type == "kube.session.end" && e.Fields["recorded"] == "true" && e.Fields["code"] == "101":
				end = true
			case e.Type == "session.start" && e.Fields["service"] == "kube" && e.Fields["user_held"] == "true" && e.Fields["resumed"] == "true":
				resumed = true
			}
		}
		return get && start && end && resumed
	}) {
		t.Errorf("audit trail: the device's get %v, exec start %v, recorded end %v; the resumed user-held session %v", get, start, end, resumed)
	}
}

// TestKubectlOutlivesTheUsersReplica: pi-1 (a device whose cluster is the
// exec server) has its tunnel on replica A; alice reaches the fleet
// through the balancer, which sends users to C, and runs kubectl through
// tsh proxy kube. In the middle of a kubectl exec -it, C, which carries
// it, is killed (kill -9): tsh holds the session, connects again (the
// balancer sends it to B), and the exec goes on where it was. The device
// audited every request of the session (the fleet saw only its bytes) and
// recorded the exec's terminal, both before and after the kill.
func TestKubectlOutlivesTheUsersReplica(t *testing.T) {
	linkKubectl(t, &kubetest.Cluster{Kubectl: filepath.Join(kubetest.Binaries(t), "kubectl")})
	rf := startReplicas(t)
	rf.deviceWith(t, harness.AgentConfig{Name: "pi-1", Labels: "k3s=yes", Kubeconfig: kubeconfigFor(t, newExecServer(t))})
	a := rf.reps[repA]
	a.Ctl(kubeExecRole, "create", "-f", "-")
	alice := a.NewUser("alice")
	if out, errOut, err := alice.TshErr(a.AddUser("alice", "kube-exec", "")+"\n", "login", "--proxy="+rf.lb.Addr(), "--user=alice", "--ca-pin="+a.Pin); err != nil {
		t.Fatalf("tsh login: %v\n%s%s", err, out, errOut)
	}
	proxy, kubeconfig := startProxyKube(t, alice, "pi-1")
	if out, errOut, err := kubectlAs(alice, kubeconfig, "", "-n", "team", "get", "pod", "shell", "-o", "name"); err != nil || out != "pod/shell\n" {
		t.Fatalf("kubectl get through tsh proxy kube: %q %v\n%s", out, err, errOut)
	}
	// The session acts as what the proxy chose: kubectl --as cannot
	// reach past it (the device refuses), nor can a proxy started for a
	// group the roles do not give (the fleet refuses).
	if _, errOut, err := kubectlAs(alice, kubeconfig, "", "--as=admin", "-n", "team", "get", "pod", "shell"); err == nil || !strings.Contains(errOut, `cannot act as "admin"`) {
		t.Errorf("kubectl --as=admin through the proxy: %v %q, want the device's refusal", err, errOut)
	}
	_, otherConfig := startProxyKube(t, alice, "pi-1", "--as-group=system:masters")
	if _, errOut, err := kubectlAs(alice, otherConfig, "", "-n", "team", "get", "pod", "shell"); err == nil || !strings.Contains(errOut, `do not allow Kubernetes group "system:masters"`) {
		t.Errorf("kubectl through a proxy for a group the roles do not give: %v %q, want the fleet's refusal", err, errOut)
	}
	kx := startKubeExec(t, alice, kubeconfig)
	if n := strings.Count(rf.reps[repC].Proc.Output(), `msg="session started"`); n < 2 {
		t.Fatalf("replica C started %d sessions, want kubectl's through it\n%s", n, rf.reps[repC].Proc.Tail(20))
	}
	rf.reps[repC].Kill()
	killed := time.Now()
	line, _ := proxy.WaitLineAt(regexp.MustCompile(`session resumed`), time.Minute)
	t.Logf("tsh resumed kubectl's session %v after C was killed", line.At.Sub(killed).Round(time.Millisecond))
	io.WriteString(kx.in, "echo typed-after-the-kill\r")
	if !harness.Eventually(30*time.Second, func() bool { return strings.Contains(kx.out.String(), "typed-after-the-kill\r\npod$ ") }) {
		t.Fatalf("the kubectl exec did not go on after C died: %q", kx.out.String())
	}
	kx.exit(t)
	// C comes back, so that every replica answers the searches below.
	rf.reps[repC].Start()

	t.Run("audited by the device", func(t *testing.T) {
		heldKubeAudited(t, func() []api.AuditEvent { return auditSearch(t, rf.reps[repB], "--user=alice").Events })
	})
	t.Run("recorded by the device", func(t *testing.T) {
		rec := kubeExecRecording(t, alice, time.Minute)
		if played := alice.Tsh("play", "--speed=0", rec.ID); !strings.Contains(played, "typed-in-the-pod") || !strings.Contains(played, "typed-after-the-kill") {
			t.Errorf("tsh play: %q, want the exec's output before and after the kill", played)
		}
	})
	t.Run("ended by a lock", func(t *testing.T) {
		kx := startKubeExec(t, alice, kubeconfig)
		const msg = "laptop reported stolen"
		locked := time.Now()
		a.Ctl("", "lock", "--user=alice", "--message="+msg)
		select {
		case err := <-kx.exited:
			t.Logf("kubectl exec through tsh proxy kube ended %v after the lock", time.Since(locked).Round(time.Millisecond))
			if err == nil {
				t.Errorf("kubectl exec exited 0 after the lock ended it")
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("kubectl exec through tsh proxy kube outlived the lock: %q", kx.out.String())
		}
		kx.close()
		if _, _, err := proxy.AwaitLine(t.Context(), 0, regexp.MustCompile(`the session to pi-1 ended: .*`+msg), 10*time.Second); err != nil {
			t.Errorf("tsh proxy kube did not say the lock ended the session: %v", err)
		}
		ended := false
		if !harness.Eventually(time.Minute, func() bool {
			for _, e := range auditSearch(t, rf.reps[repB], "--user=alice", "--type=kube.session.end").Events {
				if e.AssertedBy != api.SourceFleet && e.Unverified == "" && strings.Contains(e.Message, msg) {
					ended = true
				}
			}
			return ended
		}) {
			t.Error("no kube.session.end from the device with the lock's message")
		}
	})
}
