// Command armbench measures what the agent costs a device, in one run, and
// prints the figures against DESIGN.md's targets:
//
//   - binary size per target (linux-arm64, linux-armv6, linux-armv7,
//     linux-amd64, linux-riscv64), built by cross/build.sh exactly as
//     released (static, stripped): raw, gzip -9 (Go's compress/gzip at
//     level 9, a few percent larger than GNU gzip's) and xz -9 (the xz
//     command; "n/a" without it), and the linux-arm64 agent against its
//     12 MB budget;
//   - idle RSS and CPU of a joined agent, natively on this machine and as
//     the linux-arm64 release binary under qemu-user (cross/qemu-exec.sh):
//     VmRSS, RssAnon, RssFile and VmHWM from /proc/PID/status after the idle
//     window, and utime+stime from /proc/PID/stat over it, as a percentage
//     of one core, and the context switches of all its threads per second
//     (about how often it wakes up). Under qemu the process is the emulator,
//     so its RSS and CPU include qemu's own; a real arm64 CPU's figure
//     cannot be measured here;
//   - time from the process's start to the tunnel being up (the agent's
//     "tunnel up" log line): the first start (join included), and the
//     median of several restarts of the joined agent, native and under qemu.
//
// It builds fleetd, fleetctl and edge-agent for this machine (static and
// stripped like the device build) and the agents for the targets with
// cross/build.sh, runs fleetd and the agents on 127.0.0.1 with their state
// in a temporary directory, and stops every process it started before it
// exits. It needs Linux, go, bash, and for the emulated rows
// qemu-aarch64-static (Debian's qemu-user-static; without it those rows say
// n/a).
//
//	go run ./tools/bench/armbench [-targets linux-arm64,...] [-idle 20s] [-restarts 5]
//
// The figures go to stdout as Markdown (docs/benchmarks.md, "ARM devices",
// holds a dated copy); progress goes to stderr. make bench runs it through
// tools/bench/run.sh. It is a developer tool: nothing imports it.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if err == flag.ErrHelp {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "armbench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "armbench:", err)
		os.Exit(1)
	}
}

// allTargets are cross/build.sh's targets, in its order.
var allTargets = []string{"linux-arm64", "linux-armv6", "linux-armv7", "linux-amd64", "linux-riscv64"}

// config is one run's settings; the zero value is not a run, defaultConfig
// is the full one.
type config struct {
	// Targets are the cross/build.sh targets whose size is reported.
	Targets []string
	// Idle is the idle window over which the agents' CPU is measured and
	// at whose end their memory is read.
	Idle time.Duration
	// Settle is how long the agents run after coming online before the
	// idle window starts.
	Settle time.Duration
	// Restarts is how many times each joined agent is restarted to time
	// its start to tunnel up.
	Restarts int
	// NoQEMU leaves out the agent under qemu even where qemu is installed.
	NoQEMU bool
	// BuildTimeout bounds building the binaries (a cold build cache is slow).
	BuildTimeout time.Duration
	// Timeout bounds everything after the builds.
	Timeout time.Duration
	// Keep keeps the temporary directory (binaries, logs).
	Keep bool
}

// defaultConfig is the configuration of a full run (under 3 minutes with
// a warm build cache).
func defaultConfig() config {
	return config{
		Targets:      slices.Clone(allTargets),
		Idle:         20 * time.Second,
		Settle:       2 * time.Second,
		Restarts:     5,
		BuildTimeout: 10 * time.Minute,
		Timeout:      3 * time.Minute,
	}
}

// parseFlags reads the command line into a config.
func parseFlags(args []string, stderr io.Writer) (config, error) {
	cfg := defaultConfig()
	fs := flag.NewFlagSet("armbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	targets := fs.String("targets", strings.Join(cfg.Targets, ","), "comma-separated cross/build.sh `targets` whose binary size is reported")
	fs.DurationVar(&cfg.Idle, "idle", cfg.Idle, "idle window: CPU is measured over it and memory read at its end")
	fs.DurationVar(&cfg.Settle, "settle", cfg.Settle, "how long the agents run after coming online before the idle window starts (0 starts it at once)")
	fs.IntVar(&cfg.Restarts, "restarts", cfg.Restarts, "restarts of each joined agent timed to tunnel up; the median is reported")
	fs.BoolVar(&cfg.NoQEMU, "no-qemu", false, "leave out the linux-arm64 agent under qemu (default: run it when qemu-aarch64-static is installed)")
	fs.DurationVar(&cfg.BuildTimeout, "build-timeout", cfg.BuildTimeout, "bound on building the binaries")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "bound on the run after the builds")
	fs.BoolVar(&cfg.Keep, "keep", false, "keep the temporary directory (binaries, logs) and print its path")
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: armbench [flags]\n\nAgent binary size per target, idle RSS and CPU, and start-to-tunnel time, native and under qemu for arm64.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	cfg.Targets = nil
	for _, t := range strings.Split(*targets, ",") {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		if !slices.Contains(allTargets, t) {
			return config{}, fmt.Errorf("-targets: unknown target %q (want some of %s)", t, strings.Join(allTargets, ","))
		}
		if !slices.Contains(cfg.Targets, t) {
			cfg.Targets = append(cfg.Targets, t)
		}
	}
	if len(cfg.Targets) == 0 {
		return config{}, fmt.Errorf("-targets: none given")
	}
	if cfg.Idle <= 0 {
		return config{}, fmt.Errorf("-idle must be positive")
	}
	if cfg.Settle < 0 {
		return config{}, fmt.Errorf("-settle must not be negative")
	}
	if cfg.Restarts < 1 {
		return config{}, fmt.Errorf("-restarts must be at least 1")
	}
	if cfg.BuildTimeout <= 0 || cfg.Timeout <= 0 {
		return config{}, fmt.Errorf("-build-timeout and -timeout must be positive")
	}
	return cfg, nil
}
