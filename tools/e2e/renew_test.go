package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestDeviceCertificatesRenewed: with 30 s device certificates, the agent
// renews over its tunnel and keeps the new ones: after the first
// certificate has expired, a restarted agent still connects.
func TestDeviceCertificatesRenewed(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "fleetd.yaml")
	os.WriteFile(cfg, []byte("device_cert_ttl: 30s\n"), 0o600)
	f := &fleet{t: t, dataDir: filepath.Join(dir, "data")}
	f.proc = start(t, "fleetd", nil, "fleetd", "start", "--config", cfg, "--data-dir", f.dataDir, "--listen", "127.0.0.1:0")
	f.addr = f.proc.waitLine(listenRE, 30*time.Second)[1]
	f.pin = f.proc.waitLine(pinRE, 5*time.Second)[1]

	joined := time.Now()
	a := f.startAgent("pi-1", "")
	a.proc.waitOutput("certificates renewed", 30*time.Second)
	f.proc.waitOutput("device certificates renewed", 5*time.Second)
	a.proc.Stop()
	// The certificate from the join has expired by now.
	time.Sleep(time.Until(joined.Add(35 * time.Second))) // waiting for the clock itself: a certificate's lifetime
	a.proc = start(t, "edge-agent pi-1 (restarted)", nil, "edge-agent", "start", "--data-dir", a.dataDir)
	f.waitOnline("pi-1")
	u := f.login("alice", f.addUser("alice", "access", "root"))
	if out := u.tsh("ssh", "root@pi-1", "echo", "renewed"); out != "renewed\n" {
		t.Errorf("tsh ssh after renewal = %q", out)
	}
}
