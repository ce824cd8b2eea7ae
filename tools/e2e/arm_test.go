package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/tools/harness"
)

// TestARMAgentsUnderQEMU cross-builds the release agents for arm64 and
// ARMv6 (cross/build.sh, as `make cross` does), runs each under
// qemu-user-static (ARMv6 as an ARM1176, the Raspberry Pi 1/Zero core),
// joins them to a fleetd on loopback, and serves tsh ssh through them.
func TestARMAgentsUnderQEMU(t *testing.T) {
	targets := []struct {
		target, arch string
	}{
		{"linux-arm64", "arm64"},
		{"linux-armv6", "arm"},
	}
	dist := t.TempDir()
	args := []string{"../../cross/build.sh"}
	for _, tt := range targets {
		args = append(args, tt.target)
	}
	build := exec.Command("bash", args...)
	build.Env = append(os.Environ(), "OUT="+dist)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("cross/build.sh: %v\n%s", err, out)
	}
	f := startFleet(t)
	pw := f.AddUser("alice", "access", "root")
	for _, tt := range targets {
		name := "arm-" + strings.TrimPrefix(tt.target, "linux-")
		bin := filepath.Join(dist, "edge-agent-"+tt.target)
		start(t, "edge-agent "+name+" (qemu)", nil, "bash", "../../cross/qemu-exec.sh", tt.target, bin, "start",
			"--fleet", f.Addr, "--token", f.Token(), "--data-dir", t.TempDir(), "--name", name)
		if !harness.Eventually(2*time.Minute, func() bool { return f.Online(name) }) {
			t.Fatalf("%s never came online", name)
		}
	}
	u := f.Login("alice", pw)
	for _, tt := range targets {
		name := "arm-" + strings.TrimPrefix(tt.target, "linux-")
		t.Run(tt.target, func(t *testing.T) {
			for _, d := range f.Devices() {
				if d.Name == name && d.Arch != tt.arch {
					t.Errorf("%s reports arch %q, want %q", name, d.Arch, tt.arch)
				}
			}
			// The session's shell is the host's (qemu runs only the agent),
			// so the output proves the tunnel and the emulated agent.
			if out := u.Tsh("ssh", "root@"+name, "echo", "hi from", name); out != "hi from "+name+"\n" {
				t.Errorf("tsh ssh %s = %q", name, out)
			}
			_, _, err := u.TshErr("", "ssh", "root@"+name, "exit 7")
			if got := harness.ExitCode(err); got != 7 {
				t.Errorf("exit status through %s = %d, want 7", name, got)
			}
		})
	}
}
