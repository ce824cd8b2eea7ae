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
	"strconv"
	"strings"
	"time"

	"remoteler.dev/edge/tools/harness"
)

// RestartConfig configures MeasureRestart. The zero value of every field
// works.
type RestartConfig struct {
	// Bin is a directory holding fleetd and fleetctl; empty builds them
	// (the run must then be inside the repository).
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
	// Procs splits the devices over this many devsim processes, for a
	// fleet larger than one process's open-file limit allows (a device
	// holds a descriptor); default 1: the devices run in this process.
	Procs int
	// Exe is the devsim program the processes run; default this program,
	// which must then be devsim.
	Exe string
	// Nice, when positive, runs those processes at this niceness (nice(1)),
	// below the fleet's: deployed devices do not share the fleet's cores,
	// and here the simulated ones would take CPU that the fleet needs to
	// answer them. It needs Procs > 1.
	Nice int
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
	Idle    harness.Stat
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
	After harness.Stat
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
	var r *RestartReport
	err := withRun(ctx, &cfg, "devsim-restart-", func(tb harness.TB, dir string) error {
		var err error
		r, err = measureRestart(tb, cfg, dir, out)
		return err
	})
	return r, err
}

// measureRestart is MeasureRestart's body: fleetd and the simulator stop
// when it returns.
func measureRestart(tb harness.TB, cfg RestartConfig, dir string, out io.Writer) (*RestartReport, error) {
	ctx, log := tb.Context(), cfg.Logger
	fd, token, err := startFleet(tb, cfg.Bin, cfg.Count, dir, log)
	if err != nil {
		return nil, err
	}

	sim, simDone, simStopped, simStat, err := startSim(tb, cfg, []string{fd.Addr}, token, dir)
	if err != nil {
		return nil, err
	}

	r := &RestartReport{Count: cfg.Count, Settle: cfg.Settle}
	log.Info("joining and connecting devices", "devices", cfg.Count, "fleet", fd.Addr)
	if r.JoinAndConnect, err = joinAll(ctx, log, sim, simDone, simStopped); err != nil {
		return nil, err
	}

	before, err := fd.Proc.Stat()
	if err != nil {
		return nil, fmt.Errorf("devsim: %w", err)
	}
	sim0 := simStat()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(cfg.Settle):
	}
	if r.Idle, err = fd.Proc.Stat(); err != nil {
		return nil, fmt.Errorf("devsim: %w", err)
	}
	r.IdleCPU = r.Idle.CPU - before.CPU
	sim1 := simStat()
	r.SimRSS, r.SimIdleCPU = sim1.RSS, sim1.CPU-sim0.CPU
	if online, err := onlineCount(fd); err != nil || online != cfg.Count {
		log.Warn("fleetd's device list disagrees", "online", online, "want", cfg.Count, "err", err)
	}
	log.Info("fleetd with every device connected", "rss", harness.MB(r.Idle.RSS), "idle_cpu", r.IdleCPU.Round(time.Millisecond), "over", cfg.Settle)

	log.Info("restarting fleetd")
	old := fd.Proc
	t0 := time.Now()
	if err := fd.RestartErr(); err != nil {
		return nil, fmt.Errorf("devsim: restart fleetd: %w", err)
	}
	r.Stopped, r.Ready = old.ExitedAt().Sub(t0), fd.ReadyAt.Sub(t0)
	log.Info("fleetd restarted", "stopped_after", r.Stopped.Round(time.Millisecond), "ready_after", r.Ready.Round(time.Millisecond))
	cpu0, _ := fd.Proc.Stat()

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
		case <-simDone:
			return nil, simStopped()
		case <-time.After(100 * time.Millisecond):
		}
	}
	if st, err := fd.Proc.Stat(); err == nil {
		r.ReconnectCPU = st.CPU - cpu0.CPU
	}
	r.analyse(sim.Events(), t0)
	// Let the handshakes' garbage settle before reading memory again.
	time.Sleep(2 * time.Second)
	r.After, _ = fd.Proc.Stat()
	r.Write(out)
	return r, nil
}

// startSim starts the simulated devices: in this process, or split over
// cfg.Procs devsim processes, process i joining and dialling the fleet at
// addrs[i % len(addrs)], with the identities in dir/devices (and the
// processes' output in dir/devsim-N.log). simDone is closed when the simulator (or one
// of its processes) has stopped, and stopped then says why; stat reads the
// simulator's RSS, CPU time and niceness.
func startSim(tb harness.TB, cfg RestartConfig, addrs []string, token, dir string) (sim fleetSim, simDone <-chan struct{}, stopped func() error, stat func() harness.Stat, err error) {
	dataDir := filepath.Join(dir, "devices")
	if cfg.Procs > 1 {
		sp, err := startSimProcs(tb, cfg, addrs, token, dataDir, dir)
		if err != nil {
			return nil, nil, nil, nil, err
		}
		return sp, sp.done, sp.err, sp.stat, nil
	}
	hosts, err := ProcHosts(roleSim, 1, cfg.Count)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	s, err := New(Config{
		Fleet: addrs[0], Token: token, Count: cfg.Count, DataDir: dataDir, LocalAddrs: hosts,
		Keepalive: cfg.Keepalive, Liveness: cfg.Liveness, IdleTimeout: cfg.IdleTimeout,
		MinBackoff: cfg.MinBackoff, MaxBackoff: cfg.MaxBackoff,
		StartRate: cfg.StartRate,
		Logger:    cfg.Logger,
	})
	if err != nil {
		return nil, nil, nil, nil, err
	}
	// done is closed when the simulator has stopped, simErr is then its
	// error: every wait may read it, and the clean-up too.
	ctx, stop := context.WithCancel(tb.Context())
	var simErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		simErr = s.Run(ctx)
	}()
	tb.Cleanup(func() {
		stop()
		<-done
	})
	stopped = func() error {
		if simErr == nil {
			return errors.New("devsim: the simulator stopped")
		}
		return fmt.Errorf("devsim: the simulator stopped: %w", simErr)
	}
	stat = func() harness.Stat {
		own, _ := harness.ReadStat(os.Getpid()) // the devices run in this process
		return own
	}
	return s, done, stopped, stat, nil
}

