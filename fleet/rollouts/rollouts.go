// Package rollouts moves devices to agent releases in stages: a rollout
// selects devices by label, offers the release to a growing share of them
// (stages, 1% 10% 50% 100% by default), advances a stage once its soak time
// is over and its online devices are done, and halts by itself, saying
// why, when failures (a failed or refused update, a rollback, or a device
// that went offline during its update and stayed away past a deadline)
// cross the rollout's threshold. Devices that were offline are offered the
// release when they come back. A device is in at most one active rollout,
// and a pin holds a device or a label set at a version.
//
// The engine hears the agents' update-status messages (HandleStatus) and
// answers with offers on the control stream; it pushes offers only to
// agents that have sent a status on their current connection. Rollouts,
// pins and each device's last update state are kept in the fleet's store
// ("rollouts/ID", "otapins/NAME", "otadevices/ID").
//
// Only fleet/... imports this package.
package rollouts

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/releases"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/ota"
)

// Config configures an Engine. Store, Releases, Devices and Send are
// required.
type Config struct {
	Store    store.Store
	Releases *releases.Service
	Devices  *devices.Registry
	// Send pushes a message down a device's control stream.
	Send func(deviceID string, m proto.Message) error
	// Record writes a fleet audit event. Optional.
	Record func(ctx context.Context, ev *proto.AuditEvent)
	// Elsewhere, on several replicas, reports a device whose tunnel
	// another replica holds: that replica offers it its release, and its
	// stage waits for it as for a device ready here. Optional.
	Elsewhere func(deviceID string) bool
	// Tick is how often rollouts are evaluated; default 1s.
	Tick time.Duration
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// StatusWait is how long a device that has just connected holds its
// rollout's stage while the fleet waits for its first update status (an
// agent that sends none, too old for updates, then stops holding it).
const StatusWait = 30 * time.Second

// Defaults of a rollout.
var (
	DefaultStages          = []float64{1, 10, 50, 100}
	DefaultSoak            = time.Hour
	DefaultMaxFailure      = 5.0
	DefaultOfflineDeadline = 30 * time.Minute
)

const (
	rolloutPrefix = "rollouts/"
	pinPrefix     = "otapins/"
	statusPrefix  = "otadevices/"
)

// record is a rollout as kept in the store.
type record struct {
	api.Rollout
	DeviceIDs []string `json:"device_ids"`
}

// devStatus is a device's last update state as the fleet heard it.
type devStatus struct {
	Rollout string    `json:"rollout,omitempty"`
	Version string    `json:"version,omitempty"`
	State   string    `json:"state"`
	Reason  string    `json:"reason,omitempty"`
	Running string    `json:"running,omitempty"`
	Target  string    `json:"target,omitempty"`
	Done    int64     `json:"done,omitempty"`
	Total   int64     `json:"total,omitempty"`
	At      time.Time `json:"at"`
}

// Engine runs rollouts. Create it with New, Load it, and call Run.
type Engine struct {
	cfg       Config
	log       *slog.Logger
	wake      chan struct{} // the controller's (Run)
	offerWake chan struct{} // the offers' (Serve)

	mu       sync.Mutex // guards everything below
	rollouts map[string]*record
	pins     map[string]api.Pin
	status   map[string]*devStatus
	ready    map[string]bool      // sent a status on the current connection
	joined   map[string]time.Time // when the current connection began
	offered  map[string]string    // rollout offered on the current connection
	offline  map[string]time.Time // when a device's connection ended
}

// New returns an engine for cfg.
func New(cfg Config) (*Engine, error) {
	if cfg.Store == nil || cfg.Releases == nil || cfg.Devices == nil || cfg.Send == nil {
		return nil, errors.New("rollouts: Store, Releases, Devices and Send are required")
	}
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Engine{cfg: cfg, log: cfg.Logger.With("component", "rollouts"), wake: make(chan struct{}, 1), offerWake: make(chan struct{}, 1),
		rollouts: map[string]*record{}, pins: map[string]api.Pin{}, status: map[string]*devStatus{},
		ready: map[string]bool{}, joined: map[string]time.Time{}, offered: map[string]string{}, offline: map[string]time.Time{}}, nil
}

// Load reads rollouts, pins and device states from the store.
func (e *Engine) Load(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	items, err := e.cfg.Store.List(ctx, rolloutPrefix)
	if err != nil {
		return fmt.Errorf("rollouts: %w", err)
	}
	for _, it := range items {
		var r record
		if err := json.Unmarshal(it.Value, &r); err != nil {
			return fmt.Errorf("rollouts: %s: %w", it.Key, err)
		}
		e.rollouts[r.ID] = &r
	}
	if items, err = e.cfg.Store.List(ctx, pinPrefix); err != nil {
		return fmt.Errorf("rollouts: %w", err)
	}
	for _, it := range items {
		var p api.Pin
		if err := json.Unmarshal(it.Value, &p); err == nil {
			e.pins[p.Name] = p
		}
	}
	if items, err = e.cfg.Store.List(ctx, statusPrefix); err != nil {
		return fmt.Errorf("rollouts: %w", err)
	}
	for _, it := range items {
		var s devStatus
		if err := json.Unmarshal(it.Value, &s); err == nil {
			e.status[strings.TrimPrefix(it.Key, statusPrefix)] = &s
		}
	}
	return nil
}

func (e *Engine) record(ctx context.Context, ev *proto.AuditEvent) {
	if e.cfg.Record != nil {
		e.cfg.Record(ctx, ev)
	}
}

func (e *Engine) poke() {
	for _, c := range []chan struct{}{e.wake, e.offerWake} {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// invalid marks errors of the caller's input (httpapi answers 400).
type invalid struct{ error }

func (invalid) InvalidInput() bool { return true }

func invalidf(format string, args ...any) error { return invalid{fmt.Errorf(format, args...)} }

func parseDur(s string, def time.Duration, what string) (time.Duration, error) {
	if s == "" {
		return def, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, invalidf("rollouts: %s %q: want a duration like 1h or 30m", what, s)
	}
	return d, nil
}

// Create starts a rollout of a release to the devices the selector picks.
func (e *Engine) Create(ctx context.Context, req api.CreateRolloutRequest, by string) (api.Rollout, error) {
	rel, err := e.cfg.Releases.Get(ctx, req.Release)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return api.Rollout{}, invalidf("rollouts: no release %s: add it with fleetctl releases add", req.Release)
		}
		return api.Rollout{}, err
	}
	stages := req.Stages
	if len(stages) == 0 {
		stages = DefaultStages
	}
	for i, s := range stages {
		if s <= 0 || s > 100 || (i > 0 && s <= stages[i-1]) {
			return api.Rollout{}, invalidf("rollouts: stages must grow from above 0 to at most 100 percent, like 1,10,50,100")
		}
	}
	if stages[len(stages)-1] != 100 {
		stages = append(slices.Clone(stages), 100)
	}
	soak, err := parseDur(req.Soak, DefaultSoak, "soak")
	if err != nil {
		return api.Rollout{}, err
	}
	deadline, err := parseDur(req.OfflineDeadline, DefaultOfflineDeadline, "offline deadline")
	if err != nil {
		return api.Rollout{}, err
	}
	if _, err := parseDur(req.HealthTimeout, 0, "health timeout"); err != nil {
		return api.Rollout{}, err
	}
	maxFail := req.MaxFailure
	if maxFail == 0 {
		maxFail = DefaultMaxFailure
	}
	if maxFail < 0 || maxFail > 100 {
		return api.Rollout{}, invalidf("rollouts: max failure %v%% must be 0 to 100", maxFail)
	}
	if _, err := ota.ParseWindow(req.Window); err != nil {
		return api.Rollout{}, invalidf("rollouts: %v", err)
	}
	devs, err := e.cfg.Devices.List(ctx)
	if err != nil {
		return api.Rollout{}, err
	}
	id := newID()
	e.mu.Lock()
	defer e.mu.Unlock()
	var ids []string
	for _, d := range devs {
		if !matches(req.Selector, d.Labels) {
			continue
		}
		if p, ok := e.pinOfLocked(d); ok && p.Version != rel.Version {
			continue // pinned elsewhere
		}
		for _, r := range e.rollouts {
			if active(r.State) && slices.Contains(r.DeviceIDs, d.ID) {
				return api.Rollout{}, fmt.Errorf("rollouts: device %s is in rollout %s (%s), which is %s: abort it or wait for it to end: %w",
					d.Name, r.ID, r.Release, r.State, store.ErrConflict)
			}
		}
		ids = append(ids, d.ID)
	}
	if len(ids) == 0 {
		return api.Rollout{}, invalidf("rollouts: the selector %s matches no device that is not pinned", formatLabels(req.Selector))
	}
	// A random but fixed order: stage k takes the first share of it.
	slices.SortFunc(ids, func(a, b string) int { return strings.Compare(order(id, a), order(id, b)) })
	now := e.cfg.Now().UTC()
	r := &record{Rollout: api.Rollout{
		ID: id, Release: rel.Version, Selector: maps.Clone(req.Selector), Stages: stages, Soak: soak.String(),
		MaxFailure: maxFail, Window: req.Window, OfflineDeadline: deadline.String(), HealthTimeout: req.HealthTimeout,
		BandwidthBytes: req.BandwidthBytes, State: api.RolloutRunning, CreatedAt: now, CreatedBy: by, UpdatedAt: now, StageAt: now,
	}, DeviceIDs: ids}
	if err := e.saveLocked(ctx, e.cfg.Store, r); err != nil {
		return api.Rollout{}, err
	}
	e.rollouts[id] = r
	e.record(ctx, &proto.AuditEvent{Type: proto.EventRolloutCreate, User: by, Outcome: proto.OutcomeSuccess,
		Fields: map[string]string{"rollout": id, "version": rel.Version, "devices": fmt.Sprint(len(ids)), "selector": formatLabels(req.Selector)}})
	e.log.Info("rollout created", "rollout", id, "version", rel.Version, "devices", len(ids))
	e.poke()
	return e.viewLocked(r), nil
}

func newID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "r-" + hex.EncodeToString(b)
}

