// Package boltstore is the fleet's embedded default state store: an
// implementation of fleet/store.Store on a single bbolt file in fleetd's
// data dir, so one fleetd needs no database to set up.
//
// All items sit in one bucket, where bbolt keeps keys in byte order; List is
// a cursor seek to the prefix. Every method is one bbolt transaction, so
// CompareAndSwap and Create are atomic. bbolt allows one writer at a time,
// which is what a single fleetd needs; several replicas use
// fleet/store/etcdstore instead.
//
// The store's revision is kept in a second bucket and raised in the same
// transaction as each change, so it only grows, across restarts too.
// Watches and leases are served in process (fleet/store/hub): the last
// Options.Watch.History changes are kept in memory for watchers resuming
// from a revision. Leased keys are written to the file like others and
// also listed in a third bucket; since no lease outlives the process that
// granted it, Open deletes the keys a previous run left there, and Close
// deletes the keys of the leases still live.
//
// The file is locked while open. A second Open of the same file (another
// fleetd on the same data dir) fails after Options.LockTimeout with an error
// wrapping ErrLocked, instead of waiting forever as bbolt does by default.
//
// Only fleet/... imports this package (fleetd's wiring and tests).
package boltstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/hub"
)

// DefaultLockTimeout is how long Open waits for the file lock by default.
const DefaultLockTimeout = 5 * time.Second

// ErrLocked is wrapped by Open's error when another process holds the file.
var ErrLocked = errors.New("boltstore: the data dir is in use by another fleetd")

// Buckets: items, the revision, and the leased keys (key -> lease ID).
var (
	bucket       = []byte("fleet")
	metaBucket   = []byte("fleet.meta")
	leasedBucket = []byte("fleet.leased")
	revKey       = []byte("revision")
)

// Options configure Open. The zero value works.
type Options struct {
	// LockTimeout is how long Open waits for the exclusive file lock before
	// failing with ErrLocked. Zero means DefaultLockTimeout (5s); it is
	// never infinite.
	LockTimeout time.Duration
	// Logger receives open and close messages. Nil means no logging.
	Logger *slog.Logger
	// Watch sizes the watch history kept in memory and each watcher's
	// queue (defaults 4096 and 1024 events; see hub.Options).
	Watch hub.Options
}

func (o *Options) fillDefaults() {
	if o.LockTimeout <= 0 {
		o.LockTimeout = DefaultLockTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Store is a store.Store on a bbolt file. Its methods are safe for
// concurrent use.
type Store struct {
	db   *bolt.DB
	path string
	log  *slog.Logger

	// wmu is held across each write transaction and the publication of
	// its change, so that watchers see changes in revision order; it also
	// guards the leases table's updates.
	wmu    sync.Mutex
	closed atomic.Bool // set under wmu

	hub    *hub.Hub
	leases *hub.Leases
}

var _ store.Store = (*Store)(nil)

// Open opens or creates the bbolt file at path (mode 0600; a missing parent
// directory is created with mode 0700).
func Open(path string, opts Options) (*Store, error) {
	opts.fillDefaults()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("boltstore: open %s: %w", path, err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opts.LockTimeout})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("boltstore: open %s: %w (no lock within %s; stop the other fleetd or use another data dir): %w",
			path, ErrLocked, opts.LockTimeout, err)
	}
	if err != nil {
		return nil, fmt.Errorf("boltstore: open %s: %w", path, err)
	}
	var rev int64
	var purged int
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucket, metaBucket, leasedBucket} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		rev = readRev(tx)
		// Leases end with the process that granted them.
		var keys [][]byte
		tx.Bucket(leasedBucket).ForEach(func(k, _ []byte) error {
			keys = append(keys, bytes.Clone(k))
			return nil
		})
		for _, k := range keys {
			if err := tx.Bucket(bucket).Delete(k); err != nil {
				return err
			}
			if err := tx.Bucket(leasedBucket).Delete(k); err != nil {
				return err
			}
		}
		purged = len(keys)
		if purged > 0 || rev == 0 {
			rev++
			return writeRev(tx, rev)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("boltstore: open %s: prepare buckets: %w", path, err)
	}
	log := opts.Logger.With("component", "boltstore")
	log.Debug("store opened", "path", path, "revision", rev, "leased_keys_purged", purged)
	s := &Store{db: db, path: path, log: log, hub: hub.New(rev, opts.Watch)}
	s.leases = hub.NewLeases(s.endLease)
	return s, nil
}

func readRev(tx *bolt.Tx) int64 {
	v := tx.Bucket(metaBucket).Get(revKey)
	if len(v) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
}

func writeRev(tx *bolt.Tx, rev int64) error {
	return tx.Bucket(metaBucket).Put(revKey, binary.BigEndian.AppendUint64(nil, uint64(rev)))
}

