package devices

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/memstore"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newRegistry(t *testing.T) (*Registry, *memstore.Store) {
	t.Helper()
	s := memstore.New()
	t.Cleanup(func() { s.Close() })
	return &Registry{Store: s, Now: func() time.Time { return t0 }}, s
}

func TestCheckName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"pi-1", true},
		{"a", true},
		{"0", true},
		{strings.Repeat("a", 63), true},
		{strings.Repeat("a", 64), false},
		{"", false},
		{"-pi", false},
		{"pi-", false},
		{"Pi", false},
		{"pi_1", false},
		{"pi.1", false},
		{"pi 1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CheckName(tt.name) == nil; got != tt.ok {
				t.Errorf("CheckName(%q) ok = %v, want %v", tt.name, got, tt.ok)
			}
		})
	}
}

func TestCheckLabels(t *testing.T) {
	many := map[string]string{}
	for i := range MaxLabels + 1 {
		many[fmt.Sprint("k", i)] = "v"
	}
	tests := []struct {
		name   string
		labels map[string]string
		ok     bool
	}{
		{"none", nil, true},
		{"simple", map[string]string{"site": "north", "hw": "rpi4"}, true},
		{"prefixed key", map[string]string{"remoteler.dev/arch": "arm64"}, true},
		{"value punctuation", map[string]string{"owner": "ops@acme", "v": "1.2.3+x:y"}, true},
		{"star key", map[string]string{"*": "x"}, false},
		{"star value", map[string]string{"env": "*"}, false},
		{"empty value", map[string]string{"env": ""}, false},
		{"empty key", map[string]string{"": "x"}, false},
		{"space in value", map[string]string{"site": "building 4"}, false},
		{"long value", map[string]string{"k": strings.Repeat("v", 64)}, false},
		{"too many", many, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CheckLabels(tt.labels) == nil; got != tt.ok {
				t.Errorf("CheckLabels(%v) ok = %v, want %v (%v)", tt.labels, got, tt.ok, CheckLabels(tt.labels))
			}
		})
	}
}

func TestRegisterGetByNameList(t *testing.T) {
	ctx := context.Background()
	r, _ := newRegistry(t)
	d, err := r.Register(ctx, Device{ID: "ignored", Name: "pi-1", Labels: map[string]string{"site": "north"}, OS: "linux", Arch: "arm64"})
	if err != nil {
		t.Fatal(err)
	}
	if d.ID == "ignored" || len(d.ID) != 32 {
		t.Errorf("got ID %q, want 32 new hex digits", d.ID)
	}
	if !d.JoinedAt.Equal(t0) || !d.LastSeen.Equal(t0) {
		t.Errorf("got joined %v last seen %v, want both %v", d.JoinedAt, d.LastSeen, t0)
	}
	byID, err := r.Get(ctx, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	byName, err := r.ByName(ctx, "pi-1")
	if err != nil {
		t.Fatal(err)
	}
	if byID.ID != d.ID || byName.ID != d.ID || byName.Labels["site"] != "north" || byName.Arch != "arm64" {
		t.Errorf("got %+v and %+v, want %+v", byID, byName, d)
	}
	if _, err := r.Register(ctx, Device{Name: "pi-2"}); err != nil {
		t.Fatal(err)
	}
	list, err := r.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Errorf("got %d devices, want 2", len(list))
	}
}

func TestRegisterRefuses(t *testing.T) {
	ctx := context.Background()
	r, _ := newRegistry(t)
	if _, err := r.Register(ctx, Device{Name: "pi-1"}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		dev     Device
		wantErr string
		is      error
	}{
		{"taken", Device{Name: "pi-1"}, "fleetctl devices rm pi-1", ErrNameTaken},
		{"bad name", Device{Name: "Pi_1"}, "device name", nil},
		{"bad labels", Device{Name: "pi-2", Labels: map[string]string{"env": "*"}}, "label", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := r.Register(ctx, tt.dev)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("got %v, want it to match %v", err, tt.is)
			}
		})
	}
	list, _ := r.List(ctx)
	if len(list) != 1 {
		t.Errorf("got %d devices after refusals, want 1 (refused registrations must not leave records)", len(list))
	}
}

