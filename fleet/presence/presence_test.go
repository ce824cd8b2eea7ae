package presence

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/tools/logtest"
)

// leaseStore hands out leases the test can end, as a partition from the
// store would: revoked (the store let the lease go) or cut (the replica
// gave up on renewing it, while the store still holds it and its keys).
// While refusing, it grants none.
type leaseStore struct {
	store.Store
	mu       sync.Mutex
	leases   []*cutLease
	refusing bool
}

// cutLease is a lease whose Done the test can close without ending it in
// the store.
type cutLease struct {
	store.Lease
	once sync.Once
	cutc chan struct{}
	done chan struct{}
}

func (l *cutLease) Done() <-chan struct{} { return l.done }

// cut closes Done, as a client that gave up on renewing the lease does;
// the store keeps the lease and its keys.
func (l *cutLease) cut() { l.once.Do(func() { close(l.cutc) }) }

func (s *leaseStore) Grant(ctx context.Context, ttl time.Duration) (store.Lease, error) {
	s.mu.Lock()
	refusing := s.refusing
	s.mu.Unlock()
	if refusing {
		return nil, errors.New("test: the store is cut off")
	}
	l, err := s.Store.Grant(ctx, ttl)
	if err != nil {
		return nil, err
	}
	cl := &cutLease{Lease: l, cutc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		select {
		case <-l.Done():
		case <-cl.cutc:
		}
		close(cl.done)
	}()
	s.mu.Lock()
	s.leases = append(s.leases, cl)
	s.mu.Unlock()
	return cl, nil
}

// refuse makes Grant fail (on) or work again.
func (s *leaseStore) refuse(on bool) {
	s.mu.Lock()
	s.refusing = on
	s.mu.Unlock()
}

// inner passes the store the leases it granted, not their wrappers.
func inner(opts []store.WriteOption) []store.WriteOption {
	var o store.WriteOptions
	for _, f := range opts {
		f(&o)
	}
	var out []store.WriteOption
	if cl, ok := o.Lease.(*cutLease); ok {
		out = append(out, store.WithLease(cl.Lease))
	} else if o.Lease != nil {
		out = append(out, store.WithLease(o.Lease))
	}
	for _, g := range o.Guards {
		out = append(out, store.If(g))
	}
	return out
}

func (s *leaseStore) Put(ctx context.Context, key string, v []byte, opts ...store.WriteOption) error {
	return s.Store.Put(ctx, key, v, inner(opts)...)
}

func (s *leaseStore) Create(ctx context.Context, key string, v []byte, opts ...store.WriteOption) error {
	return s.Store.Create(ctx, key, v, inner(opts)...)
}

func (s *leaseStore) CompareAndSwap(ctx context.Context, key string, old, next []byte, opts ...store.WriteOption) error {
	return s.Store.CompareAndSwap(ctx, key, old, next, inner(opts)...)
}

func (s *leaseStore) Delete(ctx context.Context, key string, opts ...store.WriteOption) error {
	return s.Store.Delete(ctx, key, inner(opts)...)
}

func (s *leaseStore) last() *cutLease {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leases[len(s.leases)-1]
}

func (s *leaseStore) lease(i int) *cutLease {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leases[i]
}

func (s *leaseStore) granted() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.leases)
}

