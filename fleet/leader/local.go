package leader

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/store"
)

// KeyPrefix is where the claims of leadership live in the store:
// KeyPrefix + job name (Local), or below it (etcdleader).
const KeyPrefix = "leader/"

// DefaultTTL is how long a leader's claim outlives its last renewal when
// an elector's TTL is zero: a leader that dies is replaced within it.
const DefaultTTL = 10 * time.Second

// Local is the elector for the embedded stores: one fleetd, so its first
// campaign wins at once. The claim is a key (KeyPrefix + Name) held by a
// lease of the store, created only if absent; a second campaign in the
// same process waits until the first term ends. It uses nothing but the
// store contract, so it would elect correctly on any implementation; on
// etcd, fleet/leader/etcdleader uses etcd's own election instead.
type Local struct {
	// Store holds the claim. Required.
	Store store.Store
	// Name is the job's name. Required.
	Name string
	// ID names this candidate in the claim (e.g. the host name); default
	// "fleetd".
	ID string
	// TTL is the claim's lease; default DefaultTTL (10s).
	TTL time.Duration
}

// Campaign implements Elector.
func (l *Local) Campaign(ctx context.Context) (Term, error) {
	if l.Store == nil || l.Name == "" {
		return nil, errors.New("leader: local elector needs a Store and a Name")
	}
	key := KeyPrefix + l.Name
	value := claimValue(l.ID)
	ttl := l.TTL
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	for {
		// The term owns the lease: it lives until Resign.
		lctx, stop := context.WithCancel(context.WithoutCancel(ctx))
		lease, err := l.Store.Grant(lctx, ttl)
		if err != nil {
			stop()
			return nil, fmt.Errorf("leader: campaign %s: %w", l.Name, err)
		}
		err = l.Store.Create(ctx, key, value, store.WithLease(lease))
		if err == nil {
			return newStoreTerm(l.Store, key, value, lease, stop), nil
		}
		lease.Revoke(context.WithoutCancel(ctx))
		stop()
		if !errors.Is(err, store.ErrExists) {
			return nil, fmt.Errorf("leader: campaign %s: %w", l.Name, err)
		}
		if err := waitGone(ctx, l.Store, key); err != nil {
			return nil, fmt.Errorf("leader: campaign %s: %w", l.Name, err)
		}
	}
}

// claimValue is a candidate's claim: its ID and a random nonce, so that no
// two terms have the same guard.
func claimValue(id string) []byte {
	if id == "" {
		id = "fleetd"
	}
	nonce := make([]byte, 8)
	rand.Read(nonce)
	return []byte(id + "/" + hex.EncodeToString(nonce))
}

// waitGone waits until key is absent.
func waitGone(ctx context.Context, st store.Store, key string) error {
	for {
		items, rev, err := st.ListRevision(ctx, key)
		if err != nil {
			return err
		}
		if !holds(items, key, nil) {
			return nil
		}
		ch, err := st.Watch(ctx, key, rev)
		if err != nil {
			return err
		}
		for ev := range ch {
			if ev.Key == key && ev.Kind == store.EventDelete {
				return nil
			}
			if ev.Kind == store.EventResync {
				break
			}
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// holds reports whether items has key, with value when value is not nil.
func holds(items []store.Item, key string, value []byte) bool {
	for _, it := range items {
		if it.Key == key {
			return value == nil || bytes.Equal(it.Value, value)
		}
	}
	return false
}

// storeTerm is a term whose claim is key = value in st, under a lease.
// Done closes when the lease ends or the claim changes; it watches the
// claim from its own goroutine, which ends with the term.
type storeTerm struct {
	st    store.Store
	g     store.Guard
	lease store.Lease
	stop  context.CancelFunc // ends the lease's renewals and the watch

	done     chan struct{}
	doneOnce sync.Once
}

func newStoreTerm(st store.Store, key string, value []byte, lease store.Lease, stop context.CancelFunc) *storeTerm {
	t := &storeTerm{st: st, g: store.Guard{Key: key, Value: value}, lease: lease, stop: stop, done: make(chan struct{})}
	go t.watch()
	return t
}

func (t *storeTerm) Guard() store.Guard    { return t.g }
func (t *storeTerm) Done() <-chan struct{} { return t.done }

func (t *storeTerm) end() {
	t.doneOnce.Do(func() { close(t.done) })
}

// Resign implements Term: it deletes the claim if it is still this term's,
// and revokes the lease.
func (t *storeTerm) Resign(ctx context.Context) error {
	defer t.end()
	defer t.stop()
	err := t.st.Delete(ctx, t.g.Key, store.If(t.g))
	if errors.Is(err, store.ErrFenced) || errors.Is(err, store.ErrNotFound) {
		err = nil // no longer ours
	}
	if rerr := t.lease.Revoke(ctx); err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("leader: resign: %w", err)
	}
	return nil
}

// watch ends the term when its lease ends or its claim changes.
func (t *storeTerm) watch() {
	defer t.end()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-t.lease.Done():
		case <-t.done:
		}
		cancel()
	}()
	for {
		items, rev, err := t.st.ListRevision(ctx, t.g.Key)
		if err != nil || !holds(items, t.g.Key, t.g.Value) {
			return
		}
		ch, err := t.st.Watch(ctx, t.g.Key, rev)
		if err != nil {
			return
		}
		for ev := range ch {
			if ev.Key == t.g.Key && (ev.Kind == store.EventDelete || !bytes.Equal(ev.Value, t.g.Value)) {
				return
			}
			if ev.Kind == store.EventResync {
				break
			}
		}
		if ctx.Err() != nil {
			return
		}
	}
}
