package devsim

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// testWriter sends log lines to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

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
		Logger:    slog.New(slog.NewTextHandler(testWriter{t}, nil)),
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
