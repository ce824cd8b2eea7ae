package ca

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"remoteler.dev/edge/fleet/store"
)

// KeyInfo describes one key of a CA, for admins planning a rotation.
type KeyInfo struct {
	ID      string // pin (X.509) or SSH SHA256 fingerprint
	Created time.Time
	Active  bool      // the key that signs
	Expires time.Time // X.509 CA certificate's NotAfter; zero for SSH
}

// Keys lists the keys of CA t, the active one first.
func (a *Authority) Keys(t Type) []KeyInfo {
	set := a.set(t)
	if set == nil {
		return nil
	}
	out := make([]KeyInfo, len(set.keys))
	for i, k := range set.keys {
		out[i] = KeyInfo{ID: k.id, Created: k.created, Active: i == 0}
		if k.cert != nil {
			out[i].Expires = k.cert.NotAfter
		}
	}
	return out
}

// AddKey is rotation step 1 (see the package doc): it adds a new key to CA
// t, trusted at once but not yet signing, and returns its ID.
func (a *Authority) AddKey(ctx context.Context, t Type) (string, error) {
	kr, err := newKey(t, a.cluster, a.now())
	if err != nil {
		return "", fmt.Errorf("ca: add %s key: %w", t, err)
	}
	err = a.update(ctx, t, func(rec *record) error {
		rec.Keys = append(rec.Keys, kr)
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("ca: add %s key: %w", t, err)
	}
	return kr.ID, nil
}

// Activate is rotation step 2: key id of CA t signs from now on.
func (a *Authority) Activate(ctx context.Context, t Type, id string) error {
	err := a.update(ctx, t, func(rec *record) error {
		if !slices.ContainsFunc(rec.Keys, func(k keyRecord) bool { return k.ID == id }) {
			return fmt.Errorf("no key %q", id)
		}
		rec.Active = id
		return nil
	})
	if err != nil {
		return fmt.Errorf("ca: activate %s key: %w", t, err)
	}
	return nil
}

// Retire is rotation step 3: key id of CA t is no longer trusted. The
// active key cannot be retired.
func (a *Authority) Retire(ctx context.Context, t Type, id string) error {
	err := a.update(ctx, t, func(rec *record) error {
		if id == rec.Active {
			return errors.New("the active key cannot be retired; activate another first")
		}
		n := len(rec.Keys)
		rec.Keys = slices.DeleteFunc(rec.Keys, func(k keyRecord) bool { return k.ID == id })
		if len(rec.Keys) == n {
			return fmt.Errorf("no key %q", id)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ca: retire %s key: %w", t, err)
	}
	return nil
}

// maxUpdateTries bounds the compare-and-swap retries of update.
const maxUpdateTries = 10

// update applies change to the stored record of CA t with compare-and-swap
// (retrying when another replica changed it meanwhile), then makes the
// result the Authority's current key set.
func (a *Authority) update(ctx context.Context, t Type, change func(*record) error) error {
	if !t.valid() {
		return fmt.Errorf("unknown CA %q", t)
	}
	a.updating.Lock()
	defer a.updating.Unlock()
	key := t.StoreKey()
	for range maxUpdateTries {
		old, err := a.st.Get(ctx, key)
		if err != nil {
			return err
		}
		rec, _, err := decode(t, old)
		if err != nil {
			return err
		}
		if err := change(&rec); err != nil {
			return err
		}
		next, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		_, set, err := decode(t, next)
		if err != nil {
			return err
		}
		err = a.st.CompareAndSwap(ctx, key, old, next)
		if errors.Is(err, store.ErrConflict) {
			continue
		}
		if err != nil {
			return err
		}
		a.mu.Lock()
		a.sets[t] = set
		a.mu.Unlock()
		return nil
	}
	return fmt.Errorf("%q changed %d times under us", key, maxUpdateTries)
}
