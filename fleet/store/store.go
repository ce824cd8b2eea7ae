// Package store defines the contract of the fleet's state store: a small,
// ordered key-value interface that the fleet's services (CAs, users, roles,
// tokens, devices) keep their state in, with what several fleetd replicas
// need on top: a revision for every change, watches, leases and guarded
// writes.
//
// Implementations: fleet/store/boltstore (the embedded default, bbolt in
// the data dir), fleet/store/etcdstore (etcd, for several replicas) and
// fleet/store/memstore (in memory, the test double). All three pass the
// contract suite in fleet/store/storetest, so code written against this
// package runs the same on one fleetd and on many.
//
// Keys are slash-separated paths ("users/alice"); values are opaque bytes
// (the services store JSON), at most MaxValueSize each. Only fleet/...
// imports this package.
//
// # Revisions
//
// The store has one revision counter. Every write that changes something
// (Put, Create, CompareAndSwap, Delete, a lease's end deleting its keys)
// is committed at a revision higher than every earlier one; one write may
// change several keys at one revision (a lease's end). A failed write
// changes nothing and uses no revision. Revisions are comparable within
// one store only: a copy of the data into another store has other
// revisions.
//
// # Watching
//
// A consumer that keeps a view of a prefix (a cache of roles, of locks)
// lists it with ListRevision and watches from the revision the list was
// taken at:
//
//	items, rev, err := st.ListRevision(ctx, "locks/")
//	// ... build the view from items ...
//	events, err := st.Watch(ctx, "locks/", rev)
//	for ev := range events {
//		switch ev.Kind {
//		case store.EventPut, store.EventDelete:
//			// apply ev to the view
//		case store.EventResync:
//			// the view may have missed changes: list and watch again
//		}
//	}
//	// the channel closed: ctx ended or the store closed
//
// Watch delivers every change after the revision, once, in revision order,
// or tells the watcher that it cannot (EventResync). The Follow function
// runs that loop.
package store

import (
	"context"
	"errors"
	"time"
)

// Errors returned by every implementation. Callers test them with errors.Is.
var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrExists: Create found the key already there.
	ErrExists = errors.New("store: already exists")
	// ErrConflict: CompareAndSwap found a value other than the expected one.
	ErrConflict = errors.New("store: conflict")
	// ErrFenced: a guarded write's guard did not hold (for a leader's
	// writes: it is no longer the leader). Nothing was written.
	ErrFenced = errors.New("store: guard failed (no longer the leader?)")
	// ErrNoLease: a write named a lease that has ended (expired or
	// revoked), or one from another store. Nothing was written.
	ErrNoLease = errors.New("store: lease ended or unknown")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store: closed")
)

// MaxValueSize is the largest value every implementation accepts (etcd's
// default request limit is 1.5 MiB).
const MaxValueSize = 1 << 20

// Item is one key and its value.
type Item struct {
	Key   string
	Value []byte
	// Lease is the ID of the lease the key is attached to (see Grant), or
	// 0 when it has none. Leased keys belong to a live process (presence,
	// leadership): copies of a store leave them out.
	Lease int64
}

// EventKind says what an Event reports.
type EventKind int

// The kinds of Event.
const (
	// EventPut: Key was created or changed to Value.
	EventPut EventKind = iota + 1
	// EventDelete: Key was deleted (by Delete, or by its lease's end).
	EventDelete
	// EventResync: the store cannot deliver every change after the
	// watcher's last event: the watcher fell behind (more than the
	// store's watch queue undelivered), the revision asked for is older
	// than the history the store keeps, or the watch broke and could not
	// be resumed. Err says which. The watcher must list again and watch
	// from the new list's revision. It is the channel's last event.
	EventResync
)

func (k EventKind) String() string {
	switch k {
	case EventPut:
		return "put"
	case EventDelete:
		return "delete"
	case EventResync:
		return "resync"
	}
	return "unknown"
}

// Event is one change seen by a watcher.
type Event struct {
	Kind EventKind
	// Key is the changed key (empty for EventResync).
	Key string
	// Value is the new value for EventPut; nil otherwise.
	Value []byte
	// Revision is the revision the change was committed at. For
	// EventResync it is the revision of the last event delivered before
	// it (or the revision the watch started after).
	Revision int64
	// Err says why, for EventResync.
	Err error
}

// Lease is a claim that lasts while its owner renews it; keys written with
// WithLease(l) are deleted when it ends. The store renews it in the
// background for as long as the context given to Grant is live.
type Lease interface {
	// ID is the lease's ID in its store (never 0).
	ID() int64
	// TTL is how long the lease outlives its last renewal.
	TTL() time.Duration
	// Done is closed when the owner can no longer count on the lease:
	// Grant's context ended, Revoke was called, renewals failed for a
	// whole TTL (the store is unreachable), the store expired it, or the
	// store closed. The lease's keys may outlive Done by up to the TTL.
	Done() <-chan struct{}
	// Revoke ends the lease now: its keys are deleted (watchers see a
	// Delete for each) before Revoke returns nil. Revoking an ended lease
	// returns nil.
	Revoke(ctx context.Context) error
}

// Guard is a condition a write is made under (see If): the write happens
// only if, atomically with it, Key holds exactly Value. A leader's term is
// a guard (fleet/leader): writes guarded by it fail once another candidate
// has taken over, even if the deposed leader has not noticed yet.
type Guard struct {
	Key   string
	Value []byte
}

