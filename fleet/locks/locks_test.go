package locks

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/logtest"
)

// clock is a settable clock.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

type fixture struct {
	st   store.Store
	svc  *Service
	set  *Set
	clk  *clock
	dev  devices.Device
	mu   sync.Mutex
	seen []api.Lock // what OnLock was called with
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	clk := newClock()
	reg := &devices.Registry{Store: st, Now: clk.now}
	dev, err := reg.Register(context.Background(), devices.Device{Name: "pi-1"})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{st: st, clk: clk, dev: dev, svc: &Service{Store: st, Devices: reg, Now: clk.now}}
	f.set = &Set{Logger: logtest.Logger(t), Now: clk.now, OnLock: func(l api.Lock) {
		f.mu.Lock()
		f.seen = append(f.seen, l)
		f.mu.Unlock()
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.set.Follow(ctx, st) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Follow = %v, want context.Canceled", err)
		}
	})
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := f.set.WaitReady(wctx); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	return f
}

// waitSeen waits until OnLock has been called for lock id.
func (f *fixture) waitSeen(t *testing.T, id string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		f.mu.Lock()
		for _, l := range f.seen {
			if l.ID == id {
				f.mu.Unlock()
				return
			}
		}
		f.mu.Unlock()
		_, rev := f.set.List()
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		f.set.Wait(ctx, rev)
		cancel()
	}
	t.Fatalf("OnLock never saw lock %s", id)
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		req  api.LockRequest
		want string // in the error; "" for none
	}{
		{"user", api.LockRequest{Target: api.LockTarget{User: "alice"}}, ""},
		{"login with message and ttl", api.LockRequest{Target: api.LockTarget{Login: "root"}, Message: "maintenance", TTL: time.Hour}, ""},
		{"nothing", api.LockRequest{}, "exactly one"},
		{"two targets", api.LockRequest{Target: api.LockTarget{User: "alice", Role: "ops"}}, "exactly one"},
		{"space in name", api.LockRequest{Target: api.LockTarget{User: "al ice"}}, "not a name"},
		{"control in name", api.LockRequest{Target: api.LockTarget{Role: "ops\x1b"}}, "not a name"},
		{"long name", api.LockRequest{Target: api.LockTarget{User: strings.Repeat("a", maxName+1)}}, "not a name"},
		{"control in message", api.LockRequest{Target: api.LockTarget{User: "a"}, Message: "a\nb"}, "one line"},
		{"long message", api.LockRequest{Target: api.LockTarget{User: "a"}, Message: strings.Repeat("m", api.MaxLockMessage+1)}, "one line"},
		{"bad utf-8", api.LockRequest{Target: api.LockTarget{User: "a"}, Message: "\xff"}, "one line"},
		{"negative ttl", api.LockRequest{Target: api.LockTarget{User: "a"}, TTL: -time.Second}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(&tt.req)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want an error with %q", err, tt.want)
			}
			var in interface{ InvalidInput() bool }
			if !errors.As(err, &in) {
				t.Errorf("error %v is not marked as invalid input", err)
			}
		})
	}
}