func order(rollout, device string) string {
	h := sha256.Sum256([]byte(rollout + "/" + device))
	return hex.EncodeToString(h[:8])
}

func active(state string) bool {
	return state == api.RolloutRunning || state == api.RolloutPaused || state == api.RolloutHalted
}

func matches(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func formatLabels(l map[string]string) string {
	if len(l) == 0 {
		return "(all devices)"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}

// saveLocked writes r to st.
func (e *Engine) saveLocked(ctx context.Context, st store.Store, r *record) error {
	b, _ := json.Marshal(r)
	if err := st.Put(ctx, rolloutPrefix+r.ID, b); err != nil {
		return fmt.Errorf("rollouts: save %s: %w", r.ID, err)
	}
	return nil
}

// List returns every rollout with its progress, newest first.
func (e *Engine) List(ctx context.Context) []api.Rollout {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]api.Rollout, 0, len(e.rollouts))
	for _, r := range e.rollouts {
		out = append(out, e.viewLocked(r))
	}
	slices.SortFunc(out, func(a, b api.Rollout) int { return b.CreatedAt.Compare(a.CreatedAt) })
	e.names(ctx, out)
	return out
}

// Get returns one rollout with its progress.
func (e *Engine) Get(ctx context.Context, id string) (api.Rollout, error) {
	e.mu.Lock()
	r, ok := e.rollouts[id]
	var v api.Rollout
	if ok {
		v = e.viewLocked(r)
	}
	e.mu.Unlock()
	if !ok {
		return api.Rollout{}, fmt.Errorf("rollouts: no rollout %s: %w", id, store.ErrNotFound)
	}
	list := []api.Rollout{v}
	e.names(ctx, list)
	return list[0], nil
}

