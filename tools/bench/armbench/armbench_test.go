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
