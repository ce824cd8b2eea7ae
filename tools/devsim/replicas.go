package devsim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/tools/etcdcluster"
	"remoteler.dev/edge/tools/harness"
)

// ReplicasConfig configures MeasureReplicas. The zero value of every field
// works, but Exe must be a devsim program (default this one): it runs the
// balancers (devsim balance) and, with Procs > 1, the devices.
type ReplicasConfig struct {
	// RestartConfig's fields mean what they mean for MeasureRestart;
	// Timeout bounds each wait for the devices to be back (after the kill,
	// after the restart of all replicas).
	RestartConfig
	// Replicas is the number of fleetd replicas; default 3.
	Replicas int
	// LeaseTTL is each replica's etcd lease (fleetd --replica-lease-ttl);
	// default 15s, fleetd's own.
	LeaseTTL time.Duration
}

// Recovery is how devices came back after a replica was killed, or after
// every replica restarted: times after the kill or the SIGTERMs.
type Recovery struct {
	// Expected is how many devices had to come back: those the killed
	// replica held, or all.
	Expected int
	// Down counts the devices whose tunnel went down, expected or not.
	Down int
	// Back is, per expected device, when its tunnel was up again after
	// going down.
	Back Spread
	// Dials counts connection attempts until every expected device was
	// back; MaxDials is the most one device needed.
	Dials, MaxDials int
	// Missing counts expected devices not back within the timeout.
	Missing int
}

// ReplicaFigures is one replica with every device connected and idle.
type ReplicaFigures struct {
	ID   string
	Addr string
	// Devices is how many tunnels the fleet says the replica holds.
	Devices int
	// Idle is the replica after Settle; IdleCPU the CPU it used then.
	Idle    harness.Stat
	IdleCPU time.Duration
	// After is the replica once every device is back after the restart of
	// all replicas (or the timeout); AfterErr says why it could not be
	// read (the replica had exited).
	After    harness.Stat
	AfterErr error
}

// ReplicasReport is what MeasureReplicas found.
type ReplicasReport struct {
	Count, Procs int
	Settle       time.Duration
	LeaseTTL     time.Duration // each replica's etcd lease
	// JoinAndConnect is how long joining and first connecting every
	// device took.
	JoinAndConnect time.Duration
	Replicas       []ReplicaFigures
	// SimRSS and SimIdleCPU are the simulators' (summed over their
	// processes) during Settle; BalancerRSS and BalancerIdleCPU the
	// balancers'.
	SimRSS, BalancerRSS         int64
	SimIdleCPU, BalancerIdleCPU time.Duration
	// SimNice is the simulator processes' niceness, as read from them
	// (the least nice of them; see RestartConfig.Nice).
	SimNice int
	// Killed is the replica killed (the one holding most devices); Kill
	// how its devices came back through the balancers.
	Killed string
	Kill   Recovery
	// Restart is how every device came back when all replicas were
	// stopped (SIGTERM) and started again; Ready is when the last of them
	// listened again, after the SIGTERMs.
	Restart Recovery
	Ready   time.Duration
	// KillDrops and RestartDrops are the UDP datagrams the kernel dropped
	// (a socket's receive buffer full) from the kill until the killed
	// replica's devices were back, and from the SIGTERMs until every
	// device was back (or the timeout).
	KillDrops, RestartDrops UDPDrops
}

// MeasureReplicas starts a three-member etcd cluster, cfg.Replicas fleetd
// replicas on it and one balancer (devsim balance) per simulator process
// in front of all the replicas, spreading the devices by their port. It
// joins cfg.Count devices, reads each replica's memory and idle CPU, kills
// (SIGKILL) the replica holding the most devices and times its devices'
// return through the balancers, starts it again, then restarts every
// replica at once and times every device's return. It writes the report
// to out.
func MeasureReplicas(ctx context.Context, cfg ReplicasConfig, out io.Writer) (*ReplicasReport, error) {
	if cfg.Replicas <= 0 {
		cfg.Replicas = 3
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 15 * time.Second
	}
	if cfg.Procs <= 0 {
		cfg.Procs = 1
	}
	var r *ReplicasReport
	err := withRun(ctx, &cfg.RestartConfig, "devsim-replicas-", func(tb harness.TB, dir string) error {
		var err error
		r, err = measureReplicas(tb, cfg, dir, out)
		return err
	})
	return r, err
}

