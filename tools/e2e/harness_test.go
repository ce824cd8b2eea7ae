package e2e

import (
	"context"
	"fmt"
	"os"
	"testing"

	"remoteler.dev/edge/tools/harness"
)

// bin holds the binaries built once for all tests.
var bin harness.Bin

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "edge-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if bin, err = harness.Build(context.Background(), dir, nil, harness.Products...); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// start starts one of the built binaries (or a system command when name
// has no binary here); it is stopped at the end of the test.
func start(t *testing.T, name string, env []string, args ...string) *harness.Proc {
	t.Helper()
	return harness.Start(t, harness.Cmd{Name: name, Path: bin.Path(args[0]), Args: args[1:], Env: env})
}

// run runs one of the built binaries (or a system command when name has
// no binary here) to completion.
func run(stdin string, env []string, name string, args ...string) (string, string, error) {
	r, err := harness.RunErr(context.Background(), stdin, harness.Cmd{Path: bin.Path(name), Args: args, Env: env})
	return r.Stdout, r.Stderr, err
}

// startFleet starts fleetd on a free loopback port with a data directory
// of its own.
func startFleet(t *testing.T) *harness.Fleet {
	t.Helper()
	return harness.StartFleet(t, harness.FleetConfig{Bin: bin})
}

// startFleetArgs starts fleetd with extra flags and environment.
func startFleetArgs(t *testing.T, env []string, extra ...string) *harness.Fleet {
	t.Helper()
	return harness.StartFleet(t, harness.FleetConfig{Bin: bin, Env: env, Args: extra})
}
