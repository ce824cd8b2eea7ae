package main

import (
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"remoteler.dev/edge/tools/harness"
)

// sizeBudget is DESIGN.md's budget for the stripped agent of budgetTarget,
// in bytes (cross/size.sh checks the same number).
const (
	sizeBudget   = 12_000_000
	budgetTarget = "linux-arm64"
)

// binSize is one artefact's size, raw and compressed, in bytes.
type binSize struct {
	target string
	raw    int64
	gzip   int64
	xz     int64 // 0 when xz is not installed
}

// measureSize reads the size of the artefact at path and compresses it
// with gzip at level 9 (in Go) and with xz -9 (when xz is installed).
func measureSize(ctx context.Context, target, path string) (binSize, error) {
	s := binSize{target: target}
	fi, err := os.Stat(path)
	if err != nil {
		return s, fmt.Errorf("size of %s: %w", target, err)
	}
	s.raw = fi.Size()
	if s.gzip, err = gzipSize(path); err != nil {
		return s, fmt.Errorf("size of %s: %w", target, err)
	}
	if xzPath, err := exec.LookPath("xz"); err == nil {
		if s.xz, err = xzSize(ctx, xzPath, path); err != nil {
			return s, fmt.Errorf("size of %s: %w", target, err)
		}
	}
	return s, nil
}

// counter is a writer that counts what it is given.
type counter struct{ n int64 }

func (c *counter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return len(p), nil
}

// gzipSize is the length of path's contents gzipped at level 9 with Go's
// compress/gzip (GNU gzip -9 came out 2.7% smaller on the arm64 agent).
func gzipSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, fmt.Errorf("gzip: %w", err)
	}
	defer f.Close()
	var c counter
	zw, err := gzip.NewWriterLevel(&c, gzip.BestCompression)
	if err != nil {
		return 0, fmt.Errorf("gzip: %w", err)
	}
	if _, err := io.Copy(zw, f); err != nil {
		return 0, fmt.Errorf("gzip: %w", err)
	}
	if err := zw.Close(); err != nil {
		return 0, fmt.Errorf("gzip: %w", err)
	}
	return c.n, nil
}

// xzSize is the length of path's contents compressed with xz -9, single
// threaded so that the result does not depend on the core count.
func xzSize(ctx context.Context, xzPath, path string) (int64, error) {
	cmd := harness.Command(ctx, harness.Cmd{Path: xzPath, Args: []string{"-9", "-T1", "-c", "--", path}})
	var c counter
	cmd.Stdout = &c
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("xz -9: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	return c.n, nil
}
