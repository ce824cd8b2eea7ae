package users

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto/api"
)

// TOTP settings: the ones every authenticator app supports.
const (
	totpPeriod = 30 // seconds
	totpDigits = 6
	totpSkew   = 1 // steps accepted either side of now
)

var totpOpts = totp.ValidateOpts{Period: totpPeriod, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1}

// maxRetries bounds the compare-and-swap loop that records a login.
const maxRetries = 16

// outcome of one authentication attempt, for the throttle.
type outcome int

const (
	neutral outcome = iota // did not test a secret: TOTP code missing, internal error
	failed                 // wrong password or code, unknown user
	succeeded
)

// Authenticate checks a user's password and, when the user has TOTP
// enrolled, totpCode, and returns the user. Errors:
//   - ErrBadCredentials for an unknown user, a wrong password or a wrong,
//     stale or already used TOTP code (the same error, after the same
//     password-hashing work);
//   - ErrTOTPRequired when the password is right but totpCode is empty;
//   - ErrLocked when the name had MaxFailures failures in a row and its
//     lock-out has not passed;
//   - ErrBusy when no password-hashing slot came free in time;
//   - anything else is an internal error (store, context).
//
// A TOTP code is accepted for the current 30-second step and one step
// either side, and each step's code at most once. A successful login also
// upgrades the stored hash when HashParams have changed.
func (s *Service) Authenticate(ctx context.Context, name, password, totpCode string) (api.User, error) {
	s.init()
	fail := func(err error) (api.User, error) {
		return api.User{}, fmt.Errorf("users: authenticate %q: %w", name, err)
	}
	if CheckName(name) != nil || len(password) > MaxPasswordBytes {
		// Not a name any user can have: do the same work, and do not track
		// it (an unbounded name must not become a map key).
		if err := s.verifyDummy(ctx, password); err != nil {
			return fail(err)
		}
		s.logger().Info("users: login failed", "reason", "invalid user name or password length")
		return fail(ErrBadCredentials)
	}
	if err := s.throttle.begin(name, s.now()); err != nil {
		s.logger().Info("users: login refused", "user", name, "reason", "locked out")
		return fail(err)
	}
	result, known := neutral, false
	defer func() {
		if lock := s.throttle.end(name, result, known, s.now()); lock > 0 {
			s.logger().Warn("users: user locked out after failed logins", "user", name, "for", lock)
		}
	}()

	rec, raw, err := s.get(ctx, name)
	if errors.Is(err, ErrNotFound) {
		if err := s.verifyDummy(ctx, password); err != nil {
			return fail(err)
		}
		result = failed
		s.logger().Info("users: login failed", "user", name, "reason", "unknown user")
		return fail(ErrBadCredentials)
	}
	if err != nil {
		return fail(err)
	}
	known = true
	if rec.SSO != nil {
		// No password to check: the same work and the same answer as a
		// wrong password, so a password login cannot tell SSO users
		// from others.
		if err := s.verifyDummy(ctx, password); err != nil {
			return fail(err)
		}
		result = failed
		s.logger().Info("users: login failed", "user", name, "reason", "single sign-on user (no password)", "connector", rec.SSO.Connector)
		return fail(ErrBadCredentials)
	}
	verified := rec.PasswordHash
	h, err := decodePHC(verified)
	if err != nil {
		s.logger().Error("users: login failed", "user", name, "reason", "stored password hash is malformed")
		return fail(err)
	}
	var ok bool
	if err := s.withHashSlot(ctx, func() { ok = h.verify(password) }); err != nil {
		return fail(err)
	}
	if !ok {
		result = failed
		s.logger().Info("users: login failed", "user", name, "reason", "wrong password")
		return fail(ErrBadCredentials)
	}
	totpCode = strings.ReplaceAll(strings.TrimSpace(totpCode), " ", "")
	if rec.TOTPSecret != "" && totpCode == "" {
		return fail(ErrTOTPRequired)
	}

	var rehashed string
	if want := s.HashParams.withDefaults(); h.params != want {
		if err := s.withHashSlot(ctx, func() { rehashed = hashPassword(password, want) }); err != nil {
			return fail(err)
		}
	}
	for range maxRetries {
		next := rec
		if rec.TOTPSecret != "" {
			step, reason := matchTOTP(rec.TOTPSecret, totpCode, rec.TOTPLastStep, s.now())
			if reason != "" {
				result = failed
				s.logger().Info("users: login failed", "user", name, "reason", reason)
				return fail(ErrBadCredentials)
			}
			next.TOTPLastStep = step
		}
		if rehashed != "" && rec.PasswordHash == verified {
			next.PasswordHash = rehashed
		}
		if next.TOTPLastStep == rec.TOTPLastStep && next.PasswordHash == rec.PasswordHash {
			result = succeeded
			return rec.api(), nil
		}
		b, err := json.Marshal(next)
		if err != nil {
			return fail(err)
		}
		err = s.Store.CompareAndSwap(ctx, prefix+name, raw, b)
		switch {
		case err == nil:
			result = succeeded
			return next.api(), nil
		case errors.Is(err, store.ErrNotFound):
			result = failed
			s.logger().Info("users: login failed", "user", name, "reason", "user deleted during login")
			return fail(ErrBadCredentials)
		case !errors.Is(err, store.ErrConflict):
			return fail(err)
		}
		// Changed meanwhile (perhaps by a login with the same code): read
		// it again and check the code against the new state.
		rec, raw, err = s.get(ctx, name)
		if errors.Is(err, ErrNotFound) {
			result = failed
			return fail(ErrBadCredentials)
		}
		if err != nil {
			return fail(err)
		}
	}
	return fail(errors.New("too many concurrent changes to the user; try again"))
}

