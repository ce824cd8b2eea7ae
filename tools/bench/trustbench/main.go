// Command trustbench measures what going through a root fleet costs a
// trusted cluster's users: the exec round trip and the scp throughput of
// tsh through root → leaf → device against leaf → device, with real
// fleetd, edge-agent and tsh processes on loopback. It prints Markdown on
// stdout and progress on stderr.
//
//	go run ./tools/bench/trustbench [-rtt 40] [-size 64] [-copies 3] [-bin DIR]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run is the command; it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("trustbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg config
	fs.IntVar(&cfg.RTTRuns, "rtt", 40, "exec round trips per path")
	var sizeMB int
	fs.IntVar(&sizeMB, "size", 64, "scp payload `MiB`")
	fs.IntVar(&cfg.Copies, "copies", 3, "copies per path and direction")
	fs.StringVar(&cfg.Bin, "bin", "", "`DIR` holding fleetd, fleetctl, edge-agent and tsh (default: build them)")
	fs.DurationVar(&cfg.Timeout, "timeout", 30*time.Minute, "bound on the whole run")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	cfg.Size = int64(sizeMB) << 20
	if err := measure(ctx, cfg, stdout, stderr); err != nil {
		fmt.Fprintln(stderr, "trustbench:", err)
		return 1
	}
	return 0
}
