package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/harness"
)

// auditOf returns what the fleet says of a device's audit.
func auditOf(t *testing.T, f *harness.Fleet, name string) *api.DeviceAudit {
	t.Helper()
	for _, d := range f.Devices() {
		if d.Name == name {
			return d.Audit
		}
	}
	return nil
}

// retention runs fleetctl retention show --format=json.
func retention(t *testing.T, f *harness.Fleet) api.RetentionStatus {
	t.Helper()
	var st api.RetentionStatus
	if err := json.Unmarshal([]byte(f.Ctl("", "retention", "show", "--format=json")), &st); err != nil {
		t.Fatalf("retention show --format=json: %v", err)
	}
	return st
}

// joinGen joins an auditgen device called name and returns its data dir.
func joinGen(t *testing.T, f *harness.Fleet, name string) string {
	t.Helper()
	dir := t.TempDir()
	join := start(t, "auditgen join "+name, nil, "auditgen", "--fleet", f.Addr, "--token", f.Token(), "--data-dir", dir, "--name", name, "--workers", "0")
	f.WaitOnline(name)
	join.Stop()
	return dir
}

// TestDeviceQuotaStopsAnEndlessUploader: a device that writes audit events
// without end is stopped at its quota: the fleet holds no more of its
// events than the quota, while another device, user logins and sessions go
// on; raising the quota with fleetctl lets the device's queue in, and no
// event is lost or doubled.
func TestDeviceQuotaStopsAnEndlessUploader(t *testing.T) {
	buildAuditgen(t)
	f, _, alice := setup(t)
	const quota = 256 << 10
	if out := f.Ctl("", "retention", "set", "--audit-device-quota=256KiB"); !strings.Contains(out, "256.0KiB") {
		t.Errorf("retention set printed:\n%s", out)
	}
	dir := joinGen(t, f, "flood")
	gen := start(t, "auditgen flood", nil, "auditgen", "--fleet", f.Addr, "--data-dir", dir, "--name", "flood",
		"--workers", "4", "--interval", "5ms", "--log-level", "error")
	var st *api.DeviceAudit
	if !harness.Eventually(60*time.Second, func() bool {
		st = auditOf(t, f, "flood")
		return st != nil && strings.Contains(st.Paused, "quota")
	}) {
		t.Fatalf("the flood was never paused at its quota: %+v", st)
	}
	if st.Stored > quota {
		t.Errorf("the fleet holds %d bytes of the flood's events, over the %d quota", st.Stored, quota)
	}
	// Users and other devices go on meanwhile.
	if out := alice.Tsh("ssh", "root@pi-1", "echo", "still here"); out != "still here\n" {
		t.Errorf("alice's session during the flood: %q", out)
	}
	bob := f.Login("bob", f.AddUser("bob", "access", "root"))
	if out := bob.Tsh("ssh", "root@pi-1", "echo", "bob too"); out != "bob too\n" {
		t.Errorf("bob's session during the flood: %q", out)
	}
	rs := retention(t, f)
	var listed bool
	for _, d := range rs.Devices {
		listed = listed || (d.Name == "flood" && strings.Contains(d.Paused, "quota"))
	}
	if !listed {
		t.Errorf("retention show does not list the paused flood: %+v", rs.Devices)
	}
	if evs := search(t, f, "--type="+proto.EventUploadsPaused); len(evs) == 0 {
		t.Error("no uploads.paused event")
	}
	if st := auditOf(t, f, "flood"); st.Stored > quota {
		t.Errorf("the fleet holds %d bytes of the flood's events later, over the quota", st.Stored)
	}
	gen.Stop()
	said := committed(gen.Output())
	t.Logf("the flood wrote %d events before it was stopped", len(said))

	// Raise the quota: the queue drains, nothing lost.
	f.Ctl("", "retention", "set", "--audit-device-quota=64MiB")
	final := time.Now()
	start(t, "auditgen drain", nil, "auditgen", "--fleet", f.Addr, "--data-dir", dir, "--name", "flood", "--workers", "0")
	checkExactlyOnce(t, f, "flood", final, said, 0)
	if st := auditOf(t, f, "flood"); st.Paused != "" || st.Stored <= quota {
		t.Errorf("after the quota was raised: %+v", st)
	}
}

