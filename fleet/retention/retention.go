// Package retention keeps the fleet's storage policy for its audit trail
// (api.Retention): how long, and how much, of the audit log and the
// session recordings the fleet keeps, what each device may fill, and the
// free space kept on the data dir. The policy lives in the state store
// under "fleet/retention", so `fleetctl retention set` changes it for every
// replica; until an admin sets one, the defaults apply. Readers on hot
// paths (every audit batch) use Current, which rereads the store at most
// every few seconds.
//
// Only fleet/... server packages import retention.
package retention

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto/api"
)

const key = "fleet/retention"

// cacheFor is how long Current reuses what it read.
const cacheFor = 5 * time.Second

// Service reads and writes the policy. Its zero value, with Store set,
// works.
type Service struct {
	Store store.Store
	// Defaults is the policy until an admin sets one; zero means
	// api.DefaultRetention().
	Defaults *api.Retention
	// Now is the clock; nil means time.Now.
	Now func() time.Time

	mu  sync.Mutex // guards cur and at
	cur api.Retention
	at  time.Time
}

func (s *Service) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

func (s *Service) defaults() api.Retention {
	if s.Defaults != nil {
		return *s.Defaults
	}
	return api.DefaultRetention()
}

// Get reads the policy in force: the stored one, or the defaults.
func (s *Service) Get(ctx context.Context) (api.Retention, error) {
	b, err := s.Store.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return s.defaults(), nil
	}
	if err != nil {
		return api.Retention{}, fmt.Errorf("retention: get: %w", err)
	}
	var r api.Retention
	if err := json.Unmarshal(b, &r); err != nil {
		return api.Retention{}, fmt.Errorf("retention: stored policy: %w", err)
	}
	return r, nil
}

// Current returns the policy in force, reread at most every few seconds;
// when the store cannot be read it keeps the last it had (at first, the
// defaults).
func (s *Service) Current() api.Retention {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now := s.now(); s.at.IsZero() || now.Sub(s.at) >= cacheFor {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		r, err := s.Get(ctx)
		cancel()
		switch {
		case err == nil:
			s.cur = r
		case s.at.IsZero():
			s.cur = s.defaults()
		}
		s.at = now
	}
	return s.cur
}

// Set stores r as the policy; it applies at once on this replica and
// within seconds on others.
func (s *Service) Set(ctx context.Context, r api.Retention) error {
	if err := r.Validate(); err != nil {
		return invalid{err}
	}
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("retention: set: %w", err)
	}
	if err := s.Store.Put(ctx, key, b); err != nil {
		return fmt.Errorf("retention: set: %w", err)
	}
	s.mu.Lock()
	s.cur, s.at = r, s.now()
	s.mu.Unlock()
	return nil
}

// invalid marks a bad policy (the API answers 400 for it).
type invalid struct{ error }

func (invalid) InvalidInput() bool { return true }
func (e invalid) Unwrap() error    { return e.error }