// names turns device IDs in failures into names.
func (e *Engine) names(ctx context.Context, list []api.Rollout) {
	devs, err := e.cfg.Devices.List(ctx)
	if err != nil {
		return
	}
	name := map[string]string{}
	for _, d := range devs {
		name[d.ID] = d.Name
	}
	for i := range list {
		for j, f := range list[i].Failures {
			if n, ok := name[f.Device]; ok {
				list[i].Failures[j].Device = n
			}
		}
	}
}

// Action pauses, resumes or aborts a rollout.
func (e *Engine) Action(ctx context.Context, id, action, by string) (api.Rollout, error) {
	e.mu.Lock()
	r, ok := e.rollouts[id]
	if !ok {
		e.mu.Unlock()
		return api.Rollout{}, fmt.Errorf("rollouts: no rollout %s: %w", id, store.ErrNotFound)
	}
	var cancel []string
	switch {
	case action == "pause" && (r.State == api.RolloutRunning):
		r.State, r.Reason = api.RolloutPaused, "paused by "+by
	case action == "resume" && (r.State == api.RolloutPaused || r.State == api.RolloutHalted):
		r.State, r.Reason = api.RolloutRunning, ""
		r.StageAt = e.cfg.Now().UTC()
	case action == "abort" && active(r.State):
		r.State, r.Reason = api.RolloutAborted, "aborted by "+by
		for _, d := range r.DeviceIDs {
			if st := e.status[d]; st != nil && st.Rollout == id && !terminal(st.State) && e.ready[d] {
				cancel = append(cancel, d)
				delete(e.offered, d) // cancelled here; Serve cancels it on the replicas holding the others
			}
		}
	default:
		e.mu.Unlock()
		return api.Rollout{}, invalidf("rollouts: cannot %s rollout %s: it is %s", action, id, r.State)
	}
	r.UpdatedAt = e.cfg.Now().UTC()
	err := e.saveLocked(ctx, e.cfg.Store, r)
	v := e.viewLocked(r)
	e.mu.Unlock()
	if err != nil {
		return api.Rollout{}, err
	}
	for _, d := range cancel {
		e.cfg.Send(d, &proto.UpdateOffer{Rollout: id, Cancel: true})
	}
	e.record(ctx, &proto.AuditEvent{Type: proto.EventRolloutChange, User: by, Outcome: proto.OutcomeSuccess,
		Fields: map[string]string{"rollout": id, "action": action, "state": r.State}})
	e.poke()
	return v, nil
}