// withRun applies cfg's defaults, makes its work directory and runs fn
// under harness.Do: every process fn starts is stopped when it returns.
func withRun(ctx context.Context, cfg *RestartConfig, tmpPrefix string, fn func(tb harness.TB, dir string) error) error {
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
	if cfg.StartRate == 0 {
		cfg.StartRate = 200
	}
	switch {
	case cfg.Nice < 0 || cfg.Nice > 19:
		return fmt.Errorf("devsim: niceness %d: want 0 to 19 (a simulator may only run below the fleet)", cfg.Nice)
	case cfg.Nice > 0 && cfg.Procs <= 1:
		return errors.New("devsim: a niceness applies to simulator processes: give -procs 2 or more")
	}
	if cfg.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("devsim: find this program to run more devsim processes: %w", err)
		}
		cfg.Exe = exe
	}
	dir := cfg.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", tmpPrefix)
		if err != nil {
			return fmt.Errorf("devsim: %w", err)
		}
		defer os.RemoveAll(d)
		dir = d
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("devsim: %w", err)
	}
	return harness.Do(ctx, harness.DoConfig{Dir: filepath.Join(dir, "tmp"), Log: logWriter{cfg.Logger}}, func(tb harness.TB) error {
		return fn(tb, dir)
	})
}

// measureReplicas is MeasureReplicas's body: every process stops when it
// returns.
func measureReplicas(tb harness.TB, cfg ReplicasConfig, dir string, out io.Writer) (*ReplicasReport, error) {
	ctx, log := tb.Context(), cfg.Logger
	bin, err := buildFleet(tb, cfg.Bin, dir, log)
	if err != nil {
		return nil, err
	}
	log.Info("starting etcd (3 members)")
	etcd := etcdcluster.Start(tb, etcdcluster.Options{Members: 3})
	reps := make([]*harness.Fleet, cfg.Replicas)
	addrs := make([]string, cfg.Replicas)
	for i := range reps {
		id := replicaID(i)
		listen, err := replicaListen()
		if err != nil {
			return nil, err
		}
		reps[i], err = harness.StartFleetErr(tb, harness.FleetConfig{
			Listen: listen, Bin: bin, DataDir: filepath.Join(dir, "fleet-"+id), LogLevel: "warn", LogDir: dir, Name: "fleetd-" + id,
			Args: []string{"--store", etcd.StoreURL("fleet"), "--peer-listen", "127.0.0.1:0", "--replica-lease-ttl", cfg.LeaseTTL.String(), "--replica-id", id},
		})
		if err != nil {
			return nil, fmt.Errorf("devsim: replica %s: %w", id, err)
		}
		addrs[i] = reps[i].Addr
	}
	token, err := joinToken(reps[0], cfg.Count)
	if err != nil {
		return nil, err
	}
	// Room for four flows a device: each redial is a new flow, and a
	// crowd redialling holds several at once.
	lbs, err := startBalancers(tb, cfg.Exe, cfg.Procs, 4*((cfg.Count+cfg.Procs-1)/cfg.Procs), addrs, dir)
	if err != nil {
		return nil, err
	}
	var lbAddrs []string
	for _, lb := range lbs {
		lbAddrs = append(lbAddrs, lb.addr)
	}
	sim, simDone, simStopped, simStat, err := startSim(tb, cfg.RestartConfig, lbAddrs, token, dir)
	if err != nil {
		return nil, err
	}

	r := &ReplicasReport{Count: cfg.Count, Procs: cfg.Procs, Settle: cfg.Settle, LeaseTTL: cfg.LeaseTTL}
	log.Info("joining and connecting devices", "devices", cfg.Count, "replicas", addrs, "balancers", lbAddrs)
	if r.JoinAndConnect, err = joinAll(ctx, log, sim, simDone, simStopped); err != nil {
		return nil, err
	}

	// Idle: every replica, the simulators and the balancers over Settle.
	before := make([]harness.Stat, len(reps))
	for i, f := range reps {
		if before[i], err = f.Proc.Stat(); err != nil {
			return nil, fmt.Errorf("devsim: %w", err)
		}
	}
	sim0, lb0 := simStat(), sumStat(lbs)
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(cfg.Settle):
	}
	for i, f := range reps {
		st, err := f.Proc.Stat()
		if err != nil {
			return nil, fmt.Errorf("devsim: %w", err)
		}
		r.Replicas = append(r.Replicas, ReplicaFigures{ID: replicaID(i), Addr: f.Addr, Idle: st, IdleCPU: st.CPU - before[i].CPU})
	}
	sim1, lb1 := simStat(), sumStat(lbs)
	r.SimRSS, r.SimIdleCPU, r.SimNice = sim1.RSS, sim1.CPU-sim0.CPU, sim1.Nice
	r.BalancerRSS, r.BalancerIdleCPU = lb1.RSS, lb1.CPU-lb0.CPU

	// Where the tunnels are, as the fleet lists them.
	held, err := tunnelsByReplica(reps[0], cfg.Count)
	if err != nil {
		return nil, err
	}
	victim := 0
	for i := range r.Replicas {
		r.Replicas[i].Devices = len(held[r.Replicas[i].ID])
		if r.Replicas[i].Devices > r.Replicas[victim].Devices {
			victim = i
		}
		log.Info("replica with every device connected", "replica", r.Replicas[i].ID, "devices", r.Replicas[i].Devices,
			"rss", harness.MB(r.Replicas[i].Idle.RSS), "idle_cpu", r.Replicas[i].IdleCPU.Round(time.Millisecond))
	}
	r.Killed = replicaID(victim)

	// One replica killed: its devices come back on the others.
	log.Info("killing a replica (SIGKILL)", "replica", r.Killed, "devices", len(held[r.Killed]))
	udp0 := sampleUDP()
	t0 := time.Now()
	reps[victim].Kill()
	if r.Kill, err = awaitBack(ctx, log, sim, simDone, simStopped, t0, held[r.Killed], cfg.Timeout); err != nil {
		return nil, err
	}
	r.KillDrops = dropsBetween(udp0, sampleUDP(), addrs, lbAddrs)
	log.Info("the killed replica's devices are back", "back", r.Kill.Back.N, "missing", r.Kill.Missing,
		"p50", ms(r.Kill.Back.P50), "p90", ms(r.Kill.Back.P90), "max", ms(r.Kill.Back.Max))
	if err := reps[victim].RestartErr(); err != nil {
		return nil, fmt.Errorf("devsim: start replica %s again: %w", r.Killed, err)
	}

	// Every replica restarted at once.
	log.Info("restarting every replica (SIGTERM, then again)")
	all := make([]int, cfg.Count)
	for i := range all {
		all[i] = i
	}
	udp1 := sampleUDP()
	t1 := time.Now()
	errs := make([]error, len(reps))
	var wg sync.WaitGroup
	for i, f := range reps {
		wg.Go(func() { errs[i] = f.RestartErr() })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("devsim: restart the replicas: %w", err)
	}
	for _, f := range reps {
		r.Ready = max(r.Ready, f.ReadyAt.Sub(t1))
	}
	if r.Restart, err = awaitBack(ctx, log, sim, simDone, simStopped, t1, all, cfg.Timeout); err != nil {
		return nil, err
	}
	r.RestartDrops = dropsBetween(udp1, sampleUDP(), addrs, lbAddrs)
	// Let the handshakes' garbage settle before reading memory again.
	time.Sleep(2 * time.Second)
	for i, f := range reps {
		r.Replicas[i].After, r.Replicas[i].AfterErr = f.Proc.Stat()
		if f.Proc.Exited() {
			r.Replicas[i].AfterErr = fmt.Errorf("it exited (%v):\n%s", f.Proc.Err(), f.Proc.Tail(10))
		}
	}
	r.Write(out)
	return r, nil
}

