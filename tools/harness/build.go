package harness

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// Products are the import paths of the four programs of the system.
var Products = []string{
	"remoteler.dev/edge/fleet/cmd/fleetd",
	"remoteler.dev/edge/firmware/cmd/edge-agent",
	"remoteler.dev/edge/fleet/cmd/tsh",
	"remoteler.dev/edge/fleet/cmd/fleetctl",
}

// Bin is a directory of built programs.
type Bin string

// Path returns the path of program name in b, or name itself (for PATH to
// find) when b has no such program.
func (b Bin) Path(name string) string {
	p := filepath.Join(string(b), name)
	if _, err := os.Stat(p); err != nil {
		return name
	}
	return p
}

// Build runs go build with args (flags, then import paths) writing the
// programs into dir, with env added to the environment (such as
// CGO_ENABLED=0). It must run inside this module.
func Build(ctx context.Context, dir string, env []string, args ...string) (Bin, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	goArgs := append([]string{"build", "-o", dir + string(filepath.Separator)}, args...)
	if _, err := RunErr(ctx, "", Cmd{Path: "go", Args: goArgs, Env: env}); err != nil {
		return "", fmt.Errorf("build (run it inside the repository): %w", err)
	}
	return Bin(dir), nil
}
