// Package sessions is the fleet's registry of live brokered sessions: every
// SSH connection, Kubernetes watch or exec, and whatever service the fleet
// brokers next, from the moment it is authorised until it ends, with who,
// where, as whom and until when.
//
// A broker registers each session with a function that ends it
// (Registry.Register) and reports its end (Live.Done). The registry ends a
// session, with a reason the user is shown, when
//
//   - its user's certificate expires (a timer per session);
//   - the fleet's users or roles changed (Registry.Changed) and
//     Config.Check no longer allows it: Check is the one re-authorisation
//     function, and Changed is what every place that changes users or
//     roles calls (later, a store watch calls it for other replicas);
//   - someone ends sessions that match a predicate (Registry.End): a lock
//     is a predicate.
//
// The registry remembers how recent sessions ended (Registry.Ended), so a
// client whose connection was cut can ask why.
//
// Only fleet/... server packages import sessions.
package sessions

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"remoteler.dev/edge/proto/api"
)

// Session is a live brokered session, as the registry knows it.
type Session struct {
	// ID is the session's ID, unique in the fleet.
	ID string
	// Service is what is brokered: proto.ServiceSSH, ServiceKube,
	// ServiceApp.
	Service string
	// Kind says what runs, for lists: "ssh", a Kubernetes "watch",
	// "exec", "attach", "portforward" or "log", or an "app" session (a
	// browser's or tsh proxy app's).
	Kind string
	// User is the fleet user, Roles their roles when the session began.
	User  string
	Roles []string
	// Login is the device login (SSH).
	Login string
	// App is the web app's name (service app).
	App string
	// KubeUser and KubeGroups are whom a Kubernetes session acts as.
	KubeUser   string
	KubeGroups []string
	// DeviceID and DeviceName say where; DeviceID is empty for the
	// Kubernetes cluster fleetd runs in.
	DeviceID   string
	DeviceName string
	// ClientAddr is the user's address.
	ClientAddr string
	// Expires is when the user's certificate expires and the session
	// with it; zero means never.
	Expires time.Time
	// Started is when the session began (Register fills it in when zero).
	Started time.Time
	// PortForwarding and FileCopy are what the session was allowed beyond
	// its login: Check ends it when the user's roles no longer allow
	// what it was given.
	PortForwarding bool
	FileCopy       bool
	// RecordInput says what the user types is recorded too.
	RecordInput bool
	// Traits are the user's traits when the session began.
	Traits map[string][]string

	// Trusted clusters. On a root fleet, a request relayed to a leaf
	// cluster (service "cluster") is a session too, so that it ends when
	// the user's access here ends: Cluster names the leaf, and Admin says
	// the caller is the fleet's admin identity rather than a user. On the
	// leaf, a session of the root's user names the root in Origin, with
	// the roles the root vouched for in OriginRoles (Roles are those
	// this fleet's role_map gave) and the ID of the root's relayed
	// stream it came down in Via, by which the root ends it.
	Cluster     string
	Admin       bool
	Origin      string
	OriginRoles []string
	Via         string

	// Away says the device holds the session for its user, who is away:
	// a user-held session between two of its client's connections, as
	// the device reported it (proto.ServiceHeld). Ending it ends it on
	// the device.
	Away bool
}

// ErrUndecided is what Config.Check returns (wrapped) when it cannot decide
// (the store did not answer): the session is kept, and checked again
// after Config.Retry.
var ErrUndecided = errors.New("sessions: the check could not decide")

