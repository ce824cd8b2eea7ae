package main

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"regexp"
	"slices"
	"time"

	"remoteler.dev/edge/proto/api"
)

// fleet is a running fleetd on a loopback port.
type fleet struct {
	bin     string // directory of fleetd and fleetctl
	dataDir string
	addr    string // HOST:PORT it listens on (TCP and UDP)
	proc    *proc
}

var (
	listenRE = regexp.MustCompile(`listening on (\S+) `)
	pinRE    = regexp.MustCompile(`^CA pin: (sha256:[0-9a-f]{64})$`)
)

// startFleet starts fleetd from bin on a free port of 127.0.0.1 with its
// state in dataDir, and waits until it listens.
func startFleet(ctx context.Context, ps *procs, bin, dataDir string) (*fleet, error) {
	f := &fleet{bin: bin, dataDir: dataDir}
	var err error
	f.proc, err = ps.start("fleetd", nil, filepath.Join(bin, "fleetd"), "start", "--data-dir", dataDir, "--listen", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	_, m, err := f.proc.waitLine(ctx, listenRE, time.Minute)
	if err != nil {
		return nil, fmt.Errorf("start fleetd: %w", err)
	}
	f.addr = m[1]
	if _, _, err := f.proc.waitLine(ctx, pinRE, 10*time.Second); err != nil {
		return nil, fmt.Errorf("start fleetd: %w", err)
	}
	return f, nil
}

// ctl runs fleetctl on the fleet's data directory and returns its stdout.
func (f *fleet) ctl(ctx context.Context, args ...string) (string, error) {
	return runCmd(ctx, nil, filepath.Join(f.bin, "fleetctl"), append([]string{"--data-dir", f.dataDir}, args...)...)
}

// token adds a one-use join token and returns its join string
// (TOKEN@sha256:PIN), which carries the CA pin the agent checks.
func (f *fleet) token(ctx context.Context) (string, error) {
	out, err := f.ctl(ctx, "tokens", "add", "--ttl=10m", "--uses=1", "--format=json")
	if err != nil {
		return "", err
	}
	var tok api.Token
	if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.JoinString == "" {
		return "", fmt.Errorf("fleetctl tokens add --format=json gave no join string (%v):\n%s", err, indent(out))
	}
	return tok.JoinString, nil
}

// online reports whether the fleet lists device name as online.
func (f *fleet) online(ctx context.Context, name string) (bool, error) {
	out, err := f.ctl(ctx, "devices", "ls", "--format=json")
	if err != nil {
		return false, err
	}
	var ds api.List[api.Device]
	if err := json.Unmarshal([]byte(out), &ds); err != nil {
		return false, fmt.Errorf("fleetctl devices ls --format=json: %w", err)
	}
	return slices.ContainsFunc(ds.Items, func(d api.Device) bool { return d.Name == name && d.Online }), nil
}

// waitOnline polls the device list until device name, run by agent p, is
// online.
func (f *fleet) waitOnline(ctx context.Context, name string, p *proc, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := f.online(ctx, name)
		if ok {
			return nil
		}
		if p.exited() || time.Now().After(deadline) {
			return fmt.Errorf("device %s not online within %s (last error: %v):\n%s", name, timeout, err, p.tail(20))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
