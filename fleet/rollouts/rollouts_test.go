package rollouts

import (
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"aead.dev/minisign"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/releases"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/ota"
)

// fleetSim is an engine with simulated devices that answer offers as
// agents do: a device set to fail reports rolled_back, the others
// committed (and then run the new version). Devices may be offline.
//
// This tests the engine's rules in-process, with a clock the test moves;
// the rollout over real tunnels is in tools/e2e.
type fleetSim struct {
	t         *testing.T
	e         *Engine
	ids       []string
	now       time.Time
	mu        sync.Mutex // guards the fields below and now
	fail      map[string]bool
	failEvery int
	offered   int
	off       map[string]bool
	ran       map[string]string // device → running version
	offers    map[string]int
}

func newFleetSim(t *testing.T, n int, failShare float64) *fleetSim {
	t.Helper()
	st := memstore.New()
	pub, priv, _ := minisign.GenerateKey(rand.Reader)
	dir := t.TempDir()
	rels, err := releases.New(releases.Config{Store: st, Dir: dir, Keys: func() ota.Keys { return ota.Keys{pub} }, DeltaFrom: -1})
	if err != nil {
		t.Fatal(err)
	}
	bin := []byte("agent v2")
	m := &ota.Manifest{Product: ota.Product, Version: "v2.0.0", Artifacts: []ota.Artifact{{Name: "edge-agent-linux-arm64", Target: "linux-arm64", Size: int64(len(bin)), SHA256: ota.Sum256(bin)}}}
	mb := m.Marshal()
	if err := rels.PutBlob(context.Background(), ota.Sum256(bin), strings.NewReader(string(bin))); err != nil {
		t.Fatal(err)
	}
	if _, err := rels.Add(context.Background(), api.AddReleaseRequest{Manifest: string(mb), ManifestSig: string(ota.Sign(priv, mb, "m")),
		ArtifactSigs: map[string]string{"linux-arm64": string(ota.Sign(priv, bin, "a"))}}); err != nil {
		t.Fatal(err)
	}
	reg := &devices.Registry{Store: st}
	s := &fleetSim{t: t, now: time.Date(2026, 12, 6, 3, 0, 0, 0, time.UTC), fail: map[string]bool{}, off: map[string]bool{}, ran: map[string]string{}, offers: map[string]int{}}
	for i := range n {
		d, err := reg.Register(context.Background(), devices.Device{Name: fmt.Sprintf("sim-%05d", i+1), Labels: map[string]string{"fleet": "sim"}})
		if err != nil {
			t.Fatal(err)
		}
		s.ids = append(s.ids, d.ID)
		s.ran[d.ID] = "v1.0.0"
	}
	// Every k-th device offered the release fails, so
	// every stage's share is failShare, whichever devices it picks.
	if failShare > 0 {
		s.failEvery = int(1 / failShare)
	}
	s.e, err = New(Config{Store: st, Releases: rels, Devices: reg, Send: s.send, Now: s.clock})
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(dir, "x"), 0o700)
	return s
}

func (s *fleetSim) clock() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.now
}

func (s *fleetSim) advance(d time.Duration) {
	s.mu.Lock()
	s.now = s.now.Add(d)
	s.mu.Unlock()
}

// connect brings a device online: its first status, answered with an
// offer if the engine has one.
func (s *fleetSim) connect(id string) {
	s.mu.Lock()
	s.off[id] = false
	run := s.ran[id]
	s.mu.Unlock()
	if reply := s.e.HandleStatus(context.Background(), id, &proto.UpdateStatus{State: proto.StateIdle, Running: run, Target: "linux-arm64"}); reply != nil {
		s.send(id, reply)
	}
}

func (s *fleetSim) disconnect(id string) {
	s.mu.Lock()
	s.off[id] = true
	s.mu.Unlock()
	s.e.Disconnected(id)
}