// Config configures a Registry. Every zero value works.
type Config struct {
	// Check decides whether a live session is still allowed by the
	// fleet's current users and roles: nil keeps it; an error ends it,
	// and the error's message is the reason the user is shown; an error
	// wrapping ErrUndecided keeps it and checks again later. It runs on
	// the registry's own goroutine, one session at a time. Nil: sessions
	// end only at expiry and by End.
	Check func(ctx context.Context, s *Session) error
	// Retry is how long after an undecided check the sessions are checked
	// again; default 1s.
	Retry time.Duration
	// KeepEnded is how many sessions Ended remembers; default 4096.
	KeepEnded int
	// Logger receives a line per session the registry ends; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Registry holds the live sessions. Create it with New; its methods are
// safe for concurrent use.
type Registry struct {
	cfg    Config
	log    *slog.Logger
	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // the check goroutine

	mu       sync.Mutex // guards everything below and Live's ending and done
	live     map[string]*Live
	ended    map[string]*record // recently ended sessions, by ID
	order    []string           // the IDs in ended, oldest first
	dirty    bool               // a check pass is due
	checking bool               // the check goroutine runs
	retry    *time.Timer        // a pending retry of undecided checks
	closed   bool
}

// record is what Ended tells about a session.
type record struct {
	end   api.SessionEnd
	token string
}

// Live is a registered session. Its methods are safe for concurrent use.
type Live struct {
	r     *Registry
	s     Session
	end   func(reason string)
	token string
	timer *time.Timer // the expiry timer; nil without expiry

	// Guarded by r.mu.
	ending string // why the registry ended it, once it did
	done   bool
	gone   chan struct{} // closed by Done
}

// New returns an empty registry.
func New(cfg Config) *Registry {
	if cfg.Retry <= 0 {
		cfg.Retry = time.Second
	}
	if cfg.KeepEnded <= 0 {
		cfg.KeepEnded = 4096
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Registry{
		cfg: cfg, log: cfg.Logger.With("component", "sessions"), ctx: ctx, cancel: cancel,
		live: map[string]*Live{}, ended: map[string]*record{},
	}
}

// ErrClosed is returned by Register after Close.
var ErrClosed = errors.New("sessions: the registry is closed")

// Register adds a live session. end ends it, showing reason to the user
// where the service can; it is called at most once, from the registry's
// goroutines, and must not block for long. The broker calls Live.Done when
// the session has ended, whoever ended it. A session whose certificate has
// already expired is not registered.
func (r *Registry) Register(s Session, end func(reason string)) (*Live, error) {
	if s.ID == "" {
		return nil, errors.New("sessions: register: the session has no ID")
	}
	if end == nil {
		return nil, errors.New("sessions: register: no end function")
	}
	now := r.cfg.Now()
	if s.Started.IsZero() {
		s.Started = now
	}
	if !s.Expires.IsZero() && !now.Before(s.Expires) {
		return nil, fmt.Errorf("sessions: register %s: %s", s.ID, expiredReason(s.Expires))
	}
	s.Roles = slices.Clone(s.Roles)
	s.KubeGroups = slices.Clone(s.KubeGroups)
	s.OriginRoles = slices.Clone(s.OriginRoles)
	l := &Live{r: r, s: s, end: end, token: rand.Text(), gone: make(chan struct{})}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, ErrClosed
	}
	if _, dup := r.live[s.ID]; dup {
		return nil, fmt.Errorf("sessions: register %s: a live session has that ID", s.ID)
	}
	r.live[s.ID] = l
	if !s.Expires.IsZero() {
		l.timer = time.AfterFunc(s.Expires.Sub(now), func() { r.endLive(l, expiredReason(s.Expires)) })
	}
	return l, nil
}

// WaitDone waits until no live session has ID id (one that is ending is
// being taken down: a user-held session's earlier connection, whose user
// connects again), or ctx is done.
func (r *Registry) WaitDone(ctx context.Context, id string) error {
	r.mu.Lock()
	l := r.live[id]
	r.mu.Unlock()
	if l == nil {
		return nil
	}
	select {
	case <-l.gone:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("sessions: session %s is still live: %w", id, ctx.Err())
	}
}

// expiredReason is what a user whose certificate expired is told.
func expiredReason(at time.Time) string {
	return fmt.Sprintf("your fleet certificate expired at %s: run tsh login", at.UTC().Format(time.RFC3339))
}

// Session returns the session as registered.
func (l *Live) Session() Session { return l.s }

// Token is a secret that lets the session's client ask how it ended
// (EndedWithToken) without a certificate, which may have expired or been
// revoked by then.
func (l *Live) Token() string { return l.token }

// Ending returns why the registry ended the session, or "" while it has
// not.
func (l *Live) Ending() string {
	l.r.mu.Lock()
	defer l.r.mu.Unlock()
	return l.ending
}

// Done removes the session: it has ended. reason says why when it ended
// abnormally ("" when one side closed it); when the registry ended it,
// the registry's reason is kept instead.
func (l *Live) Done(reason string) {
	r := l.r
	r.mu.Lock()
	defer r.mu.Unlock()
	if !l.removeLocked() {
		return
	}
	if l.ending != "" {
		reason = l.ending
	}
	end := l.endLocked()
	end.Ended, end.EndedAt, end.Reason = true, r.cfg.Now().UTC(), reason
	if _, ok := r.ended[l.s.ID]; !ok {
		r.order = append(r.order, l.s.ID)
		if len(r.order) > r.cfg.KeepEnded {
			delete(r.ended, r.order[0])
			r.order = r.order[1:]
		}
	}
	r.ended[l.s.ID] = &record{token: l.token, end: end}
}

// Withdraw removes the session without recording an end: it did not end
// here, it goes on elsewhere (a session held on its device for an away
// user, which the user's client took back). A session the registry is
// ending is recorded as Done would.
func (l *Live) Withdraw() {
	r := l.r
	r.mu.Lock()
	ending := l.ending != ""
	if !ending {
		l.removeLocked()
	}
	r.mu.Unlock()
	if ending {
		l.Done("")
	}
}

// removeLocked takes l out of the live sessions, once: it reports false
// if l was already out. r.mu is held.
func (l *Live) removeLocked() bool {
	if l.done {
		return false
	}
	if l.timer != nil {
		l.timer.Stop()
	}
	l.done = true
	close(l.gone)
	if r := l.r; r.live[l.s.ID] == l {
		delete(r.live, l.s.ID)
	}
	return true
}

// endLocked describes l, live.
func (l *Live) endLocked() api.SessionEnd {
	return api.SessionEnd{ID: l.s.ID, User: l.s.User, Device: l.s.DeviceName, Login: l.s.Login, Reason: l.ending}
}

// Ended says how session id ended (Ended false while it is live, with the
// reason once the registry is ending it), if the registry still
// remembers it.
func (r *Registry) Ended(id string) (api.SessionEnd, bool) {
	end, _, ok := r.lookup(id)
	return end, ok
}

// EndedWithToken is Ended for a caller that shows the session's Token.
func (r *Registry) EndedWithToken(id, token string) (api.SessionEnd, bool) {
	end, want, ok := r.lookup(id)
	if !ok || token == "" || subtle.ConstantTimeCompare([]byte(want), []byte(token)) != 1 {
		return api.SessionEnd{}, false
	}
	return end, true
}

func (r *Registry) lookup(id string) (api.SessionEnd, string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if l, ok := r.live[id]; ok {
		return l.endLocked(), l.token, true
	}
	if rec, ok := r.ended[id]; ok {
		return rec.end, rec.token, true
	}
	return api.SessionEnd{}, "", false
}

// Filter selects sessions in List; zero fields match every session.
type Filter struct {
	User     string
	DeviceID string
	Service  string
}

func (f Filter) matches(s *Session) bool {
	return (f.User == "" || f.User == s.User) && (f.DeviceID == "" || f.DeviceID == s.DeviceID) &&
		(f.Service == "" || f.Service == s.Service)
}

// List returns the live sessions f selects, oldest first.
func (r *Registry) List(f Filter) []Session {
	r.mu.Lock()
	var out []Session
	for _, l := range r.live {
		if f.matches(&l.s) {
			out = append(out, l.s)
		}
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b Session) int {
		if c := a.Started.Compare(b.Started); c != 0 {
			return c
		}
		return compareStrings(a.ID, b.ID)
	})
	return out
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// End ends every live session for which match returns true, telling its
// user reason, and returns how many it ended. match must not call the
// registry.
func (r *Registry) End(match func(*Session) bool, reason string) int {
	r.mu.Lock()
	var list []*Live
	for _, l := range r.live {
		if l.ending == "" && match(&l.s) {
			list = append(list, l)
		}
	}
	r.mu.Unlock()
	n := 0
	for _, l := range list {
		if r.endLive(l, reason) {
			n++
		}
	}
	return n
}

// endLive ends l with reason, once; it reports whether this call did.
func (r *Registry) endLive(l *Live, reason string) bool {
	r.mu.Lock()
	if l.done || l.ending != "" {
		r.mu.Unlock()
		return false
	}
	l.ending = reason
	r.mu.Unlock()
	if l.timer != nil {
		l.timer.Stop()
	}
	s := &l.s
	r.log.Info("ending session", "session", s.ID, "service", s.Service, "user", s.User, "device", s.DeviceName, "reason", reason)
	l.end(reason)
	return true
}

// Changed tells the registry that users or roles changed: every live
// session is checked again with Config.Check, on the registry's goroutine,
// and those no longer allowed are ended. Calls that come while a check
// pass runs cause one more pass after it, not one each.
func (r *Registry) Changed() {
	if r.cfg.Check == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.dirty = true
	if r.checking {
		return
	}
	r.checking = true
	r.wg.Add(1)
	go r.checkLoop()
}

// checkLoop runs check passes while one is due.
func (r *Registry) checkLoop() {
	defer r.wg.Done()
	for {
		r.mu.Lock()
		if !r.dirty || r.closed {
			r.checking = false
			r.mu.Unlock()
			return
		}
		r.dirty = false
		list := make([]*Live, 0, len(r.live))
		for _, l := range r.live {
			if l.ending == "" {
				list = append(list, l)
			}
		}
		r.mu.Unlock()
		undecided := false
		for _, l := range list {
			s := l.s
			err := r.cfg.Check(r.ctx, &s)
			switch {
			case err == nil:
			case errors.Is(err, ErrUndecided):
				r.log.Warn("session not re-checked; trying again", "session", s.ID, "user", s.User, "err", err)
				undecided = true
			default:
				r.endLive(l, err.Error())
			}
		}
		if undecided {
			r.retryLater()
		}
	}
}

// retryLater schedules another check pass after Config.Retry.
func (r *Registry) retryLater() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed || r.retry != nil {
		return
	}
	r.retry = time.AfterFunc(r.cfg.Retry, func() {
		r.mu.Lock()
		r.retry = nil
		r.mu.Unlock()
		r.Changed()
	})
}

// Close stops the registry's timers and its check goroutine, and waits
// for the goroutine. It ends no session: brokers end theirs as their
// server shuts down.
func (r *Registry) Close() {
	r.mu.Lock()
	r.closed = true
	for _, l := range r.live {
		if l.timer != nil {
			l.timer.Stop()
		}
	}
	if r.retry != nil {
		r.retry.Stop()
		r.retry = nil
	}
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
}