func terminal(state string) bool {
	switch state {
	case proto.StateCommitted, proto.StateFailed, proto.StateRolledBack, proto.StateRefused:
		return true
	}
	return false
}

func failedState(state string) bool {
	return state == proto.StateFailed || state == proto.StateRolledBack || state == proto.StateRefused
}

// progress classifies a rollout's devices.
type progress struct {
	assigned                               int
	committed, failed, inProgress, pending int
	failures                               []api.RolloutFailure
	toOffer                                []string
	onlineBusy                             int // assigned, online and not done
	deviceDone                             int // every device, any stage: done
}

// progressLocked classifies r's devices; toOffer lists the assigned
// devices that are ready and were not offered r on their connection.
func (e *Engine) progressLocked(r *record) progress {
	var p progress
	now := e.cfg.Now()
	deadline, _ := time.ParseDuration(r.OfflineDeadline)
	p.assigned = int(math.Ceil(r.Stages[min(r.Stage, len(r.Stages)-1)] / 100 * float64(len(r.DeviceIDs))))
	for i, id := range r.DeviceIDs {
		st := e.status[id]
		mine := st != nil && st.Rollout == r.ID
		switch {
		case st != nil && st.Running == r.Release, mine && st.State == proto.StateCommitted:
			p.deviceDone++
			if i < p.assigned {
				p.committed++
			}
			continue
		case mine && failedState(st.State):
			p.deviceDone++
			if i < p.assigned {
				p.failed++
				p.failures = append(p.failures, api.RolloutFailure{Device: id, State: st.State, Reason: st.Reason})
			}
			continue
		}
		if i >= p.assigned {
			continue
		}
		if mine && st.State != proto.StateIdle {
			if off, gone := e.offline[id]; gone && !e.ready[id] && deadline > 0 && now.Sub(off) > deadline && st.State != proto.StateWaiting {
				p.failed++
				p.failures = append(p.failures, api.RolloutFailure{Device: id, State: "offline",
					Reason: fmt.Sprintf("went offline during its update (%s) and stayed away more than %s", st.State, deadline)})
				continue
			}
			p.inProgress++
		} else {
			p.pending++
		}
		if e.ready[id] {
			p.onlineBusy++
			if e.offered[id] != r.ID {
				p.toOffer = append(p.toOffer, id)
			}
		} else if st != nil && e.cfg.Elsewhere != nil && e.cfg.Elsewhere(id) {
			// Ready on the replica holding its tunnel, which offers.
			p.onlineBusy++
		} else if at, ok := e.joined[id]; ok && now.Sub(at) < StatusWait {
			// Connected, its first status on the way: it is about to
			// be offered, so its stage waits for it (as for a device
			// that is offline, it waits no longer than StatusWait).
			p.onlineBusy++
		}
	}
	return p
}