// WriteOptions are the options of one write, for implementations; callers
// use WithLease and If.
type WriteOptions struct {
	// Lease, when not nil, attaches the written key to the lease (Put,
	// Create, CompareAndSwap). A write without it leaves the key with no
	// lease, even if it had one.
	Lease Lease
	// Guards must all hold for the write to happen; else ErrFenced.
	Guards []Guard
}

// WriteOption is an option of Put, Create, CompareAndSwap and Delete.
type WriteOption func(*WriteOptions)

// WithLease attaches the written key to l: the key is deleted when l ends.
// Delete ignores it.
func WithLease(l Lease) WriteOption {
	return func(o *WriteOptions) { o.Lease = l }
}

// If makes the write conditional on g: when g does not hold the write
// changes nothing and returns ErrFenced (checked before any other
// condition of the write).
func If(g Guard) WriteOption {
	return func(o *WriteOptions) { o.Guards = append(o.Guards, g) }
}

// ApplyWriteOptions collects opts, for implementations.
func ApplyWriteOptions(opts []WriteOption) WriteOptions {
	var o WriteOptions
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Store is an ordered key-value store. All methods are safe for concurrent
// use. A returned value is the caller's to keep and change; a value passed
// in is not kept by the store. Every method returns an error wrapping the
// context's error when ctx ends first, and one wrapping ErrClosed after
// Close. An empty key is an error.
type Store interface {
	// Get returns the value at key, or ErrNotFound. It sees every write
	// that returned before Get was called, on any replica.
	Get(ctx context.Context, key string) ([]byte, error)
	// Put sets key to value, creating or replacing it.
	Put(ctx context.Context, key string, value []byte, opts ...WriteOption) error
	// Create sets key to value only if key does not exist, else ErrExists.
	Create(ctx context.Context, key string, value []byte, opts ...WriteOption) error
	// CompareAndSwap replaces key's value with next only if it is currently
	// old (byte for byte); else ErrConflict, or ErrNotFound if key is
	// absent. Of several concurrent swaps from the same old value, exactly
	// one succeeds.
	CompareAndSwap(ctx context.Context, key string, old, next []byte, opts ...WriteOption) error
	// Delete removes key, or returns ErrNotFound.
	Delete(ctx context.Context, key string, opts ...WriteOption) error
	// List returns the items whose keys start with prefix, in key order,
	// as one consistent snapshot. An empty prefix lists everything.
	List(ctx context.Context, prefix string) ([]Item, error)
	// ListRevision is List, also returning the revision the snapshot was
	// taken at: watching from it (Watch(ctx, prefix, rev)) delivers every
	// change after the snapshot and none before it.
	ListRevision(ctx context.Context, prefix string) ([]Item, int64, error)
	// Watch streams the changes to keys that start with prefix committed
	// after revision after, in revision order (events of one revision in
	// key order), each once. after == 0 means from now: the changes
	// committed after Watch returns (and possibly some committed while it
	// ran). A revision ahead of the store's waits for it.
	//
	// The store buffers a bounded number of undelivered events per
	// watcher (the implementation's watch queue, 16,384 by default, plus
	// the events of the revision being queued: a revision is delivered
	// whole, however many keys it changed, as when a lease ends); it
	// never blocks writers on a slow watcher. When the watcher falls
	// further behind, when after is older than the history the store
	// keeps, or when the watch breaks in a way it cannot resume (a
	// connection to a remote store drops and the store's history no
	// longer covers the gap), the watcher gets one EventResync and the
	// channel closes. A dropped connection whose gap the history covers
	// is resumed without the watcher seeing anything but a delay.
	//
	// The channel closes without EventResync when ctx ends or the store
	// closes. The store owns the goroutines that feed it; they end then.
	// The error is only for a closed store or an ended ctx.
	Watch(ctx context.Context, prefix string, after int64) (<-chan Event, error)
	// Grant creates a lease that outlives its last renewal by ttl
	// (rounded up to whole seconds; a store may raise it to its minimum,
	// see Lease.TTL). The store renews it in the background while ctx is
	// live; when ctx ends renewals stop and the lease ends ttl later,
	// deleting its keys. A process that dies stops renewing too, so its
	// leased keys vanish within ttl (the embedded stores delete them when
	// the store is next opened, or at Close).
	Grant(ctx context.Context, ttl time.Duration) (Lease, error)
	// Close releases the store: watches close, leases end. Other methods
	// return ErrClosed after it.
	Close() error
}

// Guarded returns a view of st whose writes are all guarded by g (see If):
// once g stops holding, every write through the view fails with ErrFenced
// and changes nothing. Reads, watches and leases pass through.
func Guarded(st Store, g Guard) Store {
	return guarded{Store: st, g: g}
}

type guarded struct {
	Store
	g Guard
}

func (s guarded) Put(ctx context.Context, key string, value []byte, opts ...WriteOption) error {
	return s.Store.Put(ctx, key, value, append(opts, If(s.g))...)
}

func (s guarded) Create(ctx context.Context, key string, value []byte, opts ...WriteOption) error {
	return s.Store.Create(ctx, key, value, append(opts, If(s.g))...)
}

func (s guarded) CompareAndSwap(ctx context.Context, key string, old, next []byte, opts ...WriteOption) error {
	return s.Store.CompareAndSwap(ctx, key, old, next, append(opts, If(s.g))...)
}

func (s guarded) Delete(ctx context.Context, key string, opts ...WriteOption) error {
	return s.Store.Delete(ctx, key, append(opts, If(s.g))...)
}
