// Package storetest is the contract test suite of fleet/store: every
// implementation of store.Store runs Run from its own tests, so that the
// bbolt store, the memory store and the etcd store are held to one
// contract (the doc comments of package store) and cannot drift apart.
//
// The suite covers the key-value methods, concurrency (CompareAndSwap and
// Create races, a guard changed under concurrent guarded writes), revisions,
// watches (order, resumption from a revision, a watcher that falls behind,
// history that is gone, ends), Follow, leases (revocation, expiry after the
// owner stops renewing, detaching) and guarded writes.
//
// Only tests import this package.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/memstore"
)

// Harness is what the suite needs from an implementation.
type Harness struct {
	// New returns an empty store. The suite closes it; closing it again
	// at cleanup must be harmless.
	New func(t *testing.T) store.Store
	// Peer, when set, returns a second handle on s's data, as another
	// fleetd replica sees it (for etcd: another client on the same
	// prefix). Nil means there is no other view: the suite uses s.
	Peer func(t *testing.T, s store.Store) store.Store
	// WatchQueue is the watch queue (undelivered events per watcher) the
	// stores of New have; the suite overflows it.
	WatchQueue int
	// Forget makes s forget the history of changes up to its current
	// revision (etcd: compact), so that watching from an older revision
	// must resync.
	Forget func(t *testing.T, s store.Store)
}

// ForgetByWriting is a Forget for the stores that keep the last history
// events in memory (memstore, boltstore): it writes history+1 changes
// elsewhere, pushing the older ones out.
func ForgetByWriting(history int) func(t *testing.T, s store.Store) {
	return func(t *testing.T, s store.Store) {
		t.Helper()
		for i := range history + 1 {
			must(t, s.Put(t.Context(), "forget/"+strconv.Itoa(i), nil))
		}
	}
}

// Dump lists every item of s as "key=value" lines, for comparing stores.
func Dump(t testing.TB, s store.Store) string {
	t.Helper()
	items, err := s.List(t.Context(), "")
	if err != nil {
		t.Fatalf("storetest: list: %v", err)
	}
	var b strings.Builder
	for _, it := range items {
		fmt.Fprintf(&b, "%s=%s\n", it.Key, it.Value)
	}
	return b.String()
}

// Wait bounds every wait of the suite: generous, for a loaded machine. The
// suite waits on conditions, never on time alone.
const Wait = 60 * time.Second

// Run runs the contract suite as subtests of t.
func Run(t *testing.T, h Harness) {
	if h.New == nil || h.WatchQueue <= 0 || h.Forget == nil {
		t.Fatal("storetest: Harness needs New, WatchQueue and Forget")
	}
	tests := []struct {
		name string
		run  func(t *testing.T, h Harness)
	}{
		{"Operations", testOperations},
		{"BadInput", testBadInput},
		{"List", testList},
		{"ValuesAreCopies", testValuesAreCopies},
		{"LargeValue", testLargeValue},
		{"ConcurrentCompareAndSwap", testConcurrentCAS},
		{"ConcurrentCreate", testConcurrentCreate},
		{"PeerReadsWrites", testPeer},
		{"Revisions", testRevisions},
		{"WatchOrder", testWatchOrder},
		{"WatchFromListRevision", testWatchFromList},
		{"WatchResume", testWatchResume},
		{"WatchFromNow", testWatchFromNow},
		{"WatchPeer", testWatchPeer},
		{"WatchSlowWatcher", testWatchSlow},
		{"WatchForgottenHistory", testWatchForgotten},
		{"WatchEnds", testWatchEnds},
		{"Follow", testFollow},
		{"LeaseRevoke", testLeaseRevoke},
		{"LeaseLargerThanWatchQueue", testLeaseLargerThanQueue},
		{"LeaseExpiresWhenOwnerStops", testLeaseExpires},
		{"LeaseDetach", testLeaseDetach},
		{"LeaseUnknown", testLeaseUnknown},
		{"Guards", testGuards},
		{"GuardChangedUnderWriters", testGuardRace},
		{"Closed", testClosed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.run(t, h) })
	}
}

// open returns a fresh store closed at cleanup.
func open(t *testing.T, h Harness) store.Store {
	t.Helper()
	s := h.New(t)
	t.Cleanup(func() { s.Close() })
	return s
}