func (e *Engine) viewLocked(r *record) api.Rollout {
	v := r.Rollout
	v.Selector = maps.Clone(r.Selector)
	v.Stages = slices.Clone(r.Stages)
	p := e.progressLocked(r)
	v.Devices, v.Assigned, v.Committed, v.Failed, v.InProgress, v.Pending = len(r.DeviceIDs), p.assigned, p.committed, p.failed, p.inProgress, p.pending
	if len(p.failures) > 20 {
		p.failures = p.failures[:20]
	}
	v.Failures = p.failures
	return v
}

// Run evaluates rollouts every tick and when something changes, until
// ctx ends: it advances, halts and finishes them, and pushes offers. One
// fleetd at a time runs it (fleetd: the elected leader, fleet/leader), and
// its changes are written through st, the leader's view of the store
// fenced by its term; nil means Config.Store.
func (e *Engine) Run(ctx context.Context, st store.Store) {
	t := time.NewTicker(e.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-e.wake:
		}
		e.evaluate(ctx, st)
	}
}

type send struct {
	device string
	msg    proto.Message
}

// evaluate advances, halts and finishes rollouts, and pushes offers; it
// writes the rollouts it changes through st (nil: Config.Store).
func (e *Engine) evaluate(ctx context.Context, st store.Store) {
	if st == nil {
		st = e.cfg.Store
	}
	var sends []send
	var events []*proto.AuditEvent
	e.mu.Lock()
	now := e.cfg.Now().UTC()
	for _, r := range e.rollouts {
		if r.State != api.RolloutRunning {
			continue
		}
		changed := false
		e.noticeOfflineLocked(r, now)
		p := e.progressLocked(r)
		if p.failed > 0 && float64(p.failed)*100 > r.MaxFailure*float64(p.assigned) {
			r.State = api.RolloutHalted
			r.Reason = haltReason(p, r)
			changed = true
			e.log.Warn("rollout halted", "rollout", r.ID, "reason", r.Reason)
			events = append(events, &proto.AuditEvent{Type: proto.EventRolloutChange, Outcome: proto.OutcomeFailure, Message: r.Reason,
				Fields: map[string]string{"rollout": r.ID, "action": "halt", "state": r.State}})
		} else {
			soak, _ := time.ParseDuration(r.Soak)
			if r.Stage < len(r.Stages)-1 && now.Sub(r.StageAt) >= soak && p.onlineBusy == 0 {
				r.Stage++
				r.StageAt = now
				changed = true
				e.log.Info("rollout stage advanced", "rollout", r.ID, "stage", r.Stage, "percent", r.Stages[r.Stage])
				events = append(events, &proto.AuditEvent{Type: proto.EventRolloutChange, Outcome: proto.OutcomeSuccess,
					Fields: map[string]string{"rollout": r.ID, "action": "advance", "stage": fmt.Sprint(r.Stage), "percent": fmt.Sprint(r.Stages[r.Stage])}})
				p = e.progressLocked(r)
			}
			if r.Stage == len(r.Stages)-1 && p.deviceDone == len(r.DeviceIDs) {
				r.State, r.Reason = api.RolloutDone, ""
				changed = true
				events = append(events, &proto.AuditEvent{Type: proto.EventRolloutChange, Outcome: proto.OutcomeSuccess,
					Fields: map[string]string{"rollout": r.ID, "action": "done", "state": r.State}})
			}
		}
		if changed {
			r.UpdatedAt = now
			if err := e.saveLocked(ctx, st, r); err != nil {
				e.log.Error("save rollout", "err", err)
			}
		}
		if r.State == api.RolloutRunning {
			sends = append(sends, e.offersLocked(ctx, r, p)...)
		}
	}
	e.mu.Unlock()
	for _, ev := range events {
		e.record(ctx, ev)
	}
	e.deliver(sends)
}

