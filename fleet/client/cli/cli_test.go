package cli

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

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
