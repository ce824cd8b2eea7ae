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
	f := startFleetArgs(t, nil, "--config", cfg)

	joined := time.Now()
	a := f.StartAgent("pi-1", "")
	a.Proc.WaitOutput("certificates renewed", 30*time.Second)
	f.Proc.WaitOutput("device certificates renewed", 5*time.Second)
	a.Proc.Stop()
	// The certificate from the join has expired by now.
	time.Sleep(time.Until(joined.Add(35 * time.Second))) // waiting for the clock itself: a certificate's lifetime
	a.Proc = start(t, "edge-agent pi-1 (restarted)", nil, "edge-agent", "start", "--data-dir", a.DataDir)
	f.WaitOnline("pi-1")
	u := f.Login("alice", f.AddUser("alice", "access", "root"))
	if out := u.Tsh("ssh", "root@pi-1", "echo", "renewed"); out != "renewed\n" {
		t.Errorf("tsh ssh after renewal = %q", out)
	}
}
