package users

import (
	"context"
	"sync"
	"time"
)

// Lanes of the queue for password-hashing slots: a freed slot goes to the
// longest-waiting login of the first lane that has one.
const (
	laneNormal = iota
	laneLow    // logins from sources with recent failures (WithLowPriority)
	lanes
)

type lowPriorityKey struct{}

// WithLowPriority marks a login as coming from a source that failed (or
// was refused) recently: it waits for a password-hashing slot behind every
// other login. Under a flood, the flood's sources are marked after their
// first failure, so a real user's login goes ahead of theirs.
func WithLowPriority(ctx context.Context) context.Context {
	return context.WithValue(ctx, lowPriorityKey{}, true)
}

func laneOf(ctx context.Context) int {
	if low, _ := ctx.Value(lowPriorityKey{}).(bool); low {
		return laneLow
	}
	return laneNormal
}

// hashSlots hands out the MaxHashes slots, with a bounded queue per lane.
type hashSlots struct {
	mu     sync.Mutex // guards free and queue
	free   int
	queue  [lanes][]chan struct{} // per lane, oldest first; each has room for its slot
	waitOK chan struct{}          // closed and replaced whenever a login starts waiting (tests watch it)
}

func newHashSlots(n int) *hashSlots {
	return &hashSlots{free: n, waitOK: make(chan struct{})}
}

// acquire takes a slot, waiting in lane's queue (at most maxQueue long)
// for at most wait; it returns ErrBusy past either, or ctx's error.
func (h *hashSlots) acquire(ctx context.Context, lane, maxQueue int, wait time.Duration) error {
	h.mu.Lock()
	if h.free > 0 {
		h.free--
		h.mu.Unlock()
		return nil
	}
	if len(h.queue[lane]) >= maxQueue {
		h.mu.Unlock()
		return ErrBusy
	}
	ch := make(chan struct{}, 1)
	h.queue[lane] = append(h.queue[lane], ch)
	close(h.waitOK)
	h.waitOK = make(chan struct{})
	h.mu.Unlock()

	t := time.NewTimer(wait)
	defer t.Stop()
	var err error
	select {
	case <-ch:
		return nil
	case <-t.C:
		err = ErrBusy
	case <-ctx.Done():
		err = ctx.Err()
	}
	h.mu.Lock()
	q := h.queue[lane]
	for i, c := range q {
		if c == ch {
			h.queue[lane] = append(q[:i:i], q[i+1:]...)
			h.mu.Unlock()
			return err
		}
	}
	h.mu.Unlock()
	// Handed a slot just as we gave up: pass it on.
	<-ch
	h.release()
	return err
}

// release gives a slot to the next login waiting, or back to the pool.
func (h *hashSlots) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for lane := range h.queue {
		if q := h.queue[lane]; len(q) > 0 {
			h.queue[lane] = q[1:]
			q[0] <- struct{}{}
			return
		}
	}
	h.free++
}

// waiting returns how many logins wait in each lane, and a channel closed
// when one more starts waiting.
func (h *hashSlots) waiting() ([lanes]int, <-chan struct{}) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var n [lanes]int
	for lane, q := range h.queue {
		n[lane] = len(q)
	}
	return n, h.waitOK
}
