// Package etcdleader is the elector of fleetd replicas on etcd: etcd's own
// election (go.etcd.io/etcd/client/v3/concurrency) under the store's
// prefix, at leader/NAME/. Each campaign holds a lease (a concurrency
// session) renewed while the term lasts; candidates queue in the order
// they campaigned, and the next takes over when the leader resigns or its
// lease expires (within TTL of its death or partition).
//
// A term's guard is its election key with its value (the candidate's ID
// and a nonce): the key is deleted with the lease and never comes back,
// so writes fenced by the term (leader.Fenced) fail once the term is over,
// in the same etcd transaction that would have written.
//
// Only fleet/... imports this package.
package etcdleader

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"remoteler.dev/edge/fleet/backoff"
	"remoteler.dev/edge/fleet/leader"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/etcdstore"
)

// Elector campaigns on etcd for one job. Store, Name required.
type Elector struct {
	// Store is the replica's etcd store: its client and prefix. Required.
	Store *etcdstore.Store
	// Name is the job's name. Required.
	Name string
	// ID names this candidate in its claim (e.g. the host name); default
	// "fleetd".
	ID string
	// TTL is the lease of a term, rounded up to whole seconds (etcd may
	// raise it to its minimum); default leader.DefaultTTL (10s).
	TTL time.Duration
}

var _ leader.Elector = (*Elector)(nil)

// Campaign implements leader.Elector.
func (e *Elector) Campaign(ctx context.Context) (leader.Term, error) {
	if e.Store == nil || e.Name == "" {
		return nil, errors.New("etcdleader: elector needs a Store and a Name")
	}
	ttl := e.TTL
	if ttl <= 0 {
		ttl = leader.DefaultTTL
	}
	client := e.Store.Client()
	secs := int64((ttl + time.Second - 1) / time.Second)
	grant, err := client.Grant(clientv3.WithRequireLeader(ctx), secs)
	if err != nil {
		return nil, fmt.Errorf("etcdleader: campaign %s: grant: %w", e.Name, clientv3.ContextError(ctx, err))
	}
	// The session (the lease's renewals) lives until the term ends.
	sctx, stop := context.WithCancel(context.Background())
	session, err := concurrency.NewSession(client, concurrency.WithLease(grant.ID), concurrency.WithTTL(int(grant.TTL)), concurrency.WithContext(sctx))
	if err != nil {
		stop()
		client.Revoke(context.WithoutCancel(ctx), grant.ID)
		return nil, fmt.Errorf("etcdleader: campaign %s: session: %w", e.Name, err)
	}
	prefix := e.Store.Prefix() + leader.KeyPrefix + e.Name
	el := concurrency.NewElection(session, prefix)
	value := claim(e.ID)
	if err := el.Campaign(ctx, value); err != nil {
		closeSession(session, stop)
		return nil, fmt.Errorf("etcdleader: campaign %s: %w", e.Name, err)
	}
	t := &term{
		st:      e.Store,
		el:      el,
		session: session,
		stop:    stop,
		g:       store.Guard{Key: strings.TrimPrefix(el.Key(), e.Store.Prefix()), Value: []byte(value)},
		done:    make(chan struct{}),
	}
	go t.watch()
	return t, nil
}

// claim is a candidate's value: its ID and a nonce.
func claim(id string) string {
	if id == "" {
		id = "fleetd"
	}
	nonce := make([]byte, 8)
	rand.Read(nonce)
	return id + "/" + hex.EncodeToString(nonce)
}

// closeSession revokes the session's lease (its keys go at once) and stops
// its renewals.
func closeSession(s *concurrency.Session, stop context.CancelFunc) error {
	err := s.Close()
	stop()
	return err
}

// term is one etcd election win.
type term struct {
	st      *etcdstore.Store
	el      *concurrency.Election
	session *concurrency.Session
	stop    context.CancelFunc
	g       store.Guard

	done     chan struct{}
	doneOnce sync.Once
	resign   sync.Once
}

func (t *term) Guard() store.Guard    { return t.g }
func (t *term) Done() <-chan struct{} { return t.done }

func (t *term) end() { t.doneOnce.Do(func() { close(t.done) }) }

// Resign implements leader.Term: it deletes the election key (if still
// this term's) and revokes the lease.
func (t *term) Resign(ctx context.Context) error {
	var err error
	t.resign.Do(func() {
		defer t.end()
		err = t.el.Resign(ctx)
		if cerr := closeSession(t.session, t.stop); err == nil {
			err = cerr
		}
	})
	if err != nil {
		return fmt.Errorf("etcdleader: resign: %w", err)
	}
	return nil
}

// watch ends the term when the session ends (the lease could not be
// renewed in time, or Resign) or the election key goes or changes.
func (t *term) watch() {
	defer t.end()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-t.session.Done():
		case <-t.done:
		}
		cancel()
	}()
	for ctx.Err() == nil {
		items, rev, err := t.st.ListRevision(ctx, t.g.Key)
		if err != nil {
			// etcd unreachable: the session's renewals decide.
			backoff.Wait(ctx, time.Second)
			continue
		}
		if !holds(items, t.g) {
			return
		}
		ch, err := t.st.Watch(ctx, t.g.Key, rev)
		if err != nil {
			continue
		}
		for ev := range ch {
			if ev.Key == t.g.Key && (ev.Kind == store.EventDelete || string(ev.Value) != string(t.g.Value)) {
				return
			}
		}
	}
}

// holds reports whether items hold g's key with g's value.
func holds(items []store.Item, g store.Guard) bool {
	for _, it := range items {
		if it.Key == g.Key {
			return string(it.Value) == string(g.Value)
		}
	}
	return false
}
