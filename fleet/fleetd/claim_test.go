package fleetd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/lifecycle"
	"remoteler.dev/edge/fleet/locks"
	"remoteler.dev/edge/fleet/presence"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/fleet/tokens"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/logtest"
)

// TestClaimTunnel: a tunnel is recorded with its address and agent boot;
// one that ended while the device was checked (the tunnel server no
// longer has it), or that the store cannot record, is refused with a code
// that makes the agent connect again, and never crashes the replica (a
// 30,000-device restart crashed two replicas on the first case).
func TestClaimTunnel(t *testing.T) {
	addr := &net.UDPAddr{IP: net.IPv4(10, 0, 0, 7), Port: 4000}
	for _, tt := range []struct {
		name     string
		info     tunnelsrv.Info
		ok       bool
		claimErr error
		want     string // in the refusal; "" for none
		claimed  string
	}{
		{"recorded", tunnelsrv.Info{Addr: addr, Boot: "b1"}, true, nil, "", "d1 10.0.0.7:4000 b1"},
		{"the connection ended meanwhile", tunnelsrv.Info{}, false, nil, "the connection ended", ""},
		{"no lease", tunnelsrv.Info{Addr: addr}, true, presence.ErrNotReady, presence.ErrNotReady.Error(), "d1 10.0.0.7:4000 "},
		{"the store failed", tunnelsrv.Info{Addr: addr}, true, errors.New("etcd: timed out"), "could not record the tunnel (etcd: timed out)", "d1 10.0.0.7:4000 "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var claimed string
			claim := func(_ context.Context, id, a, boot string, _ time.Time, _ ...store.WriteOption) error {
				claimed = id + " " + a + " " + boot
				return tt.claimErr
			}
			err := claimTunnel(context.Background(), claim, "d1", tt.info, tt.ok)
			if claimed != tt.claimed {
				t.Errorf("claimed %q, want %q", claimed, tt.claimed)
			}
			if tt.want == "" {
				if err != nil {
					t.Fatalf("claimTunnel = %v, want nil", err)
				}
				return
			}
			var pe *proto.Error
			if !errors.As(err, &pe) || pe.Code != proto.CodeUnavailable || !strings.Contains(pe.Message, tt.want) {
				t.Errorf("claimTunnel = %v, want an unavailable refusal saying %q", err, tt.want)
			}
		})
	}
}

// TestClaimTunnelFenced: a guard that did not hold is handed back as it
// is (store.ErrFenced), not turned into a refusal: the caller checks the
// device again.
func TestClaimTunnelFenced(t *testing.T) {
	addr := &net.UDPAddr{IP: net.IPv4(10, 0, 0, 7), Port: 4000}
	claim := func(context.Context, string, string, string, time.Time, ...store.WriteOption) error {
		return fmt.Errorf("presence: claim d1: %w", store.ErrFenced)
	}
	err := claimTunnel(context.Background(), claim, "d1", tunnelsrv.Info{Addr: addr}, true, store.If(store.Guard{Key: "devices/d1"}))
	var pe *proto.Error
	if !errors.Is(err, store.ErrFenced) || errors.As(err, &pe) {
		t.Errorf("claimTunnel = %v, want store.ErrFenced, not a refusal", err)
	}
}