// verifyDummy spends the work of checking a password against a real hash,
// for logins that have none to check against.
func (s *Service) verifyDummy(ctx context.Context, password string) error {
	return s.withHashSlot(ctx, func() {
		s.dummyOnce.Do(func() {
			h, err := decodePHC(hashPassword("dummy password for unknown users", s.HashParams))
			if err != nil {
				panic("users: dummy hash does not decode: " + err.Error())
			}
			s.dummy = h
		})
		s.dummy.verify(password)
	})
}

// matchTOTP checks code against the steps around now. It returns the step
// it matched, or a reason for the log when none did. Steps at or before
// lastStep are refused as replays.
func matchTOTP(secret, code string, lastStep int64, now time.Time) (step int64, reason string) {
	if len(code) != totpDigits {
		return 0, "malformed one-time code"
	}
	cur := now.Unix() / totpPeriod
	found, replay := int64(-1), false
	for s := cur - totpSkew; s <= cur+totpSkew; s++ {
		want, err := totp.GenerateCodeCustom(secret, time.Unix(s*totpPeriod, 0), totpOpts)
		if err != nil {
			return 0, "stored TOTP secret is malformed"
		}
		if subtle.ConstantTimeCompare([]byte(want), []byte(code)) != 1 {
			continue
		}
		if s <= lastStep {
			replay = true
		} else if found < 0 {
			found = s
		}
	}
	switch {
	case found >= 0:
		return found, ""
	case replay:
		return 0, "one-time code already used"
	default:
		return 0, "wrong one-time code"
	}
}

// Throttle bookkeeping.
const (
	// forgetAfter: a run of failures with no new failure for this long is
	// forgotten (unless it reached a lock-out).
	forgetAfter = 15 * time.Minute
	// forgetLockOuts: the lock-outs of a run (which double the next one)
	// are forgotten after this long without a failure.
	forgetLockOuts = 24 * time.Hour
	// maxTracked bounds the unknown names tracked; past it the stalest go
	// first. Existing users are never evicted (there are only so many).
	maxTracked = 10000
)

