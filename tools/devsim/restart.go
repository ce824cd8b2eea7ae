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
)

// RestartConfig configures MeasureRestart. The zero value of every field
// works.
type RestartConfig struct {
	// Bin is a directory holding the fleetd binary; empty builds it (the
	// run must then be inside the repository).
	Bin string
	// Dir holds fleetd's data, the device identities and fleetd's log;
	// empty uses a temporary directory, removed at the end.
	Dir string
	// Count is the number of simulated devices; default 1000.
	Count int
	// Settle is how long the fleet sits idle with every device up before
	// fleetd's memory and idle CPU are read; default 10s.
	Settle time.Duration
	// Timeout bounds the wait for every device to be back after the
	// restart; default 3m.
	Timeout time.Duration
	// Keepalive, Liveness, IdleTimeout, MinBackoff and MaxBackoff are the
	// devices' tunnel timers; 0 keeps the agent's defaults.
	Keepalive, Liveness, IdleTimeout, MinBackoff, MaxBackoff time.Duration
	// StartRate is how many devices start per second at first; default
	// 200 (see Config.StartRate).
	StartRate float64
	// Logger receives progress; nil discards it.
	Logger *slog.Logger
}

// Bucket is the histogram width of the restart report.
const Bucket = 100 * time.Millisecond

// RestartReport is what MeasureRestart found. Times marked "after the
// SIGTERM" count from the moment fleetd was sent SIGTERM.
type RestartReport struct {
	Count int
	// JoinAndConnect is how long joining and first connecting every
	// device took.
	JoinAndConnect time.Duration
	// Idle is fleetd with every device connected, after Settle; IdleCPU is
	// the CPU fleetd used during Settle; SimRSS is the simulator's own RSS.
	Idle    ProcStat
	IdleCPU time.Duration
	Settle  time.Duration
	SimRSS  int64
	// SimIdleCPU is the CPU the simulator itself used during Settle: the
	// devices' tunnel clients at rest.
	SimIdleCPU time.Duration
	// Stopped is how long the old fleetd took to exit after SIGTERM;
	// Ready is when the new one listened, after the SIGTERM.
	Stopped, Ready time.Duration
	// Down is, per device, when its tunnel went down, after the SIGTERM.
	Down Spread
	// Told counts the devices whose tunnel went down within a second of
	// the SIGTERM: those that heard fleetd close their connection. The
	// others learn later (a stateless reset answering their next
	// heartbeat, or their idle timeout).
	Told int
	// Back is, per device, when its tunnel was up again, after the
	// SIGTERM; BackHist buckets the same times.
	Back     Spread
	BackHist Histogram
	// Dials is every connection attempt after the SIGTERM (each redial
	// opens a socket), after the SIGTERM; DialHist buckets them.
	Dials    Spread
	DialHist Histogram
	// MaxDials is the most attempts one device needed.
	MaxDials int
	// Missing counts devices not back within the timeout.
	Missing int
	// After is fleetd once every device is back.
	After ProcStat
	// ReconnectCPU is the CPU the new fleetd used until every device was
	// back.
	ReconnectCPU time.Duration
}

// Storm says whether the reconnects came as a synchronised storm, and why:
// the peak 100 ms bucket holds more than 4 times the mean of the
// reconnect span and at least 5% of the devices, or half the devices came
// back within one second.
func (r *RestartReport) Storm() (bool, string) {
	peak, at := r.BackHist.Peak()
	mean := r.BackHist.Mean()
	second := r.BackHist.Busiest(int(time.Second / Bucket))
	why := fmt.Sprintf("peak %d devices in the 100 ms from %s (%.1f× the mean of %.1f per 100 ms over the %s span); busiest second %d of %d devices",
		peak, ms(at), float64(peak)/max(mean, 1e-9), mean, ms(r.Back.Max-r.Back.Min), second, r.Count)
	storm := (float64(peak) > 4*mean && peak*20 >= r.Count) || second*2 >= r.Count
	return storm, why
}

