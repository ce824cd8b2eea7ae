// Package etcdstore implements fleet/store.Store on etcd
// (go.etcd.io/etcd/client/v3), so that several fleetd replicas share one
// state: every key lives under a prefix (default "/fleet/") of an etcd
// cluster, and the store's revisions, watches and leases are etcd's own.
//
// Reads are linearizable (a Get sees every write that returned before it,
// on any replica). Create, CompareAndSwap, Delete and guarded writes are
// single etcd transactions. List pages through large prefixes at one
// pinned revision, so a listing is one snapshot. Watches resume by
// themselves after a connection drops or the member they use loses its
// leader, from the revision after the last event delivered; only when
// etcd has compacted that history away does the watcher get an
// EventResync. etcd keeps history until it is compacted: run etcd with
// --auto-compaction-mode=periodic --auto-compaction-retention=1h (see
// docs/storage.md), or the history grows without bound.
//
// Open waits for etcd: when no member answers it logs why and tries again
// with a jittered back-off until its context ends, so a fleetd started
// before its etcd says what it is waiting for instead of failing or
// hanging silently.
//
// Only fleet/... imports this package (the store's wiring, leader
// election, tests).
package etcdstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/namespace"

	"remoteler.dev/edge/fleet/backoff"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/hub"
)

// DefaultPrefix is the key prefix when Config.Prefix is empty.
const DefaultPrefix = "/fleet/"

// Config configures Open. Endpoints is required; the zero value of every
// other field works.
type Config struct {
	// Endpoints are the etcd members' client addresses, "host:port" (or
	// "https://host:port"). Required.
	Endpoints []string
	// Prefix is put before every key; default DefaultPrefix ("/fleet/").
	// Fleets sharing one etcd use different prefixes. A missing trailing
	// slash is added.
	Prefix string
	// TLS, when set, is used for every connection to etcd: RootCAs to
	// verify the members, Certificates for the client certificate. Nil
	// means plain TCP.
	TLS *tls.Config
	// DialTimeout bounds each connection attempt; default 5s.
	DialTimeout time.Duration
	// RequestTimeout bounds each request whose context has no deadline;
	// default 10s. A fleetd partitioned from etcd then fails requests
	// instead of hanging them.
	RequestTimeout time.Duration
	// WatchQueue is how many undelivered events one watcher may have
	// before it is told to resync; default hub.DefaultQueue (16,384). A revision's events are
	// taken whole (hub.Queue).
	WatchQueue int
	// Logger receives connection problems and retries. Nil means none.
	Logger *slog.Logger
}