// peer returns the peer view of s (s itself without one).
func peer(t *testing.T, h Harness, s store.Store) store.Store {
	t.Helper()
	if h.Peer == nil {
		return s
	}
	p := h.Peer(t, s)
	t.Cleanup(func() { p.Close() })
	return p
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// op is one step of an operations case. want is the value Get must return
// when do is "get" and wantErr is nil.
type op struct {
	do      string // get, put, create, cas, delete
	key     string
	val     string
	old     string
	want    string
	wantErr error
}

func (o op) run(ctx context.Context, s store.Store) (string, error) {
	switch o.do {
	case "get":
		v, err := s.Get(ctx, o.key)
		return string(v), err
	case "put":
		return "", s.Put(ctx, o.key, []byte(o.val))
	case "create":
		return "", s.Create(ctx, o.key, []byte(o.val))
	case "cas":
		return "", s.CompareAndSwap(ctx, o.key, []byte(o.old), []byte(o.val))
	case "delete":
		return "", s.Delete(ctx, o.key)
	}
	panic("unknown op " + o.do)
}

func testOperations(t *testing.T, h Harness) {
	tests := []struct {
		name string
		ops  []op
	}{
		{"get missing", []op{
			{do: "get", key: "a", wantErr: store.ErrNotFound},
		}},
		{"put then get", []op{
			{do: "put", key: "a", val: "1"},
			{do: "get", key: "a", want: "1"},
		}},
		{"put replaces", []op{
			{do: "put", key: "a", val: "1"},
			{do: "put", key: "a", val: "2"},
			{do: "get", key: "a", want: "2"},
		}},
		{"empty value is not missing", []op{
			{do: "put", key: "a", val: ""},
			{do: "get", key: "a", want: ""},
			{do: "create", key: "a", val: "x", wantErr: store.ErrExists},
			{do: "cas", key: "a", old: "", val: "1"},
			{do: "get", key: "a", want: "1"},
		}},
		{"create new", []op{
			{do: "create", key: "a", val: "1"},
			{do: "get", key: "a", want: "1"},
		}},
		{"create existing", []op{
			{do: "put", key: "a", val: "1"},
			{do: "create", key: "a", val: "2", wantErr: store.ErrExists},
			{do: "get", key: "a", want: "1"},
		}},
		{"cas match", []op{
			{do: "put", key: "a", val: "1"},
			{do: "cas", key: "a", old: "1", val: "2"},
			{do: "get", key: "a", want: "2"},
		}},
		{"cas mismatch", []op{
			{do: "put", key: "a", val: "1"},
			{do: "cas", key: "a", old: "0", val: "2", wantErr: store.ErrConflict},
			{do: "get", key: "a", want: "1"},
		}},
		{"cas missing", []op{
			{do: "cas", key: "a", old: "", val: "2", wantErr: store.ErrNotFound},
			{do: "get", key: "a", wantErr: store.ErrNotFound},
		}},
		{"delete existing", []op{
			{do: "put", key: "a", val: "1"},
			{do: "delete", key: "a"},
			{do: "get", key: "a", wantErr: store.ErrNotFound},
			{do: "create", key: "a", val: "3"},
			{do: "get", key: "a", want: "3"},
		}},
		{"delete missing", []op{
			{do: "delete", key: "a", wantErr: store.ErrNotFound},
		}},
		{"keys are independent", []op{
			{do: "put", key: "a", val: "1"},
			{do: "put", key: "a/b", val: "2"},
			{do: "delete", key: "a"},
			{do: "get", key: "a/b", want: "2"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := open(t, h)
			ctx := t.Context()
			for i, o := range tt.ops {
				got, err := o.run(ctx, s)
				if !errors.Is(err, o.wantErr) || (o.wantErr == nil && err != nil) {
					t.Fatalf("step %d %s %q: err = %v, want %v", i, o.do, o.key, err, o.wantErr)
				}
				if o.do == "get" && err == nil && got != o.want {
					t.Fatalf("step %d get %q = %q, want %q", i, o.key, got, o.want)
				}
			}
		})
	}
}

func testBadInput(t *testing.T, h Harness) {
	s := open(t, h)
	canceled, cancel := context.WithCancel(t.Context())
	cancel()
	tests := []struct {
		name    string
		ctx     context.Context
		o       op
		wantErr error // nil: any error
	}{
		{"empty key get", t.Context(), op{do: "get"}, nil},
		{"empty key put", t.Context(), op{do: "put", val: "1"}, nil},
		{"empty key create", t.Context(), op{do: "create", val: "1"}, nil},
		{"empty key cas", t.Context(), op{do: "cas", val: "1"}, nil},
		{"empty key delete", t.Context(), op{do: "delete"}, nil},
		{"canceled get", canceled, op{do: "get", key: "a"}, context.Canceled},
		{"canceled put", canceled, op{do: "put", key: "a", val: "1"}, context.Canceled},
		{"canceled create", canceled, op{do: "create", key: "a", val: "1"}, context.Canceled},
		{"canceled cas", canceled, op{do: "cas", key: "a", val: "1"}, context.Canceled},
		{"canceled delete", canceled, op{do: "delete", key: "a"}, context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tt.o.run(tt.ctx, s)
			if err == nil {
				t.Fatalf("%s: err = nil, want an error", tt.o.do)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("%s: err = %v, want %v", tt.o.do, err, tt.wantErr)
			}
		})
	}
	if _, err := s.List(canceled, ""); !errors.Is(err, context.Canceled) {
		t.Errorf("List(canceled): err = %v, want %v", err, context.Canceled)
	}
	if _, err := s.Watch(canceled, "", 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Watch(canceled): err = %v, want %v", err, context.Canceled)
	}
	if _, err := s.Grant(canceled, time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("Grant(canceled): err = %v, want %v", err, context.Canceled)
	}
	if _, err := s.Get(t.Context(), "a"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("after the bad calls Get(a): err = %v, want %v (nothing written)", err, store.ErrNotFound)
	}
}

func testList(t *testing.T, h Harness) {
	s := open(t, h)
	ctx := t.Context()
	// Put in an order unlike key order.
	keys := []string{"users/bob", "roles/admin", "users/alice", "users", "usersx/z", "users/alice/x", "a"}
	for _, k := range keys {
		must(t, s.Put(ctx, k, []byte("v:"+k)))
	}
	tests := []struct {
		prefix string
		want   []string
	}{
		{"", []string{"a", "roles/admin", "users", "users/alice", "users/alice/x", "users/bob", "usersx/z"}},
		{"users/", []string{"users/alice", "users/alice/x", "users/bob"}},
		{"users", []string{"users", "users/alice", "users/alice/x", "users/bob", "usersx/z"}},
		{"users/alice", []string{"users/alice", "users/alice/x"}},
		{"roles/", []string{"roles/admin"}},
		{"tokens/", nil},
		{"zzz", nil},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("prefix %q", tt.prefix), func(t *testing.T) {
			items, err := s.List(ctx, tt.prefix)
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			var got []string
			for _, it := range items {
				got = append(got, it.Key)
				if want := "v:" + it.Key; string(it.Value) != want {
					t.Errorf("value of %q = %q, want %q", it.Key, it.Value, want)
				}
				if it.Lease != 0 {
					t.Errorf("%q has lease %d, want none", it.Key, it.Lease)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("List(%q) = %q, want %q", tt.prefix, got, tt.want)
			}
		})
	}
}

func testValuesAreCopies(t *testing.T, h Harness) {
	s := open(t, h)
	ctx := t.Context()
	in := []byte("value")
	must(t, s.Put(ctx, "k", in))
	in[0] = 'X' // the store must not keep the caller's slice
	got, err := s.Get(ctx, "k")
	must(t, err)
	got[0] = 'Y' // nor hand out its own
	items, err := s.List(ctx, "")
	must(t, err)
	items[0].Value[1] = 'Z'
	// Write more so that a store reusing pages would overwrite aliases.
	for i := range 50 {
		must(t, s.Put(ctx, "fill/"+strconv.Itoa(i), make([]byte, 512)))
	}
	again, err := s.Get(ctx, "k")
	must(t, err)
	if string(again) != "value" {
		t.Errorf("Get after changing copies = %q, want %q", again, "value")
	}
	if string(got) != "Yalue" || string(items[0].Value) != "vZlue" {
		t.Errorf("returned copies changed under the caller: %q, %q", got, items[0].Value)
	}
}

func testLargeValue(t *testing.T, h Harness) {
	s := open(t, h)
	ctx := t.Context()
	big := bytes.Repeat([]byte("0123456789abcdef"), store.MaxValueSize/16)
	must(t, s.Put(ctx, "big", big))
	got, err := s.Get(ctx, "big")
	must(t, err)
	if !bytes.Equal(got, big) {
		t.Errorf("Get(big) returned %d bytes, not the %d put", len(got), len(big))
	}
}

func testConcurrentCAS(t *testing.T, h Harness) {
	s := open(t, h)
	p := peer(t, h, s)
	ctx := t.Context()
	const workers, each = 8, 20
	must(t, s.Create(ctx, "counter", []byte("0")))
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for i := range workers {
		st := s
		if i%2 == 1 {
			st = p // half of the writers are on the other replica
		}
		wg.Go(func() {
			for range each {
				if err := increment(ctx, st, "counter"); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("increment: %v", err)
	}
	v, err := s.Get(ctx, "counter")
	must(t, err)
	if got, want := string(v), strconv.Itoa(workers*each); got != want {
		t.Errorf("counter = %s, want %s (a lost update means two swaps from one value both won)", got, want)
	}
}

// increment adds one to the decimal number at key with a CAS retry loop.
func increment(ctx context.Context, s store.Store, key string) error {
	for {
		old, err := s.Get(ctx, key)
		if err != nil {
			return err
		}
		n, err := strconv.Atoi(string(old))
		if err != nil {
			return err
		}
		err = s.CompareAndSwap(ctx, key, old, []byte(strconv.Itoa(n+1)))
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		return err
	}
}

func testConcurrentCreate(t *testing.T, h Harness) {
	s := open(t, h)
	p := peer(t, h, s)
	ctx := t.Context()
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, exists := 0, 0
	var others []error
	for i := range 16 {
		st := s
		if i%2 == 1 {
			st = p
		}
		wg.Go(func() {
			err := st.Create(ctx, "k", []byte{byte('a' + i)})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, store.ErrExists):
				exists++
			default:
				others = append(others, err)
			}
		})
	}
	wg.Wait()
	if wins != 1 || exists != 15 || len(others) > 0 {
		t.Errorf("got %d successful creates, %d ErrExists and errors %v; want 1, 15 and none", wins, exists, others)
	}
}

func testPeer(t *testing.T, h Harness) {
	s := open(t, h)
	p := peer(t, h, s)
	ctx := t.Context()
	must(t, s.Put(ctx, "users/alice", []byte("1")))
	if v, err := p.Get(ctx, "users/alice"); err != nil || string(v) != "1" {
		t.Fatalf("peer Get after Put returned = %q, %v; want %q at once", v, err, "1")
	}
	must(t, p.Delete(ctx, "users/alice"))
	if _, err := s.Get(ctx, "users/alice"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Get after the peer's Delete returned: err = %v, want ErrNotFound at once", err)
	}
}

func testRevisions(t *testing.T, h Harness) {
	s := open(t, h)
	ctx := t.Context()
	_, r0, err := s.ListRevision(ctx, "")
	must(t, err)
	if r0 <= 0 {
		t.Fatalf("revision of a new store = %d, want > 0", r0)
	}
	last := r0
	for i, write := range []func() error{
		func() error { return s.Put(ctx, "a", []byte("1")) },
		func() error { return s.Create(ctx, "b", []byte("1")) },
		func() error { return s.CompareAndSwap(ctx, "a", []byte("1"), []byte("2")) },
		func() error { return s.Delete(ctx, "b") },
	} {
		must(t, write())
		items, rev, err := s.ListRevision(ctx, "")
		must(t, err)
		if rev <= last {
			t.Errorf("write %d: revision %d, want above %d", i, rev, last)
		}
		last = rev
		if i == 3 && (len(items) != 1 || items[0].Key != "a" || string(items[0].Value) != "2") {
			t.Errorf("ListRevision after the writes = %+v, want a=2 only", items)
		}
	}
}

// next returns the next event of ch, failing the test if none comes in
// time or the channel closes.
func next(t *testing.T, ch <-chan store.Event) store.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed, want an event")
		}
		return ev
	case <-time.After(Wait):
		t.Fatalf("no event within %s", Wait)
	}
	return store.Event{}
}