// TestCheckAndClaim: a new connection's check costs the store one write
// (the claim, guarded by the device's record as the hello wrote it) when
// the registry has a copy; without one, or when the guard fails, the
// record is read (recheck) and the claim made without the guard. A lock
// or a removal refuses the device, and a claim the store refuses is never
// retried unguarded.
func TestCheckAndClaim(t *testing.T) {
	removed := proto.Errorf(proto.CodeForbidden, "device d1 was removed from the fleet")
	lockErr := proto.Errorf(proto.CodeForbidden, "locked: stolen")
	storeErr := proto.Errorf(proto.CodeUnavailable, "this fleetd replica could not record the tunnel")
	fenced := fmt.Errorf("presence: claim d1: %w", store.ErrFenced)
	for _, tt := range []struct {
		name     string
		copy     bool    // the registry has a copy of the record
		locked   bool    // a lock shuts the device out
		gone     bool    // recheck finds the device removed
		claimErr []error // what each claim returns, in turn
		want     error
		steps    string // what ran, in order
	}{
		{"a copy: one guarded claim", true, false, false, []error{nil}, nil, "lock claim(guarded)"},
		{"no copy: read, then claim", false, false, false, []error{nil}, nil, "recheck claim"},
		{"the record changed: read, then claim", true, false, false, []error{fenced, nil}, nil, "lock claim(guarded) recheck claim"},
		{"removed since the hello", true, false, true, []error{fenced}, removed, "lock claim(guarded) recheck"},
		{"locked", true, true, false, nil, lockErr, "lock"},
		{"locked, no copy", false, true, false, nil, lockErr, "recheck"},
		{"the store refuses the guarded claim", true, false, false, []error{storeErr}, storeErr, "lock claim(guarded)"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var steps []string
			guard := func(id string) (store.Guard, bool) {
				return store.Guard{Key: "devices/" + id, Value: []byte("{}")}, tt.copy
			}
			checkLock := func(string) error {
				steps = append(steps, "lock")
				if tt.locked {
					return lockErr
				}
				return nil
			}
			recheck := func(context.Context, string) error {
				steps = append(steps, "recheck")
				switch {
				case tt.locked:
					return lockErr
				case tt.gone:
					return removed
				}
				return nil
			}
			claim := func(opts ...store.WriteOption) error {
				o := store.ApplyWriteOptions(opts)
				if len(o.Guards) > 0 {
					if g := o.Guards[0]; g.Key != "devices/d1" || string(g.Value) != "{}" {
						t.Errorf("claim guarded by %s=%q, want the device's record", g.Key, g.Value)
					}
					steps = append(steps, "claim(guarded)")
				} else {
					steps = append(steps, "claim")
				}
				if len(tt.claimErr) == 0 {
					t.Fatal("claimed more often than the test expects")
				}
				err := tt.claimErr[0]
				tt.claimErr = tt.claimErr[1:]
				return err
			}
			err := checkAndClaim(context.Background(), "d1", guard, checkLock, recheck, claim)
			if err != tt.want {
				t.Errorf("checkAndClaim = %v, want %v", err, tt.want)
			}
			if got := strings.Join(steps, " "); got != tt.steps {
				t.Errorf("steps %q, want %q", got, tt.steps)
			}
		})
	}
}

// TestAfterLeaseLost: a replica that lost its lease drains (no store write
// per disconnect) before it sheds its tunnels, and writes their last seen
// only once it is registered again, within a budget; when it stops first,
// it leaves them to the stop.
func TestAfterLeaseLost(t *testing.T) {
	for _, tt := range []struct {
		name  string
		ready bool // registered again before the replica stops
		want  string
	}{
		{"registered again", true, "drain shed flush(with a deadline)"},
		{"stopped first", false, "drain shed"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var steps []string
			waitReady := func(ctx context.Context) error {
				if tt.ready {
					return nil
				}
				cancel()
				return ctx.Err()
			}
			flush := func(ctx context.Context) int {
				if _, ok := ctx.Deadline(); ok {
					steps = append(steps, "flush(with a deadline)")
				} else {
					steps = append(steps, "flush(without one)")
				}
				return 0
			}
			afterLeaseLost(ctx, func() { steps = append(steps, "drain") }, func() { steps = append(steps, "shed") }, waitReady, flush, logtest.Logger(t))
			if got := strings.Join(steps, " "); got != tt.want {
				t.Errorf("steps %q, want %q", got, tt.want)
			}
		})
	}
}

// readCounter counts the reads of device records made through it.
type readCounter struct {
	store.Store
	reads atomic.Int32
}

func (c *readCounter) Get(ctx context.Context, key string) ([]byte, error) {
	if strings.HasPrefix(key, "devices/") {
		c.reads.Add(1)
	}
	return c.Store.Get(ctx, key)
}