// lookup returns the value at key and whether the key exists. It uses a
// cursor rather than Bucket.Get so that an empty value is told apart from a
// missing key. The value is only valid inside the transaction.
func lookup(b *bolt.Bucket, key []byte) ([]byte, bool) {
	k, v := b.Cursor().Seek(key)
	if k == nil || !bytes.Equal(k, key) {
		return nil, false
	}
	return v, true
}

// check rejects a done context, an empty key (bbolt refuses those) and a
// closed store.
func (s *Store) check(ctx context.Context, op, key string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: %s %q: %w", op, key, err)
	}
	if key == "" {
		return fmt.Errorf("boltstore: %s: empty key", op)
	}
	if s.closed.Load() {
		return fmt.Errorf("boltstore: %s %q: %w", op, key, store.ErrClosed)
	}
	return nil
}

// view runs a read transaction, reporting a closed database as
// store.ErrClosed.
func (s *Store) view(fn func(tx *bolt.Tx) error) error {
	err := s.db.View(fn)
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return store.ErrClosed
	}
	return err
}

// change is what a write did: the key's new value (put) or its deletion.
type change struct {
	deleted bool
	value   []byte
}

// write runs one write: it checks the options, runs fn in a transaction
// and, when fn reports a change, raises the revision in the same
// transaction, records the key's lease, and publishes the change to
// watchers once committed.
func (s *Store) write(ctx context.Context, op, key string, opts []store.WriteOption, fn func(b *bolt.Bucket, k []byte) (*change, error)) error {
	if err := s.check(ctx, op, key); err != nil {
		return err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Load() {
		return fmt.Errorf("boltstore: %s %q: %w", op, key, store.ErrClosed)
	}
	o := store.ApplyWriteOptions(opts)
	var lease int64
	if o.Lease != nil && op != "delete" {
		id, err := s.leases.Check(o.Lease)
		if err != nil {
			return fmt.Errorf("boltstore: %s %q: %w", op, key, err)
		}
		lease = id
	}
	var ch *change
	var rev int64
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		for _, g := range o.Guards {
			v, ok := lookup(b, []byte(g.Key))
			if !ok || !bytes.Equal(v, g.Value) {
				return store.ErrFenced
			}
		}
		var err error
		ch, err = fn(b, []byte(key))
		if err != nil || ch == nil {
			return err
		}
		rev = readRev(tx) + 1
		if err := writeRev(tx, rev); err != nil {
			return err
		}
		lb := tx.Bucket(leasedBucket)
		if lease != 0 && !ch.deleted {
			return lb.Put([]byte(key), binary.BigEndian.AppendUint64(nil, uint64(lease)))
		}
		return lb.Delete([]byte(key))
	})
	if err != nil {
		return fmt.Errorf("boltstore: %s %q: %w", op, key, err)
	}
	if ch == nil {
		return nil
	}
	ev := store.Event{Kind: store.EventPut, Key: key, Value: ch.value, Revision: rev}
	if ch.deleted {
		ev = store.Event{Kind: store.EventDelete, Key: key, Revision: rev}
		s.leases.Detach(key)
	} else {
		s.leases.Attach(key, lease)
	}
	s.hub.Publish(ev)
	return nil
}

// Get returns a copy of the value at key, or store.ErrNotFound.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	if err := s.check(ctx, "get", key); err != nil {
		return nil, err
	}
	var out []byte
	err := s.view(func(tx *bolt.Tx) error {
		v, ok := lookup(tx.Bucket(bucket), []byte(key))
		if !ok {
			return store.ErrNotFound
		}
		out = append([]byte{}, v...)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("boltstore: get %q: %w", key, err)
	}
	return out, nil
}

// Put sets key to value.
func (s *Store) Put(ctx context.Context, key string, value []byte, opts ...store.WriteOption) error {
	return s.write(ctx, "put", key, opts, func(b *bolt.Bucket, k []byte) (*change, error) {
		if err := b.Put(k, value); err != nil {
			return nil, err
		}
		return &change{value: bytes.Clone(value)}, nil
	})
}

// Create sets key to value if key is absent, else store.ErrExists.
func (s *Store) Create(ctx context.Context, key string, value []byte, opts ...store.WriteOption) error {
	return s.write(ctx, "create", key, opts, func(b *bolt.Bucket, k []byte) (*change, error) {
		if _, ok := lookup(b, k); ok {
			return nil, store.ErrExists
		}
		if err := b.Put(k, value); err != nil {
			return nil, err
		}
		return &change{value: bytes.Clone(value)}, nil
	})
}

// CompareAndSwap sets key to next if its value is old, else
// store.ErrConflict (or store.ErrNotFound when key is absent).
func (s *Store) CompareAndSwap(ctx context.Context, key string, old, next []byte, opts ...store.WriteOption) error {
	return s.write(ctx, "compare and swap", key, opts, func(b *bolt.Bucket, k []byte) (*change, error) {
		v, ok := lookup(b, k)
		if !ok {
			return nil, store.ErrNotFound
		}
		if !bytes.Equal(v, old) {
			return nil, store.ErrConflict
		}
		if err := b.Put(k, next); err != nil {
			return nil, err
		}
		return &change{value: bytes.Clone(next)}, nil
	})
}