func TestMatches(t *testing.T) {
	alice := Subject{User: "alice", Roles: []string{"ops", "dev"}, Login: "root", DeviceID: "d1"}
	tests := []struct {
		name string
		lock api.Lock
		subj Subject
		want bool
	}{
		{"user", api.Lock{Target: api.LockTarget{User: "alice"}}, alice, true},
		{"other user", api.Lock{Target: api.LockTarget{User: "bob"}}, alice, false},
		{"role held", api.Lock{Target: api.LockTarget{Role: "dev"}}, alice, true},
		{"role not held", api.Lock{Target: api.LockTarget{Role: "admin"}}, alice, false},
		{"login", api.Lock{Target: api.LockTarget{Login: "root"}}, alice, true},
		{"other login", api.Lock{Target: api.LockTarget{Login: "pi"}}, alice, false},
		{"device by ID", api.Lock{Target: api.LockTarget{Device: "pi-1"}, DeviceID: "d1"}, alice, true},
		{"other device", api.Lock{Target: api.LockTarget{Device: "pi-2"}, DeviceID: "d2"}, alice, false},
		{"device lock without ID", api.Lock{Target: api.LockTarget{Device: "pi-1"}}, Subject{}, false},
		{"user lock, no user", api.Lock{Target: api.LockTarget{User: "alice"}}, Subject{DeviceID: "d1"}, false},
		{"empty lock", api.Lock{}, alice, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Matches(&tt.lock, tt.subj); got != tt.want {
				t.Errorf("Matches = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestLockLifecycle writes locks through the service and checks the
// followed view: OnLock fires, Check refuses with the lock's reason,
// removal and expiry restore access, and the leader's Prune deletes only
// what expired.
func TestLockLifecycle(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	alice := Subject{User: "alice", Roles: []string{"access"}, Login: "root", DeviceID: f.dev.ID}

	if err := f.set.Check(alice); err != nil {
		t.Fatalf("Check before any lock = %v", err)
	}
	l, err := f.svc.Create(ctx, api.LockRequest{Target: api.LockTarget{User: "alice"}, Message: "laptop stolen"}, "admin:ops")
	if err != nil {
		t.Fatal(err)
	}
	f.waitSeen(t, l.ID)
	err = f.set.Check(alice)
	var locked *Locked
	if !errors.As(err, &locked) || locked.Lock.ID != l.ID {
		t.Fatalf("Check = %v, want the lock %s", err, l.ID)
	}
	if want := "locked (lock " + l.ID + ` on user "alice"): laptop stolen`; err.Error() != want {
		t.Errorf("reason %q, want %q", err.Error(), want)
	}
	if got := locked.AuditFields(); got["lock"] != l.ID || got["rule"] != "lock" {
		t.Errorf("audit fields %v, want the lock's ID and rule lock", got)
	}
	if err := f.set.Check(Subject{User: "bob"}); err != nil {
		t.Errorf("bob is locked too: %v", err)
	}

	// A device is locked by its ID; an unknown device is an error.
	dl, err := f.svc.Create(ctx, api.LockRequest{Target: api.LockTarget{Device: "pi-1"}, TTL: time.Hour}, "admin:ops")
	if err != nil {
		t.Fatal(err)
	}
	if dl.DeviceID != f.dev.ID || !dl.Expires.Equal(f.clk.now().Add(time.Hour)) {
		t.Errorf("device lock %+v, want device ID %s and expiry in 1h", dl, f.dev.ID)
	}
	if _, err := f.svc.Create(ctx, api.LockRequest{Target: api.LockTarget{Device: "nope"}}, "admin:ops"); err == nil || !strings.Contains(err.Error(), "no device named") {
		t.Errorf("lock of an unknown device: %v", err)
	}
	f.waitSeen(t, dl.ID)
	if err := f.set.Check(Subject{DeviceID: f.dev.ID}); err == nil {
		t.Errorf("the device is not locked")
	}
	list, _, err := f.svc.List(ctx)
	if err != nil || len(list) != 2 {
		t.Fatalf("List = %v, %v, want 2 locks", list, err)
	}

	// Removal lifts the user lock.
	if _, err := f.svc.Remove(ctx, l.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := f.svc.Remove(ctx, l.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second Remove = %v, want not found", err)
	}
	waitFor(t, func() bool { return f.set.Check(Subject{User: "alice"}) == nil })
	if err := f.set.Check(Subject{User: "alice"}); err != nil {
		t.Errorf("alice still locked after removal: %v", err)
	}

	// Expiry restores access before the leader deletes anything.
	gone, err := f.svc.Prune(ctx, f.st)
	if err != nil || len(gone) != 0 {
		t.Fatalf("Prune before expiry = %v, %v, want nothing", gone, err)
	}
	f.clk.advance(time.Hour)
	if err := f.set.Check(Subject{DeviceID: f.dev.ID}); err != nil {
		t.Errorf("device still locked after expiry: %v", err)
	}
	if list, _, _ := f.svc.List(ctx); len(list) != 0 {
		t.Errorf("List after expiry = %v, want none", list)
	}
	gone, err = f.svc.Prune(ctx, f.st)
	if err != nil || len(gone) != 1 || gone[0].ID != dl.ID {
		t.Fatalf("Prune = %v, %v, want the device lock", gone, err)
	}
	if _, err := f.st.Get(ctx, Prefix+dl.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("expired lock still stored: %v", err)
	}
}

// TestPruneFenced checks that a deposed leader deletes nothing.
func TestPruneFenced(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.svc.Create(ctx, api.LockRequest{Target: api.LockTarget{Role: "ops"}, TTL: time.Minute}, "admin"); err != nil {
		t.Fatal(err)
	}
	f.clk.advance(time.Hour)
	if err := f.st.Put(ctx, "leader/term", []byte("b")); err != nil {
		t.Fatal(err)
	}
	fenced := store.Guarded(f.st, store.Guard{Key: "leader/term", Value: []byte("a")})
	if _, err := f.svc.Prune(ctx, fenced); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("Prune through a lost term = %v, want ErrFenced", err)
	}
	items, _ := f.st.List(ctx, Prefix)
	if len(items) != 1 {
		t.Errorf("a deposed leader deleted locks: %d left, want 1", len(items))
	}
}

// TestSetSkipsMalformed checks that a bad entry in the store does not stop
// the view.
func TestSetSkipsMalformed(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if err := f.st.Put(ctx, Prefix+"bad", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	l, err := f.svc.Create(ctx, api.LockRequest{Target: api.LockTarget{Login: "root"}}, "admin")
	if err != nil {
		t.Fatal(err)
	}
	f.waitSeen(t, l.ID)
	if got, _ := f.set.List(); len(got) != 1 {
		t.Errorf("view %v, want the one good lock", got)
	}
	if err := f.set.Check(Subject{Login: "root"}); err == nil {
		t.Errorf("login root not locked")
	}
}

func TestNilSet(t *testing.T) {
	var s *Set
	if err := s.Check(Subject{User: "alice"}); err != nil {
		t.Errorf("nil Set Check = %v", err)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 30s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
