package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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
	pw := f.addUser("alice", "access", "root")
	for _, tt := range targets {
		name := "arm-" + strings.TrimPrefix(tt.target, "linux-")
		bin := filepath.Join(dist, "edge-agent-"+tt.target)
		start(t, "edge-agent "+name+" (qemu)", nil, "bash", "../../cross/qemu-exec.sh", tt.target, bin, "start",
			"--fleet", f.addr, "--token", f.token(), "--data-dir", t.TempDir(), "--name", name)
		if !eventually(2*time.Minute, func() bool { return f.online(name) }) {
			t.Fatalf("%s never came online", name)
		}
	}
	u := f.login("alice", pw)
	for _, tt := range targets {
		name := "arm-" + strings.TrimPrefix(tt.target, "linux-")
		t.Run(tt.target, func(t *testing.T) {
			for _, d := range f.devices() {
				if d.Name == name && d.Arch != tt.arch {
					t.Errorf("%s reports arch %q, want %q", name, d.Arch, tt.arch)
				}
			}
			// The session's shell is the host's (qemu runs only the agent),
			// so the output proves the tunnel and the emulated agent.
			if out := u.tsh("ssh", "root@"+name, "echo", "hi from", name); out != "hi from "+name+"\n" {
				t.Errorf("tsh ssh %s = %q", name, out)
			}
			_, _, err := u.tshErr("", "ssh", "root@"+name, "exit 7")
			if got := exitCode(err); got != 7 {
				t.Errorf("exit status through %s = %d, want 7", name, got)
			}
		})
	}
}
