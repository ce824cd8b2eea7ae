// Package presence records, in the fleet's store, which fleetd replicas
// are running and which replica holds each device's tunnel, so that every
// replica knows where a device is (tsh ls on any replica shows the truth)
// and where to carry a user's connection to it (fleet/route).
//
// A replica writes everything under a lease of its own (store.Grant), so
// when it dies or is cut off from the store its entries vanish within the
// lease's TTL and the devices show offline until they reconnect to another
// replica, which writes them again. Keys:
//
//	presence/replicas/ID  this replica: where its peers reach it (Replica)
//	presence/devices/ID   the replica holding the device's tunnel (Entry)
//
// One key per device: a device that moves to another replica is written by
// the new replica over the old one's entry, so it never shows offline in
// between; the old replica's removal is guarded (it deletes the entry only
// while the entry is still its own). A replica that loses its lease (it
// could not renew it for a whole TTL: the store is down, or the replica is
// partitioned from it, or the store too busy to renew it) stops taking
// devices and users at once, since it can no longer record where they
// are (Ready is false), and tries to register again. Its tunnels stay: if
// it registers again within Config.Grace, it writes its devices' entries
// again under the new lease, and its devices never had to reconnect. If
// not, it is told (Config.OnLost): it must end the tunnels it holds, so
// that the devices go to a replica that can record them; Run goes on
// trying, and takes work again once it has a new lease.
//
// Every replica keeps the whole presence in memory, followed from the store
// (store.Follow): lookups never wait on the store.
//
// Only fleet/... server packages import presence.
package presence

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"remoteler.dev/edge/fleet/backoff"
	"remoteler.dev/edge/fleet/store"
)

// Key prefixes in the store.
const (
	Prefix         = "presence/"
	replicasPrefix = Prefix + "replicas/"
	devicesPrefix  = Prefix + "devices/"
)

// DefaultTTL is Config.TTL's default: how long a dead replica's entries
// outlive it.
const DefaultTTL = 15 * time.Second

// Replica is a running fleetd replica, as its peers see it.
type Replica struct {
	// ID names the replica (its certificate's CN, fleet/peer).
	ID string `json:"id"`
	// Addr is where its peers reach it (fleet/peer), host:port.
	Addr string `json:"addr"`
	// Started is when the replica started.
	Started time.Time `json:"started"`
	// Version is its fleetd version.
	Version string `json:"version,omitempty"`
}

// Entry says where a device's tunnel is.
type Entry struct {
	// Replica is the ID of the replica holding the tunnel.
	Replica string `json:"r"`
	// Addr is the device's address as that replica sees it.
	Addr string `json:"a,omitempty"`
	// Since is when the tunnel connected.
	Since time.Time `json:"s"`
	// Boot is the device's agent boot ID; another one means the agent
	// restarted, and the sessions held for it anywhere are gone.
	Boot string `json:"b,omitempty"`
	// Silent: the replica holding the tunnel has not heard from the
	// device for longer than its silence window (a blackout, say). It
	// counts as offline everywhere, though its tunnel lingers in case it
	// comes back on it.
	Silent bool `json:"q,omitempty"`
}

// Config configures a Registry. Store and Self are required.
type Config struct {
	Store store.Store
	// Self is this replica (ID and Addr required).
	Self Replica
	// TTL is the lease's TTL; default DefaultTTL.
	TTL time.Duration
	// Grace is how long a replica whose lease ended keeps its tunnels
	// while it tries to register again; default TTL. Ready is false
	// from the lease's end until Run has a new lease.
	Grace time.Duration
	// OnLost is called when this replica's lease ended while Run runs and
	// it did not register again within Grace: its entries are gone, and
	// it must end the tunnels it holds. It must not block.
	OnLost func()
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
}

