package devsim

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/tools/harness"
	"remoteler.dev/edge/tools/logtest"
)

// TestMeasureRestartTiny runs the restart measurement end to end on a tiny
// fleet (a real fleetd built from this repository, ten simulated devices)
// so the tool cannot rot. Short device timers let devices that miss
// fleetd's close find out within seconds; the figures are not the point.
func TestMeasureRestartTiny(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out strings.Builder
	r, err := MeasureRestart(ctx, RestartConfig{
		Dir:      t.TempDir(),
		Count:    10,
		Settle:   200 * time.Millisecond,
		Timeout:  45 * time.Second,
		Liveness: time.Second, IdleTimeout: 3 * time.Second,
		StartRate: 100,
		Logger:    logtest.Logger(t),
	}, &out)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", out.String())
	if r.Missing != 0 {
		t.Errorf("%d devices not back after the restart", r.Missing)
	}
	if r.Back.N != 10 {
		t.Errorf("%d devices back, want 10", r.Back.N)
	}
	if r.Idle.RSS <= 0 {
		t.Errorf("fleetd RSS = %d, want > 0", r.Idle.RSS)
	}
	for _, want := range []string{"## Fleet restart: 10 simulated devices", "tunnels back:", "dial attempts per 100 ms"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

// TestMeasureRestartSimulatorFails: a simulator that cannot run says why
// and the measurement ends, rather than waiting for it forever (its error
// once went into a channel that the clean-up then waited on).
func TestMeasureRestartSimulatorFails(t *testing.T) {
	dir := t.TempDir()
	// A file where the devices' directory goes.
	if err := os.WriteFile(filepath.Join(dir, "devices"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out strings.Builder
	_, err := MeasureRestart(ctx, RestartConfig{Dir: dir, Count: 3, Logger: logtest.Logger(t)}, &out)
	if err == nil || !strings.Contains(err.Error(), "data dir") || ctx.Err() != nil {
		t.Fatalf("MeasureRestart = %v (context: %v); want the simulator's data dir error at once", err, ctx.Err())
	}
}

func TestFileLimitSaysWhatToDo(t *testing.T) {
	err := raiseFileLimit(1 << 30) // above any kernel's nr_open
	if err == nil || !strings.Contains(err.Error(), "--first") || !strings.Contains(err.Error(), "ulimit -Hn") {
		t.Errorf("raiseFileLimit(1<<30) = %v; want an error saying how to raise the limit or split the run", err)
	}
}

// TestMeasureRestartSplit runs the measurement with the devices split over
// two devsim processes, as for a fleet larger than one process's file
// limit: every device of both is counted, joined and back.
func TestMeasureRestartSplit(t *testing.T) {
	bin, err := harness.Build(t.Context(), t.TempDir(), nil, "remoteler.dev/edge/tools/cmd/devsim")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out strings.Builder
	r, err := MeasureRestart(ctx, RestartConfig{
		Dir: t.TempDir(), Count: 10, Procs: 2, Exe: bin.Path("devsim"),
		Settle: 200 * time.Millisecond, Timeout: time.Minute,
		Liveness: time.Second, IdleTimeout: 3 * time.Second,
		Logger: logtest.Logger(t),
	}, &out)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", out.String())
	if r.Missing != 0 || r.Back.N != 10 {
		t.Errorf("%d devices back, %d missing; want all 10 back", r.Back.N, r.Missing)
	}
	if r.SimRSS <= 0 {
		t.Errorf("simulators' RSS = %d, want the sum of both processes'", r.SimRSS)
	}
}

func TestEventLineRoundTrip(t *testing.T) {
	for _, e := range []Event{{Device: 0, Kind: Dial, At: time.Unix(0, 1)}, {Device: 19999, Kind: Up, At: time.Unix(1780000000, 123456789)}, {Device: 7, Kind: Down, At: time.Unix(5, 0)}} {
		got, ok := parseEventLine(EventLine(e))
		if !ok || got.Device != e.Device || got.Kind != e.Kind || !got.At.Equal(e.At) {
			t.Errorf("parseEventLine(EventLine(%+v)) = %+v, %v", e, got, ok)
		}
	}
	for _, bad := range []string{"", "event", "event up x 1", "event sideways 1 2", "event up 1 2 3", "noise event up 1 2"} {
		if _, ok := parseEventLine(bad); ok {
			t.Errorf("parseEventLine(%q) accepted it", bad)
		}
	}
}
