// Package backoff holds the jittered exponential back-off of the fleet's
// retry loops (the store waiting for etcd, watches resuming, campaigns for
// leadership): each wait doubles the last, from a first to a most, give or
// take a quarter at random so that many replicas do not retry in step.
//
// Only fleet/... imports this package.
package backoff

import (
	"context"
	"math/rand/v2"
	"time"
)

// Next returns the wait after prev (zero: none yet): twice prev, at least
// first and at most most, with jitter of up to a quarter either way.
func Next(prev, first, most time.Duration) time.Duration {
	next := min(max(2*prev, first), most)
	return next + time.Duration(rand.Int64N(int64(next/2)+1)) - next/4
}

// Wait waits for d, or until ctx ends: it returns false then.
func Wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