// closes waits until ch closes and returns the events it still delivered.
func closes(t *testing.T, ch <-chan store.Event) []store.Event {
	t.Helper()
	var evs []store.Event
	timeout := time.After(Wait)
	for {
		select {
		case ev, ok := <-ch:
			if !ok {
				return evs
			}
			evs = append(evs, ev)
		case <-timeout:
			t.Fatalf("watch channel still open after %s (events %v)", Wait, evs)
		}
	}
}

// closesQuietly waits until ch closes and checks that it ends without a
// resync (a watch ended by its context or by Close).
func closesQuietly(t *testing.T, ch <-chan store.Event, what string) {
	t.Helper()
	for _, ev := range closes(t, ch) {
		if ev.Kind == store.EventResync {
			t.Errorf("%s delivered a resync: %v", what, ev.Err)
		}
	}
}

// want describes an expected event.
type want struct {
	kind store.EventKind
	key  string
	val  string
}

func (w want) String() string { return fmt.Sprintf("%s %s=%q", w.kind, w.key, w.val) }

func describe(ev store.Event) want {
	return want{ev.Kind, ev.Key, string(ev.Value)}
}

// expect reads len(ws) events from ch and checks them and that revisions
// never go down (and rise between writes). It returns the last revision.
func expect(t *testing.T, ch <-chan store.Event, after int64, ws ...want) int64 {
	t.Helper()
	last := after
	for i, w := range ws {
		ev := next(t, ch)
		if got := describe(ev); got != w {
			t.Fatalf("event %d = %v (err %v), want %v", i, got, ev.Err, w)
		}
		if ev.Revision <= after || ev.Revision < last {
			t.Fatalf("event %d (%v) at revision %d after %d (watch after %d), want rising", i, w, ev.Revision, last, after)
		}
		last = ev.Revision
	}
	return last
}

