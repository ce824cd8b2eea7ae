// Command tsh is the user's client of a Remoteler edge fleet: login, ls,
// ssh, scp, config. All of it lives in package fleet/tsh.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"remoteler.dev/edge/fleet/tsh"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := tsh.Main(ctx, os.Args[1:], tsh.Stdio{})
	stop()
	os.Exit(code)
}
