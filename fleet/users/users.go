// Package users manages the fleet's users: adding, listing and deleting
// local users, and authenticating a login with a password and, when
// enrolled, a TOTP code. Users are stored as JSON under "users/NAME" in a
// store.Store, with an argon2id password hash (never the password) and the
// TOTP secret. Only fleet/... server packages import users.
//
// Single sign-on users (sso.go) share the same names: their record has no
// password, only the roles and traits their identity provider's claims gave
// at their last login, so the fleet checks their certificates and sessions
// as it checks a local user's, and removing one ends their sessions.
//
// Authenticate resists guessing: an unknown user and a wrong password give
// the same error after the same work (a hash against a dummy); a TOTP code
// is accepted once; and after MaxFailures failures in a row for a name
// (wrong password or wrong TOTP code, for known and unknown names alike)
// that name is locked out, for LockOut the first time and twice as long
// each time after, up to LockOutMax (default 1 min, 2, 4, ... up to 4 h:
// with the password known, about 30 one-time-code guesses a day instead of
// 7,000). A day without failures forgets the doubling. The failure counts
// live in the Service's memory: each fleetd replica counts on its own, and
// a restart forgets them; the counts of existing users are never evicted
// to make room, so a spray of made-up names cannot unlock a real account.
//
// Password hashes (argon2id, 64 MiB each by default) run at most MaxHashes
// at once, and at most MaxHashQueue more wait, each for at most HashWait;
// past that Authenticate answers ErrBusy at once, so a flood of logins can
// neither exhaust memory nor leave real logins hanging: they are told to
// try again. Logins from sources that failed recently (WithLowPriority)
// wait in a queue of their own, served only when the other is empty.
package users

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto/api"
)

const prefix = "users/"

// LoginsTrait is the trait that holds a user's logins; role templates use it
// as "{{internal.logins}}".
const LoginsTrait = "logins"

// Password length limits, in characters and bytes.
const (
	MinPasswordChars = 8
	MaxPasswordBytes = 1024
)

// Defaults of the Service's fields.
const (
	DefaultIssuer      = "Remoteler edge"
	DefaultMaxFailures = 5
	DefaultLockOut     = time.Minute
	DefaultLockOutMax  = 4 * time.Hour
	DefaultHashes      = 2
	DefaultHashQueue   = 8
	DefaultHashWait    = 2 * time.Second
)

var (
	// ErrNotFound is returned for a user that does not exist. It also
	// matches store.ErrNotFound.
	ErrNotFound error = &kindError{msg: "user not found", kind: store.ErrNotFound}
	// ErrExists is returned by Add when the name is taken. It also matches
	// store.ErrExists.
	ErrExists error = &kindError{msg: "user already exists", kind: store.ErrExists}

	// ErrBadCredentials: unknown user, wrong password or wrong TOTP code;
	// deliberately the same error for all.
	ErrBadCredentials = errors.New("wrong user name, password or one-time code")
	// ErrTOTPRequired: the password is right and the user has TOTP
	// enrolled, but no code was given. Ask for one and try again.
	ErrTOTPRequired = errors.New("a one-time code from your authenticator app is required")
	// ErrLocked: too many failures in a row for this user name.
	ErrLocked = errors.New("too many failed logins for this user; try again later")
	// ErrBusy: every password-hashing slot is taken and the queue for
	// them is full; nothing was checked. Try again in a moment.
	ErrBusy = errors.New("the fleet is busy checking other logins; try again in a moment")
)

type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

var nameRE = regexp.MustCompile(`^[a-z0-9._-]{1,64}$`)

// CheckName reports whether name is a valid user name: 1 to 64 characters
// of lower-case letters, digits, '.', '_' and '-', and not "." or "..".
func CheckName(name string) error {
	if !nameRE.MatchString(name) || name == "." || name == ".." {
		return fmt.Errorf("user name %q must be 1 to 64 characters of a-z, 0-9, '.', '_' and '-'", name)
	}
	return nil
}