// quiet checks that ch delivers nothing more for a moment. It cannot prove
// absence, so callers also write a marker and expect it to come next.
func marker(t *testing.T, s store.Store, key string) want {
	t.Helper()
	must(t, s.Put(t.Context(), key, []byte("marker")))
	return want{store.EventPut, key, "marker"}
}

func testWatchOrder(t *testing.T, h Harness) {
	s := open(t, h)
	p := peer(t, h, s)
	ctx := t.Context()
	must(t, s.Put(ctx, "w/old", []byte("before the watch")))
	ch, err := s.Watch(ctx, "w/", 0)
	must(t, err)
	must(t, s.Put(ctx, "w/a", []byte("1")))
	must(t, s.Put(ctx, "other/x", []byte("not watched")))
	must(t, p.Create(ctx, "w/b", []byte("2")))
	must(t, s.CompareAndSwap(ctx, "w/a", []byte("1"), []byte("3")))
	if err := s.CompareAndSwap(ctx, "w/a", []byte("1"), []byte("4")); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("failed swap: err = %v, want ErrConflict", err)
	}
	must(t, p.Delete(ctx, "w/b"))
	if err := s.Delete(ctx, "w/b"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("second delete: err = %v, want ErrNotFound", err)
	}
	must(t, s.Put(ctx, "w/a", nil))
	expect(t, ch, 0,
		want{store.EventPut, "w/a", "1"},
		want{store.EventPut, "w/b", "2"},
		want{store.EventPut, "w/a", "3"},
		want{store.EventDelete, "w/b", ""},
		want{store.EventPut, "w/a", ""},
		marker(t, s, "w/zz"), // nothing from the failed writes before it
	)
}

