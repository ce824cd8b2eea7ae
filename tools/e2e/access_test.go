package e2e

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/harness"
)

// opsRole gives login root on every device; denyRoot is the same role
// changed to take root away.
const (
	opsRole = `kind: role
version: v1
metadata: {name: %s}
spec:
  allow:
    logins: [root]
    device_labels: {"*": ["*"]}
`
	denyRoot = opsRole + `  deny:
    logins: [root]
    device_labels: {"*": ["*"]}
`
)

// TestSessionsEndWhenAccessEnds runs plain OpenSSH through tsh proxy ssh
// (the ProxyCommand tsh config writes) and checks that a live session
// ends, with the fleet's reason on the user's standard error (sent
// in-band, so that it arrives before the close), when the
// user's certificate expires, when the user is removed, and when a change
// to their role takes the login away; that new connections are refused
// then; and that the audit trail records why.
func TestSessionsEndWhenAccessEnds(t *testing.T) {
	f := startFleet(t)
	f.StartAgent("pi-1", "site=north")
	tests := []struct {
		name  string
		user  string
		login []string // extra tsh login flags
		act   func(t *testing.T)
		want  string // in what the user sees
	}{
		{"certificate expiry", "expiring", []string{"--ttl=20s"}, nil, "your fleet certificate expired"},
		{"user removed", "removed", nil, func(t *testing.T) { f.Ctl("", "users", "rm", "removed") }, `the fleet user "removed" was removed`},
		{"role changed", "moved", nil, func(t *testing.T) { f.Ctl(fmt.Sprintf(denyRoot, "ops-moved"), "create", "-f", "-") },
			`access changed: role "ops-moved" denies login "root" on device "pi-1"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			role := "ops-" + tt.user
			f.Ctl(fmt.Sprintf(opsRole, role), "create", "-f", "-")
			pw := f.AddUser(tt.user, role, "")
			beforeLogin := time.Now() // the certificate starts after this
			u := f.Login(tt.user, pw, tt.login...)
			cfg := openSSHConfig(t, u)
			ssh := start(t, "ssh "+tt.user, nil, "ssh", "-F", cfg, "-o", "BatchMode=yes", "root@pi-1.fleet", "echo started; exec sleep 600")
			ssh.WaitLine(regexp.MustCompile(`^started$`), 60*time.Second)
			// And one with tsh's own client.
			tshSSH := start(t, "tsh ssh "+tt.user, u.Env(), "tsh", "ssh", "root@pi-1", "echo started; exec sleep 600")
			tshSSH.WaitLine(regexp.MustCompile(`^started$`), 60*time.Second)
			var acted time.Time
			if tt.act != nil {
				acted = time.Now()
				tt.act(t)
			} else {
				// The certificate runs out by itself, 20 s after it was
				// issued (so at most this long before now).
				acted = beforeLogin.Add(20 * time.Second)
			}
			select {
			case <-ssh.Done():
			case <-time.After(90 * time.Second):
				t.Fatalf("the session outlived the end of its access:\n%s", ssh.Output())
			}
			t.Logf("%s: the session ended at most %s after its access did", tt.name, time.Since(acted).Round(time.Millisecond))
			// tsh proxy ssh prints the reason the fleet sends in-band at
			// the cut, before OpenSSH sees the close and kills it. The
			// device's own "remoteler: " line may come too, or be cut
			// short when OpenSSH exits first.
			if got := ssh.Output(); !strings.Contains(got, "tsh: the session to pi-1 ended: "+tt.want) {
				t.Errorf("the user saw %q, want the fleet's reason %q", got, tt.want)
			} else if !strings.Contains(got, "remoteler: ") {
				t.Logf("the device's own line did not reach the user before ssh exited: %q", got)
			}
			if ssh.Err() == nil {
				t.Errorf("ssh exited 0 after its session was cut")
			}
			select {
			case <-tshSSH.Done():
			case <-time.After(30 * time.Second):
				t.Fatalf("tsh ssh outlived the end of its access:\n%s", tshSSH.Output())
			}
			// tsh asks the fleet why, with the session's token: the
			// certificate may be what expired.
			if got := tshSSH.Output(); !strings.Contains(got, "tsh: the session to pi-1 ended: "+tt.want) {
				t.Errorf("tsh ssh printed %q, want the fleet's reason %q", got, tt.want)
			}
			// No new session either.
			if out, errOut, err := run("", nil, "ssh", "-F", cfg, "-o", "BatchMode=yes", "root@pi-1.fleet", "echo", "again"); err == nil {
				t.Errorf("a new session after the access ended: %q %q", out, errOut)
			}
			// Both the fleet's and the device's session.end say why.
			ended := map[bool]bool{}
			for _, e := range search(t, f, "--type=session.end", "--user="+tt.user) {
				if strings.Contains(e.Fields["reason"], tt.want) {
					ended[e.Source == api.SourceFleet] = true
				}
			}
			if !ended[true] {
				t.Errorf("no session.end event of the fleet with the reason %q", tt.want)
			}
			if !harness.Eventually(30*time.Second, func() bool {
				for _, e := range search(t, f, "--type=session.end", "--user="+tt.user) {
					if e.Source != api.SourceFleet && strings.Contains(e.Fields["reason"], tt.want) {
						return true
					}
				}
				return false
			}) {
				t.Errorf("no session.end event of the device with the reason %q", tt.want)
			}
		})
	}
	t.Run("the denial names the rule", func(t *testing.T) {
		denied := search(t, f, "--type=access.denied", "--user=moved")
		found := false
		for _, e := range denied {
			if e.Fields["rule"] == "deny.logins" && e.Fields["role"] == "ops-moved" && e.Fields["login"] == "root" {
				found = true
			}
		}
		if !found {
			t.Errorf("access.denied events %+v, want one naming role ops-moved's deny.logins rule", denied)
		}
	})
}
