package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/tools/logtest"
)

// TestRunTiny runs the whole benchmark with a 1 MiB payload and two round
// trips per path, so that the command cannot rot unnoticed: real root and
// leaf fleets, a device of the leaf, tsh through both paths.
func TestRunTiny(t *testing.T) {
	cfg := config{RTTRuns: 2, Size: 1 << 20, Copies: 1, Timeout: 10 * time.Minute} // a generous bound: a busy machine is slow
	var out bytes.Buffer
	if err := measure(context.Background(), cfg, &out, logtest.Writer(t)); err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", out.String())
	for _, want := range []string{
		"| leaf → device (a leaf user) |",
		"| root → leaf → device (a root user, --cluster=leaf) |",
		"2 per path",
		"`tsh scp` of 1 MiB, 1 copies",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}