func (c *Config) fillDefaults() {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if !strings.HasSuffix(c.Prefix, "/") {
		c.Prefix += "/"
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 10 * time.Second
	}
	if c.WatchQueue <= 0 {
		c.WatchQueue = hub.DefaultQueue
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Store is a store.Store on etcd. Its methods are safe for concurrent use.
type Store struct {
	cfg     Config
	client  *clientv3.Client
	kv      clientv3.KV
	watcher clientv3.Watcher
	log     *slog.Logger
	closed  atomic.Bool

	mu       sync.Mutex               // guards watchers and leases
	watchers map[*watchState]struct{} // running watches
	leases   map[*lease]struct{}      // leases granted and not yet ended
	wg       sync.WaitGroup           // watch and lease goroutines
}

var _ store.Store = (*Store)(nil)

// Open connects to etcd and waits until it answers a read: when it does
// not, Open logs the error and tries again (1 s doubling to 30 s, with
// jitter) until ctx ends, and then returns the last error.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	cfg.fillDefaults()
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcdstore: open: no endpoints")
	}
	log := cfg.Logger.With("component", "etcdstore")
	client, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		TLS:                  cfg.TLS,
		Logger:               zapLogger(log),
	})
	if err != nil {
		return nil, fmt.Errorf("etcdstore: open %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	s := &Store{
		cfg:      cfg,
		client:   client,
		kv:       namespace.NewKV(client.KV, cfg.Prefix),
		watcher:  namespace.NewWatcher(client.Watcher, cfg.Prefix),
		log:      log,
		watchers: map[*watchState]struct{}{},
		leases:   map[*lease]struct{}{},
	}
	wait := time.Duration(0)
	for attempt := 1; ; attempt++ {
		pctx, cancel := context.WithTimeout(ctx, cfg.RequestTimeout)
		_, err := s.currentRevision(pctx)
		cancel()
		if err == nil {
			break
		}
		why := fmt.Errorf("%w (%s)", err, diagnose(ctx, cfg.Endpoints, cfg.TLS))
		wait = backoff.Next(wait, time.Second, 30*time.Second)
		if ctx.Err() == nil {
			log.Warn("etcd does not answer; retrying (is etcd running, and are the endpoints and TLS files right?)",
				"endpoints", strings.Join(cfg.Endpoints, ","), "attempt", attempt, "retry_in", wait.Round(time.Millisecond).String(), "err", why.Error())
			if backoff.Wait(ctx, wait) {
				continue
			}
		}
		client.Close()
		return nil, fmt.Errorf("etcdstore: open %s: gave up after %d attempts: %w", strings.Join(cfg.Endpoints, ","), attempt, why)
	}
	log.Debug("store opened", "endpoints", strings.Join(cfg.Endpoints, ","), "prefix", cfg.Prefix)
	return s, nil
}

// Client returns the etcd client, for packages that use etcd directly
// (leader election). Keys they write must start with Prefix.
func (s *Store) Client() *clientv3.Client { return s.client }

// Prefix returns the prefix of every key of the store in etcd.
func (s *Store) Prefix() string { return s.cfg.Prefix }

// reqCtx bounds ctx by the request timeout when it has no deadline, and
// asks etcd to refuse the request at once (rather than wait) when the
// member it reaches has no leader: reads are then retried on another
// member by the client, writes by retryWrite.
func (s *Store) reqCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx = clientv3.WithRequireLeader(ctx)
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, s.cfg.RequestTimeout)
}

// retryWrite runs f until it succeeds, fails with an error that may mean
// the write happened, or ctx ends. Only the errors that say etcd did not
// take the request are retried (the member has no leader, no connection
// was available): a write that may have been applied is never sent twice,
// so Create, CompareAndSwap and Delete never report their own success as
// a conflict. The caller gets such an ambiguous error (etcd lost its
// leader while the write was in flight) and may read back.
func retryWrite(ctx context.Context, f func() error) error {
	wait := time.Duration(0)
	for {
		err := f()
		if err == nil || !notTaken(err) || ctx.Err() != nil {
			return err
		}
		wait = backoff.Next(wait, 50*time.Millisecond, time.Second)
		if !backoff.Wait(ctx, wait) {
			return err
		}
	}
}

// notTaken reports whether err says etcd did not take the request.
func notTaken(err error) bool {
	if errors.Is(rpctypes.Error(err), rpctypes.ErrNoLeader) {
		return true
	}
	switch desc := rpctypes.ErrorDesc(err); {
	case desc == "there is no address available", desc == "there is no connection available":
		return true
	case strings.Contains(desc, "Error while dialing"):
		return true // the connection was never made
	}
	return false
}

// check rejects a done context, an empty key and a closed store.
func (s *Store) check(ctx context.Context, op, key string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("etcdstore: %s %q: %w", op, key, err)
	}
	if key == "" && op != "list" && op != "watch" {
		return fmt.Errorf("etcdstore: %s: empty key", op)
	}
	if s.closed.Load() {
		return fmt.Errorf("etcdstore: %s %q: %w", op, key, store.ErrClosed)
	}
	return nil
}