func testWatchFromList(t *testing.T, h Harness) {
	s := open(t, h)
	ctx := t.Context()
	must(t, s.Put(ctx, "l/a", []byte("1")))
	must(t, s.Put(ctx, "l/b", []byte("1")))
	items, rev, err := s.ListRevision(ctx, "l/")
	must(t, err)
	if len(items) != 2 {
		t.Fatalf("ListRevision = %v, want 2 items", items)
	}
	must(t, s.Put(ctx, "l/c", []byte("1")))
	must(t, s.Delete(ctx, "l/a"))
	ch, err := s.Watch(ctx, "l/", rev)
	must(t, err)
	expect(t, ch, rev,
		want{store.EventPut, "l/c", "1"},
		want{store.EventDelete, "l/a", ""},
		marker(t, s, "l/zz"),
	)
}

func testWatchResume(t *testing.T, h Harness) {
	s := open(t, h)
	ctx := t.Context()
	wctx, cancel := context.WithCancel(ctx)
	ch, err := s.Watch(wctx, "r/", 0)
	must(t, err)
	for i := range 3 {
		must(t, s.Put(ctx, "r/k", []byte(strconv.Itoa(i))))
	}
	last := expect(t, ch, 0,
		want{store.EventPut, "r/k", "0"},
		want{store.EventPut, "r/k", "1"},
		want{store.EventPut, "r/k", "2"},
	)
	cancel()
	closesQuietly(t, ch, "a canceled watch")
	// Missed while no watch ran.
	for i := 3; i < 6; i++ {
		must(t, s.Put(ctx, "r/k", []byte(strconv.Itoa(i))))
	}
	must(t, s.Delete(ctx, "r/k"))
	ch, err = s.Watch(ctx, "r/", last)
	must(t, err)
	expect(t, ch, last,
		want{store.EventPut, "r/k", "3"},
		want{store.EventPut, "r/k", "4"},
		want{store.EventPut, "r/k", "5"},
		want{store.EventDelete, "r/k", ""},
		marker(t, s, "r/zz"),
	)
}

func testWatchFromNow(t *testing.T, h Harness) {
	s := open(t, h)
	ctx := t.Context()
	for i := range 5 {
		must(t, s.Put(ctx, "n/k", []byte(strconv.Itoa(i))))
	}
	ch, err := s.Watch(ctx, "n/", 0)
	must(t, err)
	must(t, s.Put(ctx, "n/k", []byte("new")))
	expect(t, ch, 0, want{store.EventPut, "n/k", "new"})
}

func testWatchPeer(t *testing.T, h Harness) {
	s := open(t, h)
	p := peer(t, h, s)
	ctx := t.Context()
	ch, err := s.Watch(ctx, "locks/", 0)
	must(t, err)
	start := time.Now()
	must(t, p.Put(ctx, "locks/alice", []byte("stolen laptop")))
	expect(t, ch, 0, want{store.EventPut, "locks/alice", "stolen laptop"})
	t.Logf("a write on the peer reached the watcher in %s", time.Since(start))
}

func testWatchSlow(t *testing.T, h Harness) {
	s := open(t, h)
	ctx := t.Context()
	ch, err := s.Watch(ctx, "slow/", 0)
	must(t, err)
	n := h.WatchQueue + 50
	for i := range n {
		must(t, s.Put(ctx, "slow/k", []byte(strconv.Itoa(i))))
	}
	// Nothing was read: the watcher is more than its queue behind.
	evs := closes(t, ch)
	if len(evs) == 0 || evs[len(evs)-1].Kind != store.EventResync {
		t.Fatalf("a watcher %d events behind got %d events, the last %v; want a final resync", n, len(evs), evs[max(0, len(evs)-1):])
	}
	for i, ev := range evs[:len(evs)-1] {
		if ev.Kind != store.EventPut || string(ev.Value) != strconv.Itoa(i) {
			t.Fatalf("event %d before the resync = %v, want put %d (in order, none skipped)", i, describe(ev), i)
		}
	}
	rs := evs[len(evs)-1]
	if rs.Err == nil {
		t.Error("the resync carries no Err saying why")
	}
	t.Logf("%d events, then resync: %v", len(evs)-1, rs.Err)
}

