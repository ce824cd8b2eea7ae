// Package tokens manages join tokens: the one-time (or few-times) secrets
// an admin hands to a device so it can join the fleet. Tokens are stored as
// JSON under "tokens/ID" in a store.Store; only the SHA-256 of a secret is
// stored, and the secret is shown once, when the token is created. Only
// fleet/... server packages import tokens.
//
// A secret looks like "jt_" followed by 52 lower-case base32 characters (32
// random bytes). Its ID is the first 12 hex digits of the secret's SHA-256:
// short enough to type in `fleetctl tokens rm ID`, and computable from the
// secret, so Consume finds the record in one read.
//
// Expired and used-up tokens stay listed (so an admin can see why a device
// failed to join) until deleted, or until Prune removes them Retention after
// they expired or were used up; fleetd calls Prune periodically.
package tokens

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"regexp"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto/api"
)

const (
	prefix       = "tokens/"
	secretPrefix = "jt_"
	idLen        = 12 // hex digits
	// maxRetries bounds Consume's compare-and-swap loop. Every conflict
	// means another Consume of the same token succeeded, so this is also
	// the most concurrent joins with one token that are all served.
	maxRetries = 64
)

// Defaults of AddTokenRequest.
const (
	DefaultTTL  = time.Hour
	DefaultUses = 1
)

// Retention is how long Prune keeps a token after it expired or was used
// up.
const Retention = 24 * time.Hour

var enc = base32.StdEncoding.WithPadding(base32.NoPadding)

var idRE = regexp.MustCompile(`^[0-9a-f]{12}$`)

// Errors of Consume. The errors Consume returns wrap them and say what to
// do next; test them with errors.Is.
var (
	ErrTokenInvalid = errors.New("join token not recognised; check it was copied whole, or create a new one with `fleetctl tokens add`")
	ErrTokenExpired = errors.New("join token expired")
	ErrTokenUsedUp  = errors.New("join token has no uses left")
	// ErrTokenType: a device token used to join a cluster, or the other
	// way round.
	ErrTokenType = errors.New("join token is of another type")
)

// ErrNotFound is returned by Delete for an unknown ID. It also matches
// store.ErrNotFound.
var ErrNotFound error = &kindError{msg: "join token not found", kind: store.ErrNotFound}

type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

