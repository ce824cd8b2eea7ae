package main

import (
	"context"
	"runtime"
	"strings"
	"testing"

	"remoteler.dev/edge/tools/logtest"
)

// TestRunQuick runs the whole benchmark in its quick form (one target, a
// 2 s idle window, one restart) so that the command cannot rot unnoticed.
// The figures are not checked, only that every part ran and was reported.
// Without qemu-aarch64-static or xz the report says n/a for them, which is
// also checked.
func TestRunQuick(t *testing.T) {
	cfg, err := parseFlags([]string{"-targets", "linux-arm64", "-idle", "2s", "-settle", "0s", "-restarts", "1", "-timeout", "15m"}, logtest.Writer(t))
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := run(context.Background(), cfg, &out, logtest.Writer(t)); err != nil {
		t.Fatal(err)
	}
	report := out.String()
	t.Logf("report:\n%s", report)
	wants := []string{
		"Command: `go run ./tools/bench/armbench -targets linux-arm64 -idle 2s -settle 0s -restarts 1`",
		"**Agent binary size**",
		"| linux-arm64 | ",
		"**Agent idle**",
		"**Start to tunnel up**",
	}
	if runtime.GOARCH != "arm64" {
		wants = append(wants,
			"| linux-arm64 | under qemu-aarch64-static | ",
			"| linux-arm64 | on an arm64 CPU | not measurable here |")
	}
	for _, want := range wants {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if strings.Count(report, "| native | ") != 2 {
		t.Errorf("report has %d native rows, want 2 (idle and start)", strings.Count(report, "| native | "))
	}
}
