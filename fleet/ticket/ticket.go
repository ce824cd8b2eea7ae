// Package ticket holds login tickets: what a login that happened somewhere
// else (a single sign-on login in a browser, a headless login approved in
// one) hands to the tsh that asked for it, so that tsh can collect its
// certificates. A ticket names the user, the keys tsh made and the
// lifetime it asked for; it lasts a few minutes, is redeemed at most once,
// and only with the verifier whose SHA-256 tsh gave when it started (as
// PKCE does for OAuth codes), so a ticket seen in a browser's history or a
// loopback redirect is worth nothing to anyone else.
//
// Tickets are kept in the store under "tickets/HASH" (the SHA-256 of the
// secret, never the secret), so any fleetd replica redeems them.
//
// Only fleet/... server packages import ticket.
package ticket

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"remoteler.dev/edge/fleet/store"
)

const prefix = "tickets/"

// DefaultTTL is how long a ticket lasts when Service.TTL is zero.
const DefaultTTL = 2 * time.Minute

// Errors of Redeem; the messages say what to do.
var (
	ErrUnknown  = errors.New("this login ticket is unknown, was already used or has expired: log in again")
	ErrVerifier = errors.New("this login ticket was not made for this client (wrong verifier): log in again")
)

// Ticket is what a redeemed ticket gives.
type Ticket struct {
	// User is the fleet user the certificates are for.
	User string `json:"user"`
	// Method says how they logged in ("sso", "headless"), and Connector
	// through which connector, for the audit log.
	Method    string `json:"method"`
	Connector string `json:"connector,omitempty"`
	// CSR, SSHPublicKey and TTL are tsh's request, as in
	// api.LoginRequest.
	CSR          []byte        `json:"csr"`
	SSHPublicKey string        `json:"ssh_public_key"`
	TTL          time.Duration `json:"ttl,omitempty"`
	// Challenge is the base64url SHA-256 of the verifier that redeems
	// the ticket.
	Challenge string `json:"challenge"`
	// Expires is when the ticket stops being redeemable.
	Expires time.Time `json:"expires"`
}

// CheckChallenge reports whether c is a base64url SHA-256 (43 characters
// without padding).
func CheckChallenge(c string) error {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) != sha256.Size {
		return errors.New("code_challenge must be the base64url (unpadded) SHA-256 of a verifier")
	}
	return nil
}

// Challenge returns the challenge of verifier: its SHA-256, base64url.
func Challenge(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// Service keeps tickets in Store. Its zero value, with Store set, works.
type Service struct {
	Store store.Store
	// TTL is how long a ticket lasts; default DefaultTTL.
	TTL time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func key(secret string) string {
	sum := sha256.Sum256([]byte(secret))
	return prefix + hex.EncodeToString(sum[:])
}

// Issue stores t (its Expires set from the TTL) and returns its secret.
func (s *Service) Issue(ctx context.Context, t Ticket) (string, error) {
	if err := CheckChallenge(t.Challenge); err != nil {
		return "", fmt.Errorf("ticket: issue: %w", err)
	}
	ttl := s.TTL
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	t.Expires = s.now().Add(ttl).UTC()
	b, err := json.Marshal(t)
	if err != nil {
		return "", fmt.Errorf("ticket: issue: %w", err)
	}
	secret := "tk_" + rand.Text() + rand.Text()
	if err := s.Store.Create(ctx, key(secret), b); err != nil {
		return "", fmt.Errorf("ticket: issue: %w", err)
	}
	return secret, nil
}

// Redeem takes the ticket secret names, once: the first call with the
// right verifier gets it, every later call ErrUnknown. A wrong verifier
// gets ErrVerifier and leaves nothing to redeem either, so a ticket that
// leaked cannot be tried again and again.
func (s *Service) Redeem(ctx context.Context, secret, verifier string) (Ticket, error) {
	var t Ticket
	if secret == "" || len(secret) > 256 {
		return t, ErrUnknown
	}
	k := key(secret)
	b, err := s.Store.Get(ctx, k)
	if errors.Is(err, store.ErrNotFound) {
		return t, ErrUnknown
	}
	if err != nil {
		return t, fmt.Errorf("ticket: redeem: %w", err)
	}
	// Whoever deletes it owns it: of two redeemers, one wins.
	if err := s.Store.Delete(ctx, k); errors.Is(err, store.ErrNotFound) {
		return t, ErrUnknown
	} else if err != nil {
		return t, fmt.Errorf("ticket: redeem: %w", err)
	}
	if err := json.Unmarshal(b, &t); err != nil {
		return Ticket{}, fmt.Errorf("ticket: redeem: decode: %w", err)
	}
	if !s.now().Before(t.Expires) {
		return Ticket{}, ErrUnknown
	}
	if subtle.ConstantTimeCompare([]byte(Challenge(verifier)), []byte(t.Challenge)) != 1 {
		return Ticket{}, ErrVerifier
	}
	return t, nil
}

// Prune deletes the tickets that expired, writing through st (the elected
// leader's fenced store, fleet/leader: a deposed leader deletes nothing);
// it returns how many.
func (s *Service) Prune(ctx context.Context, st store.Store) (int, error) {
	items, err := st.List(ctx, prefix)
	if err != nil {
		return 0, fmt.Errorf("ticket: prune: %w", err)
	}
	n := 0
	now := s.now()
	for _, it := range items {
		var t Ticket
		if json.Unmarshal(it.Value, &t) == nil && now.Before(t.Expires) {
			continue
		}
		if err := st.Delete(ctx, it.Key); err == nil {
			n++
		} else if !errors.Is(err, store.ErrNotFound) {
			return n, fmt.Errorf("ticket: prune: %w", err)
		}
	}
	return n, nil
}
