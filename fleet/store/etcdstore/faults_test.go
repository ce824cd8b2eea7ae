package etcdstore_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/etcdstore"
	"remoteler.dev/edge/fleet/store/storetest"
	"remoteler.dev/edge/tools/etcdcluster"
)

// syncBuffer is a bytes.Buffer safe for concurrent writers and readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestOpenWaitsForEtcd starts the store while no etcd member runs: Open
// says why it waits and retries, gives up with the last error when its
// context ends, and returns as soon as the cluster is back.
func TestOpenWaitsForEtcd(t *testing.T) {
	c := etcdcluster.Start(t, etcdcluster.Options{Members: 3})
	for _, m := range c.Members {
		m.Kill()
	}

	t.Run("gives up when its context ends", func(t *testing.T) {
		var logs syncBuffer
		ctx, cancel := context.WithTimeout(t.Context(), 4*time.Second)
		defer cancel()
		start := time.Now()
		s, err := etcdstore.Open(ctx, etcdstore.Config{
			Endpoints: c.Endpoints(), DialTimeout: time.Second, RequestTimeout: time.Second,
			Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		})
		if err == nil {
			s.Close()
			t.Fatal("Open with every member down succeeded")
		}
		t.Logf("after %s: %v", time.Since(start).Round(time.Millisecond), err)
		if !strings.Contains(err.Error(), "gave up after") || !strings.Contains(err.Error(), c.Endpoints()[0]) ||
			!strings.Contains(err.Error(), "connection refused") {
			t.Errorf("error %q does not say it gave up on which endpoints, and why", err)
		}
		out := logs.String()
		if n := strings.Count(out, "etcd does not answer; retrying"); n < 2 {
			t.Errorf("logged %d retries in 4s, want at least 2:\n%s", n, out)
		}
		if !strings.Contains(out, "is etcd running") {
			t.Errorf("the log does not say what to check:\n%s", out)
		}
	})

	t.Run("returns once etcd is back", func(t *testing.T) {
		type result struct {
			s   *etcdstore.Store
			err error
		}
		done := make(chan result, 1)
		var logs syncBuffer
		go func() {
			s, err := etcdstore.Open(t.Context(), etcdstore.Config{
				Endpoints: c.Endpoints(), DialTimeout: time.Second, RequestTimeout: time.Second,
				Logger: slog.New(slog.NewTextHandler(&logs, nil)),
			})
			done <- result{s, err}
		}()
		// Bring the cluster back once Open has said it is waiting.
		deadline := time.Now().Add(storetest.Wait)
		for !strings.Contains(logs.String(), "retrying") {
			if time.Now().After(deadline) {
				t.Fatalf("Open never said it was retrying:\n%s", logs.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		for _, m := range c.Members {
			m.Restart()
		}
		var r result
		select {
		case r = <-done:
		case <-time.After(3 * time.Minute):
			t.Fatalf("Open did not return after etcd came back:\n%s", logs.String())
		}
		if r.err != nil {
			t.Fatalf("Open: %v", r.err)
		}
		defer r.s.Close()
		if err := r.s.Put(t.Context(), "k", []byte("v")); err != nil {
			t.Fatalf("Put after Open: %v", err)
		}
	})
}

// TestOpenRefusedCertificate: a cluster that wants a client certificate
// and a store that has none: Open retries, logging the TLS refusal.
func TestOpenRefusedCertificate(t *testing.T) {
	c := etcdcluster.Start(t, etcdcluster.Options{Members: 1, TLS: true})
	tlsc := c.ClientTLS(t)
	tlsc.Certificates = nil
	var logs syncBuffer
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	s, err := etcdstore.Open(ctx, etcdstore.Config{
		Endpoints: c.Endpoints(), TLS: tlsc, DialTimeout: time.Second, RequestTimeout: time.Second,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err == nil {
		s.Close()
		t.Fatal("Open without the client certificate the cluster requires succeeded")
	}
	t.Logf("%v", err)
	if !strings.Contains(err.Error(), "refused the client certificate") {
		t.Errorf("Open's error %q does not say that etcd wants a client certificate", err)
	}
}

// TestLeaderKilled kills the etcd leader while writes, a watch and a lease
// are in use: writes go on after the election (some in flight may fail),
// the watch delivers every write that succeeded, in order and without a
// resync, and the lease and its key survive.
func TestLeaderKilled(t *testing.T) {
	c := etcdcluster.Start(t, etcdcluster.Options{Members: 3})
	ctx := t.Context()
	s := open(t, c, randomPrefix())
	defer s.Close()
	// The TTL covers an election on a loaded machine: the lease must
	// survive the renewals moving to the new leader.
	l, err := s.Grant(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctx, "presence/dev1", []byte("replica-a"), store.WithLease(l)); err != nil {
		t.Fatal(err)
	}
	events, err := s.Watch(ctx, "k/", 0)
	if err != nil {
		t.Fatal(err)
	}

	var written []string // keys whose Put returned nil, in order
	var failed []error
	put := func(i int) {
		key := fmt.Sprintf("k/%04d", i)
		if err := s.Put(ctx, key, []byte("v")); err != nil {
			failed = append(failed, err)
			return
		}
		written = append(written, key)
	}
	i := 0
	for ; i < 20; i++ {
		put(i)
	}
	leader := c.Leader(t)
	t.Logf("killing the leader, %s", leader.Name)
	killed := time.Now()
	leader.Kill()
	// Write on through the election until 20 more writes have succeeded.
	deadline := time.Now().Add(storetest.Wait)
	for n := len(written); len(written) < n+20; i++ {
		if time.Now().After(deadline) {
			t.Fatalf("only %d writes succeeded in %s after the leader died; errors: %v", len(written)-n, storetest.Wait, failed)
		}
		put(i)
	}
	t.Logf("%d writes failed around the election (%v); writing again within %s of the kill", len(failed), failed, time.Since(killed).Round(time.Millisecond))
	for _, err := range failed {
		if errors.Is(err, store.ErrClosed) || errors.Is(err, store.ErrNotFound) {
			t.Errorf("write failed with a contract error during the election: %v", err)
		}
	}

	seen := map[string]bool{}
	var last int64
	for len(seen) < len(written) {
		select {
		case ev, ok := <-events:
			if !ok || ev.Kind == store.EventResync {
				t.Fatalf("watch ended (resync %v) after %d of %d writes", ev.Err, len(seen), len(written))
			}
			if ev.Revision <= last {
				t.Fatalf("event %s at revision %d after %d", ev.Key, ev.Revision, last)
			}
			last = ev.Revision
			seen[ev.Key] = true
		case <-time.After(storetest.Wait):
			t.Fatalf("watch delivered %d of %d writes", len(seen), len(written))
		}
	}
	for _, k := range written {
		if !seen[k] {
			t.Errorf("the watch never delivered %s", k)
		}
	}
	// The lease is renewed through the new leader.
	select {
	case <-l.Done():
		t.Error("the lease ended with the etcd leader")
	default:
	}
	if _, err := s.Get(ctx, "presence/dev1"); err != nil {
		t.Errorf("leased key after the election: %v", err)
	}
}
