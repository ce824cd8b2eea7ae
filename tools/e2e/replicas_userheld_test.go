package e2e

import (
	"regexp"
	"strings"
	"testing"
	"time"
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
	shell.goesOn(t)
	if !strings.Contains(shell.p.Output(), "session resumed") {
		t.Errorf("tsh did not say it resumed the session:\n%s", shell.p.Tail(10))
	}
}
