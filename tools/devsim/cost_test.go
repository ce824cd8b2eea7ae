package devsim

import (
	"context"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/tools/logtest"
)

// TestMeasureCostTiny runs the tunnel cost measurement end to end on a
// tiny fleet (a real fleetd built from this repository, eight simulated
// devices) so the tool cannot rot. The direct nodes check in every
// second, so their tunnels come and go within the window while the held
// tunnels stay up; the figures are not the point.
func TestMeasureCostTiny(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out strings.Builder
	r, err := MeasureCost(ctx, CostConfig{
		Dir:       t.TempDir(),
		Count:     8,
		Window:    3 * time.Second,
		CheckIn:   time.Second,
		StartRate: 100,
		Logger:    logtest.Logger(t),
	}, &out)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", out.String())
	if r.Direct.Tunnels == 0 {
		t.Errorf("direct nodes checked in 0 times in a 3s window with a 1s check-in period")
	}
	if r.Tunnel.Tunnels != 0 {
		t.Errorf("held tunnels came up %d times within the window, want 0 (they were all up before it)", r.Tunnel.Tunnels)
	}
	for _, p := range []CostPhase{r.None, r.Direct, r.Tunnel} {
		if p.RSS <= 0 || p.Name == "" {
			t.Errorf("phase %+v: want a name and fleetd's RSS", p)
		}
	}
	for _, want := range []string{"8 simulated devices of each kind", "direct nodes, a check-in every 1s", "reverse tunnels held", "per device, above fleetd with none connected"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}