// logWriter logs what the harness writes (the last lines of a process
// that failed) as warnings.
type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Warn(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// errSimStopped says the simulator stopped while it was waited for.
var errSimStopped = errors.New("devsim: the simulator stopped")

// joinAll waits until every device has joined and connected and returns
// how long that took; when the simulator stops first, it returns why
// (simStopped).
func joinAll(ctx context.Context, log *slog.Logger, sim fleetSim, simDone <-chan struct{}, simStopped func() error) (time.Duration, error) {
	start := time.Now()
	if err := waitAllUp(ctx, sim, simDone, 10*time.Minute+time.Duration(sim.Count())*100*time.Millisecond); err != nil {
		if errors.Is(err, errSimStopped) {
			return 0, simStopped()
		}
		return 0, err
	}
	took := time.Since(start)
	log.Info("all devices up", "took", took.Round(time.Millisecond))
	return took, nil
}

// waitAllUp waits until every device is up; it returns errSimStopped when
// the simulator stops first (simDone is closed).
func waitAllUp(ctx context.Context, sim fleetSim, simDone <-chan struct{}, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- sim.WaitUp(ctx, sim.Count()) }()
	select {
	case err := <-errc:
		return err
	case <-simDone:
		cancel()
		<-errc
		return errSimStopped
	}
}

// onlineCount returns how many devices the fleet lists as online.
func onlineCount(f *harness.Fleet) (int, error) {
	ds, err := f.DevicesErr()
	n := 0
	for _, d := range ds {
		if d.Online {
			n++
		}
	}
	return n, err
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
		r.Count, harness.MB(r.Idle.RSS), harness.MB(r.Idle.Peak), r.Idle.Threads, r.IdleCPU.Round(time.Millisecond), r.Settle,
		100*r.IdleCPU.Seconds()/r.Settle.Seconds())
	fmt.Fprintf(w, "  per device: %.1f KB; simulator RSS %s, CPU %s over the same %s (%.1f%% of one core)\n",
		float64(r.Idle.RSS)/float64(r.Count)/1e3, harness.MB(r.SimRSS), r.SimIdleCPU.Round(time.Millisecond), r.Settle,
		100*r.SimIdleCPU.Seconds()/r.Settle.Seconds())
	fmt.Fprintf(w, "\nrestart (times after SIGTERM):\n")
	fmt.Fprintf(w, "  old fleetd exited after %s; new fleetd listening after %s\n", ms(r.Stopped), ms(r.Ready))
	fmt.Fprintf(w, "  tunnels down:  %s\n", r.Down)
	fmt.Fprintf(w, "  devices told by fleetd's close (down within 1 s): %d of %d\n", r.Told, r.Count)
	fmt.Fprintf(w, "  dial attempts: %s (most by one device: %d)\n", r.Dials, r.MaxDials)
	fmt.Fprintf(w, "  tunnels back:  %s\n", r.Back)
	fmt.Fprintf(w, "  not back within the timeout: %d\n", r.Missing)
	fmt.Fprintf(w, "  new fleetd CPU until all were back: %s; RSS after: %s (peak %s)\n",
		r.ReconnectCPU.Round(time.Millisecond), harness.MB(r.After.RSS), harness.MB(r.After.Peak))
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

// buildFleet returns the directory holding fleetd and fleetctl: binDir,
// or, when that is empty, a build of both from this repository in dir.
func buildFleet(tb harness.TB, binDir, dir string, log *slog.Logger) (harness.Bin, error) {
	bin := harness.Bin(binDir)
	if bin == "" {
		log.Info("building fleetd and fleetctl")
		var err error
		if bin, err = harness.Build(tb.Context(), filepath.Join(dir, "bin"), nil, "remoteler.dev/edge/fleet/cmd/fleetd", "remoteler.dev/edge/fleet/cmd/fleetctl"); err != nil {
			return "", fmt.Errorf("devsim: %w", err)
		}
	}
	return bin, nil
}

// startFleet starts a fleetd for count simulated devices in dir (building
// fleetd and fleetctl there when binDir is empty) and returns it with a
// join token for all of them.
func startFleet(tb harness.TB, binDir string, count int, dir string, log *slog.Logger) (*harness.Fleet, string, error) {
	bin, err := buildFleet(tb, binDir, dir, log)
	if err != nil {
		return nil, "", err
	}
	// A fleet of simulated devices logs a line per connect at info.
	fd, err := harness.StartFleetErr(tb, harness.FleetConfig{Bin: bin, DataDir: filepath.Join(dir, "fleet"), LogLevel: "warn", LogDir: dir})
	if err != nil {
		return nil, "", fmt.Errorf("devsim: %w", err)
	}
	token, err := joinToken(fd, count)
	return fd, token, err
}

// joinToken creates a join token for count devices on fd.
func joinToken(fd *harness.Fleet, count int) (string, error) {
	token, err := fd.TokenErr("--uses="+strconv.Itoa(count), "--ttl=2h")
	if err != nil {
		return "", fmt.Errorf("devsim: %w", err)
	}
	return token, nil
}