// throttle counts failed logins in a row per user name.
type throttle struct {
	max              int
	lockout, ceiling time.Duration

	mu      sync.Mutex            // guards names and unknown
	names   map[string]*failState // user name -> its failures
	unknown int                   // entries not known to be users
}

type failState struct {
	// fails counts failures in a row plus attempts in flight (counted as
	// failures until they succeed, so a burst of parallel guesses cannot
	// exceed max).
	fails int
	// lockouts counts the lock-outs of this run: the next lasts
	// lockout << lockouts, up to the ceiling.
	lockouts    int
	lockedUntil time.Time // zero when not locked
	last        time.Time // last attempt began or failed
	known       bool      // the name is an existing user's
}

func newThrottle(max int, lockout, ceiling time.Duration) *throttle {
	return &throttle{max: max, lockout: lockout, ceiling: ceiling, names: make(map[string]*failState)}
}

// lockFor is how long the lock-out after n earlier ones lasts.
func (t *throttle) lockFor(n int) time.Duration {
	d := t.lockout
	for range n {
		if d >= t.ceiling {
			break
		}
		d *= 2
	}
	return min(d, t.ceiling)
}

// begin admits an attempt for name, or returns an error matching ErrLocked.
func (t *throttle) begin(name string, now time.Time) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.names[name]
	if st == nil {
		if t.unknown >= maxTracked {
			t.evictLocked(now)
		}
		st = &failState{}
		t.names[name] = st
		t.unknown++
	}
	if st.lockouts > 0 && now.Sub(st.last) > forgetLockOuts {
		st.lockouts = 0
	}
	switch {
	case !st.lockedUntil.IsZero() && now.Before(st.lockedUntil):
		return fmt.Errorf("%w (locked until %s)", ErrLocked, st.lockedUntil.UTC().Format(time.RFC3339))
	case !st.lockedUntil.IsZero():
		st.fails, st.lockedUntil = 0, time.Time{} // lock-out over: the run goes on
	case st.fails > 0 && st.lockouts == 0 && now.Sub(st.last) > forgetAfter:
		st.fails = 0
	}
	if st.fails >= t.max {
		return ErrLocked // max attempts already in flight
	}
	st.fails++
	st.last = now
	return nil
}

// end records an attempt's outcome; known says the name is an existing
// user's. It returns how long this failure locked the name for (zero if it
// did not).
func (t *throttle) end(name string, o outcome, known bool, now time.Time) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.names[name]
	if st == nil {
		return 0 // evicted, or reset by a success
	}
	if known && !st.known {
		st.known = true
		t.unknown--
	}
	switch o {
	case succeeded:
		t.deleteLocked(name)
	case failed:
		st.last = now
		if st.fails >= t.max && st.lockedUntil.IsZero() {
			d := t.lockFor(st.lockouts)
			st.lockedUntil = now.Add(d)
			st.lockouts++
			return d
		}
	case neutral:
		st.fails--
		if st.fails <= 0 && st.lockedUntil.IsZero() && st.lockouts == 0 {
			t.deleteLocked(name)
		}
	}
	return 0
}

func (t *throttle) deleteLocked(name string) {
	if st := t.names[name]; st != nil && !st.known {
		t.unknown--
	}
	delete(t.names, name)
}

// evictLocked makes room among the unknown names: first every entry
// neither locked nor recent, then, if that freed nothing, the one with the
// oldest last attempt. t.mu must be held.
func (t *throttle) evictLocked(now time.Time) {
	var oldest string
	for n, st := range t.names {
		if st.known {
			continue
		}
		if now.After(st.lockedUntil) && now.Sub(st.last) > forgetAfter && (st.lockouts == 0 || now.Sub(st.last) > forgetLockOuts) {
			t.deleteLocked(n)
			continue
		}
		if oldest == "" || st.last.Before(t.names[oldest].last) {
			oldest = n
		}
	}
	if t.unknown >= maxTracked && oldest != "" {
		t.deleteLocked(oldest)
	}
}
