package tunnel

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"remoteler.dev/edge/proto"
)

// TestRetryAfter: how long the agent waits before it dials again, by how
// its last connection ended.
func TestRetryAfter(t *testing.T) {
	const lo, hi = 100 * time.Millisecond, time.Minute
	refused := fmt.Errorf("tunnel: dial fleet x: %w", &quic.TransportError{Remote: true, ErrorCode: quic.ConnectionRefused})
	restart := &quic.ApplicationError{Remote: true, ErrorCode: quic.ApplicationErrorCode(proto.CodeUnavailable), ErrorMessage: fmt.Sprintf(proto.RestartReason, 30000)}
	tests := []struct {
		name         string
		err          error
		failures     int
		min, max     time.Duration // the delay's bounds
		wantFailures int
		wantAbove    time.Duration // some of many draws exceed this
	}{
		{"a first failure", errors.New("timeout: no recent network activity"), 0, lo / 2, lo, 1, 0},
		{"a third failure", errors.New("timeout: no recent network activity"), 2, lo / 2, 4 * lo, 3, 0},
		{"refused before the handshake: a crowd", refused, 0, lo / 2, 16 * lo, crowdedFailures + 1, lo},
		{"refused after more failures than that", refused, 6, lo / 2, 64 * lo, 7, 16 * lo},
		{"refused by this side, not the fleet", fmt.Errorf("x: %w", &quic.TransportError{ErrorCode: quic.ConnectionRefused}), 0, lo / 2, lo, 1, 0},
		{"the fleet restarts, spread over 30 s", restart, 5, time.Second, 31 * time.Second, 0, 2 * time.Second},
	}
	c := New(Config{MinBackoff: lo, MaxBackoff: hi})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var most time.Duration
			for range 200 {
				d, f := c.retryAfter(tt.err, tt.failures)
				if d < tt.min || d > tt.max {
					t.Fatalf("delay %v, want within [%v, %v]", d, tt.min, tt.max)
				}
				if f != tt.wantFailures {
					t.Fatalf("failures after = %d, want %d", f, tt.wantFailures)
				}
				most = max(most, d)
			}
			// Full jitter: of 200 draws, some land in the top part of
			// the range (a chance of missing it below 1e-20).
			if tt.wantAbove > 0 && most <= tt.wantAbove {
				t.Errorf("the longest of 200 delays was %v, want some above %v", most, tt.wantAbove)
			}
		})
	}
}
