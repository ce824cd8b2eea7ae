package cli

import (
	"context"
	"errors"
	"flag"
	"io"
	"strings"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantPos []string
		wantV   bool
		wantErr error
	}{
		{"flags among arguments", []string{"a=1", "-v", "b=2"}, []string{"a=1", "b=2"}, true, nil},
		{"double dash ends flags", []string{"a", "--", "-v"}, []string{"a", "-v"}, false, nil},
		{"long form", []string{"--v", "x"}, []string{"x"}, true, nil},
		{"unknown flag", []string{"-x"}, nil, false, ErrUsage},
		{"help", []string{"-h"}, nil, false, flag.ErrHelp},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			v := fs.Bool("v", false, "")
			pos, err := Parse(fs, tt.args)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("got error %v, want %v", err, tt.wantErr)
			}
			if strings.Join(pos, " ") != strings.Join(tt.wantPos, " ") || *v != tt.wantV {
				t.Errorf("got %q v=%v, want %q v=%v", pos, *v, tt.wantPos, tt.wantV)
			}
		})
	}
}

func TestPromptLines(t *testing.T) {
	p := &Prompt{In: strings.NewReader("pw\r\n123456"), Err: io.Discard}
	for _, want := range []string{"pw", "123456"} {
		if got, err := p.Secret(t.Context(), "?"); got != want || err != nil {
			t.Errorf("got %q, %v; want %q", got, err, want)
		}
	}
	if _, err := p.Line(t.Context(), "?"); err == nil {
		t.Error("got no error at the end of input")
	}
}

func TestPromptCancel(t *testing.T) {
	pr, pw := io.Pipe()
	t.Cleanup(func() { pw.Close() })
	p := &Prompt{In: pr, Err: io.Discard}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := p.Secret(ctx, "?"); !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want context.Canceled", err)
	}
}

func TestFormats(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct{ got, want string }{
		{Duration(30 * time.Second), "30s"},
		{Duration(45 * time.Minute), "45m"},
		{Duration(8 * time.Hour), "8h"},
		{Duration(7*time.Hour + 59*time.Minute + 30*time.Second), "7h59m"},
		{Duration(-3 * time.Hour), "3h"},
		{Duration(72 * time.Hour), "3d"},
		{Ago(now, time.Time{}), "never"},
		{Ago(now, now.Add(time.Second)), "just now"},
		{Ago(now, now.Add(-90*time.Second)), "1m ago"},
		{Until(now, now.Add(time.Hour)), "in 1h"},
		{Until(now, now.Add(-2*time.Hour)), "expired 2h ago"},
		{Labels(map[string]string{"b": "2", "a": "1"}), "a=1,b=2"},
		{Labels(nil), "-"},
		{List(nil), "(none)"},
		{List([]string{"a", "b"}), "a, b"},
		{Dash(""), "-"},
	}
	for i, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("case %d: got %q, want %q", i, tt.got, tt.want)
		}
	}
}
