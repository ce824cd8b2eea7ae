package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/tools/logtest"
)

// TestQuickTiny runs the whole benchmark on tiny sizes (a 2 s blackout,
// with the bulk transfers through it, 64 KB transfers on one case, a 5 s
// idle window, one trial) so it cannot rot. The figures are not checked, only that every part ran and that both
// systems came back after their server closed the connection. The bounds
// are generous: on a busy machine a fleetd restart alone can take seconds.
func TestQuickTiny(t *testing.T) {
	cfg, err := parseFlags([]string{"-quick", "-dir", t.TempDir(), "-blackouts", "2s", "-bulk", "lte:1%",
		"-size", "lte=64KB", "-cap", "3s", "-idle", "5s", "-trials", "1", "-reconnect-wait", "2m", "-timeout", "10m"}, logtest.Writer(t))
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := run(context.Background(), cfg, &out, logtest.Writer(t)); err != nil {
		t.Fatal(err)
	}
	report := out.String()
	t.Logf("report:\n%s", report)
	for _, want := range []string{
		"### Recovery after a blackout", "| 2s |",
		"### Bulk transfers through a blackout", "| 2s | up |", "| 2s | down |",
		"### Bulk throughput", "| lte | 1% | down |", "| lte | 1% | up |",
		"### Idle data per device", "| ours | ", "| peer | ", "| reconnects a day |", "\n| 6 | ",
		"### Connection set-up", "start of a provisioned device", "reconnect after the server closed the connection",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if strings.Contains(report, "failed") {
		t.Errorf("a bulk transfer failed")
	}
	if strings.Contains(report, "not back within") {
		t.Errorf("a system did not reconnect after its server closed the connection")
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		check   func(config) bool
		wantErr bool
	}{
		{"defaults", nil, func(c config) bool {
			return len(c.Blackouts) == 2 && len(c.Bulk) == 4 && c.Sizes["lte"] == 20e6 && c.Idle == 8*time.Minute
		}, false},
		{"quick", []string{"-quick"}, func(c config) bool {
			return c.Quick && len(c.Blackouts) == 1 && c.Idle == time.Minute && c.Trials == 1
		}, false},
		{"quick with an override", []string{"-quick", "-idle", "7s"}, func(c config) bool { return c.Quick && c.Idle == 7*time.Second }, false},
		{"bulk cases and sizes", []string{"-bulk", "3g:2%", "-size", "3g=64KiB"}, func(c config) bool {
			return len(c.Bulk) == 1 && c.Bulk[0] == bulkCase{"3g", 0.02} && c.Sizes["3g"] == 64<<10
		}, false},
		{"no bulk", []string{"-bulk", "none"}, func(c config) bool { return len(c.Bulk) == 0 }, false},
		{"unknown profile", []string{"-bulk", "5g:1%", "-size", "5g=1MB"}, nil, true},
		{"missing size", []string{"-bulk", "wifi:1%"}, nil, true},
		{"bad blackout", []string{"-blackouts", "soon"}, nil, true},
		{"no trials", []string{"-trials", "0"}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseFlags(tt.args, logtest.Writer(t))
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseFlags(%q) error = %v, want error %v", tt.args, err, tt.wantErr)
			}
			if err == nil && !tt.check(c) {
				t.Errorf("parseFlags(%q) = %+v", tt.args, c)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want int64
	}{
		{"512", 512}, {"20MB", 20e6}, {"64KB", 64e3}, {"64KiB", 64 << 10}, {"1.5MiB", 3 << 19}, {"2GB", 2e9},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseSize(tt.in)
			if err != nil || got != tt.want {
				t.Errorf("parseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
	for _, bad := range []string{"", "MB", "-1KB", "lots"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) succeeded", bad)
		}
	}
}

func TestCountProbes(t *testing.T) {
	tests := []struct {
		name    string
		samples [2][]sample
		want    uint64 // probes
		bytes   uint64
	}{
		{"none", [2][]sample{{{1, 37}, {1, 57}}, {{1, 45}}}, 0, 0},
		{"lone probe", [2][]sample{{{1, 37}, {1, 1400}}, nil}, 1, 1400},
		{"probe after a heartbeat", [2][]sample{{{1, 57}, {1, 57}, {2, 1457}}, nil}, 1, 1400},
		{"both sides", [2][]sample{{{1, 60}, {2, 1460}}, {{1, 45}, {2, 1445}}}, 2, 2800},
		{"several small packets are not a probe", [2][]sample{{{1, 100}, {20, 2000}}, nil}, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := countProbes(tt.samples)
			if got.Packets != tt.want || got.Bytes != tt.bytes {
				t.Errorf("countProbes = %d probes, %d B; want %d, %d B", got.Packets, got.Bytes, tt.want, tt.bytes)
			}
		})
	}
}
