package main

import (
	"context"
	"strings"
	"testing"
)

func TestRunUsage(t *testing.T) {
	tests := []struct {
		name       string
		args       []string
		wantStatus int
		wantErr    string // in stderr
	}{
		{"help", []string{"-h"}, 0, "usage: devsim --fleet"},
		{"restart help", []string{"restart", "-h"}, 0, "usage: devsim restart"},
		{"replicas help", []string{"replicas", "-h"}, 0, "usage: devsim replicas"},
		{"balance help", []string{"balance", "-h"}, 0, "usage: devsim balance"},
		{"balance without backends", []string{"balance"}, 2, "-backends is required"},
		{"unknown flag", []string{"-nope"}, 2, "flag provided but not defined"},
		{"stray argument", []string{"--fleet", "127.0.0.1:1", "--data", "x", "extra"}, 2, `unexpected argument "extra"`},
		{"no fleet", []string{"--data", "x"}, 1, "the fleet address is required"},
		{"no data dir", []string{"--fleet", "127.0.0.1:1"}, 1, "a data directory is required"},
		{"niceness without simulator processes", []string{"replicas", "-q", "-nice", "5"}, 1, "give -procs 2 or more"},
		{"niceness out of range", []string{"restart", "-q", "-procs", "2", "-nice", "20"}, 1, "want 0 to 19"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			if got := run(context.Background(), tt.args, &stdout, &stderr); got != tt.wantStatus {
				t.Errorf("status = %d, want %d; stderr:\n%s", got, tt.wantStatus, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.wantErr) {
				t.Errorf("stderr lacks %q:\n%s", tt.wantErr, stderr.String())
			}
		})
	}
}
