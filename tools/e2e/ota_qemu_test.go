package e2e

import (
	"path/filepath"
	"remoteler.dev/edge/tools/harness"
	"strings"
	"testing"
	"time"
)

// TestOTAUpdateUnderQEMU: the same update as TestOTAUpdates' good release,
// on the release agents for linux/arm64 and ARMv6 (Raspberry Pi Zero/1),
// each run under qemu-user-static (cross/qemu-exec.sh) by the stand-in
// supervisor: both download a delta, verify it, apply it with selfupdate,
// restart on the new binary and commit.
func TestOTAUpdateUnderQEMU(t *testing.T) {
	key, pub := releaseKey(t, &fleetCtl{t}, "release")
	root := t.TempDir()
	targets := []struct{ target, goarch, goarm string }{
		{"linux-arm64", "arm64", ""},
		{"linux-armv6", "arm", "6"},
	}
	dirs := map[string]string{}
	for _, v := range []string{"v5.0.0", "v5.1.0"} {
		dir := filepath.Join(root, v)
		for _, tt := range targets {
			buildAgent(t, dir, v, "env", "TARGET="+tt.target, "GOARCH="+tt.goarch, "GOARM="+tt.goarm)
		}
		(&fleetCtl{t}).ctlNoFleet("releases", "sign", "--key", key+".key", "--version", v, dir)
		dirs[v] = dir
	}
	f := startOTAFleet(t, pub)
	f.ctl("", "releases", "add", dirs["v5.0.0"])
	f.ctl("", "releases", "add", dirs["v5.1.0"])
	if !harness.Eventually(3*time.Minute, func() bool {
		ls := f.ctl("", "releases", "ls")
		return strings.Contains(ls, "linux-arm64 from v5.0.0: ") && strings.Contains(ls, "linux-armv6 from v5.0.0: ")
	}) {
		t.Fatalf("deltas not prepared:\n%s", f.ctl("", "releases", "ls"))
	}
	var devs []*otaDevice
	for _, tt := range targets {
		name := "qemu-" + strings.TrimPrefix(tt.target, "linux-")
		bin := filepath.Join(dirs["v5.0.0"], "edge-agent-"+tt.target)
		d := installDevice(t, f, name, bin, pub, []string{"bash", "../../cross/qemu-exec.sh", tt.target}, "")
		devs = append(devs, d)
	}
	for _, d := range devs {
		if !harness.Eventually(2*time.Minute, func() bool { return f.online(d.name) }) {
			t.Fatalf("%s never came online:\n%s", d.name, d.out.Output())
		}
	}
	f.rollout("v5.1.0")
	for i, d := range devs {
		t.Run(targets[i].target, func(t *testing.T) {
			f.waitUpdate(d, "v5.1.0", "committed", "v5.1.0", 6*time.Minute)
			if got, want := binSum(t, d.binPath), binSum(t, filepath.Join(dirs["v5.1.0"], "edge-agent-"+targets[i].target)); got != want {
				t.Errorf("binary in place %s, want v5.1.0's %s", got, want)
			}
			dl := f.search("--device", d.name, "--type", "update.downloaded")
			if len(dl) == 0 || dl[len(dl)-1].Fields["delta"] != "true" {
				t.Errorf("not updated by delta: %+v", dl)
			}
			if a := f.device(d.name).Arch; a != map[string]string{"linux-arm64": "arm64", "linux-armv6": "arm"}[targets[i].target] {
				t.Errorf("arch %q: not the emulated agent", a)
			}
			t.Logf("%s updated to v5.1.0 under qemu", d.name)
		})
	}
}
