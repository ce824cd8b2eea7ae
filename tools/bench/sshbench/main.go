// Command sshbench measures SSH through the fleet against Debian's OpenSSH
// sshd on the same machine, in one run, and prints the figures and the
// ratios between them:
//
//   - throughput of a 100 MB file copied up and down (median of 3 runs):
//     OpenSSH scp through tsh config's ProxyCommand (tsh, the fleet, the
//     QUIC tunnel and the agent), tsh scp, and OpenSSH scp straight to an
//     sshd that sshbench starts on a loopback port;
//   - round-trip time of a tiny exec ("true"), median and p90 of 20: a new
//     connection each time (ssh through the fleet, tsh ssh, ssh to sshd)
//     and on an open connection (OpenSSH ControlMaster);
//   - idle RSS of fleetd and the agent (and of the sshd listener) after
//     10 s with one device connected, against the agent's 15 MB target,
//     and their RSS and peak RSS after the run.
//
// It builds fleetd, edge-agent, tsh and fleetctl (or takes them from
// -bin), runs everything on 127.0.0.1 with its state in a temporary
// directory, and stops every process it started before it exits. It needs
// Linux and OpenSSH's ssh, scp, ssh-keygen and sshd (tools/setup/setup.sh
// installs them). Run as root, it logs in to both servers as root (and
// creates /run/sshd, sshd's privilege separation directory, if missing);
// otherwise as the current user.
//
//	go run ./tools/bench/sshbench [-size 100MB] [-runs 3] [-rtt-runs 20] [-idle 10s]
//
// With -cpuprofile DIR it also builds fleetd and the agent with a pprof
// listener on 127.0.0.1 (added with go build -overlay, only in this
// command's build; the products have no such flag), takes CPU profiles of
// both during 10 s each of OpenSSH scp uploads, OpenSSH scp downloads,
// tsh scp uploads and tsh scp downloads through the fleet, writes them to
// DIR and prints their top functions.
//
// The figures go to stdout as Markdown tables (docs/benchmarks.md holds a
// dated copy); progress goes to stderr. make bench runs it through
// tools/bench/run.sh. It is a developer tool: nothing imports it.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if err == flag.ErrHelp {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sshbench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "sshbench:", err)
		os.Exit(1)
	}
}

// parseFlags reads the command line into a config.
func parseFlags(args []string, stderr io.Writer) (config, error) {
	cfg := defaultConfig()
	fs := flag.NewFlagSet("sshbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	size := fs.String("size", "100MB", "payload `size` for the copies (B, KB, MB, GB = powers of 1000; KiB, MiB, GiB = powers of 1024)")
	fs.IntVar(&cfg.Runs, "runs", cfg.Runs, "copies per path and direction; the median is reported")
	fs.IntVar(&cfg.RTTRuns, "rtt-runs", cfg.RTTRuns, "exec round trips per mode; median and p90 are reported")
	fs.DurationVar(&cfg.Idle, "idle", cfg.Idle, "how long fleetd and the agent sit idle before their RSS is read (0 reads it at once)")
	fs.StringVar(&cfg.Bin, "bin", "", "`DIR` holding fleetd, edge-agent, tsh and fleetctl (default: build them into the temporary directory)")
	fs.StringVar(&cfg.CPUProfile, "cpuprofile", "", "write CPU profiles of fleetd and the agent during extra copies to `DIR` and print their top functions; builds the binaries, ignoring -bin (default off)")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "bound on the whole run")
	fs.BoolVar(&cfg.Keep, "keep", false, "keep the temporary directory (logs, configs) and print its path")
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: sshbench [flags]\n\nSSH through the fleet versus OpenSSH's sshd on loopback: scp throughput, exec round-trip time, idle RSS.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	n, err := parseSize(*size)
	if err != nil {
		return config{}, fmt.Errorf("-size: %w", err)
	}
	cfg.Size = n
	if cfg.Runs < 1 || cfg.RTTRuns < 1 {
		return config{}, fmt.Errorf("-runs and -rtt-runs must be at least 1")
	}
	if cfg.Idle < 0 || cfg.Timeout <= 0 {
		return config{}, fmt.Errorf("-idle must not be negative and -timeout must be positive")
	}
	return cfg, nil
}

// defaultConfig is the configuration of a full run.
func defaultConfig() config {
	return config{
		Size:    100_000_000,
		Runs:    3,
		RTTRuns: 20,
		Idle:    10 * time.Second,
		Timeout: 5 * time.Minute,
	}
}