// TestRecheckOnEtcd: with the real registry (keeping copies, following),
// lifecycle and presence on one store, a device's hello and the check
// after it read no device record and record the tunnel; a device removed
// between its hello and the check is refused and not recorded, as is a
// locked one.
func TestRecheckOnEtcd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	mem := memstore.New()
	t.Cleanup(func() { mem.Close() })
	rc := &readCounter{Store: mem}
	reg := &devices.Registry{Store: rc, Copies: true}
	auth, err := ca.LoadOrCreate(ctx, mem, "fleet", time.Now)
	if err != nil {
		t.Fatal(err)
	}
	lockSet := &locks.Set{}
	go lockSet.Follow(ctx, mem)
	if err := lockSet.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	life := lifecycle.New(lifecycle.Config{CA: auth, Devices: reg, Tokens: &tokens.Service{Store: mem}, Cluster: "fleet",
		Locks: lockSet, Logger: logtest.Logger(t)})
	pres := presence.New(presence.Config{Store: mem, Self: presence.Replica{ID: "r-a", Addr: "r-a:3081"}, TTL: 5 * time.Second, Logger: logtest.Logger(t)})
	go pres.Run(ctx)
	if err := pres.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	copied := make(chan string, 16)
	listed := make(chan struct{})
	go reg.Follow(ctx, devices.Follower{Reset: func([]devices.Device) { close(listed) }, Apply: func(id string, d *devices.Device) {
		if d != nil {
			copied <- id
		}
	}})
	<-listed // registered from now on: each comes as a change
	register := func(name string) string {
		t.Helper()
		d, err := reg.Register(ctx, devices.Device{Name: name})
		if err != nil {
			t.Fatal(err)
		}
		for {
			select {
			case id := <-copied:
				if id == d.ID {
					return d.ID
				}
			case <-ctx.Done():
				t.Fatalf("%s's record did not reach the registry's copies in 30 s", name)
			}
		}
	}
	addr := &net.UDPAddr{IP: net.IPv4(10, 0, 0, 7), Port: 4000}
	info := func(string) (tunnelsrv.Info, bool) { return tunnelsrv.Info{Addr: addr, Since: time.Now()}, true }
	recheck := recheckOnEtcd(reg.Guard, life.CheckLock, life.Recheck, pres.Claim, info)
	hello := func(id, name string) error {
		t.Helper()
		_, err := life.Hello(ctx, id, addr, &proto.Hello{Name: name, AgentVersion: "v1"})
		return err
	}

	id := register("pi-1")
	rc.reads.Store(0)
	if err := hello(id, "pi-1"); err != nil {
		t.Fatal(err)
	}
	if err := recheck(ctx, id); err != nil {
		t.Fatalf("the check after the hello: %v", err)
	}
	if n := rc.reads.Load(); n != 0 {
		t.Errorf("a hello and its check read the device record %d times, want 0", n)
	}
	if e, ok := pres.Lookup(id); !ok || e.Replica != "r-a" {
		t.Errorf("presence after the check: %+v, %v; want on r-a", e, ok)
	}

	gone := register("pi-2")
	if err := hello(gone, "pi-2"); err != nil {
		t.Fatal(err)
	}
	if _, err := (&devices.Registry{Store: mem}).Delete(ctx, gone); err != nil { // removed on another replica
		t.Fatal(err)
	}
	var pe *proto.Error
	if err := recheck(ctx, gone); !errors.As(err, &pe) || pe.Code != proto.CodeForbidden || !strings.Contains(pe.Message, "removed") {
		t.Errorf("the check of a device removed since its hello: %v, want a refusal saying it was removed", err)
	}
	if _, err := mem.Get(ctx, "presence/devices/"+gone); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("presence of the removed device: %v, want none", err)
	}

	locked := register("pi-3")
	if err := hello(locked, "pi-3"); err != nil {
		t.Fatal(err)
	}
	ls := &locks.Service{Store: mem, Devices: reg}
	if _, err := ls.Create(ctx, api.LockRequest{Target: api.LockTarget{Device: "pi-3"}, Message: "stolen"}, "admin"); err != nil {
		t.Fatal(err)
	}
	for { // the lock reaches the set through its watch
		_, rev := lockSet.List()
		if lockSet.Check(locks.Subject{DeviceID: locked}) != nil {
			break
		}
		lockSet.Wait(ctx, rev)
		if ctx.Err() != nil {
			t.Fatal("the lock did not reach the set in 30 s")
		}
	}
	if err := recheck(ctx, locked); !errors.As(err, &pe) || pe.Code != proto.CodeForbidden || !strings.Contains(pe.Message, "stolen") {
		t.Errorf("the check of a device locked since its hello: %v, want a refusal with the lock's message", err)
	}
	if _, err := mem.Get(ctx, "presence/devices/"+locked); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("presence of the locked device: %v, want none", err)
	}
}
