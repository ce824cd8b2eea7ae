package e2e

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	"remoteler.dev/edge/tools/harness"
)

// TestDeviceRemovalRemovesThatDevice is the decoy case: a device named
// after another device's ID. A fleet now refuses such a name at join; in a
// store written before that (planted here while fleetd is stopped),
// `fleetctl devices rm pi-1` must still remove pi-1 and not the decoy, end
// its tunnel, and its agent must not get back in with its certificate.
func TestDeviceRemovalRemovesThatDevice(t *testing.T) {
	f, a, u := setup(t)
	var pi1 string
	for _, d := range f.Devices() {
		if d.Name == "pi-1" {
			pi1 = d.ID
		}
	}
	if pi1 == "" {
		t.Fatal("pi-1 is not listed")
	}

	// A decoy named after pi-1's ID cannot join.
	decoyDir := t.TempDir()
	out, errOut, err := run("", nil, "edge-agent", "start", "--fleet", f.Addr, "--token", f.Token(),
		"--data-dir", decoyDir, "--name", pi1)
	if err == nil || !strings.Contains(out+errOut, "shape of a device ID") {
		t.Fatalf("a device named after pi-1's ID joined (or failed for another reason): %v\n%s%s", err, out, errOut)
	}

	// One planted as an older fleet would have stored it.
	f.Proc.Stop()
	db, err := bolt.Open(filepath.Join(f.DataDir, "fleet.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	const decoyID = "dddddddddddddddddddddddddddddddd"
	decoy, _ := json.Marshal(map[string]any{"id": decoyID, "name": pi1, "joined_at": time.Now().UTC(), "last_seen": time.Now().UTC()})
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("fleet"))
		if err := b.Put([]byte("devices/"+decoyID), decoy); err != nil {
			return err
		}
		return b.Put([]byte("devicenames/"+pi1), []byte(decoyID))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	f.Start()
	f.WaitOnline("pi-1")

	removed := time.Now()
	f.Ctl("", "devices", "rm", "pi-1")
	names := map[string]string{}
	for _, d := range f.Devices() {
		names[d.ID] = d.Name
	}
	if _, ok := names[pi1]; ok {
		t.Fatalf("pi-1 (%s) is still registered after devices rm pi-1: %v", pi1, names)
	}
	if names[decoyID] != pi1 {
		t.Errorf("the decoy was removed instead of (or with) pi-1: %v", names)
	}

	// The agent's tunnel ends, and its redials with the same certificate
	// are refused.
	a.Proc.WaitOutput("removed from the fleet", 30*time.Second)
	refused := regexp.MustCompile(`device refused.*device_id=` + pi1)
	if !harness.Eventually(60*time.Second, func() bool { return len(refused.FindAllString(f.Proc.Output(), -1)) >= 2 }) {
		t.Fatalf("fleetd never refused pi-1's redials:\n%s", f.Proc.Output())
	}
	if _, _, err := u.TshErr("", "ssh", "root@pi-1", "true"); err == nil {
		t.Error("tsh ssh reached a removed device")
	}
	for _, d := range f.Devices() {
		if d.ID == pi1 || (d.Online && d.Name == "pi-1") {
			t.Errorf("the removed device is back: %+v", d)
		}
	}
	evs := search(t, f, "--type=device.delete", "--since="+removed.Add(-time.Second).UTC().Format(time.RFC3339))
	if len(evs) != 1 || evs[0].Device != pi1 {
		t.Errorf("device.delete events = %+v, want one for %s", evs, pi1)
	}
}
