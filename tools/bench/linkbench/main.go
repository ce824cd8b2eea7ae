// Command linkbench compares, in one run and through the same impaired
// link (tools/linksim), a device reached through the fleet (fleetd, the
// QUIC tunnel, edge-agent) with the usual peer: an OpenSSH reverse tunnel
// over TCP (ssh -R to a fleet-side sshd, started again in a loop the way
// autossh does), exposing the device's own OpenSSH sshd. Users reach both
// with the OpenSSH client: ours through tsh config's ProxyCommand, the
// peer through the port the reverse tunnel exposes. It measures:
//
//   - recovery after a blackout: an interactive stream (a byte every
//     100 ms into cat, echoed) through 10 s and 60 s blackouts of the
//     link; the time from the link's return to the first echo, in the
//     link's round trips, and whether every byte came back in order;
//     and bulk transfers both ways through the same blackouts, timed from
//     the link's return to the first bytes at the receiver (at the user
//     for a download; on the device, logged by the arrivals helper, for an
//     upload);
//   - bulk throughput on the lte and 3g profiles with 1% and 5% random
//     loss, each way (20 MB on lte, 2 MB on 3g, at most 25 s each);
//   - idle bytes per device per day, from linksim's counters over an idle
//     window (8 min) behind a NAT that forgets a mapping after 30 s, with
//     QUIC's path MTU probes (a one-time cost of a new connection) counted
//     apart, and whether the device still takes a new session at the end
//     (tsh ssh DEVICE true); with the bytes of one reconnect (measured
//     below), a day with 0, 6 and 24 reconnects;
//   - connection set-up: a new device's first start (ours joins first), a
//     provisioned device's start, and a reconnect after the server closed
//     the connection (fleetd restarted; the peer's sshd connection
//     killed), in round trips of the link beyond the same on a perfect
//     link.
//
// It builds fleetd, edge-agent, tsh and fleetctl (or takes them from
// -bin), runs everything on 127.0.0.1 with its state in a temporary
// directory, and stops every process it started before it exits. It
// needs Linux and OpenSSH's ssh, ssh-keygen and sshd.
//
//	go run ./tools/bench/linkbench            # 8 to 13 minutes
//	go run ./tools/bench/linkbench -quick     # under 2 minutes, rougher
//
// The figures go to stdout as Markdown (docs/benchmarks.md, "Links",
// holds a dated copy); progress goes to stderr. It is a developer tool:
// nothing imports it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"remoteler.dev/edge/tools/linksim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "linkbench:", err)
		os.Exit(2)
	}
	if err := run(ctx, cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "linkbench:", err)
		os.Exit(1)
	}
}

// bulkCase is a profile and the random loss put on it, both directions.
type bulkCase struct {
	profile string
	loss    float64
}

// config is what the flags say.
type config struct {
	Bin, Dir  string
	Quick     bool
	Profile   string // for recovery, idle and connection set-up
	Blackouts []time.Duration
	// BulkRecovery times bulk transfers, both ways, through the blackouts
	// too.
	BulkRecovery bool
	Bulk         []bulkCase
	Sizes        map[string]int64 // bulk transfer size per profile
	Cap          time.Duration    // longest bulk transfer
	Idle         time.Duration
	NATTimeout   time.Duration
	PeerAlive    time.Duration // the peer's ServerAliveInterval
	Trials       int
	// ReconnectWait bounds the wait for each system to be back after
	// its server closed the connection.
	ReconnectWait time.Duration
	Timeout       time.Duration
}

func defaultConfig() config {
	return config{
		Profile:   "lte",
		Blackouts: []time.Duration{10 * time.Second, 60 * time.Second}, BulkRecovery: true,
		Bulk:  []bulkCase{{"lte", 0.01}, {"lte", 0.05}, {"3g", 0.01}, {"3g", 0.05}},
		Sizes: map[string]int64{"lte": 20e6, "3g": 2e6},
		Cap:   25 * time.Second, Idle: 8 * time.Minute, NATTimeout: 30 * time.Second,
		PeerAlive: 30 * time.Second, Trials: 3, ReconnectWait: 5 * time.Minute, Timeout: 30 * time.Minute,
	}
}

