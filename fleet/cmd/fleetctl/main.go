// Command fleetctl administers a Remoteler edge fleet: users, roles, join
// tokens, devices. All of it lives in package fleet/fleetctl.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"remoteler.dev/edge/fleet/fleetctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := fleetctl.Main(ctx, os.Args[1:], fleetctl.Stdio{})
	stop()
	os.Exit(code)
}
