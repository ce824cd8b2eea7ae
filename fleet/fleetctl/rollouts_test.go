package fleetctl

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto/api"
)

// TestOTAUsageErrors: mistakes on the command lines of the OTA commands
// fail with exit 1, say what is wrong and point at the command's help,
// before anything reaches the fleet.
func TestOTAUsageErrors(t *testing.T) {
	e := newTestEnv(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"create without a release", []string{"rollouts", "create", "--selector", "site=north"}, "--release is required"},
		{"create with a bad selector", []string{"rollouts", "create", "--release", "v1", "--selector", "north"}, `--selector: label "north" is not KEY=VALUE`},
		{"create with bad stages", []string{"rollouts", "create", "--release", "v1", "--stages", "1%,ten%"}, `--stages: "ten" is not a percentage`},
		{"create with two thresholds", []string{"rollouts", "create", "--release", "v1", "--max-failure", "5%,6%"}, "--max-failure: want one percentage"},
		{"create with an argument", []string{"rollouts", "create", "v1"}, `unexpected argument "v1"`},
		{"status without an ID", []string{"rollouts", "status"}, "missing ID"},
		{"pause without an ID", []string{"rollouts", "pause"}, "missing ID"},
		{"pin without a version", []string{"rollouts", "pin", "hold", "--device", "pi-1"}, "--version is required"},
		{"pin without devices", []string{"rollouts", "pin", "hold", "--version", "v1"}, "give one of --device and --selector"},
		{"pin with both", []string{"rollouts", "pin", "hold", "--version", "v1", "--device", "pi-1", "--selector", "a=b"}, "give one of --device and --selector"},
		{"sign without a key", []string{"releases", "sign", "--version", "v1", t.TempDir()}, "--key and --version are required"},
		{"rotate-key without a key", []string{"releases", "rotate-key", "new.pub"}, "--key is required"},
		{"add without a directory", []string{"releases", "add"}, "missing DIR"},
		{"ls with a bad format", []string{"releases", "ls", "--format=xml"}, `want text, json or yaml, not "xml"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := e.run("", append([]string{"--data-dir", e.dataDir}, tt.args...)...)
			if r.code != 1 || !strings.Contains(r.stderr, tt.want) || !strings.Contains(r.stderr, "--help' for usage") {
				t.Errorf("exit %d, stderr %q; want 1, %q and a pointer to the help", r.code, r.stderr, tt.want)
			}
		})
	}
	for _, c := range e.fleet.Calls() {
		t.Errorf("the fleet was called: %s", c)
	}
}

// TestRolloutStatusEscapes: what devices say (a failure's reason comes from
// the device) reaches the terminal escaped.
func TestRolloutStatusEscapes(t *testing.T) {
	ro := api.Rollout{ID: "r-1", Release: "v2", State: api.RolloutHalted, Stages: []float64{1, 100},
		Reason: "1 of 1 devices failed", Failures: []api.RolloutFailure{{Device: "pi-1", State: "failed", Reason: "bad\x1b]52;c;ZXZpbA==\x07"}}}
	var out bytes.Buffer
	if err := writeRollout(&out, ro, time.Now()); err != nil {
		t.Fatal(err)
	}
	if strings.ContainsRune(out.String(), 0x1b) || !strings.Contains(out.String(), `pi-1 failed: bad\x1b]52;c;ZXZpbA==\x07`) {
		t.Errorf("got %q; want the escape sequence escaped", out.String())
	}
}