// leaseOf returns the ID of the lease key is attached to in st.
func leaseOf(t *testing.T, st store.Store, key string) (int64, bool) {
	t.Helper()
	items, err := st.List(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range items {
		if it.Key == key {
			return it.Lease, true
		}
	}
	return 0, false
}

// start runs a registry for replica id on st until the test ends.
func start(t *testing.T, st store.Store, id string, onLost func()) *Registry {
	t.Helper()
	return startGrace(t, st, id, 0, onLost)
}

// startGrace is start with Config.Grace set to grace.
func startGrace(t *testing.T, st store.Store, id string, grace time.Duration, onLost func()) *Registry {
	t.Helper()
	r := New(Config{Store: st, Self: Replica{ID: id, Addr: id + ":3081"}, TTL: time.Second, Grace: grace, OnLost: onLost, Logger: logtest.Logger(t)})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := r.WaitReady(wctx); err != nil {
		t.Fatalf("replica %s not ready: %v", id, err)
	}
	return r
}

// eventually waits up to 30 s for cond.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestClaimMoveRelease(t *testing.T) {
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	a := start(t, st, "a", nil)
	b := start(t, st, "b", nil)
	ctx := context.Background()

	eventually(t, "each replica sees the other", func() bool {
		_, ab := a.Replica("b")
		_, ba := b.Replica("a")
		return ab && ba
	})
	if rep, _ := a.Replica("b"); rep.Addr != "b:3081" {
		t.Errorf("replica b's address on a = %q, want b:3081", rep.Addr)
	}

	var moves []string
	var mu sync.Mutex
	a.OnMove(func(id string, e Entry) {
		mu.Lock()
		moves = append(moves, id+"@"+e.Replica)
		mu.Unlock()
	})

	since := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	if err := a.Claim(ctx, "dev1", "10.0.0.7:4000", "", since); err != nil {
		t.Fatal(err)
	}
	if e, ok := a.Lookup("dev1"); !ok || e.Replica != "a" || e.Addr != "10.0.0.7:4000" || !e.Since.Equal(since) {
		t.Errorf("a.Lookup(dev1) = %+v, %v right after the claim, want on a from 10.0.0.7:4000", e, ok)
	}
	eventually(t, "b sees dev1 on a", func() bool { e, ok := b.Lookup("dev1"); return ok && e.Replica == "a" })

	// The device moves to b: b's claim replaces a's entry, with no gap.
	if err := b.Claim(ctx, "dev1", "10.0.0.7:5000", "", since.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a sees dev1 on b", func() bool { e, ok := a.Lookup("dev1"); return ok && e.Replica == "b" })
	mu.Lock()
	got := append([]string(nil), moves...)
	mu.Unlock()
	if len(got) == 0 || got[len(got)-1] != "dev1@b" {
		t.Errorf("a's move hooks saw %v, want dev1@b last", got)
	}

	// a's old connection ends: its release must not remove b's entry.
	elsewhere, err := a.Release(ctx, "dev1")
	if err != nil || !elsewhere {
		t.Errorf("a.Release(dev1) = %v, %v; want elsewhere, no error", elsewhere, err)
	}
	if e, ok := b.Lookup("dev1"); !ok || e.Replica != "b" {
		t.Errorf("after a's release, b.Lookup(dev1) = %+v, %v; want still on b", e, ok)
	}
	if _, err := st.Get(ctx, devicesPrefix+"dev1"); err != nil {
		t.Errorf("dev1's entry after a's release: %v, want b's entry kept", err)
	}

	// b's connection ends: the device is offline everywhere.
	if elsewhere, err := b.Release(ctx, "dev1"); err != nil || elsewhere {
		t.Errorf("b.Release(dev1) = %v, %v; want not elsewhere, no error", elsewhere, err)
	}
	eventually(t, "dev1 offline on a", func() bool { return !a.Online("dev1") })
	if b.Online("dev1") || b.Count() != 0 {
		t.Errorf("b: dev1 online %v, count %d after release; want offline, 0", b.Online("dev1"), b.Count())
	}
}

// TestDeadReplicaVanishes: a replica that stops renewing (its process
// died) loses its entries within the lease's TTL.
func TestDeadReplicaVanishes(t *testing.T) {
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	a := start(t, st, "a", nil)
	ctx := context.Background()

	b := New(Config{Store: st, Self: Replica{ID: "b", Addr: "b:3081"}, TTL: time.Second})
	bctx, bcancel := context.WithCancel(context.Background())
	bdone := make(chan struct{})
	go func() {
		defer close(bdone)
		b.Run(bctx)
	}()
	if err := b.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"d1", "d2", "d3"} {
		if err := b.Claim(ctx, id, "", "", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "a sees b's three devices", func() bool { return a.Count() == 3 })
	bcancel()
	<-bdone
	eventually(t, "b and its devices vanish", func() bool {
		_, ok := a.Replica("b")
		return !ok && a.Count() == 0
	})
	if err := b.Claim(ctx, "d4", "", "", time.Now()); !errors.Is(err, ErrNotReady) {
		t.Errorf("a claim after Run returned: %v, want ErrNotReady", err)
	}
}

// TestLeaseLost: a replica whose lease ends under it (cut off from the
// store) and that cannot register again within the grace is told (so that
// it ends its tunnels), is not ready meanwhile, refuses claims, and
// registers again with a new lease once the store answers, without
// writing again the entries it gave up.
func TestLeaseLost(t *testing.T) {
	ls := &leaseStore{Store: memstore.New()}
	t.Cleanup(func() { ls.Close() })
	lost := make(chan struct{}, 4)
	a := startGrace(t, ls, "a", 200*time.Millisecond, func() { lost <- struct{}{} })
	ctx := context.Background()
	if err := a.Claim(ctx, "dev1", "", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	first := ls.last()
	ls.refuse(true)
	if err := first.Revoke(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a not ready", func() bool { return !a.Ready() })
	if err := a.Claim(ctx, "dev2", "", "", time.Now()); !errors.Is(err, ErrNotReady) {
		t.Errorf("claim without a lease: %v, want ErrNotReady", err)
	}
	select {
	case <-lost:
	case <-time.After(30 * time.Second):
		t.Fatal("OnLost was not called after the grace")
	}
	if a.Ready() {
		t.Error("a ready without a lease")
	}
	ls.refuse(false)
	eventually(t, "a new lease", func() bool { return ls.granted() >= 2 && a.Ready() })
	if _, err := ls.Get(ctx, replicasPrefix+"a"); err != nil {
		t.Errorf("replica a after its new lease: %v, want registered again", err)
	}
	// The entry given up is not written again: nothing here writes after
	// registering, so it is absent now and stays so.
	if _, err := ls.Get(ctx, devicesPrefix+"dev1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("dev1's entry after the grace and a new lease: %v, want gone", err)
	}
	if err := a.Claim(ctx, "dev1", "", "", time.Now()); err != nil {
		t.Errorf("claim with the new lease: %v", err)
	}
	select {
	case <-lost:
		t.Error("OnLost called twice")
	default:
	}
}

// TestLeaseRegainedWithinGrace: a replica whose lease ends and that
// registers again within the grace keeps its devices: their entries are
// written again under the new lease, and OnLost is not called. A device
// that connected to another replica meanwhile stays there; one released
// meanwhile is not written again; an entry the store still held under the
// old lease moves to the new one, and outlives the old lease's end.
func TestLeaseRegainedWithinGrace(t *testing.T) {
	for _, how := range []string{"revoked", "cut"} {
		t.Run(how, func(t *testing.T) {
			ls := &leaseStore{Store: memstore.New()}
			t.Cleanup(func() { ls.Close() })
			lost := make(chan struct{}, 1)
			a := startGrace(t, ls, "a", time.Hour, func() { lost <- struct{}{} })
			b := start(t, ls, "b", nil)
			ctx := context.Background()
			for _, id := range []string{"dev1", "dev2", "dev3", "dev4"} {
				if err := a.Claim(ctx, id, "10.0.0.1:4000", "boot-"+id, time.Now()); err != nil {
					t.Fatal(err)
				}
			}
			old := ls.lease(0)
			ls.refuse(true)
			if how == "revoked" {
				if err := old.Revoke(ctx); err != nil {
					t.Fatal(err)
				}
			} else {
				old.cut()
			}
			eventually(t, "a not ready", func() bool { return !a.Ready() })
			// Meanwhile dev2 connects to b, and dev3's tunnel on a ends.
			if err := b.Claim(ctx, "dev2", "10.0.0.2:4000", "boot-dev2", time.Now()); err != nil {
				t.Fatal(err)
			}
			if _, err := a.Release(ctx, "dev3"); err != nil {
				t.Fatal(err)
			}
			ls.refuse(false)
			eventually(t, "a registered again, with dev1 and dev4 under its new lease", func() bool {
				if !a.Ready() {
					return false
				}
				newID := ls.last().ID()
				l1, ok1 := leaseOf(t, ls, devicesPrefix+"dev1")
				l4, ok4 := leaseOf(t, ls, devicesPrefix+"dev4")
				return ok1 && ok4 && l1 == newID && l4 == newID
			})
			if e, ok := b.Lookup("dev2"); !ok || e.Replica != "b" {
				t.Errorf("dev2 = %+v, %v; want still on b", e, ok)
			}
			if _, ok := leaseOf(t, ls, devicesPrefix+"dev3"); ok {
				t.Error("dev3, released while a had no lease, was written again")
			}
			for _, id := range []string{"dev1", "dev4"} {
				eventually(t, "b sees "+id+" on a", func() bool { e, ok := b.Lookup(id); return ok && e.Replica == "a" && e.Boot == "boot-"+id })
				if e, ok := a.Lookup(id); !ok || e.Replica != "a" {
					t.Errorf("a.Lookup(%s) = %+v, %v", id, e, ok)
				}
			}
			if how == "cut" {
				// The old lease ends in the store now: what moved to the
				// new one stays.
				if err := old.Revoke(ctx); err != nil {
					t.Fatal(err)
				}
				if _, err := ls.Get(ctx, devicesPrefix+"dev1"); err != nil {
					t.Errorf("dev1 after the old lease ended: %v", err)
				}
			}
			// a's release of dev2 (its old tunnel ending) leaves b's entry.
			if elsewhere, err := a.Release(ctx, "dev2"); err != nil || !elsewhere {
				t.Errorf("a.Release(dev2) = %v, %v; want elsewhere", elsewhere, err)
			}
			select {
			case <-lost:
				t.Error("OnLost called though a registered again within the grace")
			default:
			}
		})
	}
}

func TestMalformedEntriesIgnored(t *testing.T) {
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	for k, v := range map[string]string{
		devicesPrefix + "bad-json":   "{",
		devicesPrefix + "no-replica": `{"a":"x"}`,
		replicasPrefix + "no-id":     `{"addr":"x:1"}`,
		devicesPrefix + "good":       `{"r":"z","s":"2026-01-01T00:00:00Z"}`,
	} {
		if err := st.Put(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	a := start(t, st, "a", nil)
	if a.Online("bad-json") || a.Online("no-replica") {
		t.Error("a malformed entry counts as online")
	}
	if e, ok := a.Lookup("good"); !ok || e.Replica != "z" {
		t.Errorf("Lookup(good) = %+v, %v", e, ok)
	}
	if _, ok := a.Replica("no-id"); ok {
		t.Error("a replica entry without an ID was taken")
	}
}

// TestOnBoot: a replica hears of each new agent boot of a device, on
// whichever replica it connects, and not of a move with the same boot.
func TestOnBoot(t *testing.T) {
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	a := start(t, st, "a", nil)
	b := start(t, st, "b", nil)
	ctx := context.Background()
	var mu sync.Mutex
	var boots []string
	a.OnBoot(func(id, boot string) {
		mu.Lock()
		boots = append(boots, id+":"+boot)
		mu.Unlock()
	})
	seen := func() string {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(boots, ",")
	}
	for _, step := range []struct {
		on   *Registry
		boot string
		want string
	}{
		{b, "boot-1", "dev1:boot-1"},
		{b, "boot-2", "dev1:boot-1,dev1:boot-2"}, // the agent restarted, on b
		{a, "boot-2", "dev1:boot-1,dev1:boot-2"}, // it moved to a: no new boot
		{b, "boot-3", "dev1:boot-1,dev1:boot-2,dev1:boot-3"},
	} {
		if err := step.on.Claim(ctx, "dev1", "10.0.0.7:4000", step.boot, time.Now()); err != nil {
			t.Fatal(err)
		}
		eventually(t, "a sees dev1 on "+step.on.Self().ID+" with "+step.boot, func() bool {
			e, ok := a.Lookup("dev1")
			return ok && e.Replica == step.on.Self().ID && e.Boot == step.boot
		})
		// The hooks run just after the view changes. A hook that should
		// not have run shows at the next step, or the last check.
		eventually(t, "a's boot hooks saw "+step.want, func() bool { return seen() == step.want })
	}
}

// TestMark: a device silent on its replica is offline on every replica
// until it is heard again; a mark for a replaced or released tunnel, or
// one that has moved to another replica, writes nothing.
func TestMark(t *testing.T) {
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	a := start(t, st, "a", nil)
	b := start(t, st, "b", nil)
	ctx := context.Background()
	since := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	if err := a.Claim(ctx, "dev1", "10.0.0.7:4000", "boot-1", since); err != nil {
		t.Fatal(err)
	}
	eventually(t, "b sees dev1 online", func() bool { return b.Online("dev1") && b.Count() == 1 })
	steps := []struct {
		name       string
		since      time.Time
		silent     bool
		wantOnline bool
	}{
		{"silent", since, true, false},
		{"heard again", since, false, true},
		{"a mark for an older connection", since.Add(-time.Minute), true, true},
	}
	for _, s := range steps {
		if err := a.Mark(ctx, "dev1", s.since, s.silent); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		for _, r := range []*Registry{a, b} {
			eventually(t, s.name+": "+r.Self().ID+" shows dev1 online="+map[bool]string{true: "yes", false: "no"}[s.wantOnline], func() bool {
				e, ok := r.Lookup("dev1")
				return ok && r.Online("dev1") == s.wantOnline && e.Silent == !s.wantOnline && e.Boot == "boot-1" &&
					(r.Count() == 1) == s.wantOnline
			})
		}
	}
	// dev1 moves to b: a's mark does not touch b's entry.
	if err := b.Claim(ctx, "dev1", "10.0.0.8:4000", "boot-1", since.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a sees dev1 on b", func() bool { e, ok := a.Lookup("dev1"); return ok && e.Replica == "b" })
	if err := a.Mark(ctx, "dev1", since, true); err != nil {
		t.Fatal(err)
	}
	if v, err := st.Get(ctx, devicesPrefix+"dev1"); err != nil || !strings.Contains(string(v), `"r":"b"`) || strings.Contains(string(v), `"q":true`) {
		t.Fatalf("after a's mark, the store holds %s (%v), want b's entry, not silent", v, err)
	}
	if err := b.Mark(ctx, "dev1", since.Add(time.Hour), true); err != nil {
		t.Fatal(err)
	}
	eventually(t, "dev1 silent on b", func() bool { return !a.Online("dev1") })
	if e, _ := b.Lookup("dev1"); e.Replica != "b" || e.Addr != "10.0.0.8:4000" || !e.Silent {
		t.Errorf("b's entry %+v, want b's, silent", e)
	}
}

// TestClaimGuarded: a claim made under a guard records the tunnel while
// the guard holds, and records nothing (store.ErrFenced, the entry left
// as it was, the registry's own picture unchanged) once it does not.
func TestClaimGuarded(t *testing.T) {
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	a := start(t, st, "a", nil)
	ctx := context.Background()
	if err := st.Put(ctx, "devices/dev1", []byte(`{"v":1}`)); err != nil {
		t.Fatal(err)
	}
	holds := store.If(store.Guard{Key: "devices/dev1", Value: []byte(`{"v":1}`)})
	if err := a.Claim(ctx, "dev1", "10.0.0.7:4000", "", time.Now(), holds); err != nil {
		t.Fatalf("claim under a guard that holds: %v", err)
	}
	if e, ok := a.Lookup("dev1"); !ok || e.Addr != "10.0.0.7:4000" {
		t.Fatalf("after the guarded claim: %+v, %v", e, ok)
	}
	for _, tt := range []struct {
		name string
		prep func() error
	}{
		{"the record changed", func() error { return st.Put(ctx, "devices/dev2", []byte(`{"v":2}`)) }},
		{"the record is gone", func() error { return st.Delete(ctx, "devices/dev2") }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := st.Put(ctx, "devices/dev2", []byte(`{"v":1}`)); err != nil {
				t.Fatal(err)
			}
			if err := tt.prep(); err != nil {
				t.Fatal(err)
			}
			g := store.If(store.Guard{Key: "devices/dev2", Value: []byte(`{"v":1}`)})
			if err := a.Claim(ctx, "dev2", "10.0.0.8:4000", "", time.Now(), g); !errors.Is(err, store.ErrFenced) {
				t.Fatalf("claim under a guard that does not hold: %v, want store.ErrFenced", err)
			}
			if _, err := st.Get(ctx, devicesPrefix+"dev2"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("dev2's presence entry: %v, want none", err)
			}
			if e, ok := a.Lookup("dev2"); ok {
				t.Errorf("the registry shows dev2 at %+v, want nowhere", e)
			}
		})
	}
}