func TestConcurrentRegisterSameName(t *testing.T) {
	ctx := context.Background()
	r, _ := newRegistry(t)
	const n = 20
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { _, errs[i] = r.Register(ctx, Device{Name: "pi-1"}) })
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ErrNameTaken):
			t.Errorf("got %v, want nil or ErrNameTaken", err)
		}
	}
	if ok != 1 {
		t.Errorf("got %d successful registrations, want 1", ok)
	}
	list, _ := r.List(ctx)
	if len(list) != 1 {
		t.Errorf("got %d devices, want 1", len(list))
	}
}

func TestDelete(t *testing.T) {
	ctx := context.Background()
	r, s := newRegistry(t)
	d, err := r.Register(ctx, Device{Name: "pi-1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Delete(ctx, d.Name); !errors.Is(err, ErrNotFound) {
		t.Errorf("Delete by name: got %v, want ErrNotFound (Delete takes an ID only)", err)
	}
	got, err := r.Delete(ctx, d.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != d.ID {
		t.Errorf("deleted %q, want %q", got.ID, d.ID)
	}
	if _, err := r.Get(ctx, d.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after delete: got %v, want ErrNotFound", err)
	}
	if items, _ := s.List(ctx, ""); len(items) != 0 {
		t.Errorf("store still holds %v after delete", items)
	}
	if _, err := r.Register(ctx, Device{Name: "pi-1"}); err != nil {
		t.Errorf("Register after delete: %v, want the name to be free", err)
	}
	if _, err := r.Delete(ctx, "nope"); !errors.Is(err, ErrNotFound) || !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Delete unknown: got %v, want ErrNotFound", err)
	}
}

// TestDeleteIgnoresADecoyNamedAfterTheID: a device named after another
// device's ID (possible in stores written before CheckName refused such
// names) cannot divert the removal of that device onto itself.
func TestDeleteIgnoresADecoyNamedAfterTheID(t *testing.T) {
	ctx := context.Background()
	r, s := newRegistry(t)
	real, err := r.Register(ctx, Device{Name: "pi-1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Register(ctx, Device{Name: real.ID}); err == nil {
		t.Fatalf("a device named %s (pi-1's ID) was registered", real.ID)
	}
	// Plant the decoy as an older fleet would have stored it.
	decoy := Device{ID: strings.Repeat("d", 32), Name: real.ID}
	b, _ := json.Marshal(decoy)
	if err := s.Create(ctx, devicePrefix+decoy.ID, b); err != nil {
		t.Fatal(err)
	}
	if err := s.Create(ctx, namePrefix+decoy.Name, []byte(decoy.ID)); err != nil {
		t.Fatal(err)
	}
	got, err := r.Delete(ctx, real.ID)
	if err != nil || got.ID != real.ID {
		t.Fatalf("Delete(%s) = %+v, %v; want pi-1 removed", real.ID, got, err)
	}
	if _, err := r.Get(ctx, real.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("pi-1 is still registered after its removal: %v", err)
	}
	if _, err := r.Get(ctx, decoy.ID); err != nil {
		t.Errorf("the decoy was removed instead: %v", err)
	}
	if _, err := r.ByName(ctx, "pi-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("pi-1's name still resolves: %v", err)
	}
}

func TestCheckNameRefusesIDs(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"pi-1", true},
		{"0123456789abcdef0123456789abcdef", false},
		{"0123456789abcdef0123456789abcde", true},   // 31 digits: not an ID
		{"0123456789abcdef0123456789abcdef0", true}, // 33
		{"0123456789abcdef0123456789abcdeg", true},  // not hex
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := CheckName(tt.name); (err == nil) != tt.ok {
				t.Errorf("CheckName(%q) = %v, want ok %v", tt.name, err, tt.ok)
			}
		})
	}
}