func testWatchForgotten(t *testing.T, h Harness) {
	s := open(t, h)
	ctx := t.Context()
	_, old, err := s.ListRevision(ctx, "")
	must(t, err)
	must(t, s.Put(ctx, "f/a", []byte("1")))
	must(t, s.Put(ctx, "f/a", []byte("2")))
	h.Forget(t, s)
	ch, err := s.Watch(ctx, "f/", old)
	must(t, err)
	evs := closes(t, ch)
	if len(evs) != 1 || evs[0].Kind != store.EventResync || evs[0].Err == nil {
		t.Fatalf("watch from a forgotten revision delivered %v, want one resync with a reason", evs)
	}
	t.Logf("resync: %v", evs[0].Err)
}

func testWatchEnds(t *testing.T, h Harness) {
	t.Run("context", func(t *testing.T) {
		s := open(t, h)
		ctx, cancel := context.WithCancel(t.Context())
		ch, err := s.Watch(ctx, "", 0)
		must(t, err)
		cancel()
		closesQuietly(t, ch, "a canceled watch")
	})
	t.Run("close", func(t *testing.T) {
		s := h.New(t)
		ch, err := s.Watch(t.Context(), "", 0)
		must(t, err)
		must(t, s.Close())
		closesQuietly(t, ch, "the watch of a closed store")
	})
}

func testFollow(t *testing.T, h Harness) {
	s := open(t, h)
	ctx, cancel := context.WithCancel(t.Context())
	must(t, s.Put(ctx, "roles/a", []byte("1")))
	must(t, s.Put(ctx, "roles/b", []byte("1")))

	var mu sync.Mutex // guards view and resets
	view := map[string]string{}
	resets := 0
	gate := make(chan struct{}) // Apply waits on it while it is open
	var gateOnce sync.Once
	listed := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- store.Follow(ctx, s, "roles/", store.FollowHandler{
			Reset: func(items []store.Item, rev int64) {
				mu.Lock()
				defer mu.Unlock()
				resets++
				clear(view)
				for _, it := range items {
					view[it.Key] = string(it.Value)
				}
				select {
				case listed <- struct{}{}:
				default:
				}
			},
			Apply: func(ev store.Event) {
				<-gate
				mu.Lock()
				defer mu.Unlock()
				if ev.Kind == store.EventDelete {
					delete(view, ev.Key)
				} else {
					view[ev.Key] = string(ev.Value)
				}
			},
		})
	}()
	t.Cleanup(func() {
		gateOnce.Do(func() { close(gate) })
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Follow returned %v, want context.Canceled", err)
		}
	})
	select {
	case <-listed:
	case <-time.After(Wait):
		t.Fatal("Follow never listed")
	}
	// Apply is blocked: write more than the watch queue, so the watch
	// falls behind and Follow must list again to catch up.
	n := h.WatchQueue + 50
	for i := range n {
		must(t, s.Put(ctx, "roles/c", []byte(strconv.Itoa(i))))
	}
	must(t, s.Delete(ctx, "roles/a"))
	gateOnce.Do(func() { close(gate) })
	wantView := map[string]string{"roles/b": "1", "roles/c": strconv.Itoa(n - 1)}
	deadline := time.Now().Add(Wait)
	for {
		mu.Lock()
		same, r := fmt.Sprint(view) == fmt.Sprint(wantView), resets
		got := fmt.Sprint(view)
		mu.Unlock()
		if same && r >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("followed view = %s after %d resets, want %v after at least 2", got, r, wantView)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// grant returns a lease revoked at cleanup.
func grant(t *testing.T, ctx context.Context, s store.Store, ttl time.Duration) store.Lease {
	t.Helper()
	l, err := s.Grant(ctx, ttl)
	must(t, err)
	if l.ID() == 0 || l.TTL() < ttl {
		t.Fatalf("lease ID %d TTL %s, want a non-zero ID and at least %s", l.ID(), l.TTL(), ttl)
	}
	t.Cleanup(func() { l.Revoke(context.Background()) })
	return l
}

func testLeaseRevoke(t *testing.T, h Harness) {
	s := open(t, h)
	p := peer(t, h, s)
	ctx := t.Context()
	l := grant(t, ctx, s, 30*time.Second)
	must(t, s.Put(ctx, "presence/dev1", []byte("replica-a"), store.WithLease(l)))
	must(t, s.Create(ctx, "presence/dev2", []byte("replica-a"), store.WithLease(l)))
	must(t, s.Put(ctx, "presence/dev3", []byte("x")))
	must(t, s.CompareAndSwap(ctx, "presence/dev3", []byte("x"), []byte("replica-a"), store.WithLease(l)))
	must(t, s.Put(ctx, "presence/permanent", []byte("no lease")))
	items, err := p.List(ctx, "presence/")
	must(t, err)
	for _, it := range items {
		wantLease := l.ID()
		if it.Key == "presence/permanent" {
			wantLease = 0
		}
		if it.Lease != wantLease {
			t.Errorf("List: %s has lease %d, want %d", it.Key, it.Lease, wantLease)
		}
	}
	ch, err := p.Watch(ctx, "presence/", 0)
	must(t, err)
	must(t, l.Revoke(ctx))
	select {
	case <-l.Done():
	default:
		t.Error("Done not closed after Revoke returned")
	}
	for _, k := range []string{"presence/dev1", "presence/dev2", "presence/dev3"} {
		if _, err := p.Get(ctx, k); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("after Revoke Get(%s): err = %v, want ErrNotFound", k, err)
		}
	}
	if _, err := p.Get(ctx, "presence/permanent"); err != nil {
		t.Errorf("a key without the lease went with it: %v", err)
	}
	expect(t, ch, 0,
		want{store.EventDelete, "presence/dev1", ""},
		want{store.EventDelete, "presence/dev2", ""},
		want{store.EventDelete, "presence/dev3", ""},
		marker(t, s, "presence/zz"),
	)
	if err := s.Put(ctx, "presence/dev1", []byte("x"), store.WithLease(l)); !errors.Is(err, store.ErrNoLease) {
		t.Errorf("Put with a revoked lease: err = %v, want ErrNoLease", err)
	}
	if _, err := s.Get(ctx, "presence/dev1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the refused Put wrote anyway: err = %v", err)
	}
	must(t, l.Revoke(ctx)) // again: no error
}

