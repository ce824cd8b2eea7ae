// Command appbench measures web-app access through the fleet against the
// same app reached directly and through Debian's nginx as a TLS reverse
// proxy, in one run on loopback, and prints the figures and the ratios:
//
//   - a small GET (3 bytes): p50 and p99 latency of sequential requests on
//     one kept-alive connection, and requests per second with 8 clients;
//   - a 1 GiB download: throughput;
//   - a websocket echo: round-trip time, p50 and p99;
//   - the fleet's memory per open app session: fleetd's RSS growth with
//     N app sessions (one app certificate each, as tsh proxy app has), each
//     holding an open websocket, divided by N (at most 256 streams are
//     open to one device at a time, pooled ones included: N stays below).
//
// Through the fleet means HTTPS with an app certificate to the app's
// public address (what tsh proxy app does, without tsh's local hop): TLS,
// fleetd's proxy, the QUIC tunnel, the agent, the app. nginx terminates
// TLS (the same P-256 key type) and proxies to the app over kept-alive
// HTTP/1.1. Direct is plain HTTP to the app. Everything is HTTP/1.1.
//
// It builds the products, starts fleetd, an agent offering the demo app
// (tools/demoapp, in this process) and nginx (apt-get install nginx-light
// if it is missing: tools/bench/run.sh does), with their state in a
// temporary directory, and stops them before it exits.
//
//	go run ./tools/bench/appbench [-n 2000] [-dur 5s] [-size 1073741824] [-sessions 100]
//
// The figures go to stdout as Markdown (docs/benchmarks.md holds a dated
// copy); progress goes to stderr. It is a developer tool: nothing imports
// it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"remoteler.dev/edge/tools/harness"
)

type config struct {
	N        int           // sequential small GETs per target
	Dur      time.Duration // length of the requests/s run
	Clients  int           // concurrent clients for requests/s
	Size     int64         // download size
	Echoes   int           // websocket round trips
	Sessions int           // app sessions for the memory figure
	Keep     bool
}

func main() {
	cfg := config{N: 2000, Dur: 5 * time.Second, Clients: 8, Size: 1 << 30, Echoes: 1000, Sessions: 100}
	flag.IntVar(&cfg.N, "n", cfg.N, "sequential small GETs per target (p50 and p99)")
	flag.DurationVar(&cfg.Dur, "dur", cfg.Dur, "length of the requests-per-second run per target")
	flag.IntVar(&cfg.Clients, "clients", cfg.Clients, "concurrent clients of the requests-per-second run")
	flag.Int64Var(&cfg.Size, "size", cfg.Size, "download size in bytes")
	flag.IntVar(&cfg.Echoes, "echoes", cfg.Echoes, "websocket round trips per target")
	flag.IntVar(&cfg.Sessions, "sessions", cfg.Sessions, "app sessions held open for the memory figure")
	flag.BoolVar(&cfg.Keep, "keep", false, "keep the temporary directory (logs, configs) and print its path")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := harness.Do(ctx, harness.DoConfig{Log: os.Stderr, Keep: cfg.Keep}, func(tb harness.TB) error {
		return run(tb, cfg)
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "appbench:", err)
		os.Exit(1)
	}
}
