// Package update is the agent's OTA self-update: it takes the fleet's
// update offers, checks them against the release keys the device pins,
// downloads the artefact (or a delta from the running binary) over the
// tunnel with resumable HTTP Range requests, verifies hash and signature
// of the result, puts it in place with github.com/minio/selfupdate
// (fsyncing the new binary and its folder, which selfupdate does not do),
// keeps the old binary, and exits for systemd to start the new one. The
// new agent is on trial until it is healthy (systemd ready and its tunnel
// up); if it is not within the deadline, or it crashes, the old binary
// comes back by itself (check.go) and the fleet hears rolled_back with the
// reason. Every step is an audit event in the device's audit queue.
//
// Only firmware/... imports this package.
package update

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/ota"
)

// Settings are the device's OTA settings, the Update block of agent.Config
// (flags --release-key and --update-*, and the same file keys). The zero
// value works (updates need a release key).
type Settings struct {
	// ReleaseKeys are minisign public keys (the base64 line of a .pub
	// file) this device trusts for releases. They are pinned in
	// DATA_DIR/update/keys.json at the first start that has them; keys
	// added later come by rotation (signed by a pinned key) or here.
	// Without any key every offer is refused.
	ReleaseKeys []string
	// MaxBandwidth caps downloads, bytes per second; 0: no cap of the
	// device's own (a rollout may set one; the smaller applies).
	MaxBandwidth int64
	// Window, "HH:MM-HH:MM" in UTC, limits downloads and restarts to a
	// maintenance window; "" any time (a rollout may set its own; both
	// apply).
	Window string
	// HealthTimeout is how long a new agent has to come up healthy
	// before it is rolled back; default DefaultHealthTimeout (a rollout
	// may set it).
	HealthTimeout time.Duration
	// Off refuses every update offer.
	Off bool
}

// DefaultHealthTimeout is Settings.HealthTimeout's default.
const DefaultHealthTimeout = 2 * time.Minute

// Config configures an Updater. Dir, Dial and Send are required.
type Config struct {
	Settings
	// Dir is the update folder (DATA_DIR/update): state, pinned keys,
	// downloads.
	Dir string
	// Target is the agent binary's path (selfupdate's TargetPath);
	// default the running executable, with symbolic links resolved.
	Target string
	// Version and BuildTarget are the running binary's
	// (internal/buildinfo).
	Version, BuildTarget string
	// Check is what the start-up check found (Startup).
	Check CheckResult
	// Dial opens a stream to the fleet's "ota" service (over the tunnel).
	Dial func(ctx context.Context) (net.Conn, error)
	// Send sends a message on the control stream; it fails while the
	// tunnel is down (the status is sent again when it comes up).
	Send func(proto.Message) error
	// Emit writes an audit event to the device's queue. Optional.
	Emit func(ctx context.Context, ev *proto.AuditEvent) error
	// Restart makes the agent exit for its supervisor to start it again,
	// on the new (or, after a rollback, the old) binary. Required.
	Restart func(reason string)
	// MinFree is the room a download and an apply must leave free on
	// their file systems; default 4 MiB.
	MinFree int64
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Updater runs the device's updates. Create it with New, call Run, and
// feed it offers (Offer) and tunnel state (LinkUp).
type Updater struct {
	cfg Config
	log *slog.Logger

	wake chan struct{}

	mu      sync.Mutex // guards keys, offer, status, cancel and trial
	keys    ota.Keys
	offer   *proto.UpdateOffer // the latest offer not yet taken by Run
	status  proto.UpdateStatus // the last status, sent again at every LinkUp
	cancel  context.CancelFunc // ends the update under way
	working string             // rollout of the update under way
	trial   bool               // on trial: commit at the first LinkUp
	linkUp  bool
	// links counts the link-ups: each new connection (to another fleetd
	// replica, say) gets the status, even when it went down and up
	// between two turns of Run.
	links int
}

// New checks cfg, pins the configured release keys and returns an
// Updater.
func New(cfg Config) (*Updater, error) {
	if cfg.Dir == "" || cfg.Dial == nil || cfg.Send == nil || cfg.Restart == nil {
		return nil, errors.New("update: Dir, Dial, Send and Restart are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MinFree <= 0 {
		cfg.MinFree = 4 << 20
	}
	if cfg.HealthTimeout <= 0 {
		cfg.HealthTimeout = DefaultHealthTimeout
	}
	if _, err := ota.ParseWindow(cfg.Window); err != nil {
		return nil, fmt.Errorf("update: settings: %w", err)
	}
	if cfg.Target == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("update: find the agent binary: %w", err)
		}
		if exe, err = filepath.EvalSymlinks(exe); err != nil {
			return nil, fmt.Errorf("update: find the agent binary: %w", err)
		}
		cfg.Target = exe
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("update: %w", err)
	}
	u := &Updater{cfg: cfg, log: cfg.Logger.With("component", "update"), wake: make(chan struct{}, 1)}
	keys, err := u.loadKeys()
	if err != nil {
		return nil, err
	}
	u.keys = keys
	u.status = u.initialStatus()
	u.trial = cfg.Check.Trial
	return u, nil
}