// testLeaseLargerThanQueue ends a lease that holds more keys than a
// watcher's queue while the watcher reads nothing: the one revision that
// deletes them is delivered whole, with no resync (a replica's presence
// watch, when another replica's lease ends). Only a later revision is held
// to the queue's limit.
func testLeaseLargerThanQueue(t *testing.T, h Harness) {
	s := open(t, h)
	p := peer(t, h, s)
	ctx := t.Context()
	l := grant(t, ctx, s, 30*time.Second)
	n := 2*h.WatchQueue + 10
	ws := make([]want, n)
	for i := range n {
		k := fmt.Sprintf("presence/dev%05d", i)
		must(t, s.Put(ctx, k, []byte("replica-a"), store.WithLease(l)))
		ws[i] = want{store.EventDelete, k, ""}
	}
	ch, err := p.Watch(ctx, "presence/", 0)
	must(t, err)
	must(t, l.Revoke(ctx))
	expect(t, ch, 0, ws...)
	expect(t, ch, 0, marker(t, s, "presence/zz"))
	t.Logf("%d deletes in one revision reached a watcher whose queue holds %d", n, h.WatchQueue)
}

func testLeaseExpires(t *testing.T, h Harness) {
	s := open(t, h)
	p := peer(t, h, s)
	ctx := t.Context()
	owner, stop := context.WithCancel(ctx)
	l := grant(t, owner, s, time.Second)
	must(t, s.Put(ctx, "presence/dev1", []byte("replica-a"), store.WithLease(l)))
	ch, err := p.Watch(ctx, "presence/", 0)
	must(t, err)
	// Renewals run while the owner lives: the key outlives two TTLs.
	// (Waiting is the point here: the key must not go while renewed.)
	time.Sleep(2 * l.TTL())
	if _, err := p.Get(ctx, "presence/dev1"); err != nil {
		t.Fatalf("a renewed lease's key went: %v", err)
	}
	select {
	case <-l.Done():
		t.Fatal("Done closed while the owner renews")
	default:
	}
	stop()
	select {
	case <-l.Done():
	case <-time.After(Wait):
		t.Fatal("Done not closed after the owner's context ended")
	}
	stopped := time.Now()
	expect(t, ch, 0, want{store.EventDelete, "presence/dev1", ""})
	t.Logf("the key went %s after renewals stopped (TTL %s)", time.Since(stopped), l.TTL())
	if _, err := p.Get(ctx, "presence/dev1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("after expiry Get: err = %v, want ErrNotFound", err)
	}
}

func testLeaseDetach(t *testing.T, h Harness) {
	s := open(t, h)
	ctx := t.Context()
	l := grant(t, ctx, s, 30*time.Second)
	must(t, s.Put(ctx, "k", []byte("leased"), store.WithLease(l)))
	must(t, s.Put(ctx, "k", []byte("kept")))
	must(t, l.Revoke(ctx))
	v, err := s.Get(ctx, "k")
	if err != nil || string(v) != "kept" {
		t.Errorf("a key rewritten without the lease: Get = %q, %v; want it kept", v, err)
	}
}

func testLeaseUnknown(t *testing.T, h Harness) {
	s := open(t, h)
	ctx := t.Context()
	other := memstore.New()
	defer other.Close()
	ol, err := other.Grant(ctx, time.Minute)
	must(t, err)
	if err := s.Put(ctx, "k", []byte("v"), store.WithLease(ol)); !errors.Is(err, store.ErrNoLease) {
		t.Errorf("Put with another store's lease: err = %v, want ErrNoLease", err)
	}
	if _, err := s.Get(ctx, "k"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the refused Put wrote anyway: err = %v", err)
	}
}

