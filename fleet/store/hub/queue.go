package hub

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"remoteler.dev/edge/fleet/store"
)

// DefaultQueue is how many undelivered events a watcher may have before it
// is told to resync, when a store's options leave it zero. A watcher that
// resyncs lists every key again, and its new watch starts at the list's
// revision, so the queue must hold what is written while a list and its
// Reset run: at 30,000 devices over three replicas, a replica's list of
// presence took long enough, on a busy etcd, for over 1,024 devices to
// reconnect meanwhile, and the watcher fell behind again at once, five
// times in a row. An event is a few hundred bytes: a full queue is a few
// megabytes.
const DefaultQueue = 16384

// ErrBehind is the Err of the EventResync a watcher gets when it falls more
// than its queue behind.
var ErrBehind = errors.New("watcher fell behind: more undelivered events than its queue holds")

// Queue holds one watcher's undelivered events and feeds them to the
// watcher's channel from its own goroutine, so that the producer (a
// store's write path, or a remote watch stream) never blocks on a slow
// watcher. Past its limit it drops what it holds and delivers one
// EventResync instead. A revision's events are taken whole: only a push of
// a later revision is held to the limit. A lease's end deletes all of its
// keys in one revision (a replica's presence entries: ten thousand for a
// replica of ten thousand devices), and a watcher told to resync in the
// middle of it would list every key again instead. So the queue holds at
// most its limit plus one revision's events. Its methods are safe for
// concurrent use.
type Queue struct {
	mu      sync.Mutex    // guards the fields below
	events  []store.Event // undelivered, in order
	limit   int
	resync  *store.Event // pending resync; set: nothing more is queued
	stopped bool         // Stop was called: deliver nothing more
	wake    chan struct{}
}

// NewQueue returns a queue that holds up to limit events (DefaultQueue when
// limit <= 0).
func NewQueue(limit int) *Queue {
	if limit <= 0 {
		limit = DefaultQueue
	}
	return &Queue{limit: limit, wake: make(chan struct{}, 1)}
}

// Push queues ev. It returns false when the queue is (now) resyncing or
// stopped: the producer should stop sending to it.
func (q *Queue) Push(ev store.Event) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.resync != nil || q.stopped {
		return false
	}
	if n := len(q.events); n >= q.limit && q.events[n-1].Revision != ev.Revision {
		q.resyncLocked(fmt.Errorf("%w (%d)", ErrBehind, q.limit))
		return false
	}
	q.events = append(q.events, ev)
	q.signal()
	return true
}

// Resync drops the undelivered events and makes an EventResync carrying err
// the channel's last event. Later calls and pushes are ignored.
func (q *Queue) Resync(err error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.resync == nil && !q.stopped {
		q.resyncLocked(err)
	}
}

func (q *Queue) resyncLocked(err error) {
	q.events = nil
	q.resync = &store.Event{Kind: store.EventResync, Err: err}
	q.signal()
}

// Stop ends delivery: the channel closes without a resync and undelivered
// events are dropped (the store closed).
func (q *Queue) Stop() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.stopped = true
	q.events = nil
	q.signal()
}

func (q *Queue) signal() {
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Run delivers the queue's events on out until ctx ends, Stop is called, or
// an EventResync has been delivered, and then closes out. after is the
// revision the watch started after: a resync reports the revision of the
// last event delivered, or after. The caller runs it in a goroutine it
// owns.
func (q *Queue) Run(ctx context.Context, out chan<- store.Event, after int64) {
	defer close(out)
	last := after
	for {
		q.mu.Lock()
		var ev store.Event
		var have, final bool
		switch {
		case q.stopped:
			q.mu.Unlock()
			return
		case len(q.events) > 0:
			ev, have = q.events[0], true
			q.events[0] = store.Event{}
			q.events = q.events[1:]
		case q.resync != nil:
			ev, have, final = *q.resync, true, true
			ev.Revision = last
		}
		q.mu.Unlock()
		if !have {
			select {
			case <-ctx.Done():
				return
			case <-q.wake:
			}
			continue
		}
		select {
		case out <- ev:
			last = max(last, ev.Revision)
		case <-ctx.Done():
			return
		case <-q.wake:
			// Stop or Resync while blocked: re-read the state. The event
			// is put back unless the queue was emptied meanwhile.
			q.mu.Lock()
			if !final && q.resync == nil && !q.stopped {
				q.events = append([]store.Event{ev}, q.events...)
			}
			q.mu.Unlock()
			continue
		}
		if final {
			return
		}
	}
}
