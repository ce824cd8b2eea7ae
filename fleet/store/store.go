// Package store defines the contract of the fleet's state store: a small,
// ordered key-value interface that the fleet's services (CAs, users, roles,
// tokens, devices) keep their state in. The embedded default is
// fleet/store/boltstore (bbolt in the data dir); a distributed engine can
// implement the same contract for several fleetd replicas.
//
// Keys are slash-separated paths ("users/alice"); values are opaque bytes
// (the services store JSON). Only fleet/... imports this package.
package store

import (
	"context"
	"errors"
)

// Errors returned by every implementation. Callers test them with errors.Is.
var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrExists: Create found the key already there.
	ErrExists = errors.New("store: already exists")
	// ErrConflict: CompareAndSwap found a value other than the expected one.
	ErrConflict = errors.New("store: conflict")
)

// Item is one key and its value.
type Item struct {
	Key   string
	Value []byte
}

// Store is an ordered key-value store. All methods are safe for concurrent
// use. A returned value is the caller's to keep and change.
type Store interface {
	// Get returns the value at key, or ErrNotFound.
	Get(ctx context.Context, key string) ([]byte, error)
	// Put sets key to value, creating or replacing it.
	Put(ctx context.Context, key string, value []byte) error
	// Create sets key to value only if key does not exist, else ErrExists.
	Create(ctx context.Context, key string, value []byte) error
	// CompareAndSwap replaces key's value with next only if it is currently
	// old (byte for byte); else ErrConflict, or ErrNotFound if key is absent.
	CompareAndSwap(ctx context.Context, key string, old, next []byte) error
	// Delete removes key, or returns ErrNotFound.
	Delete(ctx context.Context, key string) error
	// List returns the items whose keys start with prefix, in key order.
	List(ctx context.Context, prefix string) ([]Item, error)
	// Close releases the store. Other methods must not be called after it.
	Close() error
}
