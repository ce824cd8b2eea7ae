// Package boltstore is the fleet's embedded default state store: an
// implementation of fleet/store.Store on a single bbolt file in fleetd's
// data dir, so one fleetd needs no database to set up.
//
// All items sit in one bucket, where bbolt keeps keys in byte order; List is
// a cursor seek to the prefix. Every method is one bbolt transaction, so
// CompareAndSwap and Create are atomic. bbolt allows one writer at a time,
// which is what a single fleetd needs; several replicas use a distributed
// implementation of store.Store instead.
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
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"remoteler.dev/edge/fleet/store"
)

// DefaultLockTimeout is how long Open waits for the file lock by default.
const DefaultLockTimeout = 5 * time.Second

// ErrLocked is wrapped by Open's error when another process holds the file.
var ErrLocked = errors.New("boltstore: the data dir is in use by another fleetd")

// bucket holds every item.
var bucket = []byte("fleet")

// Options configure Open. The zero value works.
type Options struct {
	// LockTimeout is how long Open waits for the exclusive file lock before
	// failing with ErrLocked. Zero means DefaultLockTimeout (5s); it is
	// never infinite.
	LockTimeout time.Duration
	// Logger receives open and close messages. Nil means no logging.
	Logger *slog.Logger
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
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucket)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("boltstore: open %s: create bucket: %w", path, err)
	}
	log := opts.Logger.With("component", "boltstore")
	log.Debug("store opened", "path", path)
	return &Store{db: db, path: path, log: log}, nil
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

// check rejects a done context and an empty key (bbolt refuses those).
func check(ctx context.Context, op, key string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: %s %q: %w", op, key, err)
	}
	if key == "" {
		return fmt.Errorf("boltstore: %s: empty key", op)
	}
	return nil
}

// Get returns a copy of the value at key, or store.ErrNotFound.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	if err := check(ctx, "get", key); err != nil {
		return nil, err
	}
	var out []byte
	err := s.db.View(func(tx *bolt.Tx) error {
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
func (s *Store) Put(ctx context.Context, key string, value []byte) error {
	if err := check(ctx, "put", key); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).Put([]byte(key), value)
	})
	if err != nil {
		return fmt.Errorf("boltstore: put %q: %w", key, err)
	}
	return nil
}

// Create sets key to value if key is absent, else store.ErrExists.
func (s *Store) Create(ctx context.Context, key string, value []byte) error {
	if err := check(ctx, "create", key); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if _, ok := lookup(b, []byte(key)); ok {
			return store.ErrExists
		}
		return b.Put([]byte(key), value)
	})
	if err != nil {
		return fmt.Errorf("boltstore: create %q: %w", key, err)
	}
	return nil
}

// CompareAndSwap sets key to next if its value is old, else
// store.ErrConflict (or store.ErrNotFound when key is absent).
func (s *Store) CompareAndSwap(ctx context.Context, key string, old, next []byte) error {
	if err := check(ctx, "compare and swap", key); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		v, ok := lookup(b, []byte(key))
		if !ok {
			return store.ErrNotFound
		}
		if !bytes.Equal(v, old) {
			return store.ErrConflict
		}
		return b.Put([]byte(key), next)
	})
	if err != nil {
		return fmt.Errorf("boltstore: compare and swap %q: %w", key, err)
	}
	return nil
}

// Delete removes key, or returns store.ErrNotFound.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := check(ctx, "delete", key); err != nil {
		return err
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if _, ok := lookup(b, []byte(key)); !ok {
			return store.ErrNotFound
		}
		return b.Delete([]byte(key))
	})
	if err != nil {
		return fmt.Errorf("boltstore: delete %q: %w", key, err)
	}
	return nil
}

// List returns copies of the items whose keys start with prefix, in key
// order. An empty prefix lists everything.
func (s *Store) List(ctx context.Context, prefix string) ([]store.Item, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("boltstore: list %q: %w", prefix, err)
	}
	var items []store.Item
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucket).Cursor()
		p := []byte(prefix)
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			items = append(items, store.Item{Key: string(k), Value: append([]byte{}, v...)})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("boltstore: list %q: %w", prefix, err)
	}
	return items, nil
}

// Close closes the file and releases its lock.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("boltstore: close: %w", err)
	}
	s.log.Debug("store closed", "path", s.path)
	return nil
}
