// Command devsim simulates many devices in one process, each a real tunnel
// client with its own identity, joined through fleetd's join API; and it
// measures how a fleet of them comes back when fleetd restarts.
//
//	devsim --fleet 127.0.0.1:3080 --token JOIN --count 1000 --data DIR
//	devsim restart [-count 1000] [-procs 1] [-quick] [-bin DIR]
//	devsim cost [-count 1000] [-window 1m] [-check-in 5m] [-bin DIR]
//	devsim replicas [-count 1000] [-procs 1] [-replicas 3] [-lease-ttl 15s] [-bin DIR]
//	devsim balance -backends HOST:PORT,...
//
// The first form joins the devices that have no identity in DIR yet (the
// join string needs that many uses: fleetctl tokens add --uses=1000), keeps
// every tunnel up until interrupted, and logs each reconnect. The second
// starts its own fleetd (built from this repository unless -bin names a
// directory holding one), joins the devices, restarts fleetd with SIGTERM
// and a new process on the same port and data dir, and prints how the
// reconnects spread out, whether they form a synchronised storm, and
// fleetd's memory with the devices connected. Each device holds one open
// file: where one process may not open that many, -procs N splits the
// devices over N devsim processes (the first form with --first, --count and
// --events), whose events the measurement reads. The third measures what a
// held reverse tunnel costs fleetd (memory, CPU, wake-ups) against a direct
// node that checks in now and then, per device. The fourth runs the
// devices over fleetd replicas on a 3-member etcd cluster (Debian's
// etcd-server), each simulator process behind its own balancer (the fifth
// form, which spreads devices over the replicas by port and moves them off
// a dead one), and reports each replica's memory and idle CPU and how the
// devices come back after one replica is killed and after all restart.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"remoteler.dev/edge/tools/balancer"
	"remoteler.dev/edge/tools/devsim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run is the command; it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var err error
	switch {
	case len(args) > 0 && args[0] == "restart":
		err = restart(ctx, args[1:], stdout, stderr)
	case len(args) > 0 && args[0] == "replicas":
		err = replicas(ctx, args[1:], stdout, stderr)
	case len(args) > 0 && args[0] == "balance":
		err = balance(ctx, args[1:], stdout, stderr)
	case len(args) > 0 && args[0] == "cost":
		err = cost(ctx, args[1:], stdout, stderr)
	default:
		err = simulate(ctx, args, stdout, stderr)
	}
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case err != nil:
		fmt.Fprintln(stderr, err) // errors from package devsim say "devsim: ..."
		return 1
	}
	return 0
}

var errUsage = errors.New("usage")

func simulate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("devsim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg devsim.Config
	fs.StringVar(&cfg.Fleet, "fleet", "", "the fleet's `HOST:PORT` (required)")
	fs.StringVar(&cfg.Token, "token", "", "join string (TOKEN@sha256:PIN) with enough uses for the devices that have not joined yet")
	fs.IntVar(&cfg.Count, "count", 1, "number of simulated devices")
	fs.StringVar(&cfg.DataDir, "data", "", "`DIR` keeping one identity file per device (required); a later run reuses them")
	fs.StringVar(&cfg.Prefix, "prefix", "sim", "device names are PREFIX-00001, PREFIX-00002, ...")
	fs.IntVar(&cfg.First, "first", 0, "number the devices from FIRST+1, to split a fleet of simulated devices over several processes")
	fs.DurationVar(&cfg.Keepalive, "keepalive", 0, "NAT keep-alive period of every device (default 25s, the agent's; negative turns it off)")
	fs.DurationVar(&cfg.Liveness, "liveness", 0, "heartbeat period of every device on an idle link (default 2m, the agent's)")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", 0, "tunnel idle timeout of every device (default 2 × liveness + 30s, the agent's)")
	fs.DurationVar(&cfg.MinBackoff, "min-backoff", 0, "first reconnect delay bound of every device (default 500ms, the agent's)")
	fs.DurationVar(&cfg.MaxBackoff, "max-backoff", 0, "largest reconnect delay of every device (default 1m, the agent's)")
	fs.Float64Var(&cfg.StartRate, "start-rate", 200, "tunnels started per second at first (negative: all at once)")
	events := fs.Bool("events", false, "print every dial, tunnel up and tunnel down on stdout (\"event KIND DEVICE UNIXNANO\"), as devsim restart -procs reads them")
	fs.IntVar(&cfg.JoinWorkers, "join-workers", 8, "devices joining at once")
	fs.Func("bind", "local `ADDR,...` the devices' UDP sockets are bound to, one after the other (e.g. 127.1.1.1,127.1.1.2; at most ~8,000 devices an address)", func(v string) error {
		as, err := parseAddrs(v)
		cfg.LocalAddrs = as
		return err
	})
	verbose := fs.Bool("v", false, "also log every device's tunnel messages")
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: devsim --fleet HOST:PORT --token JOIN --count N --data DIR [flags]\n"+
			"       devsim restart [flags]   (devsim restart -h for its flags)\n\n"+
			"Simulates N devices, each a real tunnel client with its own identity, until interrupted.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "devsim: unexpected argument %q\n", fs.Arg(0))
		return errUsage
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	cfg.Logger = log
	if *verbose {
		cfg.TunnelLogger = log
	}
	if *events {
		var mu sync.Mutex // one line at a time
		cfg.OnEvent = func(e devsim.Event) {
			mu.Lock()
			defer mu.Unlock()
			fmt.Fprintln(stdout, devsim.EventLine(e))
		}
	}
	sim, err := devsim.New(cfg)
	if err != nil {
		return err
	}
	return sim.Run(ctx)
}

func restart(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("devsim restart", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg devsim.RestartConfig
	quick, quiet := restartFlags(fs, &cfg)
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: devsim restart [flags]\n\n"+
			"Starts fleetd, joins simulated devices, restarts fleetd (SIGTERM, then again on the same port and data dir)\n"+
			"and reports how the reconnects spread out and fleetd's memory.\n\n")
		fs.PrintDefaults()
	}
	if err := parseMeasure(fs, args, &cfg, quick, quiet, stderr); err != nil {
		return err
	}
	_, err := devsim.MeasureRestart(ctx, cfg, stdout)
	return err
}

