package hub

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/store"
)

// Leases is a single-process store's lease table: which keys each lease
// holds, and a timer per lease that ends it ttl after its owner's context
// ended. Ending a lease is the store's job (it deletes the keys in its own
// write path, calling End under its write lock); the table calls the
// store's end function when a lease must end.
//
// The store calls Check, Attach, Detach and End with its write lock held;
// the table never calls the store while holding its own lock.
type Leases struct {
	end func(ctx context.Context, id int64) error

	mu     sync.Mutex // guards the fields below
	next   int64
	live   map[int64]*Lease
	keys   map[int64]map[string]struct{}
	byKey  map[string]int64
	closed bool

	stop chan struct{} // closed by Close
	wg   sync.WaitGroup
}

// NewLeases returns an empty table. end ends lease id in the store: it
// takes the store's write lock, calls End, deletes the keys End returns,
// and publishes their deletion.
func NewLeases(end func(ctx context.Context, id int64) error) *Leases {
	return &Leases{
		end:   end,
		live:  map[int64]*Lease{},
		keys:  map[int64]map[string]struct{}{},
		byKey: map[string]int64{},
		stop:  make(chan struct{}),
	}
}

// RoundTTL rounds ttl up to whole seconds, at least one, as every store
// does.
func RoundTTL(ttl time.Duration) time.Duration {
	s := (ttl + time.Second - 1) / time.Second
	return max(s, 1) * time.Second
}

// Grant implements store.Store.Grant: the lease lives while ctx does and
// ends ttl (rounded up to whole seconds) after.
func (ls *Leases) Grant(ctx context.Context, ttl time.Duration) (*Lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.closed {
		return nil, store.ErrClosed
	}
	ls.next++
	l := &Lease{ls: ls, id: ls.next, ttl: RoundTTL(ttl), done: make(chan struct{}), ended: make(chan struct{})}
	ls.live[l.id] = l
	ls.wg.Go(func() { l.run(ctx) })
	return l, nil
}

// Check returns the ID of l if it is a live lease of this table, else an
// error wrapping store.ErrNoLease.
func (ls *Leases) Check(l store.Lease) (int64, error) {
	ll, ok := l.(*Lease)
	if !ok || ll.ls != ls {
		return 0, fmt.Errorf("%w: the lease is from another store", store.ErrNoLease)
	}
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.live[ll.id] != ll {
		return 0, fmt.Errorf("%w: lease %d has ended", store.ErrNoLease, ll.id)
	}
	return ll.id, nil
}

// Attach records that key belongs to lease id (0: to none).
func (ls *Leases) Attach(key string, id int64) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.detachLocked(key)
	if id == 0 {
		return
	}
	if ls.keys[id] == nil {
		ls.keys[id] = map[string]struct{}{}
	}
	ls.keys[id][key] = struct{}{}
	ls.byKey[key] = id
}

// Detach records that key (deleted) belongs to no lease.
func (ls *Leases) Detach(key string) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	ls.detachLocked(key)
}

func (ls *Leases) detachLocked(key string) {
	if id, ok := ls.byKey[key]; ok {
		delete(ls.keys[id], key)
		delete(ls.byKey, key)
	}
}

// Of returns the lease key belongs to, or 0.
func (ls *Leases) Of(key string) int64 {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.byKey[key]
}

// End marks lease id ended (its Done closes) and returns its keys in key
// order, forgetting them; the store deletes them. Ending an ended or
// unknown lease returns nothing.
func (ls *Leases) End(id int64) []string {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	l, ok := ls.live[id]
	if !ok {
		return nil
	}
	delete(ls.live, id)
	close(l.ended)
	l.markDone()
	var keys []string
	for k := range ls.keys[id] {
		keys = append(keys, k)
		delete(ls.byKey, k)
	}
	delete(ls.keys, id)
	slices.Sort(keys)
	return keys
}

// Live returns the IDs of the leases that have not ended.
func (ls *Leases) Live() []int64 {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	var ids []int64
	for id := range ls.live {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Close stops every lease's timer, closes their Done channels and waits for
// the timers' goroutines. The store ends (or purges) the leases' keys
// itself.
func (ls *Leases) Close() {
	ls.mu.Lock()
	if !ls.closed {
		ls.closed = true
		close(ls.stop)
		for _, l := range ls.live {
			l.markDone()
		}
	}
	ls.mu.Unlock()
	ls.wg.Wait()
}

// Lease is a lease of a single-process store.
type Lease struct {
	ls       *Leases
	id       int64
	ttl      time.Duration
	done     chan struct{} // closed when the owner can no longer count on it
	doneOnce sync.Once
	ended    chan struct{} // closed by End
}

var _ store.Lease = (*Lease)(nil)

// ID implements store.Lease.
func (l *Lease) ID() int64 { return l.id }

// TTL implements store.Lease.
func (l *Lease) TTL() time.Duration { return l.ttl }

// Done implements store.Lease.
func (l *Lease) Done() <-chan struct{} { return l.done }

// Revoke implements store.Lease.
func (l *Lease) Revoke(ctx context.Context) error {
	select {
	case <-l.ended:
		return nil
	default:
	}
	return l.ls.end(ctx, l.id)
}

func (l *Lease) markDone() {
	l.doneOnce.Do(func() { close(l.done) })
}

// run waits for the owner's context to end, then ends the lease ttl later.
func (l *Lease) run(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-l.ended:
		return
	case <-l.ls.stop:
		return
	}
	l.markDone()
	t := time.NewTimer(l.ttl)
	defer t.Stop()
	select {
	case <-t.C:
		// A failure means the store is closing; it purges the keys.
		_ = l.ls.end(context.Background(), l.id)
	case <-l.ended:
	case <-l.ls.stop:
	}
}