// fail wraps an etcd error for op on key, mapping what the contract names.
func (s *Store) fail(ctx context.Context, op, key string, err error) error {
	err = clientv3.ContextError(ctx, err)
	switch {
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		err = fmt.Errorf("%w: %w", store.ErrNoLease, err)
	case s.closed.Load():
		err = fmt.Errorf("%w: %w", store.ErrClosed, err)
	}
	return fmt.Errorf("etcdstore: %s %q: %w", op, key, err)
}

// currentRevision asks etcd for its revision (a linearizable read).
func (s *Store) currentRevision(ctx context.Context) (int64, error) {
	ctx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.kv.Get(ctx, "\x00revision-probe", clientv3.WithCountOnly())
	if err != nil {
		return 0, clientv3.ContextError(ctx, err)
	}
	return resp.Header.Revision, nil
}

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key string) ([]byte, error) {
	if err := s.check(ctx, "get", key); err != nil {
		return nil, err
	}
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.kv.Get(rctx, key)
	if err != nil {
		return nil, s.fail(rctx, "get", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, fmt.Errorf("etcdstore: get %q: %w", key, store.ErrNotFound)
	}
	return value(resp.Kvs[0]), nil
}

// value returns kv's value, never nil (an empty value is not a missing
// one).
func value(kv *mvccpb.KeyValue) []byte {
	if kv.Value == nil {
		return []byte{}
	}
	return kv.Value
}

// write is one write made as an etcd transaction: If(guards..., cmps...)
// Then(then) Else(a read of every guard key, then of extra). On failure
// it returns ErrFenced when a guard failed, else what failed(elseReads)
// says.
func (s *Store) write(ctx context.Context, op, key string, opts []store.WriteOption,
	cmps []clientv3.Cmp, then func(lease clientv3.LeaseID) clientv3.Op, extra []clientv3.Op,
	failed func(extra []*clientv3.GetResponse) error,
) error {
	if err := s.check(ctx, op, key); err != nil {
		return err
	}
	o := store.ApplyWriteOptions(opts)
	var leaseID clientv3.LeaseID
	if o.Lease != nil && op != "delete" {
		l, ok := o.Lease.(*lease)
		if !ok || l.s != s {
			return fmt.Errorf("etcdstore: %s %q: %w: the lease is from another store", op, key, store.ErrNoLease)
		}
		leaseID = l.id
	}
	var all []clientv3.Cmp
	var elses []clientv3.Op
	for _, g := range o.Guards {
		all = append(all, clientv3.Compare(clientv3.Value(g.Key), "=", string(g.Value)))
		elses = append(elses, clientv3.OpGet(g.Key))
	}
	all = append(all, cmps...)
	elses = append(elses, extra...)
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	var resp *clientv3.TxnResponse
	err := retryWrite(rctx, func() (err error) {
		resp, err = s.kv.Txn(rctx).If(all...).Then(then(leaseID)).Else(elses...).Commit()
		return err
	})
	if err != nil {
		return s.fail(rctx, op, key, err)
	}
	if resp.Succeeded {
		return nil
	}
	reads := make([]*clientv3.GetResponse, len(resp.Responses))
	for i, r := range resp.Responses {
		reads[i] = (*clientv3.GetResponse)(r.GetResponseRange())
	}
	for i, g := range o.Guards {
		kvs := reads[i].Kvs
		if len(kvs) == 0 || string(kvs[0].Value) != string(g.Value) {
			return fmt.Errorf("etcdstore: %s %q: %w", op, key, store.ErrFenced)
		}
	}
	return fmt.Errorf("etcdstore: %s %q: %w", op, key, failed(reads[len(o.Guards):]))
}

func putOp(key string, v []byte) func(clientv3.LeaseID) clientv3.Op {
	return func(l clientv3.LeaseID) clientv3.Op {
		if l != clientv3.NoLease {
			return clientv3.OpPut(key, string(v), clientv3.WithLease(l))
		}
		return clientv3.OpPut(key, string(v))
	}
}

// Put implements store.Store.
func (s *Store) Put(ctx context.Context, key string, value []byte, opts ...store.WriteOption) error {
	return s.write(ctx, "put", key, opts, nil, putOp(key, value), nil, func([]*clientv3.GetResponse) error {
		return errors.New("transaction failed") // only guards can fail it
	})
}

// Create implements store.Store.
func (s *Store) Create(ctx context.Context, key string, value []byte, opts ...store.WriteOption) error {
	return s.write(ctx, "create", key, opts,
		[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), "=", 0)},
		putOp(key, value), nil,
		func([]*clientv3.GetResponse) error { return store.ErrExists })
}

