package e2e

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/tools/harness"
)

// TestOfflineDeviceSaysSoAtOnce: an agent killed with kill -9 and not
// restarted shows as offline within a few keep-alive periods (the fleet
// pushes 2 s here: offline after 11 s), with "last seen" the last packet
// heard; tsh ssh to it fails at once saying so, instead of hanging until a
// timeout that names the fleet's address.
func TestOfflineDeviceSaysSoAtOnce(t *testing.T) {
	f := startFleetArgs(t, nil, "--device-keepalive", "2s")
	a := f.StartAgent("pi-1", "")
	u := f.Login("alice", f.AddUser("alice", "access", "root"))
	if out := u.Tsh("ssh", "root@pi-1", "echo", "up"); out != "up\n" {
		t.Fatalf("before the kill: %q", out)
	}
	a.Proc.Kill()
	killed := time.Now()
	if !harness.Eventually(60*time.Second, func() bool { return !f.Online("pi-1") }) {
		t.Fatal("the killed device still counts as online after 60 s")
	}
	offline := time.Since(killed)
	t.Logf("offline %v after the kill (window: 3 keep-alives of 2 s + 5 s)", offline.Round(100*time.Millisecond))
	if offline > 20*time.Second {
		t.Errorf("offline %v after the kill, want about 11 s", offline)
	}
	if ls := u.Tsh("ls"); !strings.Contains(ls, "offline") {
		t.Errorf("tsh ls = %q, want pi-1 offline", ls)
	}
	start := time.Now()
	_, stderr, err := u.TshErr("", "ssh", "root@pi-1", "true")
	took := time.Since(start)
	if err == nil {
		t.Fatal("tsh ssh to the dead device succeeded")
	}
	if !regexp.MustCompile(`offline: last seen \d+s ago`).MatchString(stderr) {
		t.Errorf("tsh ssh said %q, want that pi-1 is offline and when it was last seen", stderr)
	}
	if strings.Contains(stderr, "i/o timeout") || strings.Contains(stderr, f.Addr) {
		t.Errorf("tsh ssh said %q: a timeout naming the fleet's address", stderr)
	}
	if took > 10*time.Second {
		t.Errorf("tsh ssh took %v to say the device is offline, want at once", took)
	}
}

// TestCommandDuringAgentRestart: commands started while the device's agent
// restarts (SIGTERM, then a new process, as systemctl restart does) all go
// through on the new agent, none failing with "replaced by a newer
// connection".
func TestCommandDuringAgentRestart(t *testing.T) {
	f, a, u := setup(t)
	for i := range 5 {
		a.Proc.Stop()
		done := make(chan string, 1)
		go func() {
			out, stderr, err := u.TshErr("", "ssh", "root@pi-1", "echo", "through")
			if err != nil {
				out += stderr + err.Error()
			}
			done <- out
		}()
		time.Sleep(time.Duration(i) * 300 * time.Millisecond) // the command starts at different points of the restart
		a.Restart()
		if out := <-done; out != "through\n" {
			t.Fatalf("try %d: the command started during the restart gave %q, want it to run on the new agent", i, out)
		}
	}
	if n := strings.Count(f.Proc.Output(), "replaced by a newer connection"); n > 0 {
		t.Logf("fleetd replaced connections %d times (fine, as long as no command failed)", n)
	}
}

// TestSessionEndExplained: the agent dies (kill -9) and comes back as a new
// process, which cannot resume the session; the user's tsh says so in one
// line, with what to do, instead of a bare disconnect or two contradictory
// lines.
func TestSessionEndExplained(t *testing.T) {
	f, a, u := setup(t)
	ssh := start(t, "tsh ssh", u.Env(), "tsh", "ssh", "root@pi-1", "echo started; sleep 600")
	ssh.WaitLine(regexp.MustCompile(`^started$`), 20*time.Second)
	a.Proc.Kill()
	a.Restart()
	select {
	case <-ssh.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("tsh ssh still runs after the agent restarted")
	}
	if code := harness.ExitCode(ssh.Err()); code != 255 {
		t.Errorf("tsh ssh exit code = %d, want 255", code)
	}
	var said []string
	for _, l := range strings.Split(strings.TrimSpace(ssh.Output()), "\n") {
		if l != "started" {
			said = append(said, l)
		}
	}
	want := "tsh: the session to pi-1 ended: the device's agent restarted, so the session could not be resumed; run the command again"
	if len(said) != 1 || !strings.Contains(said[0], want) {
		t.Errorf("tsh said %q, want one line: %q", said, want)
	}
	for _, bad := range []string{"tunnelsrv:", "without an exit status", "EOF"} {
		if strings.Contains(ssh.Output(), bad) {
			t.Errorf("tsh said %q, with %q in it", ssh.Output(), bad)
		}
	}
	f.Proc.WaitOutput("agent restarted", 5*time.Second)
}