// replicaListen returns a loopback address whose TCP and UDP port is free
// and below the kernel's ephemeral range. A replica killed and started
// again takes its port back: had it come from that range, one of the
// balancers' sockets (one per device flow, each on an ephemeral port) could
// hold it by then, as one did in a run of 10,000 devices.
func replicaListen() (string, error) {
	const lowest = 10000
	first := 32768 // Linux's default
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				first = n
			}
		}
	}
	for range 100 {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(lowest+rand.IntN(max(first-lowest, 1))))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		u, err := net.ListenPacket("udp", addr)
		l.Close()
		if err != nil {
			continue
		}
		u.Close()
		return addr, nil
	}
	return "", fmt.Errorf("devsim: no free port from %d to %d, below the ephemeral range, for a replica", lowest, first)
}

// replicaID names replica i: r-a, r-b, ...
func replicaID(i int) string { return fmt.Sprintf("r-%c", 'a'+i) }

// tunnelsByReplica lists, per replica ID, the devices (indexes) whose
// tunnel it holds, as fleet f lists them.
func tunnelsByReplica(f *harness.Fleet, count int) (map[string][]int, error) {
	ds, err := f.DevicesErr()
	if err != nil {
		return nil, fmt.Errorf("devsim: %w", err)
	}
	held := map[string][]int{}
	for _, d := range ds {
		n, err := strconv.Atoi(strings.TrimPrefix(d.Name, "sim-"))
		if err != nil || n < 1 || n > count || !d.Online {
			continue
		}
		held[d.Replica] = append(held[d.Replica], n-1)
	}
	return held, nil
}

