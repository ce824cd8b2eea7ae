// Package locks shuts a user, a role, a device or a device login out of the
// fleet at once, for a time or until removed: a stolen laptop, a departed
// employee, a compromised device.
//
// Locks live in the state store under "locks/" (Service writes and removes
// them). Every fleetd replica keeps a live view of them (Set), which it
// follows with store.Follow: a lock written on one replica reaches every
// replica within the store's watch latency (in-process with the embedded
// store). The view is what the fleet asks before it issues a certificate,
// lets a user log in, authorises a session or lets a device's tunnel in
// (Set.Check), and its OnLock hook is how live sessions that a new lock
// matches end on every replica (fleetd wires it to the session registry's
// End and the tunnel server's Disconnect).
//
// A lock past its expiry no longer matches, on every replica, whether or
// not it has been deleted yet; the elected leader deletes expired locks
// (Service.Prune) and records their expiry.
//
// Only fleet/... server packages import locks.
package locks

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto/api"
)

// Prefix is where the store keeps locks: Prefix + ID.
const Prefix = "locks/"

// DefaultMessage is what a lock with no message of its own tells the user.
const DefaultMessage = "your access is locked by the fleet's administrators; ask them"

// maxName bounds a target's name.
const maxName = 256

// Devices finds a device by name (*devices.Registry).
type Devices interface {
	ByName(ctx context.Context, name string) (devices.Device, error)
}

// Service writes and reads the locks in the store. Its methods are safe
// for concurrent use, also across replicas sharing the store.
type Service struct {
	Store   store.Store
	Devices Devices
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (s *Service) now() time.Time {
	if s.Now == nil {
		return time.Now()
	}
	return s.Now()
}

// invalid is a request the caller got wrong (httpapi answers 400).
type invalid struct{ msg string }

func (e *invalid) Error() string        { return e.msg }
func (*invalid) InvalidInput() bool     { return true }
func invalidf(f string, a ...any) error { return &invalid{fmt.Sprintf(f, a...)} }

// ErrNotFound is returned by Remove for an unknown lock. It matches
// store.ErrNotFound.
var ErrNotFound = fmt.Errorf("no such lock: see fleetctl locks ls: %w", store.ErrNotFound)

// Validate checks a lock request: one target, well-formed names, a
// message without control characters, a TTL that is not negative.
func Validate(req *api.LockRequest) error {
	t := req.Target
	set := 0
	for what, v := range map[string]string{"user": t.User, "role": t.Role, "device": t.Device, "login": t.Login} {
		if v == "" {
			continue
		}
		set++
		if len(v) > maxName || !utf8.ValidString(v) || strings.IndexFunc(v, func(r rune) bool { return unicode.IsControl(r) || unicode.IsSpace(r) }) >= 0 {
			return invalidf("lock: the %s name %q is not a name (at most %d characters, no spaces or control characters)", what, v, maxName)
		}
	}
	if set != 1 {
		return invalidf("lock: name exactly one of a user, a role, a device or a login to lock")
	}
	if len(req.Message) > api.MaxLockMessage || !utf8.ValidString(req.Message) ||
		strings.IndexFunc(req.Message, unicode.IsControl) >= 0 {
		return invalidf("lock: the message must be one line of at most %d bytes of text", api.MaxLockMessage)
	}
	if req.TTL < 0 {
		return invalidf("lock: the TTL must not be negative (zero: until removed)")
	}
	return nil
}

// Create writes a lock for req, made by by, and returns it. A device is
// named by its name and locked by its ID: the device must exist.
func (s *Service) Create(ctx context.Context, req api.LockRequest, by string) (api.Lock, error) {
	if err := Validate(&req); err != nil {
		return api.Lock{}, err
	}
	now := s.now().UTC()
	l := api.Lock{ID: newID(), Target: req.Target, Message: req.Message, Created: now, CreatedBy: by}
	if req.TTL > 0 {
		l.Expires = now.Add(req.TTL)
	}
	if t := req.Target.Device; t != "" {
		dev, err := s.Devices.ByName(ctx, t)
		if errors.Is(err, store.ErrNotFound) {
			return api.Lock{}, invalidf("lock: no device named %q: see fleetctl devices ls", t)
		}
		if err != nil {
			return api.Lock{}, fmt.Errorf("lock: find device %q: %w", t, err)
		}
		l.DeviceID = dev.ID
	}
	b, _ := json.Marshal(l)
	if err := s.Store.Create(ctx, Prefix+l.ID, b); err != nil {
		return api.Lock{}, fmt.Errorf("lock: store: %w", err)
	}
	return l, nil
}

func newID() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Remove deletes lock id and returns what it was.
func (s *Service) Remove(ctx context.Context, id string) (api.Lock, error) {
	if id == "" || strings.Contains(id, "/") {
		return api.Lock{}, ErrNotFound
	}
	b, err := s.Store.Get(ctx, Prefix+id)
	if errors.Is(err, store.ErrNotFound) {
		return api.Lock{}, ErrNotFound
	}
	if err != nil {
		return api.Lock{}, fmt.Errorf("lock: remove %s: %w", id, err)
	}
	var l api.Lock
	json.Unmarshal(b, &l)
	if err := s.Store.Delete(ctx, Prefix+id); errors.Is(err, store.ErrNotFound) {
		return api.Lock{}, ErrNotFound
	} else if err != nil {
		return api.Lock{}, fmt.Errorf("lock: remove %s: %w", id, err)
	}
	return l, nil
}

// List returns the locks in force (expired ones left out), oldest first,
// and the store revision the list was read at.
func (s *Service) List(ctx context.Context) ([]api.Lock, int64, error) {
	items, rev, err := s.Store.ListRevision(ctx, Prefix)
	if err != nil {
		return nil, 0, fmt.Errorf("lock: list: %w", err)
	}
	now := s.now()
	var out []api.Lock
	for _, it := range items {
		l, err := Decode(it.Value)
		if err != nil || expired(l, now) {
			continue
		}
		out = append(out, l)
	}
	sortLocks(out)
	return out, rev, nil
}

// Prune deletes the locks that expired, writing through st (a leader's
// fenced store: a deposed leader deletes nothing), and returns them.
func (s *Service) Prune(ctx context.Context, st store.Store) ([]api.Lock, error) {
	items, err := st.List(ctx, Prefix)
	if err != nil {
		return nil, fmt.Errorf("lock: prune: %w", err)
	}
	now := s.now()
	var out []api.Lock
	for _, it := range items {
		l, err := Decode(it.Value)
		if err != nil || !expired(l, now) {
			continue
		}
		if err := st.Delete(ctx, it.Key); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			return out, fmt.Errorf("lock: prune: %w", err)
		}
		out = append(out, l)
	}
	return out, nil
}

