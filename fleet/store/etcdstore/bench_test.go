package etcdstore_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/boltstore"
	"remoteler.dev/edge/tools/etcdcluster"
)

// TestStoreBenchmark measures the two production stores side by side, the
// embedded bbolt file and a three-member etcd cluster on loopback, with
// the operations interleaved so that load from elsewhere falls on both:
//
//   - Get, Put and CompareAndSwap latency, one at a time;
//   - watch delay: from a Put on one replica's store (for etcd: another
//     client) to the event arriving at a watcher on another's, the path a
//     lock or role change takes to every replica;
//   - store copy (fleetd store copy) of a fleet of items, bbolt to etcd
//     and back, in items a second.
//
// It runs in CI with few samples (so it cannot rot) and prints its figures
// with -v; set STORE_BENCH_N for more samples:
//
//	STORE_BENCH_N=1000 go test -count=1 -v -run TestStoreBenchmark ./fleet/store/etcdstore
func TestStoreBenchmark(t *testing.T) {
	n := 30
	if s := os.Getenv("STORE_BENCH_N"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 5 {
			t.Fatalf("STORE_BENCH_N=%q: want a number of at least 5", s)
		}
		n = v
	}
	ctx := t.Context()
	c := etcdcluster.Start(t, etcdcluster.Options{Members: 3})
	prefix := randomPrefix()
	e1, e2 := open(t, c, prefix), open(t, c, prefix)
	defer e1.Close()
	defer e2.Close()
	b, err := boltstore.Open(filepath.Join(t.TempDir(), "fleet.db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()

	type pair struct{ name, a, b string }
	stores := []struct {
		name       string
		st, other  store.Store // other: the watching replica's view
		get, put   []time.Duration
		cas, watch []time.Duration
	}{
		{name: "bbolt", st: b, other: b},
		{name: "etcd, 3 members", st: e1, other: e2},
	}
	value := []byte(strings.Repeat("x", 512)) // a user or device record is a few hundred bytes
	for i := range stores {
		s := &stores[i]
		if err := s.st.Put(ctx, "bench/k", value); err != nil {
			t.Fatal(err)
		}
	}
	timed := func(f func() error) time.Duration {
		start := time.Now()
		if err := f(); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	for i := range n {
		for j := range stores {
			s := &stores[j]
			s.get = append(s.get, timed(func() error { _, err := s.st.Get(ctx, "bench/k"); return err }))
			s.put = append(s.put, timed(func() error { return s.st.Put(ctx, "bench/k", value) }))
			next := []byte(fmt.Sprintf("%d-%s", i, value))
			s.cas = append(s.cas, timed(func() error {
				old, err := s.st.Get(ctx, "bench/k")
				if err != nil {
					return err
				}
				return s.st.CompareAndSwap(ctx, "bench/k", old, next)
			}))
		}
	}
	// Watch delay: one watcher per store, on the other replica's view.
	for j := range stores {
		s := &stores[j]
		wctx, cancel := context.WithCancel(ctx)
		ch, err := s.other.Watch(wctx, "bench/w/", 0)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			key := fmt.Sprintf("bench/w/%d", i)
			start := time.Now()
			if err := s.st.Put(ctx, key, value); err != nil {
				t.Fatal(err)
			}
			for ev := range ch {
				if ev.Key == key {
					break
				}
			}
			s.watch = append(s.watch, time.Since(start))
		}
		cancel()
	}

	// Copy: a fleet of items, bbolt to etcd and back.
	items := max(n*10, 300)
	src, err := boltstore.Open(filepath.Join(t.TempDir(), "src.db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	for i := range items {
		if err := src.Put(ctx, fmt.Sprintf("devices/%06d", i), value); err != nil {
			t.Fatal(err)
		}
	}
	toEtcd := open(t, c, randomPrefix())
	defer toEtcd.Close()
	back, err := boltstore.Open(filepath.Join(t.TempDir(), "back.db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	var copies []pair
	for _, cp := range []struct {
		name     string
		dst, src store.Store
	}{{"bbolt to etcd", toEtcd, src}, {"etcd to bbolt", back, toEtcd}} {
		start := time.Now()
		if _, err := store.Copy(ctx, cp.dst, cp.src, store.CopyOptions{}); err != nil {
			t.Fatal(err)
		}
		d := time.Since(start)
		copies = append(copies, pair{cp.name, d.Round(time.Millisecond).String(), fmt.Sprintf("%.0f", float64(items)/d.Seconds())})
	}

	var sb strings.Builder
	fmt.Fprintf(&sb, "\n| store (loopback, n=%d) | Get p50 | Get p99 | Put p50 | Put p99 | CAS p50 | CAS p99 | watch delay p50 | watch delay p99 |\n", n)
	sb.WriteString("|---|---|---|---|---|---|---|---|---|\n")
	r := func(d []time.Duration, p int) string { return pct(d, p).Round(10 * time.Microsecond).String() }
	for _, s := range stores {
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", s.name,
			r(s.get, 50), r(s.get, 99), r(s.put, 50), r(s.put, 99), r(s.cas, 50), r(s.cas, 99), r(s.watch, 50), r(s.watch, 99))
	}
	fmt.Fprintf(&sb, "\n| store copy, %d items of 512 bytes | time | items/s |\n|---|---|---|\n", items)
	for _, p := range copies {
		fmt.Fprintf(&sb, "| %s | %s | %s |\n", p.name, p.a, p.b)
	}
	t.Log(sb.String())
}

// pct returns the p-th percentile of ds (nearest rank).
func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(i-1, 0)]
}