// record is what the store holds for a user.
type record struct {
	Name         string              `json:"name"`
	Roles        []string            `json:"roles"`
	Traits       map[string][]string `json:"traits,omitempty"`
	PasswordHash string              `json:"password_hash"`
	TOTPSecret   string              `json:"totp_secret,omitempty"` // base32
	// TOTPLastStep is the time step (Unix time / 30 s) of the last accepted
	// TOTP code; codes of that step or earlier are refused as replays.
	TOTPLastStep int64     `json:"totp_last_step,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
	// SSO is set for single sign-on users, who have no password.
	SSO *api.SSOUser `json:"sso,omitempty"`
}

func (r record) api() api.User {
	traits := make(map[string][]string, len(r.Traits))
	for k, v := range r.Traits {
		traits[k] = slices.Clone(v)
	}
	if len(traits) == 0 {
		traits = nil
	}
	return api.User{
		Name:      r.Name,
		Roles:     slices.Clone(r.Roles),
		Traits:    traits,
		TOTP:      r.TOTPSecret != "",
		CreatedAt: r.CreatedAt,
		SSO:       cloneSSO(r.SSO),
	}
}

func cloneSSO(s *api.SSOUser) *api.SSOUser {
	if s == nil {
		return nil
	}
	c := *s
	return &c
}

// Service manages users. Set its fields before the first call; the zero
// value of each optional field means the default given. Its methods are
// safe for concurrent use.
type Service struct {
	Store store.Store
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// Logger receives a line per user added or deleted and per failed
	// login; never a password, hash or secret. Nil discards.
	Logger *slog.Logger

	// HashParams are the argon2id parameters for new hashes. Zero fields
	// mean the defaults (t=1, m=64 MiB, p=4). Tests set cheap ones.
	HashParams HashParams
	// MaxHashes is how many password hashes may run at once, which bounds
	// memory (MaxHashes × m) and CPU under a login flood. Default 2.
	MaxHashes int
	// MaxHashQueue is how many more may wait for one, and HashWait how
	// long each may wait; past either, ErrBusy. Defaults 8 and 2s.
	MaxHashQueue int
	HashWait     time.Duration
	// Issuer names the fleet in authenticator apps. Default
	// "Remoteler edge".
	Issuer string
	// MaxFailures is how many failed logins in a row lock a user name out.
	// Default 5.
	MaxFailures int
	// LockOut is how long a name stays locked the first time; each
	// lock-out after it in the same run of failures doubles, up to
	// LockOutMax. Defaults 1 minute and 4 hours.
	LockOut, LockOutMax time.Duration

	initOnce sync.Once
	slots    *hashSlots
	throttle *throttle

	dummyOnce sync.Once
	dummy     phc // hash of a random password, for unknown users
}

func (s *Service) init() {
	s.initOnce.Do(func() {
		n := s.MaxHashes
		if n <= 0 {
			n = DefaultHashes
		}
		s.slots = newHashSlots(n)
		maxFails := s.MaxFailures
		if maxFails <= 0 {
			maxFails = DefaultMaxFailures
		}
		lock := s.LockOut
		if lock <= 0 {
			lock = DefaultLockOut
		}
		ceiling := s.LockOutMax
		if ceiling <= 0 {
			ceiling = DefaultLockOutMax
		}
		ceiling = max(ceiling, lock)
		s.throttle = newThrottle(maxFails, lock, ceiling)
	})
}

func (s *Service) now() time.Time {
	if s.Now == nil {
		return time.Now()
	}
	return s.Now()
}

func (s *Service) logger() *slog.Logger {
	if s.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Logger
}

func (s *Service) issuer() string {
	if s.Issuer == "" {
		return DefaultIssuer
	}
	return s.Issuer
}

// withHashSlot runs fn while holding one of the MaxHashes slots. When none
// is free it waits in its lane's queue (see WithLowPriority) of at most
// MaxHashQueue, for at most HashWait; past either it returns ErrBusy
// without running fn.
func (s *Service) withHashSlot(ctx context.Context, fn func()) error {
	queue := s.MaxHashQueue
	if queue <= 0 {
		queue = DefaultHashQueue
	}
	wait := s.HashWait
	if wait <= 0 {
		wait = DefaultHashWait
	}
	if err := s.slots.acquire(ctx, laneOf(ctx), queue, wait); err != nil {
		return err
	}
	defer s.slots.release()
	fn()
	return nil
}

// Add creates a user. The name must pass CheckName, the password must have
// at least MinPasswordChars characters, roles must be valid role names
// (they need not exist yet) and logins valid Unix login names; logins are
// stored as the "logins" trait. With TOTP set, the answer's TOTPURL is the
// otpauth:// URL to enrol an authenticator app; it is shown only here.
func (s *Service) Add(ctx context.Context, req api.AddUserRequest) (api.AddUserResponse, error) {
	s.init()
	if err := CheckName(req.Name); err != nil {
		return api.AddUserResponse{}, fmt.Errorf("users: add: %w", err)
	}
	fail := func(err error) (api.AddUserResponse, error) {
		return api.AddUserResponse{}, fmt.Errorf("users: add %q: %w", req.Name, err)
	}
	if err := checkPassword(req.Password); err != nil {
		return fail(err)
	}
	roles, err := distinct(req.Roles, rbac.CheckName)
	if err != nil {
		return fail(fmt.Errorf("role %w", err))
	}
	logins, err := distinct(req.Logins, rbac.CheckLogin)
	if err != nil {
		return fail(err)
	}
	key := prefix + req.Name
	if _, err := s.Store.Get(ctx, key); err == nil {
		return fail(ErrExists)
	} else if !errors.Is(err, store.ErrNotFound) {
		return fail(err)
	}
	rec := record{
		Name:      req.Name,
		Roles:     roles,
		CreatedAt: s.now().UTC(),
	}
	if len(logins) > 0 {
		rec.Traits = map[string][]string{LoginsTrait: logins}
	}
	var resp api.AddUserResponse
	if req.TOTP {
		key, err := totp.Generate(totp.GenerateOpts{
			Issuer:      s.issuer(),
			AccountName: req.Name,
			Digits:      otp.DigitsSix,
			Algorithm:   otp.AlgorithmSHA1,
		})
		if err != nil {
			return fail(fmt.Errorf("totp: %w", err))
		}
		rec.TOTPSecret = key.Secret()
		resp.TOTPURL = key.URL()
	}
	if err := s.withHashSlot(ctx, func() { rec.PasswordHash = hashPassword(req.Password, s.HashParams) }); err != nil {
		return fail(err)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fail(err)
	}
	if err := s.Store.Create(ctx, key, b); errors.Is(err, store.ErrExists) {
		return fail(ErrExists)
	} else if err != nil {
		return fail(err)
	}
	s.logger().Info("users: added", "user", rec.Name, "roles", rec.Roles, "logins", logins, "totp", req.TOTP)
	resp.User = rec.api()
	return resp, nil
}

func checkPassword(p string) error {
	if utf8.RuneCountInString(p) < MinPasswordChars {
		return fmt.Errorf("password must have at least %d characters", MinPasswordChars)
	}
	if len(p) > MaxPasswordBytes {
		return fmt.Errorf("password must have at most %d bytes", MaxPasswordBytes)
	}
	return nil
}

// distinct checks each value and returns them without repeats, in order.
func distinct(in []string, check func(string) error) ([]string, error) {
	var out []string
	for _, v := range in {
		if err := check(v); err != nil {
			return nil, err
		}
		if !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	return out, nil
}

// get returns a user's record and the bytes it was decoded from.
func (s *Service) get(ctx context.Context, name string) (record, []byte, error) {
	var r record
	if CheckName(name) != nil && CheckSSOName(name) != nil {
		return r, nil, ErrNotFound
	}
	b, err := s.Store.Get(ctx, prefix+name)
	if errors.Is(err, store.ErrNotFound) {
		return r, nil, ErrNotFound
	}
	if err != nil {
		return r, nil, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, nil, fmt.Errorf("decode: %w", err)
	}
	return r, b, nil
}

// Get returns the user called name, or an error matching ErrNotFound.
func (s *Service) Get(ctx context.Context, name string) (api.User, error) {
	r, _, err := s.get(ctx, name)
	if err != nil {
		return api.User{}, fmt.Errorf("users: get %q: %w", name, err)
	}
	return r.api(), nil
}

// List returns every user, sorted by name.
func (s *Service) List(ctx context.Context) ([]api.User, error) {
	items, err := s.Store.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("users: list: %w", err)
	}
	out := make([]api.User, 0, len(items))
	for _, it := range items {
		var r record
		if err := json.Unmarshal(it.Value, &r); err != nil {
			return nil, fmt.Errorf("users: list: decode %q: %w", it.Key, err)
		}
		out = append(out, r.api())
	}
	return out, nil
}

// Delete removes the user called name, or returns an error matching
// ErrNotFound. Certificates already issued to the user stay valid until
// they expire.
func (s *Service) Delete(ctx context.Context, name string) error {
	if CheckName(name) != nil && CheckSSOName(name) != nil {
		return fmt.Errorf("users: delete %q: %w", name, ErrNotFound)
	}
	err := s.Store.Delete(ctx, prefix+name)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("users: delete %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("users: delete %q: %w", name, err)
	}
	s.logger().Info("users: deleted", "user", name)
	return nil
}