// awaitBack waits until every device of devs has gone down and come up
// again since t0, or timeout, and says how they came back. The times come
// from the events; it looks once a second, as reading a large fleet's
// events costs CPU the replicas are measured on.
// Every 15 s it logs how many are back, so that a run cut short still
// shows how the return went.
func awaitBack(ctx context.Context, log *slog.Logger, sim fleetSim, simDone <-chan struct{}, simStopped func() error, t0 time.Time, devs []int, timeout time.Duration) (Recovery, error) {
	deadline := time.Now().Add(timeout)
	logged := time.Now()
	for {
		rec := recoveryOf(sim.Events(), t0, sim.Count(), devs)
		if rec.Missing == 0 || time.Now().After(deadline) {
			return rec, nil
		}
		if time.Since(logged) >= 15*time.Second {
			log.Info("devices coming back", "after", time.Since(t0).Round(time.Second), "back", rec.Back.N, "of", rec.Expected,
				"went_down", rec.Down, "dials", rec.Dials)
			logged = time.Now()
		}
		select {
		case <-ctx.Done():
			return rec, ctx.Err()
		case <-simDone:
			return rec, simStopped()
		case <-time.After(time.Second):
		}
	}
}

// recoveryOf says how the devices devs came back after t0, of n devices.
func recoveryOf(evs []Event, t0 time.Time, n int, devs []int) Recovery {
	want := make([]bool, n)
	for _, d := range devs {
		want[d] = true
	}
	down := make([]bool, n)
	back := make([]bool, n)
	dials := make([]int, n)
	rec := Recovery{Expected: len(devs)}
	var backs []time.Duration
	for _, e := range evs {
		if e.At.Before(t0) || e.Device < 0 || e.Device >= n {
			continue
		}
		switch e.Kind {
		case Down:
			if !down[e.Device] {
				down[e.Device] = true
				rec.Down++
			}
		case Dial:
			if want[e.Device] && !back[e.Device] {
				dials[e.Device]++
				rec.Dials++
			}
		case Up:
			if want[e.Device] && down[e.Device] && !back[e.Device] {
				back[e.Device] = true
				backs = append(backs, e.At.Sub(t0))
			}
		}
	}
	for _, d := range devs {
		if !back[d] {
			rec.Missing++
		}
		rec.MaxDials = max(rec.MaxDials, dials[d])
	}
	rec.Back = SpreadOf(backs)
	return rec
}

// balancerProc is a devsim balance process.
type balancerProc struct {
	*harness.Proc
	addr string
}

var balancingRE = regexp.MustCompile(`^balancing on (\S+)$`)

