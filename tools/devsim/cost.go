package devsim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"remoteler.dev/edge/tools/harness"
)

// CostConfig configures MeasureCost. The zero value of every field works.
type CostConfig struct {
	// Bin is a directory holding fleetd and fleetctl; empty builds them
	// (the run must then be inside the repository).
	Bin string
	// Dir holds fleetd's data, the device identities and fleetd's log;
	// empty uses a temporary directory, removed at the end.
	Dir string
	// Count is the number of simulated devices of each kind; default 1000.
	Count int
	// Window is how long fleetd is watched in each phase; default 60s.
	Window time.Duration
	// CheckIn is how often the direct nodes check in; default 5m, the
	// agent's.
	CheckIn time.Duration
	// Keepalive and Liveness are the tunnel devices' timers; 0 keeps the
	// agent's defaults (25s, 2m).
	Keepalive, Liveness time.Duration
	// StartRate is how many devices start per second; default 200.
	StartRate float64
	// Logger receives progress; nil discards it.
	Logger *slog.Logger
}

// CostPhase is fleetd over one watch window.
type CostPhase struct {
	// Name says what the devices were doing.
	Name string
	// RSS is fleetd's resident memory at the end of the window.
	RSS int64
	// CPU is the CPU time fleetd used during the window; Wakeups the
	// context switches of its threads (a sleeping thread that wakes up
	// switches once).
	CPU     time.Duration
	Wakeups int64
	// Tunnels counts the tunnels that came up during the window (direct
	// nodes' check-ins; tunnel devices' reconnects).
	Tunnels int
}

// CostReport is what MeasureCost found.
type CostReport struct {
	Count   int
	Window  time.Duration
	CheckIn time.Duration
	// None is fleetd with every device registered and none connected;
	// Direct with every device a direct node checking in; Tunnel with
	// every device holding its tunnel.
	None, Direct, Tunnel CostPhase
}

// MeasureCost measures what a held reverse tunnel costs fleetd against a
// direct node: it starts fleetd, joins cfg.Count simulated devices, then
// watches a freshly started fleetd for cfg.Window three times: with no
// device connected, with every device a direct node (checking in every
// cfg.CheckIn, spread evenly), and with every device holding its tunnel.
// It writes the report to out.
func MeasureCost(ctx context.Context, cfg CostConfig, out io.Writer) (*CostReport, error) {
	if cfg.Count <= 0 {
		cfg.Count = 1000
	}
	if cfg.Window <= 0 {
		cfg.Window = time.Minute
	}
	if cfg.CheckIn <= 0 {
		cfg.CheckIn = 5 * time.Minute
	}
	if cfg.StartRate == 0 {
		cfg.StartRate = 200
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	dir := cfg.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "devsim-cost-")
		if err != nil {
			return nil, fmt.Errorf("devsim: %w", err)
		}
		defer os.RemoveAll(d)
		dir = d
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devsim: %w", err)
	}
	var r *CostReport
	err := harness.Do(ctx, harness.DoConfig{Dir: filepath.Join(dir, "tmp"), Log: logWriter{cfg.Logger}}, func(tb harness.TB) error {
		var err error
		r, err = measureCost(tb, cfg, dir)
		return err
	})
	if err != nil {
		return nil, err
	}
	r.Write(out)
	return r, nil
}

// measureCost is MeasureCost's body: fleetd stops when it returns.
func measureCost(tb harness.TB, cfg CostConfig, dir string) (*CostReport, error) {
	ctx, log := tb.Context(), cfg.Logger
	fd, token, err := startFleet(tb, cfg.Bin, cfg.Count, dir, log)
	if err != nil {
		return nil, err
	}
	simCfg := Config{
		Fleet: fd.Addr, Token: token, Count: cfg.Count, DataDir: filepath.Join(dir, "devices"),
		Keepalive: cfg.Keepalive, Liveness: cfg.Liveness, StartRate: cfg.StartRate,
		CheckIn: cfg.CheckIn, Logger: log,
	}
	r := &CostReport{Count: cfg.Count, Window: cfg.Window, CheckIn: cfg.CheckIn}

	// Join every device (as direct nodes, checking in once) on this
	// fleetd; each phase then watches a fresh one, so that the joins'
	// garbage is in none of them.
	log.Info("joining devices", "devices", cfg.Count)
	if err := runPhase(ctx, simCfg, nil); err != nil {
		return nil, err
	}
	phases := []struct {
		phase   *CostPhase
		name    string
		checkIn time.Duration // 0: no devices
		tunnel  bool
	}{
		{&r.None, "no device connected", 0, false},
		{&r.Direct, fmt.Sprintf("direct nodes, a check-in every %s", cfg.CheckIn), cfg.CheckIn, false},
		{&r.Tunnel, "reverse tunnels held", 0, true},
	}
	for _, p := range phases {
		if err := fd.RestartErr(); err != nil {
			return nil, fmt.Errorf("devsim: restart fleetd: %w", err)
		}
		p.phase.Name = p.name
		watch := func(s *Sim) error { return watchFleet(ctx, fd.Proc, s, cfg.Window, p.phase) }
		log.Info("watching fleetd", "phase", p.name, "window", cfg.Window)
		switch {
		case p.checkIn > 0:
			err = runPhase(ctx, simCfg, watch)
		case p.tunnel:
			c := simCfg
			c.CheckIn = 0
			err = runPhase(ctx, c, watch)
		default:
			err = watch(nil)
		}
		if err != nil {
			return nil, err
		}
		log.Info("phase done", "phase", p.name, "rss", harness.MB(p.phase.RSS), "cpu", p.phase.CPU, "wakeups", p.phase.Wakeups)
	}
	return r, nil
}