// restartFlags defines the flags devsim restart and devsim replicas share.
func restartFlags(fs *flag.FlagSet, cfg *devsim.RestartConfig) (quick, quiet *bool) {
	fs.IntVar(&cfg.Count, "count", 1000, "number of simulated devices")
	fs.StringVar(&cfg.Bin, "bin", "", "`DIR` holding fleetd (default: build it into the work directory)")
	fs.StringVar(&cfg.Dir, "dir", "", "work `DIR` for fleetd's data, the identities and fleetd's logs (default: a temporary one, removed)")
	fs.DurationVar(&cfg.Settle, "settle", 10*time.Second, "idle time with every device up before fleetd's memory is read")
	fs.DurationVar(&cfg.Timeout, "timeout", 3*time.Minute, "how long to wait for every device to be back after the restart")
	fs.Float64Var(&cfg.StartRate, "start-rate", 200, "tunnels started per second at first")
	fs.DurationVar(&cfg.Keepalive, "keepalive", 0, "devices' NAT keep-alive period (default 25s, the agent's)")
	fs.DurationVar(&cfg.Liveness, "liveness", 0, "devices' heartbeat period (default 2m, the agent's)")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", 0, "devices' tunnel idle timeout (default 2 × liveness + 30s, the agent's)")
	fs.DurationVar(&cfg.MinBackoff, "min-backoff", 0, "devices' first reconnect delay bound (default 500ms, the agent's)")
	fs.DurationVar(&cfg.MaxBackoff, "max-backoff", 0, "devices' largest reconnect delay (default 1m, the agent's)")
	fs.IntVar(&cfg.Procs, "procs", 1, "split the devices over this many devsim processes (each device holds an open file: for more devices than one process may open)")
	fs.IntVar(&cfg.Nice, "nice", 0, "run the devsim processes of -procs at this niceness, below the fleet's, as deployed devices do not share its CPUs (0: as the fleet)")
	return fs.Bool("quick", false, "a quick check: 50 devices, 1s settle, 1m timeout (overrides -count, -settle, -timeout)"),
		fs.Bool("q", false, "no progress on stderr")
}

// parseMeasure parses the flags of devsim restart or replicas into cfg,
// with -quick's and -q's effects.
func parseMeasure(fs *flag.FlagSet, args []string, cfg *devsim.RestartConfig, quick, quiet *bool, stderr io.Writer) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if *quick {
		cfg.Count, cfg.Settle, cfg.Timeout = 50, time.Second, time.Minute
	}
	if !*quiet {
		cfg.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	}
	return nil
}

func replicas(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("devsim replicas", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg devsim.ReplicasConfig
	quick, quiet := restartFlags(fs, &cfg.RestartConfig)
	fs.IntVar(&cfg.Replicas, "replicas", 3, "number of fleetd replicas (on a 3-member etcd cluster)")
	fs.DurationVar(&cfg.LeaseTTL, "lease-ttl", 15*time.Second, "each replica's etcd lease (fleetd --replica-lease-ttl)")
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: devsim replicas [flags]\n\n"+
			"Starts a 3-member etcd cluster, fleetd replicas on it and a balancer per simulator process, joins simulated\n"+
			"devices, reports each replica's memory and idle CPU, kills (SIGKILL) the replica holding the most devices and\n"+
			"times their return, then restarts every replica and times every device's return.\n\n")
		fs.PrintDefaults()
	}
	if err := parseMeasure(fs, args, &cfg.RestartConfig, quick, quiet, stderr); err != nil {
		return err
	}
	_, err := devsim.MeasureReplicas(ctx, cfg, stdout)
	return err
}

