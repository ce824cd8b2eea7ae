package main

import (
	"io"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		check   func(config) bool
		wantErr string
	}{
		{"defaults", nil, func(c config) bool {
			d := defaultConfig()
			return slices.Equal(c.Targets, allTargets) && c.Idle == d.Idle && c.Restarts == d.Restarts && c.Timeout == d.Timeout && !c.NoQEMU
		}, ""},
		{"quick", []string{"-targets", "linux-arm64", "-idle", "2s", "-settle", "0s", "-restarts", "1"}, func(c config) bool {
			return slices.Equal(c.Targets, []string{"linux-arm64"}) && c.Idle == 2*time.Second && c.Settle == 0 && c.Restarts == 1
		}, ""},
		{"targets deduplicated and trimmed", []string{"-targets", "linux-armv6, linux-armv6,,linux-amd64"}, func(c config) bool {
			return slices.Equal(c.Targets, []string{"linux-armv6", "linux-amd64"})
		}, ""},
		{"no qemu, keep", []string{"-no-qemu", "-keep"}, func(c config) bool { return c.NoQEMU && c.Keep }, ""},
		{"unknown target", []string{"-targets", "linux-mips"}, nil, "unknown target"},
		{"no targets", []string{"-targets", ","}, nil, "none given"},
		{"zero idle", []string{"-idle", "0s"}, nil, "-idle"},
		{"negative settle", []string{"-settle", "-1s"}, nil, "-settle"},
		{"no restarts", []string{"-restarts", "0"}, nil, "-restarts"},
		{"zero timeout", []string{"-timeout", "0s"}, nil, "-timeout"},
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
			if !tt.check(got) {
				t.Errorf("parseFlags(%q) = %+v", tt.args, got)
			}
		})
	}
}

func TestParseStatus(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    status
		wantErr bool
	}{
		{"all", "Name:\tedge-agent\nVmHWM:\t   13264 kB\nVmRSS:\t   13000 kB\nRssAnon:\t    2740 kB\nRssFile:\t   10260 kB\n" +
			"voluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n",
			status{memory{RSS: 13000 << 10, Anon: 2740 << 10, File: 10260 << 10, Peak: 13264 << 10}, 15}, false},
		{"rss only", "VmRSS:\t1 kB\n", status{memory: memory{RSS: 1024}}, false},
		{"no trailing newline", "VmRSS:\t2 kB", status{memory: memory{RSS: 2048}}, false},
		{"no rss (zombie)", "Name:\tx\nState:\tZ (zombie)\n", status{}, true},
		{"wrong unit", "VmRSS:\t2 MB\n", status{}, true},
		{"bad number", "VmRSS:\tlots kB\n", status{}, true},
		{"negative", "VmRSS:\t-5 kB\n", status{}, true},
		{"bad switches", "VmRSS:\t2 kB\nvoluntary_ctxt_switches:\tmany\n", status{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatus([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseStatus error = %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseStatus = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseStat(t *testing.T) {
	// Fields 14 and 15 (utime, stime) are 7 and 5 ticks here.
	const rest = " S 1 2 3 4 5 6 7 8 9 10 7 5 11 12 20 0 1 0 100 200 300\n"
	tests := []struct {
		name    string
		in      string
		want    time.Duration
		wantErr bool
	}{
		{"plain", "42 (edge-agent)" + rest, 120 * time.Millisecond, false},
		{"name with spaces and parentheses", "42 (a) b (c))" + rest, 120 * time.Millisecond, false},
		{"no name", "42 edge-agent S 1 2", 0, true},
		{"short", "42 (x) S 1 2 3", 0, true},
		{"bad time", "42 (x) S 1 2 3 4 5 6 7 8 9 10 x 5 11\n", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseStat error = %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("parseStat = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestThousands(t *testing.T) {
	tests := []struct {
		in   int64
		want string
	}{{0, "0"}, {999, "999"}, {1000, "1,000"}, {10289278, "10,289,278"}, {-1234, "-1,234"}}
	for _, tt := range tests {
		if got := thousands(tt.in); got != tt.want {
			t.Errorf("thousands(%d) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestMedian(t *testing.T) {
	tests := []struct {
		name string
		in   []time.Duration
		want time.Duration
	}{
		{"none", nil, 0},
		{"one", []time.Duration{3}, 3},
		{"odd", []time.Duration{5, 1, 3}, 3},
		{"even takes the lower middle", []time.Duration{4, 1, 3, 2}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := median(tt.in); got != tt.want {
				t.Errorf("median(%v) = %d, want %d", tt.in, got, tt.want)
			}
		})
	}
}

// FuzzParseStatus: /proc/PID/status is read from disk; bad input is an
// error, never a panic, and never a negative figure.
func FuzzParseStatus(f *testing.F) {
	f.Add([]byte("VmHWM:\t 13264 kB\nVmRSS:\t 13000 kB\nRssAnon:\t 2740 kB\nRssFile:\t 10260 kB\n"))
	f.Add([]byte("VmRSS:\t1 kB\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3"))
	f.Add([]byte("VmRSS: kB\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := parseStatus(b)
		if err == nil && (st.RSS < 0 || st.Anon < 0 || st.File < 0 || st.Peak < 0 || st.Switches < 0) {
			t.Errorf("parseStatus(%q) = %+v: negative", b, st)
		}
	})
}

// FuzzParseStat: /proc/PID/stat is read from disk; bad input is an error,
// never a panic, and never a negative time.
func FuzzParseStat(f *testing.F) {
	f.Add([]byte("42 (edge-agent) S 1 2 3 4 5 6 7 8 9 10 7 5 11 12 20 0 1 0 100 200 300\n"))
	f.Add([]byte("42 (a) b (c)) S 1 2 3 4 5 6 7 8 9 10 7 5\n"))
	f.Add([]byte(")"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := parseStat(b)
		if err == nil && d < 0 {
			t.Errorf("parseStat(%q) = %s: negative", b, d)
		}
	})
}