// Registry is one replica's view of presence, and its writer of its own
// entries. Create it with New and call Run. Its methods are safe for
// concurrent use.
type Registry struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex // guards the fields below
	lease    store.Lease
	ready    chan struct{} // closed while a lease is held and the view synced
	synced   bool
	replicas map[string]Replica
	devices  map[string]Entry
	mine     map[string][]byte // device ID → the value this replica wrote
	// keeping: the lease ended less than Grace ago; mine is kept, to be
	// written again under the next lease (grace ends the wait).
	keeping bool
	grace   *time.Timer
	onMove  []func(deviceID string, e Entry)
	onBoot  []func(deviceID, boot string)
	changed chan struct{} // closed and replaced whenever devices changes
}

// New returns a Registry for cfg.
func New(cfg Config) *Registry {
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Grace <= 0 {
		cfg.Grace = cfg.TTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Registry{
		cfg: cfg, log: cfg.Logger.With("component", "presence"), ready: make(chan struct{}),
		replicas: map[string]Replica{}, devices: map[string]Entry{}, mine: map[string][]byte{},
		changed: make(chan struct{}),
	}
}

// changedLocked wakes those waiting for a change of the devices' entries.
func (r *Registry) changedLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

// Changes returns a channel that is closed at the next change of any
// device's entry.
func (r *Registry) Changes() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// Self returns this replica.
func (r *Registry) Self() Replica { return r.cfg.Self }

// ErrNotReady is returned by Claim while the replica has no lease: it must
// not take the device.
var ErrNotReady = errors.New("presence: this replica cannot record where devices are (it has lost the fleet's store); another replica must take them")

// Run keeps the replica's lease and its view of presence until ctx ends.
// It returns ctx's error, or an error wrapping store.ErrClosed.
func (r *Registry) Run(ctx context.Context) error {
	if r.cfg.Store == nil || r.cfg.Self.ID == "" || r.cfg.Self.Addr == "" {
		return errors.New("presence: run: Store, Self.ID and Self.Addr are required")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer r.endGrace()
	wg.Go(func() {
		store.Follow(ctx, r.cfg.Store, Prefix, store.FollowHandler{
			Reset: r.reset, Apply: r.apply,
			Retry: func(err error, wait time.Duration) {
				r.log.Warn("follow presence", "err", err, "retry_in", wait.String())
			},
		})
	})
	wait := time.Duration(0)
	for {
		if wait > 0 && !backoff.Wait(ctx, wait) {
			return ctx.Err()
		}
		l, back, err := r.register(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, store.ErrClosed) {
				return err
			}
			wait = backoff.Next(wait, 500*time.Millisecond, 10*time.Second)
			r.log.Warn("cannot register this replica in the store; retrying", "err", err, "retry_in", wait.Round(time.Millisecond).String())
			continue
		}
		wait = 0
		r.log.Info("replica registered", "replica", r.cfg.Self.ID, "addr", r.cfg.Self.Addr, "lease_ttl", l.TTL().String())
		if len(back) > 0 {
			wg.Go(func() { r.claimAgain(ctx, l, back) })
		}
		select {
		case <-ctx.Done():
			r.leave(l)
			rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			err := l.Revoke(rctx)
			rcancel()
			r.log.Info("replica left the fleet: its lease and presence entries are gone", "replica", r.cfg.Self.ID, "revoke_err", err)
			return ctx.Err()
		case <-l.Done():
			r.log.Error("this replica lost its lease in the store (cut off from it, or the store too busy to renew it): it takes no devices or users until it has a new one, and keeps its tunnels meanwhile, for a while",
				"grace", r.cfg.Grace.String())
			r.suspend(l)
		}
	}
}

// register grants a lease and writes this replica under it. Within the
// grace after a lease ended, it also returns the entries to write again
// under the new one (claimAgain).
func (r *Registry) register(ctx context.Context) (store.Lease, map[string][]byte, error) {
	l, err := r.cfg.Store.Grant(ctx, r.cfg.TTL)
	if err != nil {
		return nil, nil, fmt.Errorf("presence: grant a lease: %w", err)
	}
	self := r.cfg.Self
	if self.Started.IsZero() {
		self.Started = time.Now().UTC()
	}
	b, _ := json.Marshal(self)
	if err := r.cfg.Store.Put(ctx, replicasPrefix+self.ID, b, store.WithLease(l)); err != nil {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		l.Revoke(rctx)
		cancel()
		return nil, nil, fmt.Errorf("presence: register replica: %w", err)
	}
	r.mu.Lock()
	r.lease = l
	var back map[string][]byte
	if r.keeping {
		r.keeping = false
		r.grace.Stop()
		back = maps.Clone(r.mine)
	}
	r.markReadyLocked()
	r.mu.Unlock()
	return l, back, nil
}

// suspend forgets lease l, which ended, and keeps this replica's entries
// for the grace: giveUp ends it, unless register comes first.
func (r *Registry) suspend(l store.Lease) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lease != l {
		return
	}
	r.lease = nil
	r.markNotReadyLocked()
	r.keeping = true
	r.grace = time.AfterFunc(r.cfg.Grace, r.giveUp)
}