func TestStaleNameIsReclaimed(t *testing.T) {
	ctx := context.Background()
	r, s := newRegistry(t)
	d, err := r.Register(ctx, Device{Name: "pi-1"})
	if err != nil {
		t.Fatal(err)
	}
	// Simulate a device record lost without its name entry.
	if err := s.Delete(ctx, devicePrefix+d.ID); err != nil {
		t.Fatal(err)
	}
	d2, err := r.Register(ctx, Device{Name: "pi-1"})
	if err != nil {
		t.Fatalf("Register over a stale name: %v", err)
	}
	got, err := r.ByName(ctx, "pi-1")
	if err != nil || got.ID != d2.ID {
		t.Errorf("ByName = %q, %v; want %q", got.ID, err, d2.ID)
	}
}

func TestUpdate(t *testing.T) {
	ctx := context.Background()
	r, _ := newRegistry(t)
	d, err := r.Register(ctx, Device{Name: "pi-1"})
	if err != nil {
		t.Fatal(err)
	}
	later := t0.Add(time.Hour)
	tests := []struct {
		name    string
		fn      func(*Device) error
		wantErr string
	}{
		{"last seen and version", func(d *Device) error { d.LastSeen = later; d.AgentVersion = "1.2.0"; return nil }, ""},
		{"labels", func(d *Device) error { d.Labels = map[string]string{"site": "south"}; return nil }, ""},
		{"bad labels", func(d *Device) error { d.Labels = map[string]string{"site": ""}; return nil }, "label"},
		{"rename", func(d *Device) error { d.Name = "pi-2"; return nil }, "cannot change"},
		{"fn error", func(d *Device) error { return errors.New("nope") }, "nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := r.Update(ctx, d.ID, tt.fn)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("got %v, want no error", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
			}
		})
	}
	got, _ := r.Get(ctx, d.ID)
	if !got.LastSeen.Equal(later) || got.AgentVersion != "1.2.0" || got.Labels["site"] != "south" || got.Name != "pi-1" {
		t.Errorf("got %+v after updates", got)
	}
	if _, err := r.Update(ctx, "0123456789abcdef0123456789abcdef", func(*Device) error { return nil }); !errors.Is(err, ErrNotFound) {
		t.Errorf("Update unknown: got %v, want ErrNotFound", err)
	}
}

