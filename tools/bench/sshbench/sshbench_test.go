package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
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
	cfg := config{Size: 1_000_000, Runs: 1, RTTRuns: 1, Timeout: 2 * time.Minute}
	var out bytes.Buffer
	if err := run(context.Background(), cfg, &out, tWriter{t}); err != nil {
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

// tWriter logs progress lines to the test.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
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

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    memory
		wantErr bool
	}{
		{"process", "Name:\tfleetd\nVmHWM:\t   20000 kB\nVmRSS:\t   12000 kB\nRssAnon:\t    8000 kB\nRssFile:\t    4000 kB\n",
			memory{RSS: 12000 * 1024, Anon: 8000 * 1024, File: 4000 * 1024, Peak: 20000 * 1024}, false},
		{"kernel thread", "Name:\tkthreadd\nState:\tS (sleeping)\n", memory{}, true},
		{"bad unit", "VmRSS:\t   12 MB\n", memory{}, true},
		{"bad number", "VmRSS:\t   x kB\n", memory{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatus([]byte(tt.in))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("parseStatus = %+v, %v; want %+v, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestParseStat(t *testing.T) {
	// Fields 14-17 (utime stime cutime cstime) are 100 20 300 40 ticks.
	line := "1234 (edge (agent)) S 1 1234 1234 0 -1 4194560 100 0 0 0 100 20 300 40 20 0 9 0 1000 1000000 2000 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
	tests := []struct {
		name     string
		in       string
		children bool
		want     time.Duration
		wantErr  bool
	}{
		{"self", line, false, 1200 * time.Millisecond, false},
		{"with children", line, true, 4600 * time.Millisecond, false},
		{"truncated", "1234 (x) S 1 2 3", false, 0, true},
		{"no name", "1234 x S", false, 0, true},
		{"bad number", strings.Replace(line, " 100 20 ", " 100 zz ", 1), false, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat([]byte(tt.in), tt.children)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("parseStat = %v, %v; want %v, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestReadOwnProc(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	m, err := readMemory(os.Getpid())
	if err != nil || m.RSS <= 0 || m.Peak < m.RSS {
		t.Errorf("readMemory(self) = %+v, %v; want a positive RSS at most the peak", m, err)
	}
	if _, err := readCPU(os.Getpid(), true); err != nil {
		t.Errorf("readCPU(self): %v", err)
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

// FuzzParseStatus: the /proc status parser rejects bad input with an
// error, never a panic.
func FuzzParseStatus(f *testing.F) {
	f.Add([]byte("VmRSS:\t 12 kB\nVmHWM:\t 20 kB\n"))
	f.Add([]byte("VmRSS:"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseStatus(b)
		if err == nil && m.RSS < 0 {
			t.Errorf("parseStatus(%q) = %+v: negative RSS", b, m)
		}
	})
}

// FuzzParseStat: the /proc stat parser rejects bad input with an error,
// never a panic.
func FuzzParseStat(f *testing.F) {
	f.Add([]byte("1 (a) S 1 1 1 0 -1 0 0 0 0 0 1 2 3 4 20 0"), true)
	f.Add([]byte(")"), false)
	f.Fuzz(func(t *testing.T, b []byte, children bool) {
		d, err := parseStat(b, children)
		if err == nil && d < 0 {
			t.Errorf("parseStat(%q) = %v: negative", b, d)
		}
	})
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