// giveUp ends the grace: the replica did not register again in time, so
// its entries are forgotten and it is told to end its tunnels (OnLost).
func (r *Registry) giveUp() {
	r.mu.Lock()
	if !r.keeping {
		r.mu.Unlock()
		return
	}
	r.keeping = false
	n := len(r.mine)
	r.mine = map[string][]byte{}
	r.mu.Unlock()
	r.log.Error("this replica did not register again in the store within the grace: it ends its tunnels, so that its devices go to a replica that can record them",
		"grace", r.cfg.Grace.String(), "devices", n)
	if r.cfg.OnLost != nil {
		r.cfg.OnLost()
	}
}

// endGrace ends a grace without OnLost: Run is returning.
func (r *Registry) endGrace() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.keeping {
		r.keeping = false
		r.grace.Stop()
		r.mine = map[string][]byte{}
	}
}

// claimAgainParallel is how many entries claimAgain writes at once.
const claimAgainParallel = 16

// claimAgain writes again under the new lease l the entries of the
// tunnels this replica kept through the grace (back: device ID → the
// value written under the old lease). Each write is create-only: a
// device whose entry now names another replica (it connected there
// meanwhile) is left there and forgotten here. An entry still there from
// the old lease (the store had not let it go yet) is moved to the new
// lease if it is unchanged. A device released or claimed afresh here
// meanwhile is left as it is now. Writes that fail are tried again (0.5 s,
// doubling, up to 10 s) while l lives; it stops when ctx ends or l does.
func (r *Registry) claimAgain(ctx context.Context, l store.Lease, back map[string][]byte) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-l.Done():
			cancel()
		case <-ctx.Done():
		}
	}()
	var again, elsewhere atomic.Int64
	total := len(back)
	wait := time.Duration(0)
	for len(back) > 0 {
		if wait > 0 && !backoff.Wait(ctx, wait) {
			break
		}
		var mu sync.Mutex
		failed := map[string][]byte{}
		var lastErr error
		var g errgroup.Group
		g.SetLimit(claimAgainParallel)
		for id, b := range back {
			g.Go(func() error {
				switch moved, err := r.claimOneAgain(ctx, l, id, b); {
				case err != nil:
					mu.Lock()
					failed[id], lastErr = b, err
					mu.Unlock()
				case moved:
					elsewhere.Add(1)
				default:
					again.Add(1)
				}
				return nil
			})
		}
		g.Wait()
		if len(failed) > 0 && ctx.Err() == nil {
			wait = backoff.Next(wait, 500*time.Millisecond, 10*time.Second)
			r.log.Warn("could not record some of this replica's tunnels again under its new lease; retrying", "devices", len(failed), "err", lastErr, "retry_in", wait.String())
		}
		back = failed
	}
	r.log.Warn("registered again within the grace: recorded the tunnels it kept under the new lease",
		"devices", total, "recorded", again.Load(), "now_elsewhere", elsewhere.Load(), "not_recorded", len(back))
}

