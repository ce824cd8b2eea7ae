package e2e

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/harness"
)

// deviceByName returns how the fleet lists device name.
func deviceByName(t *testing.T, f *harness.Fleet, name string) (api.Device, bool) {
	t.Helper()
	out, _, err := f.CtlErr("", "devices", "ls", "-v", "--format=json")
	if err != nil {
		return api.Device{}, false
	}
	var l api.List[api.Device]
	if json.Unmarshal([]byte(out), &l) != nil {
		return api.Device{}, false
	}
	for _, d := range l.Items {
		if d.Name == name {
			return d, true
		}
	}
	return api.Device{}, false
}

// idle waits until the fleet lists the direct node name as online with no
// tunnel up: between check-ins.
func idle(t *testing.T, f *harness.Fleet, name string) {
	t.Helper()
	if !harness.Eventually(time.Minute, func() bool {
		d, ok := deviceByName(t, f, name)
		return ok && d.Online && d.Link.ConnectedSince.IsZero()
	}) {
		d, _ := deviceByName(t, f, name)
		t.Fatalf("%s is not an idle direct node within a minute: %+v", name, d)
	}
}

// TestDirectNode: a device on the fleet's own network that holds no
// tunnel, reached by tsh ssh and OpenSSH while no tunnel is open; the
// same roles, audit and session registry as a tunnel's device.
func TestDirectNode(t *testing.T) {
	f := startFleet(t)
	f.StartAgentWith(harness.AgentConfig{Name: "plc-direct", Labels: "site=north",
		Args: []string{"--mode=direct", "--listen=127.0.0.1:0", "--check-in=5m"}})
	f.StartAgent("pi-1", "site=north")
	alice := f.Login("alice", f.AddUser("alice", "access", "root"))

	t.Run("ls shows the kind", func(t *testing.T) {
		idle(t, f, "plc-direct")
		out := alice.Tsh("ls")
		for _, want := range []string{"MODE", "plc-direct", "direct", "pi-1", "tunnel"} {
			if !strings.Contains(out, want) {
				t.Errorf("tsh ls = %q, want %q in it", out, want)
			}
		}
		d, _ := deviceByName(t, f, "plc-direct")
		if d.Mode != api.ModeDirect || !strings.HasPrefix(d.DirectAddr, "127.0.0.1:") {
			t.Errorf("the fleet lists plc-direct as %q at %q", d.Mode, d.DirectAddr)
		}
	})
	t.Run("tsh ssh with no tunnel open", func(t *testing.T) {
		idle(t, f, "plc-direct")
		if out := alice.Tsh("ssh", "root@plc-direct", "echo", "direct"); out != "direct\n" {
			t.Fatalf("tsh ssh = %q", out)
		}
		ev := f.Ctl("", "audit", "search", "--device=plc-direct", "--type=session.*", "--format=json")
		if !strings.Contains(ev, "session.start") || !strings.Contains(ev, "alice") {
			t.Errorf("no session of alice on plc-direct in the audit:\n%s", ev)
		}
	})
	t.Run("openssh with no tunnel open", func(t *testing.T) {
		cfg := openSSHConfig(t, alice)
		idle(t, f, "plc-direct")
		out, errOut, err := run("", nil, "ssh", "-F", cfg, "-o", "BatchMode=yes", "root@plc-direct.fleet", "echo", "openssh")
		if err != nil || out != "openssh\n" {
			t.Fatalf("ssh root@plc-direct.fleet = %q, %v\n%s", out, err, errOut)
		}
		local, remote := t.TempDir(), t.TempDir()
		src, sum := randomFile(t, local, 4<<20)
		up := filepath.Join(remote, "up")
		if out, errOut, err := run("", nil, "scp", "-F", cfg, "-o", "BatchMode=yes", "-q", src, "root@plc-direct.fleet:"+up); err != nil {
			t.Fatalf("scp: %v\n%s%s", err, out, errOut)
		}
		if fileSum(t, up) != sum {
			t.Fatal("scp to the direct node: checksum differs")
		}
	})
	t.Run("the device's events reach the fleet", func(t *testing.T) {
		// The agent checks in by itself once its session's events are
		// queued.
		if !harness.Eventually(time.Minute, func() bool {
			out, _, err := f.CtlErr("", "audit", "search", "--device=plc-direct", "--type=exec", "--format=json")
			return err == nil && strings.Contains(out, "echo direct")
		}) {
			t.Fatal("the direct node's exec events did not reach the fleet")
		}
	})
	t.Run("a removed user's session ends", func(t *testing.T) {
		bob := f.Login("bob", f.AddUser("bob", "access", "root"))
		idle(t, f, "plc-direct")
		p := longSession(t, bob, "root@plc-direct")
		f.Ctl("", "users", "rm", "bob")
		ended(t, p, "removed")
	})
}
