package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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

// startFleetWith starts fleetd with config (YAML; "" for none) as its
// --config file.
func startFleetWith(t *testing.T, config string) *harness.Fleet {
	t.Helper()
	return startFleetIn(t, t.TempDir(), config)
}

// startFleetIn starts fleetd with its data in dataDir and config (YAML; ""
// for none) as its --config file.
func startFleetIn(t *testing.T, dataDir, config string) *harness.Fleet {
	t.Helper()
	cfg := harness.FleetConfig{Bin: bin, DataDir: dataDir}
	if config != "" {
		path := filepath.Join(t.TempDir(), "fleetd.yaml")
		if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg.Args = []string{"--config", path}
	}
	return harness.StartFleet(t, cfg)
}

// tshCmd is a tsh command run as user u, for tests that drive it
// themselves.
func tshCmd(u *harness.User, args ...string) *exec.Cmd {
	c := exec.Command(bin.Path("tsh"), args...)
	c.Env = append(os.Environ(), u.Env()...)
	return c
}