// Decode decodes a stored lock; a malformed one is an error.
func Decode(b []byte) (api.Lock, error) {
	var l api.Lock
	if err := json.Unmarshal(b, &l); err != nil {
		return api.Lock{}, fmt.Errorf("lock: decode: %w", err)
	}
	if l.ID == "" {
		return api.Lock{}, errors.New("lock: decode: no ID")
	}
	return l, nil
}

func expired(l api.Lock, now time.Time) bool {
	return !l.Expires.IsZero() && !now.Before(l.Expires)
}

func sortLocks(list []api.Lock) {
	slices.SortFunc(list, func(a, b api.Lock) int {
		if c := a.Created.Compare(b.Created); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}

// Subject is what a lock may shut out: a user (with their roles), a login
// on a device, a device; empty fields match no lock.
type Subject struct {
	User     string
	Roles    []string
	Login    string
	DeviceID string
}

// Matches reports whether lock l shuts out subject s (expiry aside).
func Matches(l *api.Lock, s Subject) bool {
	t := &l.Target
	switch {
	case t.User != "":
		return t.User == s.User
	case t.Role != "":
		return slices.Contains(s.Roles, t.Role)
	case t.Login != "":
		return t.Login == s.Login
	case t.Device != "":
		return l.DeviceID != "" && l.DeviceID == s.DeviceID
	}
	return false
}

// Reason is what a user shut out by l is told, naming the lock.
func Reason(l *api.Lock) string {
	msg := l.Message
	if msg == "" {
		msg = DefaultMessage
	}
	return fmt.Sprintf("locked (lock %s on %s): %s", l.ID, Describe(l.Target), msg)
}

// Describe names a lock's target: `user "alice"`.
func Describe(t api.LockTarget) string {
	switch {
	case t.User != "":
		return fmt.Sprintf("user %q", t.User)
	case t.Role != "":
		return fmt.Sprintf("role %q", t.Role)
	case t.Device != "":
		return fmt.Sprintf("device %q", t.Device)
	case t.Login != "":
		return fmt.Sprintf("login %q", t.Login)
	}
	return "nothing"
}

// Locked is the error of a check that a lock refused. Its message is
// Reason's.
type Locked struct{ Lock api.Lock }

func (e *Locked) Error() string { return Reason(&e.Lock) }

// AuditFields are the fields a refusal's audit event carries: the lock
// that refused.
func (e *Locked) AuditFields() map[string]string {
	return map[string]string{"rule": "lock", "lock": e.Lock.ID, "lock_target": Describe(e.Lock.Target)}
}

// Set is a replica's live view of the locks. The zero value is empty and
// ready; a nil *Set holds no locks. Its methods are safe for concurrent
// use.
type Set struct {
	// OnLock is called, on Follow's goroutine, for every lock that is new
	// or changed and in force: it ends what the lock shuts out. It must
	// not call the Set's Follow.
	OnLock func(api.Lock)
	// Logger receives a line per lock seen and malformed entry skipped;
	// nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu      sync.Mutex // guards the fields below
	locks   map[string]api.Lock
	rev     int64
	ready   bool
	changed chan struct{} // closed at the next change
}

func (s *Set) now() time.Time {
	if s.Now == nil {
		return time.Now()
	}
	return s.Now()
}

func (s *Set) log() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

// Check returns a *Locked for the first lock in force that shuts out
// subj, or nil.
func (s *Set) Check(subj Subject) error {
	if s == nil {
		return nil
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var hit *api.Lock
	for _, l := range s.locks {
		if !expired(l, now) && Matches(&l, subj) && (hit == nil || l.Created.Before(hit.Created)) {
			hit = &l
		}
	}
	if hit == nil {
		return nil
	}
	return &Locked{Lock: *hit}
}

// List returns the locks in force, oldest first, and the store revision
// the view is at.
func (s *Set) List() ([]api.Lock, int64) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []api.Lock
	for _, l := range s.locks {
		if !expired(l, now) {
			out = append(out, l)
		}
	}
	sortLocks(out)
	return out, s.rev
}

// Wait returns when the view's revision passes after (or ctx ends, or at
// once when it has): a follower of the list (another fleet) waits for the
// next change.
func (s *Set) Wait(ctx context.Context, after int64) {
	for {
		s.mu.Lock()
		if s.rev > after {
			s.mu.Unlock()
			return
		}
		ch := s.changedLocked()
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return
		}
	}
}

func (s *Set) changedLocked() chan struct{} {
	if s.changed == nil {
		s.changed = make(chan struct{})
	}
	return s.changed
}

// notifyLocked wakes Wait's callers.
func (s *Set) notifyLocked() {
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
}

// Ready reports whether the view has been loaded from the store once.
func (s *Set) Ready() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready
}

