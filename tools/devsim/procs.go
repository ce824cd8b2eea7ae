package devsim

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"remoteler.dev/edge/tools/harness"
)

// fleetSim is what MeasureRestart watches: the simulated devices, in this
// process (a *Sim) or split over devsim processes (simProcs).
type fleetSim interface {
	// Count is the number of devices.
	Count() int
	// WaitUp waits until at least n devices are up, or ctx ends.
	WaitUp(ctx context.Context, n int) error
	// Events returns every event so far, in time order.
	Events() []Event
}

// EventLine formats an event as devsim --events prints it, one a line:
// "event KIND DEVICE UNIXNANO".
func EventLine(e Event) string {
	return fmt.Sprintf("event %s %d %d", e.Kind, e.Device, e.At.UnixNano())
}

var eventRE = regexp.MustCompile(`^event (dial|up|down) (\d+) (\d+)$`)

// The roles of ProcHosts: each simulator process binds its devices'
// sockets on loopback addresses of its own, and each balancer its flows'.
const (
	roleSim      = 1
	roleBalancer = 2
)

// joinAddrs lists addresses as a flag takes them: a,b,c.
func joinAddrs(as []netip.Addr) string {
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ",")
}

// parseEventLine reads a line EventLine wrote.
func parseEventLine(l string) (Event, bool) {
	m := eventRE.FindStringSubmatch(l)
	if m == nil {
		return Event{}, false
	}
	dev, err1 := strconv.Atoi(m[2])
	ns, err2 := strconv.ParseInt(m[3], 10, 64)
	if err1 != nil || err2 != nil {
		return Event{}, false
	}
	k := map[string]Kind{"dial": Dial, "up": Up, "down": Down}[m[1]]
	return Event{Device: dev, Kind: k, At: time.Unix(0, ns)}, true
}

// simProcs is a fleet of simulated devices split over devsim processes,
// each running "devsim --events" on its share and printing its events.
type simProcs struct {
	count int
	procs []*harness.Proc
	done  chan struct{} // closed when a process has exited
}

// startSimProcs starts cfg.Procs devsim processes (the program cfg.Exe)
// that together simulate cfg.Count devices of the fleet, process i at
// addrs[i % len(addrs)], joining with token, its output also in
// logDir/devsim-N.log.
func startSimProcs(tb harness.TB, cfg RestartConfig, addrs []string, token, dataDir, logDir string) (*simProcs, error) {
	sp := &simProcs{count: cfg.Count, done: make(chan struct{})}
	per := (cfg.Count + cfg.Procs - 1) / cfg.Procs
	for first := 0; first < cfg.Count; first += per {
		n := min(per, cfg.Count-first)
		hosts, err := ProcHosts(roleSim, len(sp.procs)+1, n)
		if err != nil {
			return nil, err
		}
		args := []string{"--bind", joinAddrs(hosts), "--fleet", addrs[len(sp.procs)%len(addrs)], "--token", token, "--count", strconv.Itoa(n), "--first", strconv.Itoa(first),
			"--data", dataDir, "--events", "--start-rate", strconv.FormatFloat(cfg.StartRate/float64(cfg.Procs), 'f', -1, 64)}
		for _, d := range []struct {
			flag string
			v    time.Duration
		}{{"--keepalive", cfg.Keepalive}, {"--liveness", cfg.Liveness}, {"--idle-timeout", cfg.IdleTimeout}, {"--min-backoff", cfg.MinBackoff}, {"--max-backoff", cfg.MaxBackoff}} {
			if d.v != 0 {
				args = append(args, d.flag, d.v.String())
			}
		}
		path := cfg.Exe
		if cfg.Nice > 0 {
			path, args = "nice", append([]string{"-n", strconv.Itoa(cfg.Nice), cfg.Exe}, args...)
		}
		p, err := harness.StartErr(tb, harness.Cmd{Name: fmt.Sprintf("devsim-%d", len(sp.procs)+1), Path: path, Args: args, StopTimeout: time.Minute, LogDir: logDir})
		if err != nil {
			return nil, fmt.Errorf("devsim: %w", err)
		}
		sp.procs = append(sp.procs, p)
	}
	go func() {
		cases := make(chan struct{}, len(sp.procs))
		for _, p := range sp.procs {
			go func() {
				select {
				case <-p.Done():
					cases <- struct{}{}
				case <-tb.Context().Done():
				}
			}()
		}
		select {
		case <-cases:
			close(sp.done)
		case <-tb.Context().Done():
		}
	}()
	return sp, nil
}

func (sp *simProcs) Count() int { return sp.count }

// Events parses the processes' event lines.
func (sp *simProcs) Events() []Event {
	var evs []Event
	for _, p := range sp.procs {
		for _, l := range p.Lines() {
			if e, ok := parseEventLine(l.Text); ok && !l.Stderr {
				evs = append(evs, e)
			}
		}
	}
	slices.SortStableFunc(evs, func(a, b Event) int { return a.At.Compare(b.At) })
	return evs
}

// up counts the devices whose last up or down event is up.
func (sp *simProcs) up() int {
	state := make([]int8, sp.count) // 1 up, -1 down
	n := 0
	for _, e := range sp.Events() {
		if e.Device < 0 || e.Device >= sp.count || e.Kind == Dial {
			continue
		}
		was := state[e.Device] == 1
		state[e.Device] = map[Kind]int8{Up: 1, Down: -1}[e.Kind]
		switch {
		case !was && e.Kind == Up:
			n++
		case was && e.Kind == Down:
			n--
		}
	}
	return n
}

// WaitUp polls the event lines until n devices are up, once a second:
// parsing a large fleet's lines costs CPU.
func (sp *simProcs) WaitUp(ctx context.Context, n int) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		if sp.up() >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("devsim: %d of %d devices up: %w", sp.up(), n, ctx.Err())
		case <-tick.C:
		}
	}
}

// err describes the process that exited.
func (sp *simProcs) err() error {
	for _, p := range sp.procs {
		if p.Exited() {
			return fmt.Errorf("devsim: simulator %s exited (%v):\n%s", p.Name(), p.Err(), p.Tail(10))
		}
	}
	return nil
}

// stat reads the processes' figures together (sumStat).
func (sp *simProcs) stat() harness.Stat { return sumStat(sp.procs) }

// sumStat reads processes' /proc entries: their RSS and CPU summed, and
// the least niceness among them. A process that cannot be read counts for
// nothing (19 is the niceness when none can).
func sumStat[P interface{ Stat() (harness.Stat, error) }](ps []P) harness.Stat {
	sum := harness.Stat{Nice: 19}
	for _, p := range ps {
		if st, err := p.Stat(); err == nil {
			sum.RSS, sum.CPU, sum.Nice = sum.RSS+st.RSS, sum.CPU+st.CPU, min(sum.Nice, st.Nice)
		}
	}
	return sum
}