// send is the engine's push: the device answers the offer at once.
func (s *fleetSim) send(id string, m proto.Message) error {
	o, ok := m.(*proto.UpdateOffer)
	if !ok || o.Cancel {
		return nil
	}
	s.mu.Lock()
	if s.off[id] {
		s.mu.Unlock()
		return fmt.Errorf("offline")
	}
	s.offers[id]++
	if s.offers[id] == 1 {
		if s.failEvery > 0 && s.offered%s.failEvery == s.failEvery-1 {
			s.fail[id] = true
		}
		s.offered++
	}
	fail := s.fail[id]
	run := s.ran[id]
	s.mu.Unlock()
	go func() {
		ctx := context.Background()
		s.e.HandleStatus(ctx, id, &proto.UpdateStatus{Rollout: o.Rollout, Version: o.Version, State: proto.StateDownloading, Running: run, Target: "linux-arm64"})
		if fail {
			s.e.HandleStatus(ctx, id, &proto.UpdateStatus{Rollout: o.Rollout, Version: o.Version, State: proto.StateRolledBack,
				Reason: "the new agent was not healthy", Running: run, Target: "linux-arm64"})
			return
		}
		s.mu.Lock()
		s.ran[id] = o.Version
		s.mu.Unlock()
		s.e.HandleStatus(ctx, id, &proto.UpdateStatus{Rollout: o.Rollout, Version: o.Version, State: proto.StateCommitted, Running: o.Version, Target: "linux-arm64"})
	}()
	return nil
}