// balanceFiles is the open-file limit devsim balance asks for.
const balanceFiles = 1 << 17

// balance runs a balancer (package balancer) in front of fleetd replicas,
// spreading clients over them by port, until interrupted: devsim replicas
// starts one per simulator process.
func balance(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("devsim balance", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "`HOST:PORT` to listen on (TCP and UDP)")
	backends := fs.String("backends", "", "the replicas' `HOST:PORT,...` (required)")
	var local []netip.Addr
	fs.Func("local", "local `ADDR,...` the flows' sockets to the replicas are bound to, one after the other (at most ~8,000 flows an address)", func(v string) error {
		as, err := parseAddrs(v)
		local = as
		return err
	})
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: devsim balance -backends HOST:PORT,... [-listen HOST:PORT]\n\n"+
			"Balances TCP and UDP clients over fleetd replicas by their port, until interrupted: a replica that is not\n"+
			"ready takes no new clients and keeps its UDP flows for 30 s; one that is down loses them at once. Prints\n"+
			"\"balancing on HOST:PORT\" once it listens.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if *backends == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "devsim balance: -backends is required, and nothing else")
		return errUsage
	}
	addrs := strings.Split(*backends, ",")
	// A socket a flow: a crowd of devices redialling (a new port each
	// dial) may hold several times their number for the 30 s an
	// unanswered flow lives.
	if err := devsim.RaiseFileLimit(balanceFiles); err != nil {
		fmt.Fprintf(stderr, "devsim balance: %v\n", err)
	}
	// A socket that cannot be had stops the balancer, saying why: going
	// on would hold the machine's last ports.
	fatal := make(chan error, 1)
	lb, err := balancer.Start(balancer.Config{Listen: *listen, Backends: addrs, Rule: balancer.ByPort(len(addrs)), LocalAddrs: local,
		Logger: slog.New(slog.NewTextHandler(stderr, nil)), // its replicas' health; moved flows are at debug
		OnSocketError: func(err error) {
			select {
			case fatal <- err:
			default:
			}
		}})
	if err != nil {
		return fmt.Errorf("devsim balance: %w", err)
	}
	defer lb.Close()
	fmt.Fprintf(stdout, "balancing on %s\n", lb.Addr())
	select {
	case <-ctx.Done():
		return nil
	case err := <-fatal:
		return fmt.Errorf("devsim balance: %w (use more local addresses: -local)", err)
	}
}

// parseAddrs reads a flag's list of IP addresses: a,b,c.
func parseAddrs(v string) ([]netip.Addr, error) {
	var as []netip.Addr
	for _, f := range strings.Split(v, ",") {
		a, err := netip.ParseAddr(strings.TrimSpace(f))
		if err != nil {
			return nil, err
		}
		as = append(as, a)
	}
	return as, nil
}

func cost(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("devsim cost", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg devsim.CostConfig
	fs.IntVar(&cfg.Count, "count", 1000, "number of simulated devices of each kind")
	fs.StringVar(&cfg.Bin, "bin", "", "`DIR` holding fleetd (default: build it into the work directory)")
	fs.StringVar(&cfg.Dir, "dir", "", "work `DIR` for fleetd's data, the identities and fleetd.log (default: a temporary one, removed)")
	fs.DurationVar(&cfg.Window, "window", time.Minute, "how long fleetd is watched in each phase")
	fs.DurationVar(&cfg.CheckIn, "check-in", 5*time.Minute, "how often the direct nodes check in (the agent's default is 5m)")
	fs.DurationVar(&cfg.Keepalive, "keepalive", 0, "tunnel devices' NAT keep-alive period (default 25s, the agent's)")
	fs.DurationVar(&cfg.Liveness, "liveness", 0, "tunnel devices' heartbeat period (default 2m, the agent's)")
	fs.Float64Var(&cfg.StartRate, "start-rate", 200, "devices started per second")
	quiet := fs.Bool("q", false, "no progress on stderr")
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: devsim cost [flags]\n\n"+
			"Starts fleetd, joins simulated devices and watches a fresh fleetd three times: with no device connected,\n"+
			"with every device a direct node (edge-agent --mode=direct) and with every device holding its reverse tunnel.\n"+
			"Reports fleetd's memory, CPU and wake-ups per device.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if !*quiet {
		cfg.Logger = slog.New(slog.NewTextHandler(stderr, nil))
	}
	_, err := devsim.MeasureCost(ctx, cfg, stdout)
	return err
}