// claimOneAgain writes device id's entry b again under l (claimAgain); it
// reports whether the device is now on another replica.
func (r *Registry) claimOneAgain(ctx context.Context, l store.Lease, id string, b []byte) (moved bool, err error) {
	key := devicesPrefix + id
	if !r.stillMine(id, b) {
		return false, nil // released or claimed afresh meanwhile
	}
	err = r.cfg.Store.Create(ctx, key, b, store.WithLease(l))
	if errors.Is(err, store.ErrExists) {
		// Ours from the old lease, unchanged: move it to the new one.
		err = r.cfg.Store.CompareAndSwap(ctx, key, b, b, store.WithLease(l))
		if errors.Is(err, store.ErrConflict) {
			// Another replica's now (or claimed afresh here meanwhile).
			r.mu.Lock()
			defer r.mu.Unlock()
			if bytes.Equal(r.mine[id], b) {
				delete(r.mine, id)
				return true, nil
			}
			return false, nil
		}
	}
	if err != nil {
		return false, fmt.Errorf("presence: claim %s again: %w", id, err)
	}
	r.mu.Lock()
	if r.lease == l && bytes.Equal(r.mine[id], b) {
		var e Entry
		if json.Unmarshal(b, &e) == nil {
			r.devices[id] = e
			r.changedLocked()
		}
		r.mu.Unlock()
		return false, nil
	}
	r.mu.Unlock()
	// Released meanwhile: take back what was written, if it is still that.
	if err := r.cfg.Store.Delete(ctx, key, store.If(store.Guard{Key: key, Value: b})); err != nil && !errors.Is(err, store.ErrFenced) && !errors.Is(err, store.ErrNotFound) {
		return false, fmt.Errorf("presence: release %s: %w", id, err)
	}
	return false, nil
}

// stillMine reports whether this replica's entry for id is still b.
func (r *Registry) stillMine(id string, b []byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return bytes.Equal(r.mine[id], b)
}

// leave forgets lease l and this replica's entries: Run is returning.
func (r *Registry) leave(l store.Lease) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lease == l {
		r.lease = nil
		r.mine = map[string][]byte{}
		r.markNotReadyLocked()
	}
}

func (r *Registry) markReadyLocked() {
	if r.lease != nil && r.synced {
		select {
		case <-r.ready:
		default:
			close(r.ready)
		}
	}
}

func (r *Registry) markNotReadyLocked() {
	select {
	case <-r.ready:
		r.ready = make(chan struct{})
	default:
	}
}

// Ready reports whether the replica holds its lease and its view of
// presence is synced: whether it may take devices and users.
func (r *Registry) Ready() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	select {
	case <-r.ready:
		return true
	default:
		return false
	}
}

