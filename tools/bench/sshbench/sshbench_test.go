package main

import (
	"bytes"
	"context"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/tools/logtest"
)

// TestRunTiny runs the whole benchmark with a 1 MB payload and one sample
// of everything, so that the command cannot rot unnoticed.
func TestRunTiny(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts fleetd, the agent and sshd; skipped with -short")
	}
	if runtime.GOOS != "linux" {
		t.Skip("sshbench runs on Linux only")
	}
	if err := needTools(true); err != nil {
		t.Skip(err)
	}
	cfg := config{Size: 1_000_000, Runs: 1, RTTRuns: 1, Timeout: 10 * time.Minute} // a generous bound: a busy machine is slow
	var out bytes.Buffer
	if err := run(context.Background(), cfg, &out, logtest.Writer(t)); err != nil {
		t.Fatal(err)
	}
	t.Logf("report:\n%s", out.String())
	for _, want := range []string{
		"Command: `go run ./tools/bench/sshbench -size 1MB -runs 1 -rtt-runs 1 -idle 0s`",
		"| OpenSSH scp → sshd (direct, TCP) |",
		"| OpenSSH scp → tsh proxy → fleetd → QUIC → agent |",
		"| tsh scp (sftp) → fleetd → QUIC → agent |",
		"| tsh ssh → fleet → agent, new connection |",
		"| ssh → tsh proxy → fleet → agent, open connection (ControlMaster) |",
		"| edge-agent |",
		"idle ≤ 15.0 MB",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		want    func(config) bool
		wantErr string
	}{
		{"defaults", nil, func(c config) bool { return c == defaultConfig() }, ""},
		{"tiny", []string{"-size", "1MB", "-runs", "1", "-rtt-runs", "2", "-idle", "0"}, func(c config) bool {
			return c.Size == 1_000_000 && c.Runs == 1 && c.RTTRuns == 2 && c.Idle == 0
		}, ""},
		{"profile and binaries", []string{"-cpuprofile", "prof", "-bin", "bin", "-keep"}, func(c config) bool {
			return c.CPUProfile == "prof" && c.Bin == "bin" && c.Keep
		}, ""},
		{"bad size", []string{"-size", "lots"}, nil, "-size"},
		{"no runs", []string{"-runs", "0"}, nil, "at least 1"},
		{"negative idle", []string{"-idle", "-1s"}, nil, "negative"},
		{"argument", []string{"extra"}, nil, "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlags(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseFlags(%q) error = %v, want one containing %q", tt.args, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseFlags(%q): %v", tt.args, err)
			}
			if !tt.want(got) {
				t.Errorf("parseFlags(%q) = %+v", tt.args, got)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int64 // 0: an error
	}{
		{"megabytes", "100MB", 100_000_000},
		{"mebibytes", "1MiB", 1 << 20},
		{"lower case and space", "2 kb", 2000},
		{"fraction", "1.5GB", 1_500_000_000},
		{"bytes", "4096", 4096},
		{"bytes suffix", "10B", 10},
		{"zero", "0MB", 0},
		{"negative", "-1MB", 0},
		{"word", "big", 0},
		{"too large", "2000GB", 0},
		{"less than a byte", "0.1B", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseSize(tt.in)
			if tt.want == 0 {
				if err == nil {
					t.Errorf("parseSize(%q) = %d, want an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("parseSize(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestQuantile(t *testing.T) {
	ms := func(vs ...int) []time.Duration {
		var ds []time.Duration
		for _, v := range vs {
			ds = append(ds, time.Duration(v)*time.Millisecond)
		}
		return ds
	}
	tests := []struct {
		name string
		in   []time.Duration
		q    float64
		want time.Duration
	}{
		{"empty", nil, 0.5, 0},
		{"one", ms(7), 0.9, 7 * time.Millisecond},
		{"odd median", ms(5, 1, 3), 0.5, 3 * time.Millisecond},
		{"even median", ms(4, 1, 3, 2), 0.5, 2500 * time.Microsecond},
		{"p90 of 10", ms(10, 9, 8, 7, 6, 5, 4, 3, 2, 1), 0.9, 9 * time.Millisecond},
		{"p90 of 20", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20), 0.9, 18 * time.Millisecond},
		{"max", ms(1, 2, 3), 1, 3 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := quantile(tt.in, tt.q); got != tt.want {
				t.Errorf("quantile(%v, %v) = %v, want %v", tt.in, tt.q, got, tt.want)
			}
		})
	}
}

func TestParseAlgorithms(t *testing.T) {
	debug := `debug1: kex: algorithm: curve25519-sha256
debug1: kex: host key algorithm: ssh-ed25519-cert-v01@openssh.com
debug1: kex: server->client cipher: chacha20-poly1305@openssh.com MAC: <implicit> compression: none
debug1: kex: client->server cipher: aes128-gcm@openssh.com MAC: <implicit> compression: none
`
	want := algorithms{Kex: "curve25519-sha256", HostKey: "ssh-ed25519-cert-v01@openssh.com", Cipher: "aes128-gcm@openssh.com"}
	if got := parseAlgorithms(debug); got != want {
		t.Errorf("parseAlgorithms = %+v, want %+v", got, want)
	}
	if got := parseAlgorithms("nothing"); got != (algorithms{}) {
		t.Errorf("parseAlgorithms(nothing) = %+v, want zero", got)
	}
}

func TestHumanSize(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{
		{100_000_000, "100 MB"}, {1_500_000_000, "1.5 GB"}, {1 << 20, "1048576 B"}, {2000, "2 KB"}, {7, "7 B"},
	}
	for _, tt := range tests {
		if got := humanSize(tt.in); got != tt.want {
			t.Errorf("humanSize(%d) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// The command's flags stay documented in its usage text.
func TestUsage(t *testing.T) {
	var buf bytes.Buffer
	if _, err := parseFlags([]string{"-h"}, &buf); err == nil {
		t.Fatal("parseFlags(-h) gave no error")
	}
	for _, flag := range []string{"-size", "-runs", "-rtt-runs", "-idle", "-bin", "-cpuprofile", "-timeout", "-keep"} {
		if !strings.Contains(buf.String(), flag) {
			t.Errorf("usage lacks %s:\n%s", flag, buf.String())
		}
	}
}
