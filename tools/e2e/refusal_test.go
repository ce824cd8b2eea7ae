package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/firmware/identity"

	"remoteler.dev/edge/tools/harness"
)

const southRole = `kind: role
version: v1
metadata:
  name: south-only
spec:
  allow:
    logins: [root]
    device_labels:
      site: [south]
`

const noRootRole = `kind: role
version: v1
metadata:
  name: no-root
spec:
  allow:
    logins: ["{{internal.logins}}"]
    device_labels:
      "*": ["*"]
  deny:
    logins: [root]
    device_labels:
      "*": ["*"]
`

func TestAccessRefusals(t *testing.T) {
	f, _, alice := setup(t)
	rolePath := filepath.Join(t.TempDir(), "roles.yaml")
	os.WriteFile(rolePath, []byte(southRole+"---\n"+noRootRole), 0o600)
	f.Ctl("", "roles", "create", "-f", rolePath)
	bob := f.Login("bob", f.AddUser("bob", "south-only", ""))
	carol := f.Login("carol", f.AddUser("carol", "access,no-root", "root,nobody"))

	tests := []struct {
		name    string
		u       *harness.User
		target  string
		wantMsg string // what the user reads
		wantLog string // what fleetd's audit log says
	}{
		{"labels do not match", bob, "root@pi-1", `no device "pi-1" that you can reach`, `access denied`},
		{"login not allowed", alice, "nobody@pi-1", `no role allows login "nobody"`, `login=nobody`},
		{"deny wins", carol, "root@pi-1", `denies login "root"`, `user=carol`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, err := tt.u.TshErr("", "ssh", tt.target, "echo", "hi")
			if err == nil || strings.Contains(out, "hi") {
				t.Fatalf("ssh %s succeeded: %q", tt.target, out)
			}
			if !strings.Contains(errOut, tt.wantMsg) {
				t.Errorf("message = %q, want it to contain %q", errOut, tt.wantMsg)
			}
			f.Proc.WaitOutput(tt.wantLog, 5*time.Second)
		})
	}
	// Deny takes away only what it names: the fleet lets carol in as
	// nobody (whose nologin shell then ends the session on the device).
	carol.TshErr("", "ssh", "nobody@pi-1", "true")
	f.Proc.WaitOutput(`msg="session started" logger=audit user=carol device=pi-1 login=nobody`, 5*time.Second)
}

func TestExpiredCertificate(t *testing.T) {
	f, _, _ := setup(t)
	pw := f.AddUser("dave", "access", "root")
	dave := f.Login("dave", pw, "--ttl=3s")
	if out := dave.Tsh("ssh", "root@pi-1", "echo", "ok"); out != "ok\n" {
		t.Fatalf("before expiry: %q", out)
	}
	deadline := time.Now().Add(4 * time.Second)
	for time.Now().Before(deadline) {
		time.Sleep(time.Until(deadline)) // waiting for the clock itself: the certificate's lifetime
	}
	_, errOut, err := dave.TshErr("", "ssh", "root@pi-1", "echo", "ok")
	if err == nil {
		t.Fatal("ssh with an expired certificate succeeded")
	}
	if !strings.Contains(errOut, "expired") || !strings.Contains(errOut, "tsh login") {
		t.Errorf("message = %q, want it to say the certificate expired and to run tsh login", errOut)
	}
}

func TestUnknownHostKeyRefusedByOpenSSH(t *testing.T) {
	_, _, u := setup(t)
	cfg := openSSHConfig(t, u)
	// A known_hosts that trusts some other host CA.
	dir := t.TempDir()
	if out, errOut, err := run("", nil, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, "other_ca")); err != nil {
		t.Fatalf("ssh-keygen: %v %s %s", err, out, errOut)
	}
	pub, _ := os.ReadFile(filepath.Join(dir, "other_ca.pub"))
	kh := filepath.Join(dir, "known_hosts")
	os.WriteFile(kh, []byte("@cert-authority *.fleet "+string(pub)), 0o600)
	out, errOut, err := run("", nil, "ssh", "-F", cfg, "-o", "BatchMode=yes", "-o", "UserKnownHostsFile="+kh, "root@pi-1.fleet", "echo", "hi")
	if err == nil || strings.Contains(out, "hi") {
		t.Fatalf("ssh trusted a host key it should not: %q", out)
	}
	if !strings.Contains(errOut, "Host key verification failed") {
		t.Errorf("ssh said %q, want Host key verification failed", errOut)
	}
}

