package harness

import (
	"strings"
	"testing"
)

// TestFleet starts the system as the tests and benchmarks do: fleetd, a
// device, a user logged in with tsh; the device comes back online after
// fleetd restarts, and after its agent restarts.
func TestFleet(t *testing.T) {
	bin, err := Build(t.Context(), t.TempDir(), nil, Products...)
	if err != nil {
		t.Fatal(err)
	}
	f := StartFleet(t, FleetConfig{Bin: bin})
	pw := f.AddUser("alice", "access", "nobody")
	a := f.StartAgent("pi-1", "env=test")
	u := f.Login("alice", pw)
	if out := u.Tsh("ls"); !strings.Contains(out, "pi-1") {
		t.Errorf("tsh ls does not list pi-1:\n%s", out)
	}
	f.Restart()
	f.WaitOnline("pi-1")
	a.Restart()
	if ds := f.Devices(); len(ds) != 1 || ds[0].Name != "pi-1" || !ds[0].Online {
		t.Errorf("devices after the restarts: %+v, want pi-1 online", ds)
	}
	if _, _, err := u.TshErr("", "ssh", "nobody@no-such-device", "true"); err == nil {
		t.Error("tsh ssh to a device that does not exist succeeded")
	}
}