// WaitReady returns once the view has been loaded from the store (nil),
// or when ctx ends (its error).
func (s *Set) WaitReady(ctx context.Context) error {
	for {
		s.mu.Lock()
		if s.ready {
			s.mu.Unlock()
			return nil
		}
		ch := s.changedLocked()
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Follow keeps the view up to date with the store's locks until ctx ends
// (store.Follow), calling OnLock for every lock in force that is new or
// changed, and for each in force at the first load. It returns ctx's
// error, or one wrapping store.ErrClosed.
func (s *Set) Follow(ctx context.Context, st store.Store) error {
	return store.Follow(ctx, st, Prefix, store.FollowHandler{
		Reset: func(items []store.Item, rev int64) {
			next := map[string]api.Lock{}
			for _, it := range items {
				if l, ok := s.decode(it.Key, it.Value); ok {
					next[it.Key] = l
				}
			}
			s.mu.Lock()
			old := s.locks
			s.locks, s.rev, s.ready = next, rev, true
			s.notifyLocked()
			s.mu.Unlock()
			for k, l := range next {
				if o, ok := old[k]; !ok || !sameLock(o, l) {
					s.fire(l)
				}
			}
		},
		Apply: func(ev store.Event) {
			s.mu.Lock()
			if s.locks == nil {
				s.locks = map[string]api.Lock{}
			}
			s.rev = ev.Revision
			if ev.Kind == store.EventDelete {
				if l, ok := s.locks[ev.Key]; ok {
					s.log().Info("lock lifted", "lock", l.ID, "target", Describe(l.Target))
				}
				delete(s.locks, ev.Key)
				s.notifyLocked()
				s.mu.Unlock()
				return
			}
			l, ok := s.decode(ev.Key, ev.Value)
			if ok {
				s.locks[ev.Key] = l
			}
			s.notifyLocked()
			s.mu.Unlock()
			if ok {
				s.fire(l)
			}
		},
		Retry: func(err error, wait time.Duration) {
			s.log().Warn("follow the locks", "err", err, "retry_in", wait.String())
		},
	})
}

// fire calls OnLock for l if it is in force.
func (s *Set) fire(l api.Lock) {
	if expired(l, s.now()) {
		return
	}
	s.log().Info("lock in force", "lock", l.ID, "target", Describe(l.Target), "expires", l.Expires)
	if s.OnLock != nil {
		s.OnLock(l)
	}
}

func (s *Set) decode(key string, b []byte) (api.Lock, bool) {
	l, err := Decode(b)
	if err != nil || Prefix+l.ID != key {
		s.log().Warn("skipping a malformed lock in the store", "key", key, "err", err)
		return api.Lock{}, false
	}
	return l, true
}

func sameLock(a, b api.Lock) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}