// offersLocked returns the offers of running rollout r (progress p) to
// the devices ready here that have not had them, and marks them offered.
func (e *Engine) offersLocked(ctx context.Context, r *record, p progress) []send {
	var sends []send
	for _, id := range p.toOffer {
		if o := e.offerLocked(ctx, r, id); o != nil {
			e.offered[id] = r.ID
			sends = append(sends, send{id, o})
		}
	}
	return sends
}

// deliver pushes offers; one that does not reach its device is offered
// again later.
func (e *Engine) deliver(sends []send) {
	for _, s := range sends {
		if err := e.cfg.Send(s.device, s.msg); err != nil {
			e.mu.Lock()
			delete(e.offered, s.device)
			e.mu.Unlock()
		}
	}
}

func haltReason(p progress, r *record) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d of %d devices failed (%.1f%%, more than the %.1f%% allowed)", p.failed, p.assigned,
		float64(p.failed)*100/float64(max(p.assigned, 1)), r.MaxFailure)
	for i, f := range p.failures {
		if i == 3 {
			b.WriteString("; ...")
			break
		}
		fmt.Fprintf(&b, "; %s %s: %s", f.Device, f.State, f.Reason)
	}
	return b.String()
}

// offerLocked builds the offer of r's release for a device; nil when the
// release has no artefact for the device's target.
func (e *Engine) offerLocked(ctx context.Context, r *record, id string) *proto.UpdateOffer {
	st := e.status[id]
	if st == nil || st.Target == "" {
		return nil
	}
	o, err := e.buildOffer(ctx, r.ID, r.Release, st)
	if err != nil {
		e.log.Warn("no offer", "rollout", r.ID, "device_id", id, "err", err)
		return nil
	}
	o.Window, o.BandwidthBytes = r.Window, r.BandwidthBytes
	if d, err := time.ParseDuration(r.HealthTimeout); err == nil {
		o.HealthMillis = d.Milliseconds()
	}
	return o
}

func (e *Engine) buildOffer(ctx context.Context, rollout, version string, st *devStatus) (*proto.UpdateOffer, error) {
	rel, err := e.cfg.Releases.Get(ctx, version)
	if err != nil {
		return nil, err
	}
	m, err := ota.ParseManifest(rel.Manifest)
	if err != nil {
		return nil, err
	}
	art, ok := m.Artifact(st.Target)
	if !ok {
		return nil, fmt.Errorf("release %s has no artefact for %s", version, st.Target)
	}
	o := &proto.UpdateOffer{Rollout: rollout, Version: version, Manifest: rel.Manifest, ManifestSig: rel.ManifestSig,
		ArtifactPath: releases.BlobPath(art.SHA256), ArtifactSig: rel.Sigs[st.Target]}
	for _, r := range e.cfg.Releases.Rotations(ctx) {
		o.Rotations = append(o.Rotations, proto.KeyRotation{Key: r.Key, Sig: r.Sig})
	}
	for _, d := range rel.Deltas {
		// A delta no running replica holds is not offered: the whole
		// artefact may be.
		if d.Target == st.Target && d.From == st.Running && d.Skipped == "" && e.cfg.Releases.Available(ctx, d.SHA256) {
			from, _ := hex.DecodeString(d.FromSHA256)
			sum, _ := hex.DecodeString(d.SHA256)
			o.Delta = &proto.UpdateDelta{FromSHA256: from, Path: releases.BlobPath(d.SHA256), Size: d.Size, SHA256: sum}
		}
	}
	return o, nil
}

