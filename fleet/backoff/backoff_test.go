package backoff

import (
	"context"
	"testing"
	"time"
)

func TestNext(t *testing.T) {
	const first, most = 100 * time.Millisecond, 5 * time.Second
	prev := time.Duration(0)
	for i := range 20 {
		d := Next(prev, first, most)
		want := min(max(2*prev, first), most)
		if d < want*3/4 || d > want*5/4 {
			t.Fatalf("step %d: Next(%s) = %s, want within a quarter of %s", i, prev, d, want)
		}
		prev = d
	}
	if prev < most*3/4 {
		t.Errorf("after 20 steps the wait is %s, want near the most, %s", prev, most)
	}
}

func TestWait(t *testing.T) {
	if !Wait(t.Context(), time.Millisecond) {
		t.Error("Wait with a live context returned false")
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if Wait(ctx, time.Hour) {
		t.Error("Wait with an ended context returned true")
	}
}
