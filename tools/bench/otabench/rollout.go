package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"aead.dev/minisign"

	"remoteler.dev/edge/fleet/fleetctl"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/ota"
	"remoteler.dev/edge/tools/devsim"
	"remoteler.dev/edge/tools/harness"
	"remoteler.dev/edge/tools/otasim"
)

// rollout measures how long a rollout (stages 1,10,50,100%, no soak)
// takes to reach n simulated devices on a real fleetd: devsim devices over
// real tunnels, answering offers with otasim (no download).
func rollout(n int) error {
	ctx := context.Background()
	return harness.Do(ctx, harness.DoConfig{}, func(tb harness.TB) error {
		dir := tb.TempDir()
		bin, err := harness.Build(ctx, filepath.Join(dir, "bin"), nil, "remoteler.dev/edge/fleet/cmd/fleetd", "remoteler.dev/edge/fleet/cmd/fleetctl")
		if err != nil {
			return err
		}
		pub, priv, err := minisign.GenerateKey(rand.Reader)
		if err != nil {
			return err
		}
		fd, err := harness.StartFleetErr(tb, harness.FleetConfig{Bin: bin, DataDir: filepath.Join(dir, "fleet"), LogLevel: "warn",
			Args: []string{"--release-key", ota.KeyString(pub)}})
		if err != nil {
			return err
		}
		// A release whose artefact is random bytes: the devices do not fetch it.
		rel := filepath.Join(dir, "release")
		os.MkdirAll(rel, 0o755)
		art := make([]byte, 1<<20)
		rand.Read(art)
		if err := os.WriteFile(filepath.Join(rel, "edge-agent-linux-amd64"), art, 0o755); err != nil {
			return err
		}
		if _, err := fleetctl.SignRelease(rel, "v2.0.0", priv); err != nil {
			return err
		}
		if _, stderr, err := fd.CtlErr("", "releases", "add", rel); err != nil {
			return fmt.Errorf("releases add: %v: %s", err, stderr)
		}
		token, err := fd.TokenErr(fmt.Sprintf("--uses=%d", n), "--ttl=2h")
		if err != nil {
			return err
		}
		agents := &otasim.Agents{Running: "v1.0.0", Target: "linux-amd64"}
		sim, err := devsim.New(devsim.Config{Fleet: fd.Addr, Token: token, Count: n, DataDir: filepath.Join(dir, "sim"),
			OnUp: agents.OnUp, OnMessage: agents.OnMessage})
		if err != nil {
			return err
		}
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		defer func() { cancel(); <-done }()
		go func() { defer close(done); sim.Run(sctx) }()
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Minute)
		defer wcancel()
		if err := sim.WaitUp(wctx, n); err != nil {
			return err
		}
		start := time.Now()
		out, stderr, err := fd.CtlErr("", "rollouts", "create", "--release", "v2.0.0", "--stages", "1%,10%,50%,100%", "--soak", "0s")
		if err != nil {
			return fmt.Errorf("rollouts create: %v: %s", err, stderr)
		}
		m := regexp.MustCompile(`Rollout (r-[0-9a-f]+)`).FindStringSubmatch(out)
		if m == nil {
			return fmt.Errorf("rollouts create printed no ID: %s", out)
		}
		stageAt := map[int]time.Duration{}
		for {
			out, stderr, err := fd.CtlErr("", "rollouts", "status", m[1], "--format=json")
			if err != nil {
				return fmt.Errorf("rollouts status: %v: %s", err, stderr)
			}
			var r api.Rollout
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				return err
			}
			if _, ok := stageAt[r.Stage]; !ok {
				stageAt[r.Stage] = time.Since(start)
			}
			if r.State == api.RolloutDone {
				break
			}
			if r.State != api.RolloutRunning || time.Since(start) > 10*time.Minute {
				return fmt.Errorf("rollout %s: %s", r.State, r.Reason)
			}
			time.Sleep(100 * time.Millisecond)
		}
		committed, last := agents.Committed()
		fmt.Printf("| devices | stages | all committed after | rollout done after | stages seen at |\n|---|---|---|---|---|\n")
		fmt.Printf("| %d | 1,10,50,100%% (soak 0) | %s | %s | %s, %s, %s, %s |\n", committed,
			last.Sub(start).Round(time.Millisecond), time.Since(start).Round(time.Millisecond),
			stageAt[0].Round(time.Millisecond), stageAt[1].Round(time.Millisecond), stageAt[2].Round(time.Millisecond), stageAt[3].Round(time.Millisecond))
		return nil
	})
}

func rolloutCmd(arg string) error {
	n, err := strconv.Atoi(arg)
	if err != nil || n <= 0 {
		return fmt.Errorf("rollout DEVICES: %q is not a count", arg)
	}
	return rollout(n)
}
