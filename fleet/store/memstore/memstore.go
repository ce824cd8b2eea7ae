// Package memstore is an in-process, map-based implementation of
// store.Store, watches and leases included. It is the test double for the
// fleet's services: tests of any fleet/... package may use it instead of a
// bbolt file. It keeps nothing on disk, so production code uses
// fleet/store/boltstore or fleet/store/etcdstore instead.
package memstore

import (
	"bytes"
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/hub"
)

// ErrClosed is returned by every method after Close. It is store.ErrClosed.
var ErrClosed = store.ErrClosed

// Options configure NewWith. The zero value works.
type Options struct {
	// Watch sizes the watch history and each watcher's queue (see
	// hub.Options; defaults 4096 and 1024 events).
	Watch hub.Options
}

// Store is an in-memory store.Store. The zero value is not usable; call New.
type Store struct {
	mu     sync.Mutex        // guards m, rev and closed; held across each write and its Publish
	m      map[string][]byte // key -> value (owned copies)
	rev    int64
	closed bool

	hub    *hub.Hub
	leases *hub.Leases
}

var _ store.Store = (*Store)(nil)

// New returns an empty store.
func New() *Store {
	return NewWith(Options{})
}

// NewWith returns an empty store with options.
func NewWith(opts Options) *Store {
	s := &Store{m: make(map[string][]byte), rev: 1}
	s.hub = hub.New(s.rev, opts.Watch)
	s.leases = hub.NewLeases(s.endLease)
	return s
}

// begin checks the context and the key and takes the lock. On success the
// caller must unlock s.mu.
func (s *Store) begin(ctx context.Context, op, key string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("memstore: %s %q: %w", op, key, err)
	}
	if key == "" && op != "list" {
		return fmt.Errorf("memstore: %s: empty key", op)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("memstore: %s: %w", op, store.ErrClosed)
	}
	return nil
}

// prepare checks a write's options with s.mu held: it returns the lease ID
// to attach (0: none), or store.ErrFenced / store.ErrNoLease.
func (s *Store) prepare(op, key string, opts []store.WriteOption) (int64, error) {
	o := store.ApplyWriteOptions(opts)
	for _, g := range o.Guards {
		v, ok := s.m[g.Key]
		if !ok || !bytes.Equal(v, g.Value) {
			return 0, fmt.Errorf("memstore: %s %q: %w", op, key, store.ErrFenced)
		}
	}
	if o.Lease == nil || op == "delete" {
		return 0, nil
	}
	id, err := s.leases.Check(o.Lease)
	if err != nil {
		return 0, fmt.Errorf("memstore: %s %q: %w", op, key, err)
	}
	return id, nil
}

// setLocked stores value at key attached to lease and publishes the change.
func (s *Store) setLocked(key string, value []byte, lease int64) {
	s.m[key] = clone(value)
	s.leases.Attach(key, lease)
	s.rev++
	s.hub.Publish(store.Event{Kind: store.EventPut, Key: key, Value: clone(value), Revision: s.rev})
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	if err := s.begin(ctx, "get", key); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	v, ok := s.m[key]
	if !ok {
		return nil, fmt.Errorf("memstore: get %q: %w", key, store.ErrNotFound)
	}
	return bytes.Clone(v), nil
}

// Put implements store.Store.
func (s *Store) Put(ctx context.Context, key string, value []byte, opts ...store.WriteOption) error {
	if err := s.begin(ctx, "put", key); err != nil {
		return err
	}
	defer s.mu.Unlock()
	lease, err := s.prepare("put", key, opts)
	if err != nil {
		return err
	}
	s.setLocked(key, value, lease)
	return nil
}

// Create implements store.Store.
func (s *Store) Create(ctx context.Context, key string, value []byte, opts ...store.WriteOption) error {
	if err := s.begin(ctx, "create", key); err != nil {
		return err
	}
	defer s.mu.Unlock()
	lease, err := s.prepare("create", key, opts)
	if err != nil {
		return err
	}
	if _, ok := s.m[key]; ok {
		return fmt.Errorf("memstore: create %q: %w", key, store.ErrExists)
	}
	s.setLocked(key, value, lease)
	return nil
}