func TestJoinTokenRefusals(t *testing.T) {
	f := startFleet(t)
	t.Run("used up", func(t *testing.T) {
		tok := f.Token("--uses=1")
		a := start(t, "agent-a", nil, "edge-agent", "start", "--fleet", f.Addr, "--token", tok, "--data-dir", t.TempDir(), "--name", "dev-a")
		f.WaitOnline("dev-a")
		out, errOut, err := run("", nil, "edge-agent", "start", "--fleet", f.Addr, "--token", tok, "--data-dir", t.TempDir(), "--name", "dev-b")
		if err == nil {
			t.Fatalf("second join with a one-use token succeeded: %s", out)
		}
		if !strings.Contains(errOut, "no uses left") {
			t.Errorf("agent said %q, want no uses left", errOut)
		}
		f.Proc.WaitOutput("join refused", 5*time.Second)
		a.Stop()
	})
	t.Run("expired", func(t *testing.T) {
		tok := f.Token("--ttl=1s")
		deadline := time.Now().Add(1500 * time.Millisecond)
		time.Sleep(time.Until(deadline)) // waiting for the clock itself: the token's lifetime
		_, errOut, err := run("", nil, "edge-agent", "start", "--fleet", f.Addr, "--token", tok, "--data-dir", t.TempDir(), "--name", "dev-c")
		if err == nil || !strings.Contains(errOut, "expired") {
			t.Errorf("join with an expired token: err = %v, said %q; want an expiry message", err, errOut)
		}
	})
	t.Run("wrong pin", func(t *testing.T) {
		tok := f.Token()
		bad := tok[:strings.Index(tok, "@")] + "@sha256:" + strings.Repeat("0", 64)
		_, errOut, err := run("", nil, "edge-agent", "start", "--fleet", f.Addr, "--token", bad, "--data-dir", t.TempDir(), "--name", "dev-d")
		if err == nil || !strings.Contains(errOut, "does not match the pin") {
			t.Errorf("join with a wrong pin: err = %v, said %q", err, errOut)
		}
	})
}

func TestDeviceClaimingAnotherIdentity(t *testing.T) {
	f := startFleet(t)
	a := f.StartAgent("pi-1", "")
	a.Proc.Stop()
	// A second device that copied pi-1's keys and certificate but calls
	// itself pi-2.
	dir := t.TempDir()
	data, err := os.ReadFile(filepath.Join(a.DataDir, "agent.db"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "agent.db"), data, 0o600)
	st, err := identity.Open(filepath.Join(dir, "agent.db"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	id.Name = "pi-2"
	if err := st.Save(id); err != nil {
		t.Fatal(err)
	}
	st.Close()
	imp := start(t, "impostor", nil, "edge-agent", "start", "--fleet", f.Addr, "--data-dir", dir)
	imp.WaitOutput(`belongs to device \"pi-1\", not \"pi-2\"`, 20*time.Second)
	f.Proc.WaitOutput("hello names another device", 5*time.Second)
	for _, d := range f.Devices() {
		if d.Online {
			t.Errorf("device %s is online, want none", d.Name)
		}
	}
}

// TestLoginWithoutSSHLogins: a user whose roles give no logins (say, one
// who only uses Kubernetes) can log in; tsh ssh then says why it cannot.
func TestLoginWithoutSSHLogins(t *testing.T) {
	f := startFleet(t)
	f.StartAgent("pi-1", "")
	erin := f.Login("erin", f.AddUser("erin", "access", ""))
	if out := erin.Tsh("status"); !strings.Contains(out, "erin") {
		t.Errorf("tsh status = %q", out)
	}
	_, errOut, err := erin.TshErr("", "ssh", "root@pi-1", "true")
	if err == nil || !strings.Contains(errOut, "no SSH logins") {
		t.Errorf("tsh ssh: err = %v, said %q; want it to say there are no SSH logins", err, errOut)
	}
}
