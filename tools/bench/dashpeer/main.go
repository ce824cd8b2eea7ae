// Command dashpeer measures what a peer's device dashboard makes a browser
// load, the same way TestDashboardBenchmark (tools/e2e) measures the
// fleet's: the page opened cold (a new browser profile) in Debian's
// headless Chromium, its weight from the browser's Performance API (bytes
// on the wire, gzip and headers included, and decoded), by type, the
// number of requests, and the time to first paint.
//
// The peer is Syncthing's web GUI (a device's dashboard: its folders,
// the other devices, their transfer rates), served by a real Syncthing:
// Debian's package (apt-get install syncthing), whose binary carries the
// GUI gzipped at build time as every Syncthing does. It starts it as a
// new device (a fresh home in a temporary directory: no folder, no other
// device; discovery, relays and NAT traversal off, its sync port on
// loopback) with its GUI on HTTPS on 127.0.0.1, so that the GUI's API
// calls are answered by Syncthing itself and counted apart from the
// assets. The page counts as loaded when its count of assets (the API
// aside) has stayed the same for -settle after the load event: its
// templates and translations come after it, fetched by its script.
//
// Syncthing's Go module (go mod download github.com/syncthing/syncthing)
// is not used: module zips leave out every directory named vendor, and
// the GUI's libraries (AngularJS, jQuery, Bootstrap, moment, ...) live in
// gui/default/vendor, so the module's GUI is missing 16 of its scripts
// and styles.
//
//	go run ./tools/bench/dashpeer [-settle 3s] [SYNCTHING_BINARY]
//
// The figures go to stdout as Markdown (docs/benchmarks.md, "Dashboard",
// holds a dated copy); progress goes to stderr. It is a developer tool:
// nothing imports it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	settle := flag.Duration("settle", 3*time.Second, "how long the page's count of assets must stay the same to count as loaded")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: dashpeer [-settle 3s] [SYNCTHING_BINARY]")
		fmt.Fprintln(os.Stderr, "  (default: syncthing on PATH; apt-get install syncthing)")
		flag.PrintDefaults()
	}
	flag.Parse()
	bin := "syncthing"
	switch flag.NArg() {
	case 0:
	case 1:
		bin = flag.Arg(0)
	default:
		flag.Usage()
		os.Exit(2)
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dashpeer: %v: install Syncthing (apt-get install syncthing) or give its binary\n", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout, path, *settle); err != nil {
		fmt.Fprintln(os.Stderr, "dashpeer:", err)
		os.Exit(1)
	}
}