// CompareAndSwap implements store.Store.
func (s *Store) CompareAndSwap(ctx context.Context, key string, old, next []byte, opts ...store.WriteOption) error {
	if err := s.begin(ctx, "compare and swap", key); err != nil {
		return err
	}
	defer s.mu.Unlock()
	lease, err := s.prepare("compare and swap", key, opts)
	if err != nil {
		return err
	}
	cur, ok := s.m[key]
	if !ok {
		return fmt.Errorf("memstore: compare and swap %q: %w", key, store.ErrNotFound)
	}
	if !bytes.Equal(cur, old) {
		return fmt.Errorf("memstore: compare and swap %q: %w", key, store.ErrConflict)
	}
	s.setLocked(key, next, lease)
	return nil
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, key string, opts ...store.WriteOption) error {
	if err := s.begin(ctx, "delete", key); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if _, err := s.prepare("delete", key, opts); err != nil {
		return err
	}
	if _, ok := s.m[key]; !ok {
		return fmt.Errorf("memstore: delete %q: %w", key, store.ErrNotFound)
	}
	delete(s.m, key)
	s.leases.Detach(key)
	s.rev++
	s.hub.Publish(store.Event{Kind: store.EventDelete, Key: key, Revision: s.rev})
	return nil
}

// List implements store.Store.
func (s *Store) List(ctx context.Context, prefix string) ([]store.Item, error) {
	items, _, err := s.ListRevision(ctx, prefix)
	return items, err
}

// ListRevision implements store.Store.
func (s *Store) ListRevision(ctx context.Context, prefix string) ([]store.Item, int64, error) {
	if err := s.begin(ctx, "list", prefix); err != nil {
		return nil, 0, err
	}
	defer s.mu.Unlock()
	var items []store.Item
	for k, v := range s.m {
		if strings.HasPrefix(k, prefix) {
			items = append(items, store.Item{Key: k, Value: bytes.Clone(v), Lease: s.leases.Of(k)})
		}
	}
	sort.Slice(items, func(i, j int) bool { return items[i].Key < items[j].Key })
	return items, s.rev, nil
}

// Watch implements store.Store.
func (s *Store) Watch(ctx context.Context, prefix string, after int64) (<-chan store.Event, error) {
	ch, err := s.hub.Watch(ctx, prefix, after)
	if err != nil {
		return nil, fmt.Errorf("memstore: watch %q: %w", prefix, err)
	}
	return ch, nil
}

// Grant implements store.Store.
func (s *Store) Grant(ctx context.Context, ttl time.Duration) (store.Lease, error) {
	l, err := s.leases.Grant(ctx, ttl)
	if err != nil {
		return nil, fmt.Errorf("memstore: grant: %w", err)
	}
	return l, nil
}

// endLease deletes lease id's keys at one revision.
func (s *Store) endLease(ctx context.Context, id int64) error {
	if err := s.begin(ctx, "end lease", "lease"); err != nil {
		return err
	}
	defer s.mu.Unlock()
	s.endLeaseLocked(id)
	return nil
}

func (s *Store) endLeaseLocked(id int64) {
	keys := s.leases.End(id)
	if len(keys) == 0 {
		return
	}
	s.rev++
	evs := make([]store.Event, 0, len(keys))
	for _, k := range keys {
		delete(s.m, k)
		evs = append(evs, store.Event{Kind: store.EventDelete, Key: k, Revision: s.rev})
	}
	s.hub.Publish(evs...)
}

// Close implements store.Store: watches close, leases end. Later calls
// return ErrClosed.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.m = nil
	s.mu.Unlock()
	s.leases.Close()
	s.hub.Close()
	return nil
}

// clone copies v, keeping an empty value non-nil so that a stored empty
// value compares equal to []byte{} in CompareAndSwap.
func clone(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return bytes.Clone(v)
}
