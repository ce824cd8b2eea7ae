package e2e

import (
	"net"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/store/etcdstore/etcdtest"
)

// TestFleetOnEtcd runs fleetd on a three-member etcd cluster, over TLS
// with a client certificate: a login, a device join and tsh ssh work; the
// etcd leader is killed and the fleet keeps serving (a new user, a login,
// ssh); a second fleetd on the same etcd with an empty data dir is the
// same fleet (CA pin, users).
func TestFleetOnEtcd(t *testing.T) {
	c := etcdtest.Start(t, etcdtest.Options{Members: 3, TLS: true})
	storeArgs := []string{"--store", c.StoreURL("fleet-e2e"),
		"--store-ca", c.CAFile, "--store-cert", c.CertFile, "--store-key", c.KeyFile}
	f := startFleetArgs(t, nil, storeArgs...)
	f.proc.waitOutput("Store: etcd "+strings.Join(c.Endpoints(), ","), 5*time.Second)

	f.startAgent("pi-1", "site=north")
	alice := f.login("alice", f.addUser("alice", "access", "root"))
	if out := alice.tsh("ssh", "root@pi-1", "echo", "on etcd"); out != "on etcd\n" {
		t.Fatalf("tsh ssh = %q, want %q", out, "on etcd\n")
	}

	leader := c.Leader(t)
	t.Logf("killing the etcd leader, %s", leader.Name)
	leader.Kill()
	bob := f.login("bob", f.addUser("bob", "access", "root"))
	if out := bob.tsh("ssh", "root@pi-1", "echo", "after the etcd leader died"); out != "after the etcd leader died\n" {
		t.Fatalf("tsh ssh after the etcd leader died = %q", out)
	}
	if out := alice.tsh("ls"); !strings.Contains(out, "pi-1") || !strings.Contains(out, "online") {
		t.Errorf("tsh ls after the etcd leader died = %q, want pi-1 online", out)
	}

	// Another fleetd on the same etcd, with nothing in its data dir, is
	// the same fleet.
	g := startFleetArgs(t, nil, storeArgs...)
	if g.pin != f.pin {
		t.Errorf("second fleetd's CA pin %s, want the first's %s", g.pin, f.pin)
	}
	users := g.ctl("", "users", "ls")
	if !strings.Contains(users, "alice") || !strings.Contains(users, "bob") {
		t.Errorf("users on the second fleetd = %q, want alice and bob", users)
	}
	g.login("alice", "pw-alice-0123456789")
}

// TestFleetEtcdDown starts fleetd on an etcd that does not run: it says
// what it waits for and retries, and stops with a clear error on SIGTERM.
func TestFleetEtcdDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	f := &fleet{t: t, dataDir: t.TempDir()}
	f.proc = start(t, "fleetd", nil, "fleetd", "start", "--data-dir", f.dataDir, "--listen", "127.0.0.1:0",
		"--store", "etcd://"+dead+"/fleet")
	f.proc.waitOutput("etcd does not answer; retrying", time.Minute)
	f.proc.waitOutput("connection refused", time.Second)
	if !eventually(time.Minute, func() bool { return strings.Count(f.proc.Output(), "etcd does not answer") >= 2 }) {
		t.Fatalf("fleetd did not retry:\n%s", f.proc.Output())
	}
	f.proc.Stop()
	out := f.proc.Output()
	if !strings.Contains(out, "gave up after") || strings.Contains(out, "listening on") {
		t.Errorf("fleetd stopped while waiting for etcd: output %q, want a gave-up error and no listening", out)
	}
	if code := f.proc.cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
}