// Delete removes key, or returns store.ErrNotFound.
func (s *Store) Delete(ctx context.Context, key string, opts ...store.WriteOption) error {
	return s.write(ctx, "delete", key, opts, func(b *bolt.Bucket, k []byte) (*change, error) {
		if _, ok := lookup(b, k); !ok {
			return nil, store.ErrNotFound
		}
		if err := b.Delete(k); err != nil {
			return nil, err
		}
		return &change{deleted: true}, nil
	})
}

// List returns copies of the items whose keys start with prefix, in key
// order. An empty prefix lists everything.
func (s *Store) List(ctx context.Context, prefix string) ([]store.Item, error) {
	items, _, err := s.ListRevision(ctx, prefix)
	return items, err
}

// ListRevision is List with the revision the snapshot was taken at.
func (s *Store) ListRevision(ctx context.Context, prefix string) ([]store.Item, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, fmt.Errorf("boltstore: list %q: %w", prefix, err)
	}
	if s.closed.Load() {
		return nil, 0, fmt.Errorf("boltstore: list %q: %w", prefix, store.ErrClosed)
	}
	var items []store.Item
	var rev int64
	err := s.view(func(tx *bolt.Tx) error {
		rev = readRev(tx)
		leased := tx.Bucket(leasedBucket)
		c := tx.Bucket(bucket).Cursor()
		p := []byte(prefix)
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			it := store.Item{Key: string(k), Value: append([]byte{}, v...)}
			if l := leased.Get(k); len(l) == 8 {
				it.Lease = int64(binary.BigEndian.Uint64(l))
			}
			items = append(items, it)
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("boltstore: list %q: %w", prefix, err)
	}
	return items, rev, nil
}

// Watch streams the changes under prefix after revision after (see
// store.Store.Watch). Changes older than the history kept in memory, or
// made before this Open, cannot be replayed: asking for them gets an
// EventResync.
func (s *Store) Watch(ctx context.Context, prefix string, after int64) (<-chan store.Event, error) {
	if s.closed.Load() {
		return nil, fmt.Errorf("boltstore: watch %q: %w", prefix, store.ErrClosed)
	}
	ch, err := s.hub.Watch(ctx, prefix, after)
	if err != nil {
		return nil, fmt.Errorf("boltstore: watch %q: %w", prefix, err)
	}
	return ch, nil
}

// Grant creates a lease of this process (see store.Store.Grant).
func (s *Store) Grant(ctx context.Context, ttl time.Duration) (store.Lease, error) {
	if s.closed.Load() {
		return nil, fmt.Errorf("boltstore: grant: %w", store.ErrClosed)
	}
	l, err := s.leases.Grant(ctx, ttl)
	if err != nil {
		return nil, fmt.Errorf("boltstore: grant: %w", err)
	}
	return l, nil
}

// endLease deletes lease id's keys in one transaction at one revision.
func (s *Store) endLease(ctx context.Context, id int64) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if s.closed.Load() {
		return fmt.Errorf("boltstore: end lease %d: %w", id, store.ErrClosed)
	}
	return s.endLeaseLocked(ctx, id)
}

func (s *Store) endLeaseLocked(ctx context.Context, id int64) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: end lease %d: %w", id, err)
	}
	keys := s.leases.End(id)
	if len(keys) == 0 {
		return nil
	}
	var rev int64
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, lb := tx.Bucket(bucket), tx.Bucket(leasedBucket)
		for _, k := range keys {
			if err := b.Delete([]byte(k)); err != nil {
				return err
			}
			if err := lb.Delete([]byte(k)); err != nil {
				return err
			}
		}
		rev = readRev(tx) + 1
		return writeRev(tx, rev)
	})
	if err != nil {
		// The keys stay in the file until the next Open purges them.
		return fmt.Errorf("boltstore: end lease %d: %w", id, err)
	}
	evs := make([]store.Event, len(keys))
	for i, k := range keys {
		evs[i] = store.Event{Kind: store.EventDelete, Key: k, Revision: rev}
	}
	s.hub.Publish(evs...)
	return nil
}

// Close ends the live leases (deleting their keys), closes the watches and
// the file, and releases its lock.
func (s *Store) Close() error {
	s.wmu.Lock()
	if s.closed.Load() {
		s.wmu.Unlock()
		return nil
	}
	for _, id := range s.leases.Live() {
		if err := s.endLeaseLocked(context.Background(), id); err != nil {
			s.log.Warn("leased keys left for the next open to delete", "lease", id, "err", err)
		}
	}
	s.closed.Store(true)
	s.wmu.Unlock()
	s.leases.Close()
	s.hub.Close()
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("boltstore: close: %w", err)
	}
	s.log.Debug("store closed", "path", s.path)
	return nil
}