// CompareAndSwap implements store.Store.
func (s *Store) CompareAndSwap(ctx context.Context, key string, old, next []byte, opts ...store.WriteOption) error {
	return s.write(ctx, "compare and swap", key, opts,
		[]clientv3.Cmp{clientv3.Compare(clientv3.Value(key), "=", string(old))},
		putOp(key, next), []clientv3.Op{clientv3.OpGet(key, clientv3.WithCountOnly())},
		func(reads []*clientv3.GetResponse) error {
			if reads[0].Count == 0 {
				return store.ErrNotFound
			}
			return store.ErrConflict
		})
}

// Delete implements store.Store.
func (s *Store) Delete(ctx context.Context, key string, opts ...store.WriteOption) error {
	return s.write(ctx, "delete", key, opts,
		[]clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision(key), ">", 0)},
		func(clientv3.LeaseID) clientv3.Op { return clientv3.OpDelete(key) }, nil,
		func([]*clientv3.GetResponse) error { return store.ErrNotFound })
}

// listPage is how many keys one List request fetches.
const listPage = 500

// List implements store.Store.
func (s *Store) List(ctx context.Context, prefix string) ([]store.Item, error) {
	items, _, err := s.ListRevision(ctx, prefix)
	return items, err
}

// ListRevision implements store.Store: pages of listPage keys, all read at
// the revision of the first.
func (s *Store) ListRevision(ctx context.Context, prefix string) ([]store.Item, int64, error) {
	if err := s.check(ctx, "list", prefix); err != nil {
		return nil, 0, err
	}
	// Each page has the request timeout: a prefix of 30,000 entries on
	// a busy etcd took longer than one timeout, and its watchers listed
	// it again and again.
	page := func(key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
		rctx, cancel := s.reqCtx(ctx)
		defer cancel()
		resp, err := s.kv.Get(rctx, key, append(opts, clientv3.WithLimit(listPage))...)
		if err != nil {
			return nil, s.fail(rctx, "list", prefix, err)
		}
		return resp, nil
	}
	resp, err := page(prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, 0, err
	}
	rev := resp.Header.Revision
	var items []store.Item
	end := clientv3.GetPrefixRangeEnd(prefix)
	for {
		for _, kv := range resp.Kvs {
			items = append(items, store.Item{Key: string(kv.Key), Value: value(kv), Lease: kv.Lease})
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return items, rev, nil
		}
		from := string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		if resp, err = page(from, clientv3.WithRange(end), clientv3.WithRev(rev)); err != nil {
			return nil, 0, err
		}
	}
}

// Close implements store.Store: it revokes the leases still live (their
// keys go at once rather than a TTL later), ends the watches and closes
// the client.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.mu.Lock()
	leases := make([]*lease, 0, len(s.leases))
	for l := range s.leases {
		leases = append(leases, l)
	}
	for w := range s.watchers {
		w.queue.Stop()
		w.cancel()
	}
	s.mu.Unlock()
	for _, l := range leases {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if _, err := s.client.Revoke(ctx, l.id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
			s.log.Warn("lease not revoked at close; its keys go when it expires", "lease", int64(l.id), "ttl", l.ttl.String(), "err", err.Error())
		}
		cancel()
		l.end()
	}
	err := s.client.Close()
	s.wg.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("etcdstore: close: %w", err)
	}
	return nil
}