func TestConcurrentUpdate(t *testing.T) {
	ctx := context.Background()
	r, _ := newRegistry(t)
	d, err := r.Register(ctx, Device{Name: "pi-1"})
	if err != nil {
		t.Fatal(err)
	}
	const n = 10
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, err := r.Update(ctx, d.ID, func(d *Device) error {
				if d.Labels == nil {
					d.Labels = map[string]string{}
				}
				d.Labels[fmt.Sprint("k", i)] = "v"
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	got, _ := r.Get(ctx, d.ID)
	if len(got.Labels) != n {
		t.Errorf("got %d labels, want %d: a concurrent update was lost", len(got.Labels), n)
	}
}

// TestFollow: a follower gets the registry listed, then every register,
// update and removal, decoded.
func TestFollow(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	r := &Registry{Store: memstore.New()}
	first, err := r.Register(ctx, Device{Name: "pi-1"})
	if err != nil {
		t.Fatal(err)
	}
	type change struct {
		id   string
		name string // "" for a removal
	}
	resets := make(chan []Device, 4)
	changes := make(chan change, 16)
	done := make(chan error, 1)
	go func() {
		done <- r.Follow(ctx, Follower{
			Reset: func(all []Device) { resets <- all },
			Apply: func(id string, d *Device) {
				c := change{id: id}
				if d != nil {
					c.name = d.Name
				}
				changes <- c
			},
		})
	}()
	next := func() change {
		t.Helper()
		select {
		case c := <-changes:
			return c
		case <-time.After(30 * time.Second):
			t.Fatal("no change in 30s")
			return change{}
		}
	}
	if all := <-resets; len(all) != 1 || all[0].ID != first.ID {
		t.Fatalf("listed %+v, want pi-1", all)
	}
	second, err := r.Register(ctx, Device{Name: "pi-2"})
	if err != nil {
		t.Fatal(err)
	}
	if c := next(); c != (change{second.ID, "pi-2"}) {
		t.Errorf("after a register: %+v", c)
	}
	if _, err := r.Update(ctx, first.ID, func(d *Device) error { d.AgentVersion = "v2"; return nil }); err != nil {
		t.Fatal(err)
	}
	if c := next(); c != (change{first.ID, "pi-1"}) {
		t.Errorf("after an update: %+v", c)
	}
	if _, err := r.Delete(ctx, second.ID); err != nil {
		t.Fatal(err)
	}
	if c := next(); c != (change{second.ID, ""}) {
		t.Errorf("after a removal: %+v", c)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Follow returned %v, want the context's error", err)
	}
}

// countingStore counts the reads and swaps made through it.
type countingStore struct {
	store.Store
	mu          sync.Mutex
	gets, swaps int
}

func (s *countingStore) Get(ctx context.Context, key string) ([]byte, error) {
	s.mu.Lock()
	s.gets++
	s.mu.Unlock()
	return s.Store.Get(ctx, key)
}

func (s *countingStore) CompareAndSwap(ctx context.Context, key string, old, next []byte, opts ...store.WriteOption) error {
	s.mu.Lock()
	s.swaps++
	s.mu.Unlock()
	return s.Store.CompareAndSwap(ctx, key, old, next, opts...)
}

func (s *countingStore) counts() (gets, swaps int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, w := s.gets, s.swaps
	s.gets, s.swaps = 0, 0
	return g, w
}

// TestUpdateFromFollowed: while Follow runs, an update starts from the
// followed record: one swap, no read. A followed copy that is out of date
// (another replica wrote the record) costs one failed swap and a read,
// and loses nothing; fn's refusal on the copy is checked on a fresh read;
// a removed device is not found. Guard holds exactly while the record is
// as last seen. Without Follow, every update reads first, as before.
func TestUpdateFromFollowed(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mem := memstore.New()
	t.Cleanup(func() { mem.Close() })
	cs := &countingStore{Store: mem}
	r := &Registry{Store: cs, Copies: true}
	other := &Registry{Store: mem} // another replica, not following
	d, err := r.Register(ctx, Device{Name: "pi-1"})
	if err != nil {
		t.Fatal(err)
	}
	gone, err := r.Register(ctx, Device{Name: "pi-2"})
	if err != nil {
		t.Fatal(err)
	}
	blocker, err := r.Register(ctx, Device{Name: "pi-3"})
	if err != nil {
		t.Fatal(err)
	}
	gate := make(chan struct{}, 1) // full: the follower stops after its next change
	setVersion := func(v string) func(*Device) error {
		return func(d *Device) error { d.AgentVersion = v; return nil }
	}

	// Not following: a read and a swap, and no guard.
	cs.counts()
	if _, err := r.Update(ctx, d.ID, setVersion("v1")); err != nil {
		t.Fatal(err)
	}
	if g, w := cs.counts(); g != 1 || w != 1 {
		t.Errorf("update without Follow: %d reads, %d swaps; want 1 and 1", g, w)
	}
	if _, ok := r.Guard(d.ID); ok {
		t.Error("Guard without Follow: got a guard, want none")
	}

	// Following: wait for the list, then for the watch to bring each change.
	applied := make(chan string, 16)
	listed := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- r.Follow(ctx, Follower{
			Reset: func([]Device) { close(listed) },
			Apply: func(id string, d *Device) {
				v := ""
				if d != nil {
					v = d.AgentVersion
				}
				applied <- id + " " + v
				gate <- struct{}{}
				<-gate
			},
		})
	}()
	<-listed
	await := func(want string) {
		t.Helper()
		for {
			select {
			case got := <-applied:
				if got == want {
					return
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("the watch did not bring %q in 30 s", want)
			}
		}
	}
	cs.counts()
	if _, err := r.Update(ctx, d.ID, setVersion("v2")); err != nil {
		t.Fatal(err)
	}
	if g, w := cs.counts(); g != 0 || w != 1 {
		t.Errorf("update of a followed record: %d reads, %d swaps; want 0 and 1", g, w)
	}
	await(d.ID + " v2")
	g, ok := r.Guard(d.ID)
	if !ok {
		t.Fatal("Guard while following: none")
	}
	if err := mem.Put(ctx, "probe", []byte("x"), store.If(g)); err != nil {
		t.Errorf("a write under the guard of a current record: %v", err)
	}

	// Another replica changes the record: the copy is out of date until
	// the watch brings the change. Update must not lose that change.
	if _, err := other.Update(ctx, d.ID, func(d *Device) error { d.OS = "linux"; return nil }); err != nil {
		t.Fatal(err)
	}
	if err := mem.Put(ctx, "probe", []byte("x"), store.If(g)); !errors.Is(err, store.ErrFenced) {
		t.Errorf("a write under the guard of a changed record: %v, want ErrFenced", err)
	}
	cs.counts()
	got, err := r.Update(ctx, d.ID, setVersion("v3"))
	if err != nil {
		t.Fatal(err)
	}
	if got.OS != "linux" || got.AgentVersion != "v3" {
		t.Errorf("update over another replica's change: %+v, want both changes", got)
	}
	if stored, _ := other.Get(ctx, d.ID); stored.OS != "linux" || stored.AgentVersion != "v3" {
		t.Errorf("stored after the update: %+v, want both changes", stored)
	}
	await(d.ID + " v3")

	// fn refuses on the copy but not on the fresh record: the fresh one
	// wins. The copy is kept out of date by holding the follower on an
	// earlier change (to pi-3) until the update is done.
	gate <- struct{}{}
	if _, err := other.Update(ctx, blocker.ID, setVersion("hold")); err != nil {
		t.Fatal(err)
	}
	await(blocker.ID + " hold")
	if _, err := other.Update(ctx, d.ID, func(d *Device) error { d.Arch = "arm64"; return nil }); err != nil {
		t.Fatal(err)
	}
	refused := errors.New("not arm64")
	calls := 0
	_, err = r.Update(ctx, d.ID, func(d *Device) error {
		calls++
		if d.Arch != "arm64" {
			return refused
		}
		d.AgentVersion = "v4"
		return nil
	})
	if err != nil || calls != 2 {
		t.Errorf("fn refusing only the stale copy: err %v after %d calls, want success after 2", err, calls)
	}
	<-gate
	// And a refusal on the fresh record too is returned.
	if _, err := r.Update(ctx, d.ID, func(*Device) error { return refused }); !errors.Is(err, refused) {
		t.Errorf("fn refusing: %v, want its error", err)
	}

	// A device removed by another replica: not found, copy or not.
	if _, ok := r.Guard(gone.ID); !ok {
		t.Fatal("no copy of pi-2 while following")
	}
	if _, err := other.Delete(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Update(ctx, gone.ID, setVersion("v9")); !errors.Is(err, ErrNotFound) {
		t.Errorf("update of a removed device: %v, want ErrNotFound", err)
	}
	if _, ok := r.Guard(gone.ID); ok {
		t.Error("Guard of a removed device: got one, want none")
	}

	cancel()
	<-done
	if _, ok := r.Guard(d.ID); ok {
		t.Error("Guard after Follow returned: got one, want none (nobody keeps the copy up to date)")
	}
}

// TestNoCopiesByDefault: without Copies, a registry that follows keeps no
// copy of the records: every update reads the record first.
func TestNoCopiesByDefault(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mem := memstore.New()
	t.Cleanup(func() { mem.Close() })
	cs := &countingStore{Store: mem}
	r := &Registry{Store: cs}
	d, err := r.Register(ctx, Device{Name: "pi-1"})
	if err != nil {
		t.Fatal(err)
	}
	listed := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- r.Follow(ctx, Follower{Reset: func([]Device) { close(listed) }, Apply: func(string, *Device) {}})
	}()
	<-listed
	if _, ok := r.Guard(d.ID); ok {
		t.Error("Guard without Copies: got one, want none")
	}
	cs.counts()
	if _, err := r.Update(ctx, d.ID, func(d *Device) error { d.OS = "linux"; return nil }); err != nil {
		t.Fatal(err)
	}
	if g, w := cs.counts(); g != 1 || w != 1 {
		t.Errorf("update without Copies: %d reads, %d swaps; want 1 and 1", g, w)
	}
	cancel()
	<-done
}
