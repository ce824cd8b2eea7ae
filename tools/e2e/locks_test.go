package e2e

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/harness"
	"remoteler.dev/edge/tools/kube/kubetest"
)

// lockRoles: lock-ops gives login root and Kubernetes on every device;
// lock-extra gives login root too, so a lock on it alone must still shut
// its holder out (deny wins).
const lockRoles = `kind: role
version: v1
metadata: {name: lock-ops}
spec:
  allow:
    logins: [root]
    device_labels: {"*": ["*"]}
    kubernetes_groups: [developers]
---
kind: role
version: v1
metadata: {name: lock-extra}
spec:
  allow:
    logins: [root]
    device_labels: {"*": ["*"]}
`

var lockIDRe = regexp.MustCompile(`Lock ([0-9a-f]+) on `)

// TestLocks locks a user while they hold a live OpenSSH session (through
// tsh proxy ssh) and a live kubectl exec, and checks that both end with
// the lock's message shown (ssh's stderr, kubectl's Status), that new SSH
// and Kubernetes access and tsh login are refused with it, that the lock,
// the refusals and the ends are audited, and that removing the lock
// restores access. Then it locks a role (which the user's other role
// would allow: deny wins), a login and a device, each with a live session
// that ends, one of them with --ttl, which expires by itself.
func TestLocks(t *testing.T) {
	linkKubectl(t, &kubetest.Cluster{Kubectl: filepath.Join(kubetest.Binaries(t), "kubectl")})
	f := startFleet(t)
	startKubeAgent(f, "pi-1", "k3s=yes", f.Addr, kubeconfigFor(t, newExecServer(t)))
	f.Ctl(lockRoles, "create", "-f", "-")
	pw := f.AddUser("alice", "lock-ops,lock-extra", "")
	alice := f.Login("alice", pw)
	cfg := openSSHConfig(t, alice)
	kcfg := filepath.Join(t.TempDir(), "config")
	tshKube(t, alice, kcfg, "kube", "login", "pi-1")

	// startSSH opens a live OpenSSH session as alice.
	startSSH := func(t *testing.T) *harness.Proc {
		t.Helper()
		ssh := start(t, "ssh alice", nil, "ssh", "-F", cfg, "-o", "BatchMode=yes", "root@pi-1.fleet", "echo started; exec sleep 600")
		ssh.WaitLine(regexp.MustCompile(`^started$`), 60*time.Second)
		return ssh
	}
	// sshOnce runs one command over a new OpenSSH connection.
	sshOnce := func() (string, string, error) {
		return run("", nil, "ssh", "-F", cfg, "-o", "BatchMode=yes", "root@pi-1.fleet", "echo", "again")
	}
	// lock runs fleetctl lock and returns the lock's ID.
	lock := func(t *testing.T, args ...string) (string, time.Time) {
		t.Helper()
		at := time.Now()
		out := f.Ctl("", append([]string{"lock"}, args...)...)
		m := lockIDRe.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("fleetctl lock printed %q, want the lock's ID", out)
		}
		return m[1], at
	}
	// ended waits for ssh to end and checks that the user saw want.
	ended := func(t *testing.T, ssh *harness.Proc, at time.Time, want string) {
		t.Helper()
		select {
		case <-ssh.Done():
		case <-time.After(60 * time.Second):
			t.Fatalf("the ssh session outlived the lock:\n%s", ssh.Output())
		}
		t.Logf("the ssh session ended %s after fleetctl lock started", time.Since(at).Round(time.Millisecond))
		// tsh proxy ssh prints the reason the fleet sends in-band at the
		// cut; the device (when its tunnel is not what the lock cut) says
		// it too, prefixed "remoteler: ".
		if got := ssh.Output(); !strings.Contains(got, "tsh: the session to pi-1 ended: ") || !strings.Contains(got, want) {
			t.Errorf("ssh's user saw %q, want the lock's message %q", got, want)
		}
		if ssh.Err() == nil {
			t.Errorf("ssh exited 0 after the lock cut its session")
		}
	}
	// refused checks that a new SSH connection is refused with want.
	refused := func(t *testing.T, want string) {
		t.Helper()
		if out, errOut, err := sshOnce(); err == nil || !strings.Contains(errOut, want) {
			t.Errorf("a new ssh under the lock: %v %q %q, want a refusal saying %q", err, out, errOut, want)
		}
	}
	// restored waits until a new SSH connection works again.
	restored := func(t *testing.T, timeout time.Duration) {
		t.Helper()
		var out, errOut string
		if !harness.Eventually(timeout, func() bool {
			var err error
			out, errOut, err = sshOnce()
			return err == nil && strings.TrimSpace(out) == "again"
		}) {
			t.Fatalf("ssh after the lock went: %q %q", out, errOut)
		}
	}
	// audited waits for an audit event of type typ that ok accepts.
	audited := func(t *testing.T, typ string, ok func(e api.AuditEvent) bool) {
		t.Helper()
		var all []api.AuditEvent
		if !harness.Eventually(30*time.Second, func() bool {
			all = search(t, f, "--type="+typ)
			for _, e := range all {
				if ok(e) {
					return true
				}
			}
			return false
		}) {
			t.Errorf("no matching %s event in %+v", typ, all)
		}
	}

	t.Run("user", func(t *testing.T) {
		const msg = "laptop reported stolen; call the help desk"
		ssh := startSSH(t)
		kx := startKubeExec(t, alice, kcfg)
		id, at := lock(t, "--user=alice", "--message="+msg)
		ended(t, ssh, at, msg)
		select {
		case err := <-kx.exited:
			t.Logf("kubectl exec ended %s after fleetctl lock started", time.Since(at).Round(time.Millisecond))
			if err == nil {
				t.Errorf("kubectl exec exited 0 after the lock cut its session")
			}
		case <-time.After(60 * time.Second):
			t.Fatalf("kubectl exec outlived the lock: %q", kx.out.String())
		}
		kx.close()
		if got := kx.out.String(); !strings.Contains(got, msg) {
			t.Errorf("kubectl printed %q, want the lock's message %q", got, msg)
		}

		refused(t, msg)
		if _, errOut, err := kubectlAs(alice, kcfg, "", "-n", "team", "get", "pod", "shell"); err == nil || !strings.Contains(errOut, msg) {
			t.Errorf("kubectl get under the lock: %v %q, want a refusal saying %q", err, errOut, msg)
		}
		again := f.NewUser("alice")
		if _, errOut, err := again.TshErr(pw+"\n", "login", "--proxy="+f.Addr, "--user=alice", "--ca-pin="+f.Pin); err == nil || !strings.Contains(errOut, msg) {
			t.Errorf("tsh login under the lock: %v %q, want a refusal saying %q", err, errOut, msg)
		}
		if ls := f.Ctl("", "locks", "ls"); !strings.Contains(ls, id) || !strings.Contains(ls, "alice") {
			t.Errorf("fleetctl locks ls printed %q, want lock %s on alice", ls, id)
		}

		audited(t, "lock.create", func(e api.AuditEvent) bool {
			return e.Fields["lock"] == id && e.Fields["lock_target"] == `user "alice"` && e.Message == msg
		})
		// Refusals of SSH, Kubernetes and a login all name the lock.
		for _, what := range []struct{ typ, field, value string }{
			{"access.denied", "action", "GET " + api.PathConnect}, // SSH: refused before the device is looked at
			{"access.denied", "service", "kube"},
			{"user.login.failed", "method", "password"},
		} {
			audited(t, what.typ, func(e api.AuditEvent) bool {
				return e.User == "alice" && e.Fields["rule"] == "lock" && e.Fields["lock"] == id && e.Fields[what.field] == what.value
			})
		}
		audited(t, "session.end", func(e api.AuditEvent) bool {
			return e.Source == api.SourceFleet && e.User == "alice" && strings.Contains(e.Fields["reason"], msg)
		})

		f.Ctl("", "locks", "rm", id)
		audited(t, "lock.delete", func(e api.AuditEvent) bool { return e.Fields["lock"] == id })
		restored(t, 30*time.Second)
		if ls := f.Ctl("", "locks", "ls"); strings.Contains(ls, id) {
			t.Errorf("fleetctl locks ls after rm printed %q", ls)
		}
	})

	tests := []struct {
		name string
		args []string
		want string // what the user is shown
	}{
		// lock-ops still allows root on pi-1: the lock on lock-extra wins.
		{"role, deny wins", []string{"--role=lock-extra", "--message=role under review"}, "role under review"},
		// No --message: the default names the lock.
		{"login, with a ttl", []string{"--login=root", "--ttl=8s"}, `login "root"): your access is locked`},
		{"device", []string{"--device=pi-1", "--message=device quarantined"}, "device quarantined"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ssh := startSSH(t)
			id, at := lock(t, tt.args...)
			ended(t, ssh, at, tt.want)
			refused(t, tt.want)
			audited(t, "access.denied", func(e api.AuditEvent) bool { return e.Fields["rule"] == "lock" && e.Fields["lock"] == id })
			if strings.HasPrefix(tt.args[len(tt.args)-1], "--ttl") {
				// Nobody removes it: access comes back when it runs out,
				// and the fleet records that.
				restored(t, 60*time.Second)
				audited(t, "lock.expire", func(e api.AuditEvent) bool { return e.Fields["lock"] == id })
				return
			}
			f.Ctl("", "locks", "rm", id)
			// A device lock closed the device's tunnel: it redials.
			restored(t, 120*time.Second)
		})
	}
}