// record is what the store holds for a token.
type record struct {
	ID        string            `json:"id"`
	Hash      string            `json:"sha256"` // hex SHA-256 of the secret
	Expires   time.Time         `json:"expires"`
	UsesLeft  int               `json:"uses_left"`
	Labels    map[string]string `json:"labels,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	// UsedUpAt is when the last use was consumed, for Prune.
	UsedUpAt time.Time `json:"used_up_at,omitzero"`
	// Type is api.TokenTrustedCluster for a leaf fleet's token; empty for
	// a device's.
	Type string `json:"type,omitempty"`
}

// typeOf is a record's type with the default filled in.
func (r record) typeOf() string {
	if r.Type == "" {
		return api.TokenDevice
	}
	return r.Type
}

func (r record) api() api.Token {
	return api.Token{
		ID:        r.ID,
		Expires:   r.Expires,
		UsesLeft:  r.UsesLeft,
		Labels:    maps.Clone(r.Labels),
		CreatedAt: r.CreatedAt,
		Type:      r.typeOf(),
	}
}

// Service manages join tokens. Its methods are safe for concurrent use,
// also across fleetd replicas sharing a store.
type Service struct {
	Store store.Store
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// Logger receives a line per token added, consumed, refused and
	// deleted (never the secret). Nil discards.
	Logger *slog.Logger

	// turns make this fleetd's changes to one token take turns (by the
	// token's hash, 16 ways): devices joining with the same token at once
	// then wait here instead of failing each other's compare-and-swap in
	// the store. Only replicas contend in the store: at 72 joins a second
	// with one token over three replicas, 367 joins had given up after 32
	// conflicts each.
	turnsOnce sync.Once
	turns     [16]chan struct{}
}

// turn waits for the turn to change the token whose hash starts with b,
// or for ctx to end; release gives it back.
func (s *Service) turn(ctx context.Context, b byte) (release func(), err error) {
	s.turnsOnce.Do(func() {
		for i := range s.turns {
			s.turns[i] = make(chan struct{}, 1)
		}
	})
	t := s.turns[int(b)%len(s.turns)]
	select {
	case t <- struct{}{}:
		return func() { <-t }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
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

// hashOf returns the SHA-256 of a secret and the ID derived from it.
func hashOf(secret string) (sum [sha256.Size]byte, id string) {
	sum = sha256.Sum256([]byte(secret))
	return sum, hex.EncodeToString(sum[:])[:idLen]
}

// IDOf returns the ID of the token whose secret this is (whether or not
// such a token exists), e.g. to record which token a device joined with.
func IDOf(secret string) string {
	_, id := hashOf(strings.TrimSpace(secret))
	return id
}

// Add creates a token. Zero TTL means DefaultTTL; zero Uses means
// DefaultUses. The returned token's Token field holds the secret, which is
// not stored and cannot be shown again; JoinString and CAPin are left for
// the caller, which knows the fleet's CA.
func (s *Service) Add(ctx context.Context, req api.AddTokenRequest) (api.Token, error) {
	if req.TTL < 0 {
		return api.Token{}, fmt.Errorf("tokens: add: TTL %v is negative", req.TTL)
	}
	if req.Uses < 0 {
		return api.Token{}, fmt.Errorf("tokens: add: uses %d is negative", req.Uses)
	}
	if err := devices.CheckLabels(req.Labels); err != nil {
		return api.Token{}, fmt.Errorf("tokens: add: %w", err)
	}
	switch req.Type {
	case "", api.TokenDevice:
		req.Type = ""
	case api.TokenTrustedCluster:
		if len(req.Labels) > 0 {
			return api.Token{}, errors.New("tokens: add: a trusted-cluster token takes no labels")
		}
	default:
		return api.Token{}, fmt.Errorf("tokens: add: type %q: want %s or %s", req.Type, api.TokenDevice, api.TokenTrustedCluster)
	}
	if req.TTL == 0 {
		req.TTL = DefaultTTL
	}
	if req.Uses == 0 {
		req.Uses = DefaultUses
	}
	now := s.now().UTC()
	for range 8 {
		var raw [32]byte
		rand.Read(raw[:])
		secret := secretPrefix + strings.ToLower(enc.EncodeToString(raw[:]))
		sum, id := hashOf(secret)
		rec := record{
			ID:        id,
			Hash:      hex.EncodeToString(sum[:]),
			Expires:   now.Add(req.TTL),
			UsesLeft:  req.Uses,
			Labels:    maps.Clone(req.Labels),
			CreatedAt: now,
			Type:      req.Type,
		}
		b, err := json.Marshal(rec)
		if err != nil {
			return api.Token{}, fmt.Errorf("tokens: add: %w", err)
		}
		err = s.Store.Create(ctx, prefix+id, b)
		if errors.Is(err, store.ErrExists) {
			continue // an ID collision: 48 bits, so never in practice
		}
		if err != nil {
			return api.Token{}, fmt.Errorf("tokens: add: %w", err)
		}
		s.logger().Info("tokens: added", "id", id, "expires", rec.Expires, "uses", rec.UsesLeft, "labels", rec.Labels)
		t := rec.api()
		t.Token = secret
		return t, nil
	}
	return api.Token{}, errors.New("tokens: add: could not find a free ID")
}

// List returns every token (without secrets), ordered by ID.
func (s *Service) List(ctx context.Context) ([]api.Token, error) {
	recs, err := s.list(ctx)
	if err != nil {
		return nil, fmt.Errorf("tokens: list: %w", err)
	}
	out := make([]api.Token, 0, len(recs))
	for _, r := range recs {
		out = append(out, r.api())
	}
	return out, nil
}

func (s *Service) list(ctx context.Context) ([]record, error) {
	items, err := s.Store.List(ctx, prefix)
	if err != nil {
		return nil, err
	}
	out := make([]record, 0, len(items))
	for _, it := range items {
		var r record
		if err := json.Unmarshal(it.Value, &r); err != nil {
			return nil, fmt.Errorf("decode %q: %w", it.Key, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// Delete removes the token with this ID, or returns an error matching
// ErrNotFound.
func (s *Service) Delete(ctx context.Context, id string) error {
	id = strings.ToLower(strings.TrimSpace(id))
	if !idRE.MatchString(id) {
		return fmt.Errorf("tokens: delete %q: %w", id, ErrNotFound)
	}
	err := s.Store.Delete(ctx, prefix+id)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("tokens: delete %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("tokens: delete %q: %w", id, err)
	}
	s.logger().Info("tokens: deleted", "id", id)
	return nil
}

// Consume spends one use of the device token whose secret this is and
// returns the labels the token gives the joining device. It fails with
// errors matching ErrTokenInvalid (unknown secret), ErrTokenExpired,
// ErrTokenUsedUp or ErrTokenType (a trusted-cluster token). Uses are
// decremented with compare-and-swap, so concurrent Consumes of a one-use
// token succeed exactly once.
func (s *Service) Consume(ctx context.Context, secret string) (labels map[string]string, err error) {
	return s.ConsumeAs(ctx, secret, api.TokenDevice)
}

// ConsumeAs is Consume for a token of type typ (api.TokenDevice or
// api.TokenTrustedCluster); a token of another type is refused with an
// error matching ErrTokenType, and keeps its use.
func (s *Service) ConsumeAs(ctx context.Context, secret, typ string) (labels map[string]string, err error) {
	_, id := hashOf(strings.TrimSpace(secret))
	defer func() {
		if err != nil {
			s.logger().Warn("tokens: join token refused", "id", id, "err", err)
		}
	}()
	r, err := s.change(ctx, "consume", secret, func(r *record, now time.Time) error {
		if err := r.usable(typ, now); err != nil {
			return err
		}
		r.UsesLeft--
		if r.UsesLeft == 0 {
			r.UsedUpAt = now
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	s.logger().Info("tokens: consumed", "id", id, "uses_left", r.UsesLeft)
	return maps.Clone(r.Labels), nil
}

// Check reports whether the token whose secret this is could be consumed
// for typ now, with the error Consume would give, and spends nothing: a
// join checks the token first, then the rest of its request, and spends
// the use last.
func (s *Service) Check(ctx context.Context, secret, typ string) error {
	r, _, err := s.lookup(ctx, "check", secret)
	if err != nil {
		return err
	}
	if err := r.usable(typ, s.now().UTC()); err != nil {
		return fmt.Errorf("tokens: check: %w", err)
	}
	return nil
}

// usable says why r cannot be consumed for typ at now, or nil.
func (r *record) usable(typ string, now time.Time) error {
	if r.typeOf() != typ {
		return fmt.Errorf("%w: it is a %s token, and this needs a %s token (fleetctl tokens add --type=%s)",
			ErrTokenType, r.typeOf(), typ, typ)
	}
	if !now.Before(r.Expires) {
		return fmt.Errorf("%w at %s; create a new one with `fleetctl tokens add`",
			ErrTokenExpired, r.Expires.Format(time.RFC3339))
	}
	if r.UsesLeft <= 0 {
		return fmt.Errorf("%w; create a new one with `fleetctl tokens add` (it can allow several devices)",
			ErrTokenUsedUp)
	}
	return nil
}

// Refund gives back a use that Consume spent on a join the fleet then
// refused (the name was taken meanwhile, say): the token is as it was.
func (s *Service) Refund(ctx context.Context, secret string) error {
	r, err := s.change(ctx, "refund", secret, func(r *record, _ time.Time) error {
		r.UsesLeft++
		r.UsedUpAt = time.Time{}
		return nil
	})
	if err != nil {
		return err
	}
	s.logger().Info("tokens: use given back", "id", r.ID, "uses_left", r.UsesLeft)
	return nil
}

// change applies fn to the token whose secret this is, with
// compare-and-swap, so that concurrent changes each count (those made
// through s take turns first). An error from fn leaves the token
// unchanged.
func (s *Service) change(ctx context.Context, op, secret string, fn func(r *record, now time.Time) error) (*record, error) {
	sum, id := hashOf(strings.TrimSpace(secret))
	release, err := s.turn(ctx, sum[0])
	if err != nil {
		return nil, fmt.Errorf("tokens: %s: %w", op, err)
	}
	defer release()
	for range maxRetries {
		r, old, err := s.lookup(ctx, op, secret)
		if err != nil {
			return nil, err
		}
		if err := fn(r, s.now().UTC()); err != nil {
			return nil, fmt.Errorf("tokens: %s: %w", op, err)
		}
		next, err := json.Marshal(r)
		if err != nil {
			return nil, fmt.Errorf("tokens: %s: %w", op, err)
		}
		err = s.Store.CompareAndSwap(ctx, prefix+id, old, next)
		switch {
		case err == nil:
			return r, nil
		case errors.Is(err, store.ErrConflict):
			continue
		case errors.Is(err, store.ErrNotFound):
			return nil, fmt.Errorf("tokens: %s: %w", op, ErrTokenInvalid)
		default:
			return nil, fmt.Errorf("tokens: %s: %w", op, err)
		}
	}
	return nil, fmt.Errorf("tokens: %s: too many devices joining with this token at once; try again", op)
}

// lookup reads the token whose secret this is, and the bytes it was
// decoded from; an unknown or malformed secret is ErrTokenInvalid.
func (s *Service) lookup(ctx context.Context, op, secret string) (*record, []byte, error) {
	secret = strings.TrimSpace(secret)
	sum, id := hashOf(secret)
	if !strings.HasPrefix(secret, secretPrefix) {
		return nil, nil, fmt.Errorf("tokens: %s: %w", op, ErrTokenInvalid)
	}
	key := prefix + id
	old, err := s.Store.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil, fmt.Errorf("tokens: %s: %w", op, ErrTokenInvalid)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("tokens: %s: %w", op, err)
	}
	var r record
	if err := json.Unmarshal(old, &r); err != nil {
		return nil, nil, fmt.Errorf("tokens: %s: decode %q: %w", op, key, err)
	}
	want, err := hex.DecodeString(r.Hash)
	if err != nil || subtle.ConstantTimeCompare(want, sum[:]) != 1 {
		return nil, nil, fmt.Errorf("tokens: %s: %w", op, ErrTokenInvalid)
	}
	return &r, old, nil
}

// Prune deletes tokens that expired, or were used up, more than Retention
// ago, and returns how many it deleted.
func (s *Service) Prune(ctx context.Context) (int, error) {
	recs, err := s.list(ctx)
	if err != nil {
		return 0, fmt.Errorf("tokens: prune: %w", err)
	}
	cutoff := s.now().Add(-Retention)
	n := 0
	for _, r := range recs {
		done := r.Expires
		if r.UsesLeft <= 0 && !r.UsedUpAt.IsZero() && r.UsedUpAt.Before(done) {
			done = r.UsedUpAt
		}
		if !done.Before(cutoff) {
			continue
		}
		err := s.Store.Delete(ctx, prefix+r.ID)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return n, fmt.Errorf("tokens: prune: %w", err)
		}
		if err == nil {
			n++
			s.logger().Info("tokens: pruned", "id", r.ID)
		}
	}
	return n, nil
}

// Refused reports whether err, from Consume or ConsumeAs, refuses the
// token (unknown, expired, used up, of another type) rather than failing
// to read the store.
func Refused(err error) bool {
	return errors.Is(err, ErrTokenInvalid) || errors.Is(err, ErrTokenExpired) || errors.Is(err, ErrTokenUsedUp) || errors.Is(err, ErrTokenType)
}
