package fleetctl

import (
	"strings"
	"testing"

	"remoteler.dev/edge/fleet/client/clienttest"
	"remoteler.dev/edge/proto/api"
)

// TestComplete runs what the shell completion scripts run (fleetctl
// __complete ARGS... WORD) against a fleet, and checks the candidates.
func TestComplete(t *testing.T) {
	e := newTestEnv(t)
	e.fleet.SetDevices(api.Device{ID: "d1", Name: "gw1", Labels: map[string]string{"site": "north"}, Online: true})
	e.fleet.AddUser("alice", clienttest.User{Roles: []string{"dev"}})
	e.fleet.AddUser("bob", clienttest.User{Roles: []string{"ops"}})
	for _, name := range []string{"dev", "ops"} {
		if r := e.run("kind: role\nmetadata: {name: "+name+"}\n", "--data-dir", e.dataDir, "roles", "create", "-f", "-"); r.code != 0 {
			t.Fatalf("roles create: %s", r.stderr)
		}
	}
	d := "--data-dir=" + e.dataDir
	tests := []struct {
		name string
		args []string
		want []string // candidate lines, then the directive line
	}{
		{"devices rm", []string{d, "devices", "rm", ""}, []string{"gw1\tonline site=north", ":4"}},
		{"users rm", []string{d, "users", "rm", "b"}, []string{"bob\troles ops", ":4"}},
		{"one name only", []string{d, "users", "rm", "bob", ""}, []string{":4"}},
		{"roles of users add", []string{d, "users", "add", "carol", "--roles", "dev,o"}, []string{"dev,ops", ":6"}},
		{"audit search device", []string{d, "audit", "search", "--device", ""}, []string{"gw1\tonline site=north", ":4"}},
		{"data dir after the command", []string{"users", "rm", d, "a"}, []string{"alice\troles dev", ":4"}},
		{"no fleet here", []string{"--data-dir=" + t.TempDir(), "users", "rm", ""}, []string{":4"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.run("", append([]string{"__complete"}, tt.args...)...)
			got := strings.Split(strings.TrimSpace(r.stdout), "\n")
			if r.code != 0 || strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("exit %d, got\n%s\nwant\n%s", r.code, strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}