// startBalancers starts n balancers (exe balance) in front of backends,
// for flows flows each. Each holds a socket per device flow, so one per
// simulator process keeps every process within its open-file limit; each
// dials the replicas from loopback addresses of its own, and logs its
// replicas' health and its warnings to logDir/balancer-N.log.
func startBalancers(tb harness.TB, exe string, n, flows int, backends []string, logDir string) ([]balancerProc, error) {
	var lbs []balancerProc
	for i := range n {
		hosts, err := ProcHosts(roleBalancer, i+1, flows)
		if err != nil {
			return nil, err
		}
		p, err := harness.StartErr(tb, harness.Cmd{Name: fmt.Sprintf("balancer-%d", i+1), Path: exe,
			Args: []string{"balance", "-backends", strings.Join(backends, ","), "-local", joinAddrs(hosts)}, LogDir: logDir})
		if err != nil {
			return nil, fmt.Errorf("devsim: %w", err)
		}
		_, m, err := p.AwaitLine(tb.Context(), 0, balancingRE, time.Minute)
		if err != nil {
			return nil, fmt.Errorf("devsim: start balancer: %w\n%s", err, p.Tail(10))
		}
		lbs = append(lbs, balancerProc{p, m[1]})
	}
	return lbs, nil
}

// Write prints the report as Markdown-friendly text.
func (r *ReplicasReport) Write(w io.Writer) {
	fmt.Fprintf(w, "## %d simulated devices over %d fleetd replicas on etcd (leases of %s)\n\n", r.Count, len(r.Replicas), r.LeaseTTL)
	fmt.Fprintf(w, "machine: %d CPUs, %s/%s; %d simulator processes, each behind its own balancer\n\n", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, r.Procs)
	fmt.Fprintf(w, "joined and connected in %s\n", r.JoinAndConnect.Round(time.Millisecond))
	fmt.Fprintf(w, "\nreplicas with every device connected, %s idle:\n", r.Settle)
	for _, rp := range r.Replicas {
		after := harness.MB(rp.After.RSS)
		if rp.AfterErr != nil {
			after = fmt.Sprintf("not read: %v", rp.AfterErr)
		}
		fmt.Fprintf(w, "  %s: %d devices, RSS %s (%.1f kB a device; peak %s), %d threads; CPU %s (%.1f%% of one core); RSS after the full restart %s\n",
			rp.ID, rp.Devices, harness.MB(rp.Idle.RSS), float64(rp.Idle.RSS)/float64(max(rp.Devices, 1))/1e3, harness.MB(rp.Idle.Peak),
			rp.Idle.Threads, rp.IdleCPU.Round(time.Millisecond), 100*rp.IdleCPU.Seconds()/r.Settle.Seconds(), after)
	}
	fmt.Fprintf(w, "  simulators (niceness %d): RSS %s, CPU %.1f%% of one core; balancers: RSS %s, CPU %.1f%% of one core\n",
		r.SimNice, harness.MB(r.SimRSS), 100*r.SimIdleCPU.Seconds()/r.Settle.Seconds(), harness.MB(r.BalancerRSS), 100*r.BalancerIdleCPU.Seconds()/r.Settle.Seconds())
	fmt.Fprintf(w, "\nreplica %s killed (SIGKILL); times after the kill:\n", r.Killed)
	r.Kill.write(w)
	fmt.Fprintf(w, "  UDP datagrams the kernel dropped: %s\n", r.KillDrops)
	fmt.Fprintf(w, "\nevery replica restarted (SIGTERM, then again; the last listening after %s); times after the SIGTERMs:\n", ms(r.Ready))
	r.Restart.write(w)
	fmt.Fprintf(w, "  UDP datagrams the kernel dropped: %s\n", r.RestartDrops)
}

func (rec Recovery) write(w io.Writer) {
	fmt.Fprintf(w, "  devices to come back: %d; tunnels that went down: %d\n", rec.Expected, rec.Down)
	fmt.Fprintf(w, "  back: %s\n", rec.Back)
	fmt.Fprintf(w, "  dial attempts: %d (most by one device: %d); not back within the timeout: %d\n", rec.Dials, rec.MaxDials, rec.Missing)
}