// quickConfig is -quick: one blackout, two small bulk cases, a minute idle.
func quickConfig() config {
	c := defaultConfig()
	c.Quick = true
	c.Blackouts = []time.Duration{10 * time.Second}
	c.Bulk = []bulkCase{{"lte", 0.01}, {"3g", 0.05}}
	c.Sizes = map[string]int64{"lte": 2e6, "3g": 256e3}
	c.Cap, c.Idle, c.Trials, c.ReconnectWait = 5*time.Second, time.Minute, 1, 20*time.Second
	return c
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	quick := false
	for _, a := range args {
		if a == "-quick" || a == "--quick" || a == "-quick=true" || a == "--quick=true" {
			quick = true
		}
	}
	cfg := defaultConfig()
	if quick {
		cfg = quickConfig()
	}
	fs := flag.NewFlagSet("linkbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Bool("quick", false, "a quick, rougher run (under 2 minutes): one 10s blackout, lte:1% and 3g:5% with 2 MB/256 KB and a 5s cap, 1 minute idle, one trial; other flags still apply")
	fs.StringVar(&cfg.Bin, "bin", "", "`DIR` holding fleetd, edge-agent, tsh and fleetctl (default: build them)")
	fs.StringVar(&cfg.Dir, "dir", "", "keep logs and state in `DIR` (default: a temporary directory, removed)")
	fs.StringVar(&cfg.Profile, "profile", cfg.Profile, "linksim profile for recovery, idle and connection set-up")
	blackouts := fs.String("blackouts", joinDurations(cfg.Blackouts), "comma-separated blackout `durations`")
	fs.BoolVar(&cfg.BulkRecovery, "bulk-recovery", cfg.BulkRecovery, "also time bulk transfers, both ways, through each blackout")
	bulkFlag := fs.String("bulk", joinBulk(cfg.Bulk), "comma-separated bulk `cases`, PROFILE:LOSS (the loss replaces the profile's own, both ways; \"none\" skips bulk)")
	sizes := fs.String("size", joinSizes(cfg.Sizes), "bulk transfer `size` per profile, PROFILE=SIZE,... (B, KB, MB = powers of 1000; KiB, MiB = of 1024)")
	fs.DurationVar(&cfg.Cap, "cap", cfg.Cap, "longest a bulk transfer may take; the rate is taken over what arrived")
	fs.DurationVar(&cfg.Idle, "idle", cfg.Idle, "idle window of the idle devices (they idle alongside the other measurements)")
	fs.DurationVar(&cfg.NATTimeout, "nat-timeout", cfg.NATTimeout, "UDP NAT mapping timeout of the idle device's link")
	fs.DurationVar(&cfg.PeerAlive, "peer-alive", cfg.PeerAlive, "the peer's ServerAliveInterval (3 unanswered end its connection)")
	fs.IntVar(&cfg.Trials, "trials", cfg.Trials, "connection set-ups per case; the median is reported")
	fs.DurationVar(&cfg.ReconnectWait, "reconnect-wait", cfg.ReconnectWait, "how long to wait for each system to be back after its server closed the connection")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "bound on the whole run")
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: linkbench [flags]\n\nOurs (fleetd + QUIC tunnel + edge-agent) versus an OpenSSH reverse tunnel over TCP, through the same linksim link.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if cfg.Blackouts, err = parseDurations(*blackouts); err != nil {
		return cfg, fmt.Errorf("-blackouts: %w", err)
	}
	if cfg.Bulk, err = parseBulk(*bulkFlag); err != nil {
		return cfg, fmt.Errorf("-bulk: %w", err)
	}
	if cfg.Sizes, err = parseSizes(*sizes); err != nil {
		return cfg, fmt.Errorf("-size: %w", err)
	}
	for _, c := range append(cfg.Bulk, bulkCase{profile: cfg.Profile}) {
		if _, err := linksim.ProfileByName(c.profile); err != nil {
			return cfg, err
		}
	}
	for _, c := range cfg.Bulk {
		if cfg.Sizes[c.profile] <= 0 {
			return cfg, fmt.Errorf("-size gives no size for profile %q", c.profile)
		}
	}
	if cfg.Trials < 1 {
		return cfg, errors.New("-trials must be at least 1")
	}
	return cfg, nil
}

func parseDurations(s string) ([]time.Duration, error) {
	var out []time.Duration
	for _, f := range splitList(s) {
		d, err := time.ParseDuration(f)
		if err != nil || d <= 0 {
			return nil, fmt.Errorf("%q is not a positive duration", f)
		}
		out = append(out, d)
	}
	return out, nil
}

func joinDurations(ds []time.Duration) string {
	var parts []string
	for _, d := range ds {
		parts = append(parts, d.String())
	}
	return strings.Join(parts, ",")
}

func parseBulk(s string) ([]bulkCase, error) {
	if strings.TrimSpace(s) == "none" {
		return nil, nil
	}
	var out []bulkCase
	for _, f := range splitList(s) {
		p, l, ok := strings.Cut(f, ":")
		if !ok {
			return nil, fmt.Errorf("%q is not PROFILE:LOSS", f)
		}
		loss, err := linksim.ParseRatio(l)
		if err != nil {
			return nil, err
		}
		out = append(out, bulkCase{strings.ToLower(strings.TrimSpace(p)), loss})
	}
	return out, nil
}

func joinBulk(cs []bulkCase) string {
	var parts []string
	for _, c := range cs {
		parts = append(parts, c.profile+":"+linksim.FormatRatio(c.loss))
	}
	return strings.Join(parts, ",")
}

func parseSizes(s string) (map[string]int64, error) {
	out := map[string]int64{}
	for _, f := range splitList(s) {
		p, v, ok := strings.Cut(f, "=")
		if !ok {
			return nil, fmt.Errorf("%q is not PROFILE=SIZE", f)
		}
		n, err := parseSize(v)
		if err != nil {
			return nil, err
		}
		out[strings.ToLower(strings.TrimSpace(p))] = n
	}
	return out, nil
}

func joinSizes(m map[string]int64) string {
	var parts []string
	for _, p := range []string{"lte", "3g"} {
		if n, ok := m[p]; ok {
			parts = append(parts, p+"="+formatSize(n))
		}
	}
	return strings.Join(parts, ",")
}

// parseSize reads "20MB", "64KiB", "512" (bytes).
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"GB", 1e9}, {"MB", 1e6}, {"KB", 1e3}, {"kB", 1e3}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("%q is not a size", s)
	}
	return int64(v * float64(mult)), nil
}

func formatSize(n int64) string {
	switch {
	case n >= 1e6 && n%1e5 == 0:
		return strconv.FormatFloat(float64(n)/1e6, 'f', -1, 64) + "MB"
	case n >= 1e3 && n%100 == 0:
		return strconv.FormatFloat(float64(n)/1e3, 'f', -1, 64) + "KB"
	}
	return strconv.FormatInt(n, 10) + "B"
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
