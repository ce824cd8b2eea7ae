package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"remoteler.dev/edge/fleet/backoff"
)

// FollowHandler receives what Follow learns. Reset and Apply are called
// from Follow's goroutine, one at a time.
type FollowHandler struct {
	// Reset replaces the whole view with items, a snapshot taken at rev.
	// It is called first, and again after every resync.
	Reset func(items []Item, rev int64)
	// Apply applies one change (EventPut or EventDelete) made after the
	// last Reset's snapshot.
	Apply func(ev Event)
	// Retry, when set, is told why Follow lists again (a failed list, a
	// resync) and how long it waits first.
	Retry func(err error, wait time.Duration)
}

// Follow keeps a view of the keys under prefix up to date for as long as
// ctx is live: it lists them (h.Reset), then applies every change
// (h.Apply) from a watch started at the list's revision. When the watch
// reports EventResync, or a list fails, it lists again, after a jittered
// back-off (100 ms doubling to 5 s) when the resyncs or failures repeat.
// It returns ctx's error when ctx ends, and an error wrapping ErrClosed
// when the store closes.
func Follow(ctx context.Context, st Store, prefix string, h FollowHandler) error {
	wait := time.Duration(0)
	for {
		if wait > 0 && !backoff.Wait(ctx, wait) {
			return ctx.Err()
		}
		err := followOnce(ctx, st, prefix, h)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, ErrClosed):
			return fmt.Errorf("store: follow %q: %w", prefix, err)
		case errors.Is(err, errWatchHealthy):
			wait = 0
			continue
		}
		wait = backoff.Next(wait, 100*time.Millisecond, 5*time.Second)
		if h.Retry != nil {
			h.Retry(err, wait)
		}
	}
}

// errWatchHealthy reports a resync after a watch that delivered events:
// list again at once.
var errWatchHealthy = errors.New("store: resync after progress")

// followOnce lists and watches until the watch ends. It returns why.
func followOnce(ctx context.Context, st Store, prefix string, h FollowHandler) error {
	items, rev, err := st.ListRevision(ctx, prefix)
	if err != nil {
		return err
	}
	ch, err := st.Watch(ctx, prefix, rev)
	if err != nil {
		return err
	}
	h.Reset(items, rev)
	delivered := false
	for ev := range ch {
		if ev.Kind == EventResync {
			if delivered {
				return errWatchHealthy
			}
			return fmt.Errorf("store: follow %q: resync: %w", prefix, ev.Err)
		}
		delivered = true
		h.Apply(ev)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return ErrClosed
}
