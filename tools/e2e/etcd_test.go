package e2e

import (
	"net"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/tools/etcdcluster"
	"remoteler.dev/edge/tools/harness"
)

// TestFleetOnEtcd runs fleetd on a three-member etcd cluster, over TLS
// with a client certificate: a login, a device join and tsh ssh work; the
// etcd leader is killed and the fleet keeps serving (a new user, a login,
// ssh); a second fleetd on the same etcd with an empty data dir is the
// same fleet (CA pin, users).
func TestFleetOnEtcd(t *testing.T) {
	c := etcdcluster.Start(t, etcdcluster.Options{Members: 3, TLS: true})
	storeArgs := []string{"--store", c.StoreURL("fleet-e2e"),
		"--store-ca", c.CAFile, "--store-cert", c.CertFile, "--store-key", c.KeyFile}
	f := startFleetArgs(t, nil, storeArgs...)
	f.Proc.WaitOutput("Store: etcd "+strings.Join(c.Endpoints(), ","), 5*time.Second)

	f.StartAgent("pi-1", "site=north")
	alice := f.Login("alice", f.AddUser("alice", "access", "root"))
	if out := alice.Tsh("ssh", "root@pi-1", "echo", "on etcd"); out != "on etcd\n" {
		t.Fatalf("tsh ssh = %q, want %q", out, "on etcd\n")
	}

	leader := c.Leader(t)
	t.Logf("killing the etcd leader, %s", leader.Name)
	leader.Kill()
	bob := f.Login("bob", f.AddUser("bob", "access", "root"))
	if out := bob.Tsh("ssh", "root@pi-1", "echo", "after the etcd leader died"); out != "after the etcd leader died\n" {
		t.Fatalf("tsh ssh after the etcd leader died = %q", out)
	}
	if out := alice.Tsh("ls"); !strings.Contains(out, "pi-1") || !strings.Contains(out, "online") {
		t.Errorf("tsh ls after the etcd leader died = %q, want pi-1 online", out)
	}

	// Another fleetd on the same etcd, with nothing in its data dir, is
	// the same fleet.
	g := startFleetArgs(t, nil, storeArgs...)
	if g.Pin != f.Pin {
		t.Errorf("second fleetd's CA pin %s, want the first's %s", g.Pin, f.Pin)
	}
	users := g.Ctl("", "users", "ls")
	if !strings.Contains(users, "alice") || !strings.Contains(users, "bob") {
		t.Errorf("users on the second fleetd = %q, want alice and bob", users)
	}
	g.Login("alice", "pw-alice-0123456789")
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
	fleetd := start(t, "fleetd", nil, "fleetd", "start", "--data-dir", t.TempDir(), "--listen", "127.0.0.1:0",
		"--store", "etcd://"+dead+"/fleet")
	fleetd.WaitOutput("etcd does not answer; retrying", time.Minute)
	fleetd.WaitOutput("connection refused", time.Second)
	if !harness.Eventually(time.Minute, func() bool { return strings.Count(fleetd.Output(), "etcd does not answer") >= 2 }) {
		t.Fatalf("fleetd did not retry:\n%s", fleetd.Output())
	}
	fleetd.Stop()
	out := fleetd.Output()
	if !strings.Contains(out, "gave up after") || strings.Contains(out, "listening on") {
		t.Errorf("fleetd stopped while waiting for etcd: output %q, want a gave-up error and no listening", out)
	}
	if code := harness.ExitCode(fleetd.Err()); code != 1 {
		t.Errorf("exit code %d, want 1", code)
	}
}