// runPhase runs a simulator with cfg until every device is up (direct
// nodes: has checked in), calls watch (when not nil) and stops it.
func runPhase(ctx context.Context, cfg Config, watch func(*Sim) error) error {
	s, err := New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(ctx)
	var simErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		simErr = s.Run(ctx)
	}()
	defer func() {
		stop()
		<-done
	}()
	if err := waitAllUp(ctx, s, done, 10*time.Minute+time.Duration(cfg.Count)*100*time.Millisecond); err != nil {
		if errors.Is(err, errSimStopped) && simErr != nil {
			return fmt.Errorf("devsim: the simulator stopped: %w", simErr)
		}
		return err
	}
	if watch == nil {
		return nil
	}
	return watch(s)
}

// watchFleet watches fleetd for window and fills p; s, when not nil, is
// the simulator whose tunnels it counts.
func watchFleet(ctx context.Context, proc *harness.Proc, s *Sim, window time.Duration, p *CostPhase) error {
	before, err := proc.Stat()
	if err != nil {
		return fmt.Errorf("devsim: %w", err)
	}
	sw0, err := harness.ReadSwitches(proc.PID())
	if err != nil {
		return fmt.Errorf("devsim: %w", err)
	}
	t0 := time.Now()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(window):
	}
	after, err := proc.Stat()
	if err != nil {
		return fmt.Errorf("devsim: %w", err)
	}
	sw1, err := harness.ReadSwitches(proc.PID())
	if err != nil {
		return fmt.Errorf("devsim: %w", err)
	}
	p.RSS, p.CPU, p.Wakeups = after.RSS, after.CPU-before.CPU, sw1-sw0
	if s != nil {
		for _, e := range s.Events() {
			if e.Kind == Up && !e.At.Before(t0) {
				p.Tunnels++
			}
		}
	}
	return nil
}

// Write prints the report as Markdown.
func (r *CostReport) Write(w io.Writer) {
	fmt.Fprintf(w, "## What a held reverse tunnel costs fleetd: %d simulated devices of each kind\n\n", r.Count)
	fmt.Fprintf(w, "machine: %d CPUs, %s/%s; each phase a freshly started fleetd watched for %s\n\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, r.Window)
	fmt.Fprintf(w, "| fleetd with | RSS | CPU over the window | wake-ups over the window | tunnels up in the window |\n")
	fmt.Fprintf(w, "|---|---:|---:|---:|---:|\n")
	for _, p := range []CostPhase{r.None, r.Direct, r.Tunnel} {
		fmt.Fprintf(w, "| %s | %s | %s | %d | %d |\n", p.Name, harness.MB(p.RSS), p.CPU.Round(time.Millisecond), p.Wakeups, p.Tunnels)
	}
	per := func(p CostPhase) string {
		n := float64(r.Count)
		mins := r.Window.Minutes()
		return fmt.Sprintf("%.1f kB, %.2f ms CPU a minute, %.2f wake-ups a minute",
			float64(p.RSS-r.None.RSS)/n/1e3, float64((p.CPU-r.None.CPU).Microseconds())/1e3/n/mins,
			float64(p.Wakeups-r.None.Wakeups)/n/mins)
	}
	fmt.Fprintf(w, "\nper device, above fleetd with none connected:\n")
	fmt.Fprintf(w, "  direct node:   %s\n", per(r.Direct))
	fmt.Fprintf(w, "  reverse tunnel: %s\n", per(r.Tunnel))
}