// MeasureRestart starts fleetd, joins cfg.Count simulated devices, restarts
// fleetd (SIGTERM, then a new process on the same port and data dir) and
// measures how the devices come back. It writes the report to out.
func MeasureRestart(ctx context.Context, cfg RestartConfig, out io.Writer) (*RestartReport, error) {
	if cfg.Count <= 0 {
		cfg.Count = 1000
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 10 * time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 3 * time.Minute
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	log := cfg.Logger
	dir := cfg.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "devsim-restart-")
		if err != nil {
			return nil, fmt.Errorf("devsim: %w", err)
		}
		defer os.RemoveAll(d)
		dir = d
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("devsim: %w", err)
	}
	bin := cfg.Bin
	if bin == "" {
		bin = filepath.Join(dir, "bin")
		log.Info("building fleetd")
		if err := Build(ctx, bin, "remoteler.dev/edge/fleet/cmd/fleetd"); err != nil {
			return nil, fmt.Errorf("devsim: %w", err)
		}
	}
	logFile, err := os.Create(filepath.Join(dir, "fleetd.log"))
	if err != nil {
		return nil, fmt.Errorf("devsim: %w", err)
	}
	defer logFile.Close()
	fd, err := StartFleetd(ctx, FleetdConfig{Bin: bin, DataDir: filepath.Join(dir, "fleet"), Log: logFile})
	if err != nil {
		return nil, fmt.Errorf("devsim: %w", err)
	}
	defer fd.Stop()
	token, err := fd.AddToken(ctx, cfg.Count)
	if err != nil {
		return nil, fmt.Errorf("devsim: %w", err)
	}

	sim, err := New(Config{
		Fleet: fd.Addr, Token: token, Count: cfg.Count, DataDir: filepath.Join(dir, "devices"),
		Keepalive: cfg.Keepalive, Liveness: cfg.Liveness, IdleTimeout: cfg.IdleTimeout,
		MinBackoff: cfg.MinBackoff, MaxBackoff: cfg.MaxBackoff,
		StartRate: cfg.StartRate,
		Logger:    log,
	})
	if err != nil {
		return nil, err
	}
	simCtx, stopSim := context.WithCancel(ctx)
	simDone := make(chan error, 1)
	go func() { simDone <- sim.Run(simCtx) }()
	defer func() {
		stopSim()
		<-simDone
	}()

	r := &RestartReport{Count: cfg.Count, Settle: cfg.Settle}
	start := time.Now()
	log.Info("joining and connecting devices", "devices", cfg.Count, "fleet", fd.Addr)
	if err := waitAllUp(ctx, sim, simDone, 10*time.Minute+time.Duration(cfg.Count)*100*time.Millisecond); err != nil {
		return nil, err
	}
	r.JoinAndConnect = time.Since(start)
	log.Info("all devices up", "took", r.JoinAndConnect.Round(time.Millisecond))

	before, err := ReadProcStat(fd.PID())
	if err != nil {
		return nil, fmt.Errorf("devsim: %w", err)
	}
	simBefore, _ := ReadProcStat(os.Getpid())
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(cfg.Settle):
	}
	if r.Idle, err = ReadProcStat(fd.PID()); err != nil {
		return nil, fmt.Errorf("devsim: %w", err)
	}
	r.IdleCPU = r.Idle.CPU - before.CPU
	if own, err := ReadProcStat(os.Getpid()); err == nil {
		r.SimRSS, r.SimIdleCPU = own.RSS, own.CPU-simBefore.CPU
	}
	if online, err := fd.Online(ctx); err != nil || online != cfg.Count {
		log.Warn("fleetd's device list disagrees", "online", online, "want", cfg.Count, "err", err)
	}
	log.Info("fleetd with every device connected", "rss", MB(r.Idle.RSS), "idle_cpu", r.IdleCPU.Round(time.Millisecond), "over", cfg.Settle)

	log.Info("restarting fleetd")
	t0 := time.Now()
	if r.Stopped, err = fd.Restart(ctx); err != nil {
		return nil, fmt.Errorf("devsim: restart fleetd: %w", err)
	}
	r.Ready = fd.ReadyAt.Sub(t0)
	log.Info("fleetd restarted", "stopped_after", r.Stopped.Round(time.Millisecond), "ready_after", r.Ready.Round(time.Millisecond))
	cpu0, _ := ReadProcStat(fd.PID())

	// Every device is back when it has been up since the SIGTERM. A device
	// that missed fleetd's close is still "up" on the old connection; it is
	// back only once it has gone down and up again.
	deadline := time.Now().Add(cfg.Timeout)
	for {
		if back := backSince(sim.Events(), t0, cfg.Count); back == cfg.Count || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case err := <-simDone:
			return nil, fmt.Errorf("devsim: simulator stopped: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
	if st, err := ReadProcStat(fd.PID()); err == nil {
		r.ReconnectCPU = st.CPU - cpu0.CPU
	}
	r.analyse(sim.Events(), t0)
	// Let the handshakes' garbage settle before reading memory again.
	time.Sleep(2 * time.Second)
	r.After, _ = ReadProcStat(fd.PID())
	r.Write(out)
	return r, nil
}

// waitAllUp waits until every device is up, or the simulator fails.
func waitAllUp(ctx context.Context, sim *Sim, simDone <-chan error, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- sim.WaitUp(ctx, sim.Count()) }()
	select {
	case err := <-errc:
		return err
	case err := <-simDone:
		if err == nil {
			err = errors.New("it stopped")
		}
		return fmt.Errorf("devsim: simulator: %w", err)
	}
}