// keysFile holds the pinned release keys.
const keysFile = "keys.json"

func (u *Updater) loadKeys() (ota.Keys, error) {
	var pinned []string
	path := filepath.Join(u.cfg.Dir, keysFile)
	if b, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(b, &pinned); err != nil {
			return nil, fmt.Errorf("update: pinned keys %s: %w", path, err)
		}
	}
	keys, err := ota.ParseKeys(append(pinned, u.cfg.ReleaseKeys...))
	if err != nil {
		return nil, fmt.Errorf("update: release keys: %w", err)
	}
	if len(keys) != len(pinned) {
		if err := u.saveKeys(keys); err != nil {
			return nil, err
		}
	}
	return keys, nil
}

func (u *Updater) saveKeys(keys ota.Keys) error {
	b, _ := json.MarshalIndent(keys.Strings(), "", "  ")
	if err := writeFileSync(filepath.Join(u.cfg.Dir, keysFile), b, 0o600); err != nil {
		return fmt.Errorf("update: pin release keys: %w", err)
	}
	return nil
}

// PinKeys pins release keys in dir (DATA_DIR/update), beside those
// already pinned: the agent does so with the keys the fleet gives at join.
func PinKeys(dir string, keys []string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("update: %w", err)
	}
	u := &Updater{cfg: Config{Dir: dir, Settings: Settings{ReleaseKeys: keys}}}
	_, err := u.loadKeys()
	return err
}

// Keys returns the pinned release keys.
func (u *Updater) Keys() []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.keys.Strings()
}

// initialStatus is what the last attempt left, for the fleet.
func (u *Updater) initialStatus() proto.UpdateStatus {
	st := proto.UpdateStatus{State: proto.StateIdle, Running: u.cfg.Version}
	s, err := loadState(u.cfg.Dir)
	if err != nil {
		u.log.Warn("update state", "err", err)
		return st
	}
	st.Rollout, st.Version, st.Reason = s.Rollout, s.Version, s.Reason
	switch s.Phase {
	case phaseCommitted:
		st.State = proto.StateCommitted
	case phaseRolledBack:
		st.State = proto.StateRolledBack
	case phaseFailed:
		st.State = proto.StateFailed
	case phaseTrial:
		st.State = proto.StateRestarting
	default:
		st = proto.UpdateStatus{State: proto.StateIdle, Running: u.cfg.Version}
	}
	return st
}

// Status returns the last status.
func (u *Updater) Status() proto.UpdateStatus {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.status
}

