package tsh

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto/asciicast"
)

func TestPlayCast(t *testing.T) {
	const rec = `{"version": 2, "width": 80, "height": 24}
[0.5, "o", "hello "]
[0.5, "r", "100x40"]
[2.5, "o", "caf\u00e9"]
[12.5, "o", "\r\n"]
`
	tests := []struct {
		name    string
		speed   float64
		maxIdle time.Duration
		want    []time.Duration
	}{
		{"real time", 1, 0, []time.Duration{500 * time.Millisecond, 2 * time.Second, 10 * time.Second}},
		{"four times as fast", 4, 0, []time.Duration{125 * time.Millisecond, 500 * time.Millisecond, 2500 * time.Millisecond}},
		{"idle capped", 1, time.Second, []time.Duration{500 * time.Millisecond, time.Second, time.Second}},
		{"at once", 0, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rd, err := asciicast.NewReader(strings.NewReader(rec))
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			var waits []time.Duration
			sleep := func(_ context.Context, d time.Duration) error { waits = append(waits, d); return nil }
			if err := playCast(context.Background(), rd, &out, tt.speed, tt.maxIdle, sleep); err != nil {
				t.Fatal(err)
			}
			if out.String() != "hello café\r\n" {
				t.Errorf("output = %q", out.String())
			}
			if len(waits) != len(tt.want) {
				t.Fatalf("waits = %v, want %v", waits, tt.want)
			}
			for i := range waits {
				if waits[i] != tt.want[i] {
					t.Errorf("wait %d = %v, want %v", i, waits[i], tt.want[i])
				}
			}
		})
	}
}

func TestPlayCastStopsWhenCancelled(t *testing.T) {
	rd, _ := asciicast.NewReader(strings.NewReader("{\"version\": 2}\n[5, \"o\", \"x\"]\n"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := playCast(ctx, rd, &bytes.Buffer{}, 1, 0, sleepCtx); err == nil {
		t.Error("a cancelled playback did not stop")
	}
}