// backSince counts devices with an Up event after a Down event after t0.
func backSince(evs []Event, t0 time.Time, n int) int {
	down := make([]bool, n)
	back := make([]bool, n)
	count := 0
	for _, e := range evs {
		if e.At.Before(t0) {
			continue
		}
		switch e.Kind {
		case Down:
			down[e.Device] = true
		case Up:
			if down[e.Device] && !back[e.Device] {
				back[e.Device] = true
				count++
			}
		}
	}
	return count
}

// analyse fills the restart figures from the events after t0.
func (r *RestartReport) analyse(evs []Event, t0 time.Time) {
	n := r.Count
	downAt := make([]time.Duration, n)
	backAt := make([]time.Duration, n)
	dials := make([]int, n)
	for i := range n {
		downAt[i], backAt[i] = -1, -1
	}
	var downs, backs, dialTimes []time.Duration
	for _, e := range evs {
		if e.At.Before(t0) {
			continue
		}
		at := e.At.Sub(t0)
		switch e.Kind {
		case Down:
			if downAt[e.Device] < 0 {
				downAt[e.Device] = at
				downs = append(downs, at)
				if at <= time.Second {
					r.Told++
				}
			}
		case Dial:
			if backAt[e.Device] < 0 {
				dials[e.Device]++
				dialTimes = append(dialTimes, at)
			}
		case Up:
			if downAt[e.Device] >= 0 && backAt[e.Device] < 0 {
				backAt[e.Device] = at
				backs = append(backs, at)
			}
		}
	}
	for i := range n {
		if backAt[i] < 0 {
			r.Missing++
		}
		r.MaxDials = max(r.MaxDials, dials[i])
	}
	r.Down = SpreadOf(downs)
	r.Back = SpreadOf(backs)
	r.BackHist = HistogramOf(backs, Bucket)
	r.Dials = SpreadOf(dialTimes)
	r.DialHist = HistogramOf(dialTimes, Bucket)
}

// Write prints the report as Markdown-friendly text.
func (r *RestartReport) Write(w io.Writer) {
	fmt.Fprintf(w, "## Fleet restart: %d simulated devices\n\n", r.Count)
	fmt.Fprintf(w, "machine: %d CPUs, %s/%s\n\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(w, "joined and connected in %s\n", r.JoinAndConnect.Round(time.Millisecond))
	fmt.Fprintf(w, "fleetd with %d devices connected: RSS %s (peak %s), %d threads; CPU %s over %s idle (%.1f%% of one core)\n",
		r.Count, MB(r.Idle.RSS), MB(r.Idle.PeakRSS), r.Idle.Threads, r.IdleCPU.Round(time.Millisecond), r.Settle,
		100*r.IdleCPU.Seconds()/r.Settle.Seconds())
	fmt.Fprintf(w, "  per device: %.1f KB; simulator RSS %s, CPU %s over the same %s (%.1f%% of one core)\n",
		float64(r.Idle.RSS)/float64(r.Count)/1e3, MB(r.SimRSS), r.SimIdleCPU.Round(time.Millisecond), r.Settle,
		100*r.SimIdleCPU.Seconds()/r.Settle.Seconds())
	fmt.Fprintf(w, "\nrestart (times after SIGTERM):\n")
	fmt.Fprintf(w, "  old fleetd exited after %s; new fleetd listening after %s\n", ms(r.Stopped), ms(r.Ready))
	fmt.Fprintf(w, "  tunnels down:  %s\n", r.Down)
	fmt.Fprintf(w, "  devices told by fleetd's close (down within 1 s): %d of %d\n", r.Told, r.Count)
	fmt.Fprintf(w, "  dial attempts: %s (most by one device: %d)\n", r.Dials, r.MaxDials)
	fmt.Fprintf(w, "  tunnels back:  %s\n", r.Back)
	fmt.Fprintf(w, "  not back within the timeout: %d\n", r.Missing)
	fmt.Fprintf(w, "  new fleetd CPU until all were back: %s; RSS after: %s (peak %s)\n",
		r.ReconnectCPU.Round(time.Millisecond), MB(r.After.RSS), MB(r.After.PeakRSS))
	storm, why := r.Storm()
	verdict := "no synchronised storm"
	if storm {
		verdict = "SYNCHRONISED STORM"
	}
	fmt.Fprintf(w, "\nreconnects: %s: %s\n", verdict, why)
	fmt.Fprintf(w, "\ntunnels back per 100 ms (after SIGTERM):\n")
	r.BackHist.Write(w, 50)
	fmt.Fprintf(w, "\ndial attempts per 100 ms (after SIGTERM):\n")
	r.DialHist.Write(w, 50)
}
