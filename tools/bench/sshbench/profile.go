package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/tools/harness"
)

// pprofHook is the file -cpuprofile adds to the main packages of fleetd
// and edge-agent (see its comment).
//
//go:embed pprofhook.go.in
var pprofHook []byte

// profileSeconds is how long each CPU profile runs.
const profileSeconds = 10

// buildProfiled builds the binaries into bin with the pprof hook added to
// fleetd and edge-agent, and returns the environment that switches it on.
func buildProfiled(ctx context.Context, bin, work string) ([]string, error) {
	r, err := harness.RunErr(ctx, "", harness.Cmd{Path: "go", Args: []string{"env", "GOMOD"}})
	if err != nil {
		return nil, err
	}
	gomod := strings.TrimSpace(r.Stdout)
	if gomod == "" || gomod == os.DevNull {
		return nil, fmt.Errorf("build with pprof: run sshbench inside the repository")
	}
	root := filepath.Dir(gomod)
	hook := filepath.Join(work, "pprofhook.go")
	if err := os.WriteFile(hook, pprofHook, 0o600); err != nil {
		return nil, fmt.Errorf("build with pprof: %w", err)
	}
	overlay := map[string]map[string]string{"Replace": {
		filepath.Join(root, "fleet", "cmd", "fleetd", "zz_sshbench_pprof.go"):        hook,
		filepath.Join(root, "firmware", "cmd", "edge-agent", "zz_sshbench_pprof.go"): hook,
	}}
	b, err := json.Marshal(overlay)
	if err != nil {
		return nil, err
	}
	overlayPath := filepath.Join(work, "overlay.json")
	if err := os.WriteFile(overlayPath, b, 0o600); err != nil {
		return nil, fmt.Errorf("build with pprof: %w", err)
	}
	if err := build(ctx, bin, "-overlay", overlayPath); err != nil {
		return nil, err
	}
	dir := filepath.Join(work, "pprof")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return []string{"SSHBENCH_PPROF_DIR=" + dir}, nil
}

// scenario is a kind of copy that -cpuprofile profiles.
type scenario struct {
	name string
	// copy copies the payload once.
	copy func(ctx context.Context) error
}

// profile takes CPU profiles of fleetd and of the agent while copying the
// payload through the fleet (OpenSSH scp up, then down, then tsh scp up,
// then down), writes them to cfg.CPUProfile and prints their top functions.
func profile(ctx context.Context, cfg config, f *fleet, work, payload string, out io.Writer, logf func(string, ...any)) error {
	if err := os.MkdirAll(cfg.CPUProfile, 0o755); err != nil {
		return fmt.Errorf("profile: %w", err)
	}
	names := []string{"fleetd", "edge-agent"}
	addrs := map[string]string{}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(work, "pprof", n+".addr"))
		if err != nil {
			return fmt.Errorf("profile: %s wrote no pprof address: %w", n, err)
		}
		addrs[n] = string(b)
	}
	remote, local := filepath.Join(work, "remote", "profiled"), filepath.Join(work, "local", "profiled")
	// Uploads and downloads apart: their profiles differ (a download's
	// bytes go the other way through every buffer).
	scenarios := []scenario{
		{"scp-up", func(ctx context.Context) error {
			_, err := harness.RunErr(ctx, "", harness.Cmd{Path: "scp", Args: append(f.sshArgs(), "-q", payload, f.sshTarget()+":"+remote)})
			return err
		}},
		{"scp-down", func(ctx context.Context) error {
			_, err := harness.RunErr(ctx, "", harness.Cmd{Path: "scp", Args: append(f.sshArgs(), "-q", f.sshTarget()+":"+payload, local)})
			return err
		}},
		{"tsh-scp-up", func(ctx context.Context) error {
			_, _, err := f.user.TshErr("", "scp", "-q", payload, f.tshTarget()+":"+remote)
			return err
		}},
		{"tsh-scp-down", func(ctx context.Context) error {
			_, _, err := f.user.TshErr("", "scp", "-q", f.tshTarget()+":"+payload, local)
			return err
		}},
	}
	for _, sc := range scenarios {
		logf("profiling fleetd and the agent for %d s of %s copies through the fleet", profileSeconds, sc.name)
		var wg sync.WaitGroup
		errs := make([]error, len(names))
		for i, n := range names {
			wg.Go(func() {
				errs[i] = fetchProfile(ctx, addrs[n], filepath.Join(cfg.CPUProfile, sc.name+"-"+n+".pprof"))
			})
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		finished := func() bool {
			select {
			case <-done:
				return true
			default:
				return false
			}
		}
		var took []time.Duration
		for !finished() {
			t0 := time.Now()
			if err := sc.copy(ctx); err != nil {
				return fmt.Errorf("profile %s: %w", sc.name, err)
			}
			took = append(took, time.Since(t0))
		}
		copies := len(took)
		for i, err := range errs {
			if err != nil {
				return fmt.Errorf("profile %s of %s: %w", names[i], sc.name, err)
			}
		}
		// Back to back, with no other path's copies in between, these
		// run warmer than the table's.
		fmt.Fprintf(out, "### CPU profiles: %d %s copies of %s through the fleet in %d s (median %.1f MB/s)\n\n", copies, sc.name, humanSize(cfg.Size), profileSeconds, mbps(cfg.Size, median(took)))
		for _, n := range names {
			path := filepath.Join(cfg.CPUProfile, sc.name+"-"+n+".pprof")
			for _, view := range [][]string{{"-top"}, {"-top", "-cum"}} {
				args := append(append([]string{"tool", "pprof"}, view...), "-nodecount=25", path)
				r, err := harness.RunErr(ctx, "", harness.Cmd{Path: "go", Args: args})
				if err != nil {
					return fmt.Errorf("profile: %w", err)
				}
				fmt.Fprintf(out, "#### %s: go tool pprof %s\n\n```\n%s```\n\n", n, strings.Join(append(view, path), " "), r.Stdout)
			}
		}
	}
	return nil
}

// fetchProfile fetches a CPU profile from a pprof listener into path.
func fetchProfile(ctx context.Context, addr, path string) error {
	ctx, cancel := context.WithTimeout(ctx, (profileSeconds+30)*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, profileSeconds), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("fetch profile: %s: %s", resp.Status, b)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
