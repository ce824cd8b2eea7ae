// Package appjwt signs the identity the fleet hands web apps: every request
// the fleet passes to an app carries a JWT (ES256) in the fleet's own
// header (apps.JWTHeader) that names the user, their roles and traits,
// with the app's public address as its audience and a short expiry. Apps
// verify it against the fleet's keys, published as a JSON Web Key Set at
// /.well-known/jwks.json (Handler).
//
// The keys live in the fleet's store (one JSON value at "jwt/app-keys":
// the active key first, then the previous one), so every replica signs
// with the same key. Rotate makes a new key active and keeps the previous
// one published, so tokens already handed out still verify until they
// expire; the one before that is dropped. Replicas pick a rotation up
// within ReloadEvery.
//
// Signing and the key set are go-jose's (github.com/go-jose/go-jose/v4).
//
// Only fleet/... server packages import appjwt.
package appjwt

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"remoteler.dev/edge/fleet/store"
)

// StoreKey is where the keys live in the store.
const StoreKey = "jwt/app-keys"

// ReloadEvery is how often the keys are read again from the store, so a
// rotation on another replica reaches this one.
const ReloadEvery = time.Minute

// Algorithm is the signature algorithm of the fleet's app tokens.
const Algorithm = jose.ES256

// record is the stored form: the active key first.
type record struct {
	Version int         `json:"version"`
	Keys    []keyRecord `json:"keys"`
}

type keyRecord struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	Key     []byte    `json:"key"` // PKCS #8 DER
}

// Keys signs app tokens and publishes the keys that verify them. Create it
// with Open; its methods are safe for concurrent use.
type Keys struct {
	st  store.Store
	now func() time.Time

	mu     sync.Mutex // guards the fields below
	raw    []byte
	keys   []*ecdsa.PrivateKey
	ids    []string
	signer jose.Signer
	loaded time.Time
}

// Open loads the keys from st, creating the first one on a new fleet. now
// is the clock (nil: time.Now).
func Open(ctx context.Context, st store.Store, now func() time.Time) (*Keys, error) {
	if now == nil {
		now = time.Now
	}
	k := &Keys{st: st, now: now}
	if err := k.Reload(ctx); errors.Is(err, store.ErrNotFound) {
		kr, err := newKey(now())
		if err != nil {
			return nil, err
		}
		b, _ := json.Marshal(record{Version: 1, Keys: []keyRecord{kr}})
		if err := st.Create(ctx, StoreKey, b); err != nil && !errors.Is(err, store.ErrExists) {
			return nil, fmt.Errorf("appjwt: create keys: %w", err)
		}
		if err := k.Reload(ctx); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	return k, nil
}

func newKey(now time.Time) (keyRecord, error) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return keyRecord{}, fmt.Errorf("appjwt: new key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return keyRecord{}, fmt.Errorf("appjwt: new key: %w", err)
	}
	pub, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	sum := sha256.Sum256(pub)
	return keyRecord{ID: hex.EncodeToString(sum[:8]), Created: now.UTC(), Key: der}, nil
}

// Reload reads the keys from the store again.
func (k *Keys) Reload(ctx context.Context) error {
	b, err := k.st.Get(ctx, StoreKey)
	if err != nil {
		return fmt.Errorf("appjwt: load keys: %w", err)
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if string(b) == string(k.raw) {
		k.loaded = k.now()
		return nil
	}
	var rec record
	if err := json.Unmarshal(b, &rec); err != nil || len(rec.Keys) == 0 {
		return fmt.Errorf("appjwt: stored keys are malformed (%v)", err)
	}
	var keys []*ecdsa.PrivateKey
	var ids []string
	for _, kr := range rec.Keys {
		p, err := x509.ParsePKCS8PrivateKey(kr.Key)
		ec, ok := p.(*ecdsa.PrivateKey)
		if err != nil || !ok {
			return fmt.Errorf("appjwt: stored key %s is not an ECDSA key (%v)", kr.ID, err)
		}
		keys, ids = append(keys, ec), append(ids, kr.ID)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: Algorithm, Key: jose.JSONWebKey{Key: keys[0], KeyID: ids[0]}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		return fmt.Errorf("appjwt: signer: %w", err)
	}
	k.raw, k.keys, k.ids, k.signer, k.loaded = b, keys, ids, signer, k.now()
	return nil
}

// reloadIfStale reloads the keys when they were read more than
// ReloadEvery ago; a failure keeps the keys it has.
func (k *Keys) reloadIfStale(ctx context.Context) {
	k.mu.Lock()
	stale := k.now().Sub(k.loaded) > ReloadEvery
	k.mu.Unlock()
	if stale {
		k.Reload(ctx)
	}
}

// Rotate makes a new key the signing key and keeps the one it replaces
// published; an older one is dropped. It returns the new key's ID.
func (k *Keys) Rotate(ctx context.Context) (string, error) {
	for range 8 {
		old, err := k.st.Get(ctx, StoreKey)
		if err != nil {
			return "", fmt.Errorf("appjwt: rotate: %w", err)
		}
		var rec record
		if err := json.Unmarshal(old, &rec); err != nil || len(rec.Keys) == 0 {
			return "", fmt.Errorf("appjwt: rotate: stored keys are malformed (%v)", err)
		}
		kr, err := newKey(k.now())
		if err != nil {
			return "", err
		}
		rec.Keys = []keyRecord{kr, rec.Keys[0]}
		b, _ := json.Marshal(rec)
		switch err := k.st.CompareAndSwap(ctx, StoreKey, old, b); {
		case errors.Is(err, store.ErrConflict):
			continue // another replica rotated meanwhile
		case err != nil:
			return "", fmt.Errorf("appjwt: rotate: %w", err)
		}
		return kr.ID, k.Reload(ctx)
	}
	return "", errors.New("appjwt: rotate: the keys kept changing; try again")
}

// Claims are what an app token says: the registered claims (issuer, the
// user as subject, the app's address as audience, times, an ID) and the
// user's name, roles and traits.
type Claims struct {
	jwt.Claims
	Username string              `json:"username"`
	Roles    []string            `json:"roles"`
	Traits   map[string][]string `json:"traits,omitempty"`
}

// Sign signs c with the active key.
func (k *Keys) Sign(c *Claims) (string, error) {
	k.reloadIfStale(context.Background())
	k.mu.Lock()
	signer := k.signer
	k.mu.Unlock()
	s, err := jwt.Signed(signer).Claims(c).Serialize()
	if err != nil {
		return "", fmt.Errorf("appjwt: sign: %w", err)
	}
	return s, nil
}

// JWKS returns the public keys that verify app tokens: the active key
// first, then the previous one.
func (k *Keys) JWKS() jose.JSONWebKeySet {
	k.mu.Lock()
	defer k.mu.Unlock()
	var set jose.JSONWebKeySet
	for i, p := range k.keys {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: &p.PublicKey, KeyID: k.ids[i], Algorithm: string(Algorithm), Use: "sig"})
	}
	return set
}

// ActiveID is the ID (the "kid") of the signing key.
func (k *Keys) ActiveID() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.ids[0]
}

// Handler serves the key set as JSON (GET /.well-known/jwks.json). Apps
// may cache it for a minute; one that meets a token with a key ID it does
// not know should fetch it again.
func (k *Keys) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		k.reloadIfStale(r.Context())
		b, err := json.Marshal(k.JWKS())
		if err != nil {
			http.Error(w, "key set: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "public, max-age=60")
		w.Header().Set("Access-Control-Allow-Origin", "*")
		w.Write(b)
	})
}