// HandleStatus takes a device's update status and returns the offer to
// answer it with, if any. The first status on a connection makes the
// device ready for offers.
func (e *Engine) HandleStatus(ctx context.Context, deviceID string, m *proto.UpdateStatus) proto.Message {
	now := e.cfg.Now().UTC()
	e.mu.Lock()
	defer e.mu.Unlock()
	first := !e.ready[deviceID]
	e.ready[deviceID] = true
	delete(e.offline, deviceID)
	prev := e.status[deviceID]
	st := &devStatus{Rollout: m.Rollout, Version: m.Version, State: m.State, Reason: m.Reason, Running: m.Running,
		Target: m.Target, Done: m.Done, Total: m.Total, At: now}
	if m.State == proto.StateIdle && prev != nil && prev.Rollout != "" && prev.Running == m.Running {
		// An idle report keeps what the fleet knew of the device's last
		// rollout (an agent that lost its state must not erase a failure).
		st.Rollout, st.Version, st.State, st.Reason = prev.Rollout, prev.Version, prev.State, prev.Reason
	}
	e.status[deviceID] = st
	if prev == nil || prev.State != st.State || prev.Rollout != st.Rollout || prev.Running != st.Running || prev.Reason != st.Reason {
		b, _ := json.Marshal(st)
		if err := e.cfg.Store.Put(ctx, statusPrefix+deviceID, b); err != nil {
			e.log.Warn("save device update state", "device_id", deviceID, "err", err)
		}
		if terminal(st.State) || prev == nil || prev.State != st.State {
			e.poke()
		}
	}
	if !first {
		return nil
	}
	// Answer the first status of a connection with the device's offer.
	for _, r := range e.rollouts {
		if r.State != api.RolloutRunning {
			continue
		}
		if slices.Contains(e.progressLocked(r).toOffer, deviceID) {
			if o := e.offerLocked(ctx, r, deviceID); o != nil {
				e.offered[deviceID] = r.ID
				return o
			}
		}
	}
	if o := e.pinOfferLocked(ctx, deviceID, st); o != nil {
		return o
	}
	return nil
}

// Connected tells the engine a device made a new connection: offers wait
// for the status it sends on it, and what was offered on an earlier
// connection is offered again.
func (e *Engine) Connected(deviceID string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.ready, deviceID)
	delete(e.offered, deviceID)
	e.joined[deviceID] = e.cfg.Now()
}

// Disconnected tells the engine a device's connection ended.
func (e *Engine) Disconnected(deviceID string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.ready, deviceID)
	delete(e.offered, deviceID)
	delete(e.joined, deviceID)
	e.offline[deviceID] = e.cfg.Now()
}

// DeviceUpdate returns where a device's update stands; nil if the fleet
// never heard.
func (e *Engine) DeviceUpdate(deviceID string) *api.DeviceUpdate {
	e.mu.Lock()
	defer e.mu.Unlock()
	st := e.status[deviceID]
	if st == nil {
		return nil
	}
	u := &api.DeviceUpdate{Target: st.Version, Rollout: st.Rollout, State: st.State, Reason: st.Reason, Done: st.Done, Total: st.Total, At: st.At}
	if u.State == proto.StateIdle {
		u.Target = ""
	}
	return u
}