func testGuards(t *testing.T, h Harness) {
	s := open(t, h)
	ctx := t.Context()
	must(t, s.Put(ctx, "leader", []byte("term-1")))
	must(t, s.Put(ctx, "k", []byte("0")))
	g1 := store.Guard{Key: "leader", Value: []byte("term-1")}
	g2 := store.Guard{Key: "leader", Value: []byte("term-2")}
	gone := store.Guard{Key: "no-such-key", Value: []byte("term-1")}
	tests := []struct {
		name  string
		write func(g store.Guard) error
		g     store.Guard
		want  error
	}{
		{"put holds", func(g store.Guard) error { return s.Put(ctx, "k", []byte("1"), store.If(g)) }, g1, nil},
		{"put other value", func(g store.Guard) error { return s.Put(ctx, "k", []byte("x"), store.If(g)) }, g2, store.ErrFenced},
		{"put missing key", func(g store.Guard) error { return s.Put(ctx, "k", []byte("x"), store.If(g)) }, gone, store.ErrFenced},
		{"create holds", func(g store.Guard) error { return s.Create(ctx, "c", []byte("1"), store.If(g)) }, g1, nil},
		{"create fails guard before exists", func(g store.Guard) error { return s.Create(ctx, "c", []byte("x"), store.If(g)) }, g2, store.ErrFenced},
		{"cas holds", func(g store.Guard) error {
			return s.CompareAndSwap(ctx, "k", []byte("1"), []byte("2"), store.If(g))
		}, g1, nil},
		{"cas fails guard before conflict", func(g store.Guard) error {
			return s.CompareAndSwap(ctx, "k", []byte("wrong"), []byte("x"), store.If(g))
		}, g2, store.ErrFenced},
		{"delete fails guard", func(g store.Guard) error { return s.Delete(ctx, "c", store.If(g)) }, g2, store.ErrFenced},
		{"delete fails guard before not found", func(g store.Guard) error { return s.Delete(ctx, "nothing", store.If(g)) }, gone, store.ErrFenced},
		{"guarded view holds", func(g store.Guard) error { return store.Guarded(s, g).Put(ctx, "v", []byte("1")) }, g1, nil},
		{"guarded view fails", func(g store.Guard) error { return store.Guarded(s, g).Delete(ctx, "v") }, g2, store.ErrFenced},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, err := s.List(ctx, "")
			must(t, err)
			err = tt.write(tt.g)
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
			if tt.want == nil {
				return
			}
			after, err := s.List(ctx, "")
			must(t, err)
			if fmt.Sprint(before) != fmt.Sprint(after) {
				t.Errorf("a fenced write changed the store: before %v, after %v", before, after)
			}
		})
	}
	want := map[string]string{"leader": "term-1", "k": "2", "c": "1", "v": "1"}
	for k, w := range want {
		if v, err := s.Get(ctx, k); err != nil || string(v) != w {
			t.Errorf("at the end %s = %q, %v; want %q", k, v, err, w)
		}
	}
	// Reads through a guarded view pass even when the guard fails.
	if v, err := store.Guarded(s, g2).Get(ctx, "k"); err != nil || string(v) != "2" {
		t.Errorf("read through a failing guard = %q, %v; want %q", v, err, "2")
	}
}

func testGuardRace(t *testing.T, h Harness) {
	s := open(t, h)
	p := peer(t, h, s)
	ctx := t.Context()
	must(t, s.Put(ctx, "leader", []byte("old")))
	must(t, s.Put(ctx, "counter", []byte("0")))
	fenced := store.Guarded(s, store.Guard{Key: "leader", Value: []byte("old")})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	started := make(chan struct{})
	var once sync.Once
	for range 4 {
		wg.Go(func() {
			for {
				err := increment(ctx, fenced, "counter")
				once.Do(func() { close(started) })
				if errors.Is(err, store.ErrFenced) {
					return
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	<-started
	// Another replica takes over while the old one keeps writing.
	must(t, p.Put(ctx, "leader", []byte("new")))
	at, err := p.Get(ctx, "counter")
	must(t, err)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	final, err := s.Get(ctx, "counter")
	must(t, err)
	if !bytes.Equal(at, final) || string(at) == "0" {
		t.Errorf("counter was %s when the guard changed and %s after the fenced writers stopped; want it unchanged (and above 0)", at, final)
	}
}

func testClosed(t *testing.T, h Harness) {
	s := h.New(t)
	ctx := t.Context()
	must(t, s.Put(ctx, "k", []byte("v")))
	must(t, s.Close())
	checks := map[string]error{}
	_, checks["get"] = s.Get(ctx, "k")
	checks["put"] = s.Put(ctx, "k", []byte("v"))
	checks["create"] = s.Create(ctx, "n", []byte("v"))
	checks["cas"] = s.CompareAndSwap(ctx, "k", []byte("v"), []byte("w"))
	checks["delete"] = s.Delete(ctx, "k")
	_, checks["list"] = s.List(ctx, "")
	_, _, checks["list revision"] = s.ListRevision(ctx, "")
	_, checks["watch"] = s.Watch(ctx, "", 0)
	_, checks["grant"] = s.Grant(ctx, time.Second)
	for name, err := range checks {
		if !errors.Is(err, store.ErrClosed) {
			t.Errorf("%s after Close: err = %v, want ErrClosed", name, err)
		}
	}
}
