// Package hub is the machinery the single-process stores (memstore and
// boltstore) share to meet the store contract's watches and leases: a Hub
// that keeps the recent history of changes and fans them out to watchers,
// and a lease table whose timers end a lease ttl after its owner stopped
// renewing it. Queue, one watcher's bounded buffer, serves the etcd store
// too.
//
// Only fleet/store/... imports this package.
package hub

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"remoteler.dev/edge/fleet/store"
)

// DefaultHistory is how many recent events a Hub keeps for watchers that
// resume from a revision, when Options leave it zero.
const DefaultHistory = 4096

// ErrCompacted is the Err of the EventResync a watcher gets when it asks
// for changes older than the history kept.
var ErrCompacted = errors.New("the revision asked for is older than the history kept")

// Options configure a Hub. The zero value works.
type Options struct {
	// History is how many recent events are kept for watchers resuming
	// from a revision; default DefaultHistory (4096).
	History int
	// Queue is how many undelivered events one watcher may have before it
	// is told to resync; default DefaultQueue (16,384).
	Queue int
}

// Hub keeps a single-process store's recent changes and fans them out to
// its watchers. The store calls Publish for every committed write, in
// revision order (under its write lock).
type Hub struct {
	opts Options

	mu       sync.Mutex // guards the fields below
	rev      int64      // revision of the last change published (or the start)
	floor    int64      // hist covers every change after floor
	hist     []store.Event
	watchers map[*watcher]struct{} // receiving events
	all      map[*watcher]struct{} // with a running goroutine
	closed   bool

	wg sync.WaitGroup // watcher goroutines
}

type watcher struct {
	prefix string
	after  int64
	queue  *Queue
}

// New returns a hub for a store whose current revision is rev: watchers
// may resume from rev or later.
func New(rev int64, opts Options) *Hub {
	if opts.History <= 0 {
		opts.History = DefaultHistory
	}
	if opts.Queue <= 0 {
		opts.Queue = DefaultQueue
	}
	return &Hub{opts: opts, rev: rev, floor: rev, watchers: map[*watcher]struct{}{}, all: map[*watcher]struct{}{}}
}

// Rev returns the revision of the last change published.
func (h *Hub) Rev() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.rev
}

// Publish records the events of one committed write, all at one revision
// higher than the last, and queues them for the watchers they concern.
func (h *Hub) Publish(evs ...store.Event) {
	if len(evs) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return
	}
	rev := evs[0].Revision
	if rev <= h.rev {
		panic(fmt.Sprintf("hub: publish revision %d after %d", rev, h.rev))
	}
	h.rev = rev
	h.hist = append(h.hist, evs...)
	if over := len(h.hist) - h.opts.History; over > 0 {
		h.floor = h.hist[over-1].Revision
		clear(h.hist[:over])
		h.hist = h.hist[over:]
	}
	for w := range h.watchers {
		for _, ev := range evs {
			if ev.Revision <= w.after || !strings.HasPrefix(ev.Key, w.prefix) {
				continue
			}
			if !w.queue.Push(own(ev)) {
				delete(h.watchers, w)
				break
			}
		}
	}
}

// Watch implements store.Store.Watch for the hub's store: the history
// after after, then every change published, for keys under prefix.
func (h *Hub) Watch(ctx context.Context, prefix string, after int64) (<-chan store.Event, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, store.ErrClosed
	}
	if after <= 0 {
		after = h.rev
	}
	w := &watcher{prefix: prefix, after: after, queue: NewQueue(h.opts.Queue)}
	if after < h.floor {
		w.queue.Resync(fmt.Errorf("%w (revision %d; history starts after %d)", ErrCompacted, after, h.floor))
	} else {
		ok := true
		for _, ev := range h.hist {
			if ev.Revision > after && strings.HasPrefix(ev.Key, prefix) {
				if ok = w.queue.Push(own(ev)); !ok {
					break
				}
			}
		}
		if ok {
			h.watchers[w] = struct{}{}
		}
	}
	h.all[w] = struct{}{}
	out := make(chan store.Event)
	h.wg.Go(func() {
		w.queue.Run(ctx, out, after)
		h.mu.Lock()
		delete(h.watchers, w)
		delete(h.all, w)
		h.mu.Unlock()
	})
	return out, nil
}

// own gives a watcher its own copy of ev's value.
func own(ev store.Event) store.Event {
	if ev.Value != nil {
		ev.Value = bytes.Clone(ev.Value)
	}
	return ev
}

// Close closes every watcher's channel (without a resync) and waits for
// their goroutines. Later Publish calls are ignored and Watch fails.
func (h *Hub) Close() {
	h.mu.Lock()
	h.closed = true
	for w := range h.all {
		w.queue.Stop()
	}
	clear(h.watchers)
	h.mu.Unlock()
	h.wg.Wait()
}
