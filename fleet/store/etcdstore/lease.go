package etcdstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/hub"
)

// lease is an etcd lease kept alive by the client while its owner's
// context lives.
type lease struct {
	s    *Store
	id   clientv3.LeaseID
	ttl  time.Duration
	stop context.CancelFunc // stops the renewals

	done chan struct{}
	once sync.Once
}

var _ store.Lease = (*lease)(nil)

// Grant implements store.Store: an etcd lease of ttl rounded up to whole
// seconds (etcd raises it to its minimum, 1.5 election timeouts; TTL says
// what was granted), renewed every third of it by the client while ctx
// lives. Renewals go on across leader elections; when none succeeds for a
// whole TTL the client gives up and Done closes.
func (s *Store) Grant(ctx context.Context, ttl time.Duration) (store.Lease, error) {
	if err := s.check(ctx, "grant", "lease"); err != nil {
		return nil, err
	}
	rctx, cancel := s.reqCtx(ctx)
	defer cancel()
	resp, err := s.client.Grant(rctx, int64(hub.RoundTTL(ttl)/time.Second))
	if err != nil {
		return nil, s.fail(rctx, "grant", "lease", err)
	}
	kctx, stop := context.WithCancel(ctx)
	ka, err := s.client.KeepAlive(kctx, resp.ID)
	if err != nil {
		stop()
		s.client.Revoke(context.WithoutCancel(rctx), resp.ID)
		return nil, s.fail(rctx, "grant", "lease", err)
	}
	l := &lease{s: s, id: resp.ID, ttl: time.Duration(resp.TTL) * time.Second, stop: stop, done: make(chan struct{})}
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		stop()
		return nil, fmt.Errorf("etcdstore: grant: %w", store.ErrClosed)
	}
	s.leases[l] = struct{}{}
	s.mu.Unlock()
	s.wg.Go(func() {
		for range ka {
			// Each answer is a renewal; the channel closes when renewals
			// stop (ctx, expiry, the client closing).
		}
		l.end()
	})
	return l, nil
}

func (l *lease) ID() int64             { return int64(l.id) }
func (l *lease) TTL() time.Duration    { return l.ttl }
func (l *lease) Done() <-chan struct{} { return l.done }

// Revoke implements store.Lease.
func (l *lease) Revoke(ctx context.Context) error {
	// Even after Done the lease may live until its TTL: revoke it anyway.
	if l.s.closed.Load() {
		return nil // Close revoked it
	}
	rctx, cancel := l.s.reqCtx(ctx)
	defer cancel()
	_, err := l.s.client.Revoke(rctx, l.id)
	if err != nil && !errors.Is(rpctypes.Error(err), rpctypes.ErrLeaseNotFound) {
		return l.s.fail(rctx, "revoke", fmt.Sprint(int64(l.id)), err)
	}
	l.end()
	return nil
}

// end stops the renewals, closes Done and forgets the lease.
func (l *lease) end() {
	l.once.Do(func() {
		l.stop()
		close(l.done)
		l.s.mu.Lock()
		delete(l.s.leases, l)
		l.s.mu.Unlock()
	})
}
