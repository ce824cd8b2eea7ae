package e2e

import (
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/tools/harness"
	"remoteler.dev/edge/tools/linksim"
)

// TestTunnelThroughUDPRelay: a UDP-only relay stands in front of the fleet
// (as a UDP port forward would). An agent given the relay as --fleet cannot
// join, since joining is HTTPS; with --fleet=FLEET --tunnel-addr=RELAY it
// joins the fleet directly and runs its tunnel through the relay, and
// sessions work.
func TestTunnelThroughUDPRelay(t *testing.T) {
	f := startFleet(t)
	link, relay := udpRelay(t, f, linksim.Config{})

	_, errOut, err := run("", nil, "edge-agent", "start", "--fleet="+relay, "--token="+f.Token(),
		"--name=pi-relay", "--data-dir="+t.TempDir(), "--kubeconfig=off")
	if err == nil || !strings.Contains(errOut, "join") {
		t.Fatalf("joining through a UDP-only relay: err %v, stderr %q; want the join to fail", err, errOut)
	}

	start(t, "edge-agent pi-relay", nil, "edge-agent", "start", "--fleet="+f.Addr, "--tunnel-addr="+relay,
		"--token="+f.Token(), "--name=pi-relay", "--data-dir="+t.TempDir(), "--kubeconfig=off", "--log-level=debug")
	f.WaitOnline("pi-relay")
	u := f.Login("alice", f.AddUser("alice", "access", "root"))
	before := link.Stats()
	if out := u.Tsh("ssh", "root@pi-relay", "echo", "through the relay"); out != "through the relay\n" {
		t.Errorf("tsh ssh = %q", out)
	}
	after := link.Stats()
	if after.Up.Forwarded.Packets <= before.Up.Forwarded.Packets || after.Down.Forwarded.Packets <= before.Down.Forwarded.Packets {
		t.Errorf("the session did not go through the relay: before %+v, after %+v", before, after)
	}
	if !harness.Eventually(10*time.Second, func() bool { return f.Online("pi-relay") }) {
		t.Error("the device went offline")
	}
}