// WaitReady waits until Ready, or ctx ends.
func (r *Registry) WaitReady(ctx context.Context) error {
	r.mu.Lock()
	ch := r.ready
	r.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (r *Registry) reset(items []store.Item, _ int64) {
	replicas := map[string]Replica{}
	devices := map[string]Entry{}
	for _, it := range items {
		r.decode(it.Key, it.Value, replicas, devices)
	}
	r.mu.Lock()
	old := r.devices
	r.replicas, r.devices, r.synced = replicas, devices, true
	r.markReadyLocked()
	r.changedLocked()
	hooks, boots := r.onMove, r.onBoot
	// The hooks run without the lock; the view may change meanwhile (a
	// claim), so what they are told is taken now.
	type change struct {
		id          string
		e           Entry
		moved, boot bool
	}
	var changes []change
	for id, e := range devices {
		o, ok := old[id]
		moved, boot := !ok || o.Replica != e.Replica, e.Boot != "" && (!ok || o.Boot != e.Boot)
		if moved || boot {
			changes = append(changes, change{id, e, moved, boot})
		}
	}
	r.mu.Unlock()
	for _, c := range changes {
		if c.moved {
			for _, f := range hooks {
				f(c.id, c.e)
			}
		}
		if c.boot {
			for _, f := range boots {
				f(c.id, c.e.Boot)
			}
		}
	}
}

func (r *Registry) apply(ev store.Event) {
	r.mu.Lock()
	var moved *Entry
	var id, booted string
	switch {
	case ev.Kind == store.EventPut:
		id = strings.TrimPrefix(ev.Key, devicesPrefix)
		old, had := r.devices[id]
		r.decode(ev.Key, ev.Value, r.replicas, r.devices)
		if e, ok := r.devices[id]; ok && strings.HasPrefix(ev.Key, devicesPrefix) && (!had || old.Replica != e.Replica) {
			moved = &e
		}
		if e, ok := r.devices[id]; ok && strings.HasPrefix(ev.Key, devicesPrefix) && e.Boot != "" && (!had || old.Boot != e.Boot) {
			booted = e.Boot
		}
	case ev.Kind == store.EventDelete && strings.HasPrefix(ev.Key, replicasPrefix):
		delete(r.replicas, strings.TrimPrefix(ev.Key, replicasPrefix))
	case ev.Kind == store.EventDelete && strings.HasPrefix(ev.Key, devicesPrefix):
		delete(r.devices, strings.TrimPrefix(ev.Key, devicesPrefix))
	}
	r.changedLocked()
	hooks, boots := r.onMove, r.onBoot
	r.mu.Unlock()
	if moved != nil {
		for _, f := range hooks {
			f(id, *moved)
		}
	}
	if booted != "" {
		for _, f := range boots {
			f(id, booted)
		}
	}
}

// decode adds the item at key to replicas or devices; malformed items are
// logged and left out.
func (r *Registry) decode(key string, v []byte, replicas map[string]Replica, devices map[string]Entry) {
	switch {
	case strings.HasPrefix(key, replicasPrefix):
		var rep Replica
		if err := json.Unmarshal(v, &rep); err != nil || rep.ID == "" {
			r.log.Warn("malformed replica entry in the store; ignoring it", "key", key, "err", err)
			return
		}
		replicas[strings.TrimPrefix(key, replicasPrefix)] = rep
	case strings.HasPrefix(key, devicesPrefix):
		var e Entry
		if err := json.Unmarshal(v, &e); err != nil || e.Replica == "" {
			r.log.Warn("malformed presence entry in the store; ignoring it", "key", key, "err", err)
			return
		}
		devices[strings.TrimPrefix(key, devicesPrefix)] = e
	}
}

// OnMove registers f to be called when a device's entry names a replica it
// did not name before (a device connected, here or elsewhere). A replica
// that still holds a connection of a device now on another replica closes
// it. f runs on the registry's goroutine and must not block.
func (r *Registry) OnMove(f func(deviceID string, e Entry)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.onMove = append(r.onMove, f)
}

// OnBoot registers f to be called when a device's entry names an agent
// boot it did not name before: the device's agent connected after a
// restart (or for the first time), here or elsewhere. f runs on the
// registry's goroutine and must not block.
func (r *Registry) OnBoot(f func(deviceID, boot string)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.onBoot = append(r.onBoot, f)
}

// Claim records that this replica holds deviceID's tunnel, connected since
// since from addr by its agent's boot boot. It fails with ErrNotReady
// without a lease. opts may add guards (store.If): a guard that does not
// hold fails it with an error matching store.ErrFenced, and nothing is
// recorded.
func (r *Registry) Claim(ctx context.Context, deviceID, addr, boot string, since time.Time, opts ...store.WriteOption) error {
	r.mu.Lock()
	l := r.lease
	r.mu.Unlock()
	if l == nil {
		return ErrNotReady
	}
	e := Entry{Replica: r.cfg.Self.ID, Addr: addr, Since: since.UTC(), Boot: boot}
	b, _ := json.Marshal(e)
	if err := r.cfg.Store.Put(ctx, devicesPrefix+deviceID, b, append([]store.WriteOption{store.WithLease(l)}, opts...)...); err != nil {
		if errors.Is(err, store.ErrNoLease) {
			return fmt.Errorf("%w: %w", ErrNotReady, err)
		}
		return fmt.Errorf("presence: claim %s: %w", deviceID, err)
	}
	r.mu.Lock()
	if r.lease == l {
		r.mine[deviceID] = b
		// Known at once here, before the watch brings it back.
		r.devices[deviceID] = e
		r.changedLocked()
	}
	r.mu.Unlock()
	return nil
}

// Release removes deviceID's entry if it is still this replica's (a
// device that moved to another replica keeps that one's). It reports
// whether the device is now on another replica.
func (r *Registry) Release(ctx context.Context, deviceID string) (elsewhere bool, err error) {
	r.mu.Lock()
	b, ok := r.mine[deviceID]
	delete(r.mine, deviceID)
	r.mu.Unlock()
	if ok {
		key := devicesPrefix + deviceID
		err = r.cfg.Store.Delete(ctx, key, store.If(store.Guard{Key: key, Value: b}))
		switch {
		case err == nil:
			r.mu.Lock()
			if e, ok := r.devices[deviceID]; ok && e.Replica == r.cfg.Self.ID {
				delete(r.devices, deviceID)
				r.changedLocked()
			}
			r.mu.Unlock()
			return false, nil
		case errors.Is(err, store.ErrFenced), errors.Is(err, store.ErrNotFound):
			err = nil // another replica's entry now, or gone with our lease
		default:
			err = fmt.Errorf("presence: release %s: %w", deviceID, err)
		}
	}
	e, found := r.Lookup(deviceID)
	return found && e.Replica != r.cfg.Self.ID, err
}

// Mark records whether deviceID, whose tunnel this replica holds since
// since, has fallen silent (or is heard again). Nothing is written for a
// tunnel that is no longer this replica's, or not the one connected since
// since (it was replaced meanwhile).
func (r *Registry) Mark(ctx context.Context, deviceID string, since time.Time, silent bool) error {
	r.mu.Lock()
	l, old := r.lease, r.mine[deviceID]
	r.mu.Unlock()
	if l == nil || old == nil {
		return nil
	}
	var e Entry
	if err := json.Unmarshal(old, &e); err != nil || !e.Since.Equal(since.UTC()) || e.Silent == silent {
		return nil
	}
	e.Silent = silent
	b, _ := json.Marshal(e)
	key := devicesPrefix + deviceID
	err := r.cfg.Store.Put(ctx, key, b, store.WithLease(l), store.If(store.Guard{Key: key, Value: old}))
	switch {
	case errors.Is(err, store.ErrFenced), errors.Is(err, store.ErrNotFound):
		return nil // another replica's entry now, or gone with the lease
	case err != nil:
		return fmt.Errorf("presence: mark %s: %w", deviceID, err)
	}
	r.mu.Lock()
	if r.lease == l && string(r.mine[deviceID]) == string(old) {
		r.mine[deviceID] = b
		r.devices[deviceID] = e
		r.changedLocked()
	}
	r.mu.Unlock()
	return nil
}

// Lookup returns where deviceID's tunnel is.
func (r *Registry) Lookup(deviceID string) (Entry, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.devices[deviceID]
	return e, ok
}

// Online reports whether deviceID holds a tunnel to some replica and has
// not fallen silent on it.
func (r *Registry) Online(deviceID string) bool {
	e, ok := r.Lookup(deviceID)
	return ok && !e.Silent
}

// Count returns the number of devices online (Online).
func (r *Registry) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, e := range r.devices {
		if !e.Silent {
			n++
		}
	}
	return n
}

// Replica returns the running replica id.
func (r *Registry) Replica(id string) (Replica, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rep, ok := r.replicas[id]
	return rep, ok
}

// Replicas returns the running replicas.
func (r *Registry) Replicas() []Replica {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]Replica, 0, len(r.replicas))
	for _, rep := range r.replicas {
		out = append(out, rep)
	}
	return out
}