// mountTmpfs mounts a tmpfs of size bytes on a new directory and unmounts
// it when the test ends. It needs root (CI and the sandbox run as root);
// it fails, not skips, without it.
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size+",mode=0700", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a %s tmpfs for a nearly full data dir: %v: %s (this test needs root, as CI has)", size, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// free returns the bytes free on dir's file system.
func free(t *testing.T, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// fill writes a file of zeros until dir has about left bytes free.
func fill(t *testing.T, dir string, left int64) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	n := free(t, dir) - left
	if n <= 0 {
		t.Fatalf("only %d bytes free, want to leave %d", free(t, dir), left)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1<<20)
	for n > 0 {
		w := min(n, int64(len(buf)))
		if _, err := f.Write(buf[:w]); err != nil {
			t.Fatal(err)
		}
		n -= w
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestFloorPausesUploadsOnANearlyFullDisk runs fleetd on a small tmpfs and
// fills it to under the free-space floor: device uploads pause (the
// devices keep their events), user logins and sessions go on, and once
// there is room again the devices' queues drain with nothing lost.
func TestFloorPausesUploadsOnANearlyFullDisk(t *testing.T) {
	buildAuditgen(t)
	data := mountTmpfs(t, "96m")
	f := startFleetIn(t, data, "")
	f.StartAgent("pi-1", "site=north")
	pw := f.AddUser("alice", "access", "root")
	f.Ctl("", "retention", "set", "--min-free=48MiB")
	dir := joinGen(t, f, "gen-floor")
	before := auditOf(t, f, "gen-floor")

	filler := fill(t, data, 32<<20)
	t.Logf("data dir: %d MiB free, floor 48 MiB", free(t, data)>>20)
	gen := start(t, "auditgen under the floor", nil, "auditgen", "--fleet", f.Addr, "--data-dir", dir, "--name", "gen-floor",
		"--workers", "4", "--count", "400", "--log-level", "error")
	gen.WaitOutput("generated 400", 60*time.Second)
	var st *api.DeviceAudit
	if !harness.Eventually(60*time.Second, func() bool {
		st = auditOf(t, f, "gen-floor")
		return st != nil && strings.Contains(st.Paused, "nearly full")
	}) {
		t.Fatalf("uploads were not paused under the floor: %+v", st)
	}
	if rs := retention(t, f); !strings.Contains(rs.UploadsPaused, "nearly full") {
		t.Errorf("retention show: uploads_paused = %q", rs.UploadsPaused)
	}
	// Users go on: a login and a session, both recorded by the fleet.
	alice := f.Login("alice", pw)
	if out := alice.Tsh("ssh", "root@pi-1", "echo", "room for users"); out != "room for users\n" {
		t.Errorf("alice's session under the floor: %q", out)
	}
	if logins := search(t, f, "--type=user.login", "--user=alice"); len(logins) == 0 {
		t.Error("alice's login under the floor was not recorded")
	}
	if st := auditOf(t, f, "gen-floor"); st.Head > before.Head+5 {
		t.Errorf("the fleet took %d events under the floor", st.Head-before.Head)
	}

	// Room again: everything arrives, once.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	// The devices try again after a pause that doubles while they are
	// refused (up to about a minute): allow for it.
	waitDrained(t, f, "gen-floor", freed, 3*time.Minute)
	checkExactlyOnce(t, f, "gen-floor", freed, committed(gen.Output()), 0)
	t.Logf("the queue drained %v after the disk had room", time.Since(freed).Round(time.Second))
	if st := auditOf(t, f, "gen-floor"); st.Paused != "" {
		t.Errorf("still paused: %q", st.Paused)
	}
}

// TestRecordingQuota: a device whose recordings fill its quota keeps its
// next recording until the quota is raised; then it arrives whole.
func TestRecordingQuota(t *testing.T) {
	f, _, alice := setup(t)
	f.Ctl("", "retention", "set", "--recordings-device-quota=48KiB")
	// About 100 KB of output: more than the quota.
	script := "head -c 75000 /dev/zero | tr '\\0' x | fold -w 100"
	out, errOut, err := alice.TshErr("", "ssh", "-t", "root@pi-1", script)
	if err != nil || len(out) < 75000 {
		t.Fatalf("session: %v, %d bytes\n%s", err, len(out), errOut)
	}
	var paused bool
	if !harness.Eventually(60*time.Second, func() bool {
		for _, d := range retention(t, f).Devices {
			paused = paused || (d.Name == "pi-1" && strings.Contains(d.Paused, "recordings quota"))
		}
		return paused
	}) {
		t.Fatalf("pi-1's recording uploads never paused at the quota: %+v", retention(t, f))
	}
	for _, r := range recordings(t, alice) {
		if r.Complete {
			t.Errorf("a recording over the quota arrived complete: %+v", r)
		}
	}
	f.Ctl("", "retention", "set", "--recordings-device-quota=64MiB")
	// The device tries again after a pause that doubles while it is
	// refused (up to about a minute): allow for it.
	rec, ok := waitRecording(t, alice, 3*time.Minute, func(r api.Recording) bool { return r.Complete && r.DeviceName == "pi-1" })
	if !ok {
		t.Fatal("the recording never arrived after the quota was raised")
	}
	if played := alice.Tsh("play", "--speed=0", rec.ID); played != out {
		t.Errorf("the recording plays %d bytes, the session showed %d", len(played), len(out))
	}
}
