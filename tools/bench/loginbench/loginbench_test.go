package main

import (
	"testing"
	"time"
)

// TestQuick runs both modes briefly with cheap hashes: the command works
// end to end (the figures are for the benchmark run, not asserted here).
func TestQuick(t *testing.T) {
	for _, on := range []bool{true, false} {
		r, err := measure(on, 8, 2*time.Second, true)
		if err != nil {
			t.Fatalf("defences %v: %v", on, err)
		}
		if r.answered == 0 {
			t.Errorf("defences %v: the flood got no answers: %+v", on, r)
		}
		t.Logf("defences %v: %d answers (%d checked, %d limited, %d busy), alice %d in, %d failed",
			on, r.answered, r.checked, r.limited, r.busy, len(r.latencies), r.failed)
	}
}
