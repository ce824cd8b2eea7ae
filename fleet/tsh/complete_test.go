package tsh

import (
	"strings"
	"testing"

	"remoteler.dev/edge/proto/api"
)

// TestComplete runs what the shell completion scripts run (tsh __complete
// ARGS... WORD) against a fleet, and checks the candidates.
func TestComplete(t *testing.T) {
	e := newTestEnv(t)
	e.login()
	e.fleet.SetDevices(
		api.Device{ID: "d1", Name: "gw1", Labels: map[string]string{"site": "north"}, Online: true},
		api.Device{ID: "d2", Name: "gw2", Labels: map[string]string{"site": "south"}},
		api.Device{ID: "d3", Name: "evil\x1b]52;c;AA\x07", Labels: map[string]string{"site": "x"}},
	)
	tests := []struct {
		name string
		args []string
		want []string // candidate lines, then the directive line
	}{
		{"ssh devices", []string{"ssh", "gw"}, []string{"gw1\tonline site=north", "gw2\toffline site=south", ":4"}},
		{"ssh with login", []string{"ssh", "pi@gw1"}, []string{"pi@gw1\tonline site=north", ":4"}},
		{"ssh escapes names", []string{"ssh", "ev"}, []string{`evil\x1b]52;c;AA\x07` + "\toffline site=x", ":4"}},
		{"ssh command is files", []string{"ssh", "gw1", ""}, []string{":0"}},
		{"scp device side", []string{"scp", "g"}, []string{"gw1:\tonline site=north", "gw2:\toffline site=south", ":6"}},
		{"scp remote path", []string{"scp", "gw1:/tm"}, []string{":0"}},
		{"ls labels", []string{"ls", "site=n"}, []string{"site=north", ":4"}},
		{"ssh logins", []string{"ssh", "-l", ""}, []string{"pi", "tester", ":4"}},
		{"format values", []string{"ls", "--format", "j"}, []string{"json", ":4"}},
		{"commands", []string{"ku"}, []string{"kube\tKubernetes clusters on devices, through the fleet", ":4"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.run(nil, append([]string{"__complete"}, tt.args...)...)
			got := strings.Split(strings.TrimSpace(r.stdout), "\n")
			if r.code != 0 || strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("exit %d, got\n%s\nwant\n%s", r.code, strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
	t.Run("not logged in", func(t *testing.T) {
		e := newTestEnv(t)
		r := e.run(nil, "__complete", "ssh", "")
		if r.code != 0 || strings.TrimSpace(r.stdout) != ":4" {
			t.Errorf("exit %d, stdout %q; want no candidates", r.code, r.stdout)
		}
	})
}