// Offer takes an offer from the fleet; Run acts on it.
func (u *Updater) Offer(o *proto.UpdateOffer) {
	u.mu.Lock()
	if o.Cancel && u.cancel != nil && u.working == o.Rollout {
		u.cancel()
	}
	if !o.Cancel && u.cancel != nil && u.working == o.Rollout {
		// The fleet offers again after a reconnect: the update is under
		// way already.
		u.mu.Unlock()
		return
	}
	u.offer = o
	u.mu.Unlock()
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

// LinkUp tells the Updater the tunnel is up: it sends the status (the
// fleet answers with an offer if it has one), and a new agent on trial
// commits.
func (u *Updater) LinkUp(up bool) {
	u.mu.Lock()
	u.linkUp = up
	if up {
		u.links++
	}
	u.mu.Unlock()
	if !up {
		return
	}
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

// report records and sends a status; a failed send is repeated at the
// next LinkUp.
func (u *Updater) report(st proto.UpdateStatus) {
	st.Running, st.Target = u.cfg.Version, u.cfg.BuildTarget
	u.mu.Lock()
	u.status = st
	u.mu.Unlock()
	if err := u.cfg.Send(&st); err != nil {
		u.log.Debug("update status not sent; sent again when the tunnel is up", "state", st.State, "err", err)
	}
}

func (u *Updater) emit(ctx context.Context, typ, outcome, msg string, fields map[string]string) {
	if u.cfg.Emit == nil {
		return
	}
	if err := u.cfg.Emit(ctx, &proto.AuditEvent{Type: typ, Outcome: outcome, Message: msg, Fields: fields}); err != nil {
		u.log.Warn("update audit event not kept", "type", typ, "err", err)
	}
}

// Run acts on offers and watches a trial until ctx ends.
func (u *Updater) Run(ctx context.Context) {
	u.auditLastAttempt(ctx)
	var deadline <-chan time.Time
	if u.cfg.Check.Trial {
		d := u.cfg.Check.Deadline.Sub(u.cfg.Now())
		t := time.NewTimer(max(d, 0))
		defer t.Stop()
		deadline = t.C
		u.log.Info("new agent on trial: it commits once its tunnel is up", "deadline", u.cfg.Check.Deadline.UTC().Format(time.RFC3339))
	}
	sentOn := 0 // the link-up the status was last sent on
	for {
		select {
		case <-ctx.Done():
			return
		case <-deadline:
			u.mu.Lock()
			trial := u.trial
			u.mu.Unlock()
			if trial {
				u.rollBack(ctx, fmt.Sprintf("the new agent was not healthy (ready, tunnel up) within %s", u.healthTimeout(u.status)))
				return
			}
		case <-u.wake:
		}
		u.mu.Lock()
		up, trial, link := u.linkUp, u.trial, u.links
		o := u.offer
		u.offer = nil
		u.mu.Unlock()
		if up && trial {
			u.commit(ctx)
			trial = false
		}
		if up && sentOn != link {
			sentOn = link
			u.report(u.Status())
		}
		if o != nil && !trial {
			u.handle(ctx, o)
		}
	}
}

func (u *Updater) healthTimeout(proto.UpdateStatus) time.Duration {
	s, err := loadState(u.cfg.Dir)
	if err == nil && s.HealthMillis > 0 {
		return time.Duration(s.HealthMillis) * time.Millisecond
	}
	return u.cfg.HealthTimeout
}

// auditLastAttempt records the end of the last attempt when the start-up
// checks (which have no audit queue) ended it: a rollback by the pre-start
// check, or an apply that a crash interrupted.
func (u *Updater) auditLastAttempt(ctx context.Context) {
	s, err := loadState(u.cfg.Dir)
	if err != nil || s.Reported || (s.Phase != phaseRolledBack && s.Phase != phaseFailed) {
		return
	}
	typ, outcome := proto.EventUpdateRolledBack, proto.OutcomeFailure
	if s.Phase == phaseFailed {
		typ = proto.EventUpdateFailed
	}
	u.emit(ctx, typ, outcome, s.Reason, map[string]string{"version": s.Version, "from": s.From, "rollout": s.Rollout})
	s.Reported = true
	if err := saveState(u.cfg.Dir, s); err != nil {
		u.log.Warn("update state", "err", err)
	}
}

// commit ends the trial: the new agent is ready and its tunnel is up.
func (u *Updater) commit(ctx context.Context) {
	if err := Commit(u.cfg.Dir); err != nil {
		u.log.Error("commit update", "err", err)
		return
	}
	u.mu.Lock()
	u.trial = false
	u.mu.Unlock()
	s, _ := loadState(u.cfg.Dir)
	u.log.Info("update committed: the new agent is healthy", "version", s.Version, "from", s.From)
	u.emit(ctx, proto.EventUpdateCommitted, proto.OutcomeSuccess, "the new agent is healthy",
		map[string]string{"version": s.Version, "from": s.From, "rollout": s.Rollout})
	u.report(proto.UpdateStatus{Rollout: s.Rollout, Version: s.Version, State: proto.StateCommitted})
}

// rollBack ends a trial that failed: the old binary goes back in place
// and the agent restarts on it, which reports rolled_back.
func (u *Updater) rollBack(ctx context.Context, reason string) {
	s, _ := loadState(u.cfg.Dir)
	u.log.Error("update rolled back", "version", s.Version, "reason", reason)
	if err := RollBack(u.cfg.Dir, reason); err != nil {
		u.log.Error("roll back", "err", err)
		return
	}
	u.emit(ctx, proto.EventUpdateRolledBack, proto.OutcomeFailure, reason,
		map[string]string{"version": s.Version, "from": s.From, "rollout": s.Rollout})
	if s, err := loadState(u.cfg.Dir); err == nil {
		s.Reported = true
		saveState(u.cfg.Dir, s)
	}
	u.report(proto.UpdateStatus{Rollout: s.Rollout, Version: s.Version, State: proto.StateRolledBack, Reason: reason})
	u.cfg.Restart("rolled back to " + s.From + ": " + reason)
}

// handle runs one offer to its end.
func (u *Updater) handle(ctx context.Context, o *proto.UpdateOffer) {
	if o.Cancel {
		st := u.Status()
		if st.Rollout == o.Rollout && !terminalState(st.State) {
			u.report(proto.UpdateStatus{State: proto.StateIdle})
		}
		return
	}
	ctx, cancel := context.WithCancel(ctx)
	u.mu.Lock()
	u.cancel, u.working = cancel, o.Rollout
	u.mu.Unlock()
	defer func() {
		cancel()
		u.mu.Lock()
		u.cancel, u.working = nil, ""
		u.mu.Unlock()
	}()
	st := proto.UpdateStatus{Rollout: o.Rollout, Version: o.Version}
	err := u.run(ctx, o, &st)
	var r *refusal
	switch {
	case err == nil:
		return
	case ctx.Err() != nil:
		u.log.Info("update stopped", "version", o.Version, "rollout", o.Rollout)
		return
	case errors.As(err, &r):
		st.State, st.Reason = r.state, r.Error()
		if r.state == proto.StateRefused {
			u.emit(ctx, proto.EventUpdateRefused, proto.OutcomeDenied, r.Error(), map[string]string{"version": o.Version, "rollout": o.Rollout})
		} else {
			u.emit(ctx, proto.EventUpdateFailed, proto.OutcomeFailure, r.Error(), map[string]string{"version": o.Version, "rollout": o.Rollout})
		}
	default:
		st.State, st.Reason = proto.StateFailed, err.Error()
		u.emit(ctx, proto.EventUpdateFailed, proto.OutcomeFailure, err.Error(), map[string]string{"version": o.Version, "rollout": o.Rollout})
	}
	u.log.Warn("update not done", "version", o.Version, "state", st.State, "reason", st.Reason)
	u.report(st)
}

func terminalState(s string) bool {
	switch s {
	case proto.StateCommitted, proto.StateRolledBack, proto.StateFailed, proto.StateRefused, proto.StateIdle:
		return true
	}
	return false
}

// refusal is an update that ends with a state other than failed.
type refusal struct {
	state string
	err   error
}

func (r *refusal) Error() string { return r.err.Error() }
func (r *refusal) Unwrap() error { return r.err }

func refuse(format string, args ...any) error {
	return &refusal{state: proto.StateRefused, err: fmt.Errorf(format, args...)}
}

func failf(format string, args ...any) error {
	return &refusal{state: proto.StateFailed, err: fmt.Errorf(format, args...)}
}

// httpClient downloads over streams of the tunnel.
func (u *Updater) httpClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:           func(ctx context.Context, _, _ string) (net.Conn, error) { return u.cfg.Dial(ctx) },
		MaxIdleConns:          1,
		IdleConnTimeout:       30 * time.Second,
		ResponseHeaderTimeout: 30 * time.Second,
		DisableCompression:    true,
	}}
}