// until evaluates the engine until cond holds about the rollout.
func (s *fleetSim) until(id string, what string, cond func(api.Rollout) bool) api.Rollout {
	s.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		s.e.evaluate(context.Background(), nil)
		ro, err := s.e.Get(context.Background(), id)
		if err != nil {
			s.t.Fatal(err)
		}
		if cond(ro) {
			return ro
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("rollout never got to %s: %+v", what, ro)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRolloutHaltsAtTheThreshold(t *testing.T) {
	s := newFleetSim(t, 200, 0.1) // 10% of the devices fail
	for _, id := range s.ids {
		s.connect(id)
	}
	ro, err := s.e.Create(context.Background(), api.CreateRolloutRequest{Release: "v2.0.0", Selector: map[string]string{"fleet": "sim"},
		Stages: []float64{10, 50, 100}, Soak: "10m", MaxFailure: 5}, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	ro = s.until(ro.ID, "halted", func(r api.Rollout) bool { return r.State == api.RolloutHalted })
	if ro.Stage != 0 || ro.Assigned != 20 {
		t.Errorf("halted at stage %d with %d devices; want the first stage's 20", ro.Stage, ro.Assigned)
	}
	if !strings.Contains(ro.Reason, "more than the 5.0% allowed") || !strings.Contains(ro.Reason, "rolled_back") {
		t.Errorf("reason %q does not say why", ro.Reason)
	}
	// No device beyond the first stage was offered the release.
	offered := 0
	s.mu.Lock()
	for _, n := range s.offers {
		offered += n
	}
	s.mu.Unlock()
	if offered > 20 {
		t.Errorf("%d offers; a halted first stage offers to 20 devices at most", offered)
	}
	// Resume and abort are the operator's.
	if _, err := s.e.Action(context.Background(), ro.ID, "abort", "admin:test"); err != nil {
		t.Fatal(err)
	}
}

func TestRolloutStagesAdvanceAndOfflineDevicesCatchUp(t *testing.T) {
	s := newFleetSim(t, 200, 0.02) // 2% fail: under the 5% threshold
	late := s.ids[len(s.ids)-1]
	for _, id := range s.ids {
		if id != late {
			s.connect(id)
		}
	}
	ro, err := s.e.Create(context.Background(), api.CreateRolloutRequest{Release: "v2.0.0", Stages: []float64{1, 10, 50, 100}, Soak: "1h", MaxFailure: 5}, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	for stage := range 4 {
		ro = s.until(ro.ID, fmt.Sprintf("stage %d settled", stage), func(r api.Rollout) bool {
			// Settled: only the offline device may be left.
			return r.Stage == stage && r.InProgress == 0 && r.Pending <= 1 && r.Committed+r.Failed+r.Pending == r.Assigned
		})
		if ro.State != api.RolloutRunning {
			t.Fatalf("stage %d: rollout %s: %s", stage, ro.State, ro.Reason)
		}
		// The soak holds the stage.
		s.e.evaluate(context.Background(), nil)
		if r, _ := s.e.Get(context.Background(), ro.ID); r.Stage != stage {
			t.Fatalf("stage %d advanced before its soak", stage)
		}
		s.advance(time.Hour)
	}
	if ro.Stage != 3 || ro.Assigned != 200 {
		t.Fatalf("last stage %d with %d devices", ro.Stage, ro.Assigned)
	}
	// Everyone online is done; the offline device is pending.
	if ro.Pending != 1 || ro.State != api.RolloutRunning {
		t.Errorf("pending %d state %s; want the offline device pending and the rollout running", ro.Pending, ro.State)
	}
	s.connect(late)
	ro = s.until(ro.ID, "done", func(r api.Rollout) bool { return r.State == api.RolloutDone })
	if ro.Committed+ro.Failed != 200 {
		t.Errorf("done with %d committed and %d failed of 200", ro.Committed, ro.Failed)
	}
	if u := s.e.DeviceUpdate(late); u == nil || u.State != proto.StateCommitted && u.State != proto.StateRolledBack {
		t.Errorf("the late device's update: %+v", u)
	}
}

func TestRolloutOfflineDuringUpdateCountsAsFailed(t *testing.T) {
	s := newFleetSim(t, 10, 0)
	for _, id := range s.ids {
		s.connect(id)
	}
	// One device takes the offer and goes away mid-download.
	gone := s.ids[0]
	s.mu.Lock()
	s.off[gone] = false
	s.mu.Unlock()
	ro, err := s.e.Create(context.Background(), api.CreateRolloutRequest{Release: "v2.0.0", Stages: []float64{100}, Soak: "0s", MaxFailure: 5, OfflineDeadline: "30m"}, "t")
	if err != nil {
		t.Fatal(err)
	}
	s.e.HandleStatus(context.Background(), gone, &proto.UpdateStatus{Rollout: ro.ID, Version: "v2.0.0", State: proto.StateDownloading, Running: "v1.0.0", Target: "linux-arm64"})
	s.disconnect(gone)
	s.mu.Lock()
	s.ran[gone] = "v1.0.0"
	s.mu.Unlock()
	s.advance(31 * time.Minute)
	ro = s.until(ro.ID, "halted", func(r api.Rollout) bool { return r.State == api.RolloutHalted })
	if !strings.Contains(ro.Reason, "went offline during its update") {
		t.Errorf("reason %q", ro.Reason)
	}
}

func TestOneRolloutAtATimeAndPins(t *testing.T) {
	s := newFleetSim(t, 4, 0)
	ctx := context.Background()
	if err := s.e.PutPin(ctx, api.Pin{Name: "hold", Version: "v2.0.0", Device: "sim-00001"}, "t"); err != nil {
		t.Fatal(err)
	}
	ro, err := s.e.Create(ctx, api.CreateRolloutRequest{Release: "v2.0.0", Stages: []float64{100}, Soak: "1h"}, "t")
	if err != nil {
		t.Fatal(err)
	}
	if ro.Devices != 4 {
		t.Errorf("a pin at the same version keeps the device in: %d devices", ro.Devices)
	}
	if _, err := s.e.Create(ctx, api.CreateRolloutRequest{Release: "v2.0.0", Soak: "1h"}, "t"); err == nil || !strings.Contains(err.Error(), "is in rollout") {
		t.Errorf("a second rollout over the same devices: %v", err)
	}
	// A pinned device is offered its pinned version when it connects.
	s.e.Action(ctx, ro.ID, "abort", "t")
	s.connect(s.ids[0])
	if s.clockOffers(s.ids[0]) == 0 {
		t.Error("the pinned device was not offered its version")
	}
}

func (s *fleetSim) clockOffers(id string) int {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		n := s.offers[id]
		s.mu.Unlock()
		if n > 0 {
			return n
		}
		time.Sleep(5 * time.Millisecond)
	}
	return 0
}

// TestControllerWritesThroughItsStore: the controller's decisions (here a
// halt) go through the store Run is given, which fleetd fences by the
// leader's term: once the term is over, they fail there and the fleet's
// store keeps what it had.
func TestControllerWritesThroughItsStore(t *testing.T) {
	s := newFleetSim(t, 200, 0.1)
	for _, id := range s.ids {
		s.connect(id)
	}
	ctx := context.Background()
	ro, err := s.e.Create(ctx, api.CreateRolloutRequest{Release: "v2.0.0", Stages: []float64{10, 100}, Soak: "10m", MaxFailure: 5}, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	st := s.e.cfg.Store
	if err := st.Put(ctx, "leader/rollouts", []byte("the next leader")); err != nil {
		t.Fatal(err)
	}
	deposed := store.Guarded(st, store.Guard{Key: "leader/rollouts", Value: []byte("this replica")})
	deadline := time.Now().Add(time.Minute)
	for {
		s.e.evaluate(ctx, deposed)
		if r, _ := s.e.Get(ctx, ro.ID); r.State == api.RolloutHalted {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the rollout never halted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	b, err := st.Get(ctx, rolloutPrefix+ro.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"state":"running"`) {
		t.Errorf("a deposed controller's halt reached the store: %s", b)
	}
}

// TestStageWaitsForJustConnectedDevices: a device that has connected but
// whose first status has not arrived yet holds its stage (it is about to
// be offered the release), for StatusWait at most.
func TestStageWaitsForJustConnectedDevices(t *testing.T) {
	for _, tt := range []struct {
		name    string
		wait    time.Duration // after the connection, before evaluating
		advance bool
	}{
		{"status on the way", time.Second, false},
		{"no status within StatusWait", StatusWait + time.Second, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newFleetSim(t, 10, 0)
			// Every device has connected; no status has come yet.
			for _, id := range s.ids {
				s.e.Connected(id)
			}
			ro, err := s.e.Create(context.Background(), api.CreateRolloutRequest{Release: "v2.0.0", Selector: map[string]string{"fleet": "sim"},
				Stages: []float64{10, 100}, Soak: "0s", MaxFailure: 5}, "admin:test")
			if err != nil {
				t.Fatal(err)
			}
			s.advance(tt.wait)
			s.e.evaluate(context.Background(), nil)
			got, err := s.e.Get(context.Background(), ro.ID)
			if err != nil {
				t.Fatal(err)
			}
			if advanced := got.Stage > 0; advanced != tt.advance {
				t.Errorf("stage %d after %v; want advanced %v", got.Stage, tt.wait, tt.advance)
			}
			if !tt.advance {
				// The statuses come: the first stage's device is offered
				// the release, commits, and the stage moves on.
				for _, id := range s.ids {
					s.connect(id)
				}
				s.until(ro.ID, "the second stage", func(r api.Rollout) bool { return r.Stage == 1 })
			}
		})
	}
}

// replicaPair is a fleetSim's engine (the leader) and a second engine on
// the same store (another replica), holding the sim's first device: what
// the second pushes to it arrives on offers.
type replicaPair struct {
	s      *fleetSim
	other  *Engine
	dev    string
	offers chan *proto.UpdateOffer
	online atomic.Bool // the device's tunnel is on the other replica
}

func newReplicaPair(t *testing.T) *replicaPair {
	t.Helper()
	s := newFleetSim(t, 1, 0)
	p := &replicaPair{s: s, dev: s.ids[0], offers: make(chan *proto.UpdateOffer, 4)}
	var err error
	p.other, err = New(Config{Store: s.e.cfg.Store, Releases: s.e.cfg.Releases, Devices: s.e.cfg.Devices, Tick: 10 * time.Millisecond,
		Send: func(id string, m proto.Message) error {
			if o, ok := m.(*proto.UpdateOffer); ok && id == p.dev {
				p.offers <- o
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	// The leader knows the device is online on the other replica.
	p.online.Store(true)
	s.e.cfg.Elsewhere = func(id string) bool { return id == p.dev && p.online.Load() }
	s.e.cfg.Send = func(id string, m proto.Message) error {
		t.Errorf("the leader pushed %s to a device it does not hold", m.Kind())
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	wg.Go(func() { s.e.Serve(ctx) })
	wg.Go(func() { p.other.Serve(ctx) })
	// The device is connected to the other replica, idle.
	p.other.Connected(p.dev)
	if reply := p.other.HandleStatus(ctx, p.dev, &proto.UpdateStatus{State: proto.StateIdle, Running: "v1.0.0", Target: "linux-arm64"}); reply != nil {
		t.Fatalf("an offer before any rollout: %+v", reply)
	}
	return p
}

// next returns the next message the other replica pushes to the device.
func (p *replicaPair) next(t *testing.T, what string) *proto.UpdateOffer {
	t.Helper()
	select {
	case o := <-p.offers:
		return o
	case <-time.After(time.Minute):
		t.Fatalf("the device's replica never sent %s", what)
		return nil
	}
}

// status is the device's status, heard by the other replica.
func (p *replicaPair) status(rollout, state, running string) {
	p.other.HandleStatus(context.Background(), p.dev, &proto.UpdateStatus{Rollout: rollout, Version: "v2.0.0", State: state, Running: running, Target: "linux-arm64"})
}

// TestRolloutOverReplicas: two engines on one store, as two fleetd
// replicas. The rollout is created on the leader's replica; the device's
// tunnel is on the other, which offers it the release and hears its
// statuses; the leader sees them through the store and finishes the
// rollout.
func TestRolloutOverReplicas(t *testing.T) {
	p := newReplicaPair(t)
	ctx := context.Background()
	ro, err := p.s.e.Create(ctx, api.CreateRolloutRequest{Release: "v2.0.0", Stages: []float64{100}, Soak: "0s"}, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	if o := p.next(t, "the offer of a rollout created on another replica"); o.Rollout != ro.ID || o.Version != "v2.0.0" || o.Cancel {
		t.Errorf("offer %+v", o)
	}
	p.status(ro.ID, proto.StateDownloading, "v1.0.0")
	p.status(ro.ID, proto.StateCommitted, "v2.0.0")
	p.s.until(ro.ID, "done, from the other replica's statuses", func(r api.Rollout) bool { return r.State == api.RolloutDone && r.Committed == 1 })
	// And the other replica lists it done too.
	deadline := time.Now().Add(time.Minute)
	for {
		if r, _ := p.other.Get(ctx, ro.ID); r.State == api.RolloutDone {
			break
		}
		if time.Now().After(deadline) {
			r, _ := p.other.Get(ctx, ro.ID)
			t.Fatalf("the other replica shows the rollout %s", r.State)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAbortReachesOtherReplicas: a rollout aborted on the leader's replica
// cancels the download under way on the replica holding the device.
func TestAbortReachesOtherReplicas(t *testing.T) {
	p := newReplicaPair(t)
	ctx := context.Background()
	ro, err := p.s.e.Create(ctx, api.CreateRolloutRequest{Release: "v2.0.0", Stages: []float64{100}, Soak: "0s"}, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	p.next(t, "the offer")
	p.status(ro.ID, proto.StateDownloading, "v1.0.0")
	if _, err := p.s.e.Action(ctx, ro.ID, "abort", "admin:test"); err != nil {
		t.Fatal(err)
	}
	if o := p.next(t, "the cancellation"); !o.Cancel || o.Rollout != ro.ID {
		t.Errorf("after the abort the device got %+v, want its cancellation", o)
	}
}

// TestOfflineDeadlineOverReplicas: a device whose tunnel was on another
// replica goes offline in the middle of its update and stays away: the
// leader counts it failed past the offline deadline, from when it noticed.
func TestOfflineDeadlineOverReplicas(t *testing.T) {
	p := newReplicaPair(t)
	ctx := context.Background()
	ro, err := p.s.e.Create(ctx, api.CreateRolloutRequest{Release: "v2.0.0", Stages: []float64{100}, Soak: "0s", OfflineDeadline: "10m"}, "admin:test")
	if err != nil {
		t.Fatal(err)
	}
	p.next(t, "the offer")
	p.status(ro.ID, proto.StateDownloading, "v1.0.0")
	// The leader hears of the download through the store.
	p.s.until(ro.ID, "the device downloading", func(r api.Rollout) bool { return r.InProgress == 1 })
	p.online.Store(false) // its tunnel is gone, from every replica
	p.other.Disconnected(p.dev)
	p.s.e.evaluate(ctx, nil) // the leader notices
	p.s.advance(9 * time.Minute)
	p.s.e.evaluate(ctx, nil)
	if r, _ := p.s.e.Get(ctx, ro.ID); r.State != api.RolloutRunning {
		t.Fatalf("before the deadline the rollout is %s (%s)", r.State, r.Reason)
	}
	p.s.advance(2 * time.Minute)
	r := p.s.until(ro.ID, "halted", func(r api.Rollout) bool { return r.State == api.RolloutHalted })
	if !strings.Contains(r.Reason, "went offline during its update") {
		t.Errorf("halted saying %q", r.Reason)
	}
}

// TestFollowResetDropsWhatWentAway: a resync of the store's view (the
// watch was down) replaces the engine's pins and device states with the
// store's, so one deleted meanwhile is gone here too; rollouts are never
// deleted and stay.
func TestFollowResetDropsWhatWentAway(t *testing.T) {
	s := newFleetSim(t, 1, 0)
	e := s.e
	e.putPin(pinPrefix+"old", []byte(`{"name":"old","version":"1.0.0"}`))
	e.putPin(pinPrefix+"kept", []byte(`{"name":"kept","version":"1.0.0"}`))
	e.putStatus(statusPrefix+"gone", []byte(`{"state":"idle"}`))
	e.rollouts["r1"] = &record{Rollout: api.Rollout{ID: "r1"}}
	for _, f := range e.followed() {
		switch f.prefix {
		case pinPrefix:
			f.reset([]store.Item{{Key: pinPrefix + "kept", Value: []byte(`{"name":"kept","version":"1.1.0"}`)}})
		default:
			f.reset(nil)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.pins["old"]; ok || e.pins["kept"].Version != "1.1.0" || len(e.pins) != 1 {
		t.Errorf("pins after the reset: %+v, want only kept at 1.1.0", e.pins)
	}
	if len(e.status) != 0 {
		t.Errorf("device states after the reset: %+v, want none", e.status)
	}
	if e.rollouts["r1"] == nil {
		t.Error("a reset with no rollouts dropped one: rollouts are never deleted")
	}
}
