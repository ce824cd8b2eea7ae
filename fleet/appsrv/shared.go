package appsrv

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"remoteler.dev/edge/fleet/apps"
	"remoteler.dev/edge/fleet/store"
)

// A browser's app session is kept in the fleet's store (Config.Store),
// under "appsessions/HASH", HASH the SHA-256 of its cookie's token (the
// token itself is only in the browser), so that it outlives the fleetd
// that started it: after a restart, or on another replica behind the same
// address, the first request with the cookie takes the session up there.
// Taking it up authorises the user afresh, as any new app session (roles,
// locks, the device), checks that the fleet session it came from still
// stands (fleet/web/login), and records a session.start with
// resumed=true; the session keeps its expiry and CSRF token. Every replica
// follows the records (Run): a logout of the app on one ends the session
// on all of them. A logout of the fleet ends it everywhere too (every
// replica follows the fleet sessions), and its record can no longer be
// taken up. The leader removes expired records (Prune).

// appSessionPrefix is where the store keeps browsers' app sessions.
const appSessionPrefix = "appsessions/"

// appRecord is a browser's app session as the store keeps it.
type appRecord struct {
	User       string    `json:"user"`
	App        string    `json:"app"` // the app's label
	WebSession string    `json:"web_session"`
	Expires    time.Time `json:"expires"`
	CSRF       string    `json:"csrf"`
}

// recordKeyOf is the store key of the app session whose key in
// Server.sessions is sk (hashKey of its cookie's token); sessionKeyOf is
// the other way.
func recordKeyOf(sk string) string {
	return appSessionPrefix + strings.TrimPrefix(sk, "cookie:")
}

func sessionKeyOf(key string) string {
	return "cookie:" + strings.TrimPrefix(key, appSessionPrefix)
}

func decodeRecord(b []byte) (appRecord, bool) {
	var rec appRecord
	if err := json.Unmarshal(b, &rec); err != nil || rec.User == "" || rec.App == "" || rec.WebSession == "" || rec.CSRF == "" {
		return appRecord{}, false
	}
	return rec, true
}

// keep writes the record of a new app session, whose key in
// Server.sessions is sk, before its cookie is set.
func (s *Server) keep(ctx context.Context, sk string, rec appRecord) error {
	if s.cfg.Store == nil {
		return nil
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := s.cfg.Store.Create(ctx, recordKeyOf(sk), b); err != nil {
		return fmt.Errorf("appsrv: keep the app session: %w", err)
	}
	return nil
}

// forget removes the record of the app session at key (a logout, or a
// session that could not start), here at once and from the store. Gone
// already is fine.
func (s *Server) forget(ctx context.Context, key string) error {
	if s.cfg.Store == nil || !strings.HasPrefix(key, "cookie:") {
		return nil
	}
	k := recordKeyOf(key)
	s.mu.Lock()
	delete(s.kept, k)
	s.mu.Unlock()
	if err := s.cfg.Store.Delete(ctx, k); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("appsrv: remove the app session from the store: %w", err)
	}
	return nil
}

// refusedFor is how long a refused take-up is not tried again: a page
// that polls the app would otherwise ask the broker, and record a
// refusal, on every request.
const refusedFor = 30 * time.Second

// takeUpTimeout bounds a take-up, which the requests waiting for it share.
const takeUpTimeout = 30 * time.Second

// takeUp starts here the app session whose key in Server.sessions is sk
// (its cookie's), kept in the store by the fleetd that started it, if it is for app label and still
// stands. It returns nil when there is none to take up, or when the user
// may no longer open the app (the launch, where nil sends a browser, then
// says why).
func (s *Server) takeUp(r *http.Request, sk, label string) *session {
	if s.cfg.Store == nil {
		return nil
	}
	key := recordKeyOf(sk)
	s.mu.Lock()
	rec, ok := s.kept[key]
	refused := s.cfg.Now().Sub(s.refusedAt[key]) < refusedFor
	s.mu.Unlock()
	if refused {
		return nil
	}
	if !ok {
		// Started moments ago elsewhere, before the watch brought it.
		b, err := s.cfg.Store.Get(r.Context(), key)
		if err != nil {
			return nil
		}
		if rec, ok = decodeRecord(b); !ok {
			return nil
		}
	}
	if rec.App != label || !s.cfg.Now().Before(rec.Expires) {
		return nil
	}
	if ws, ok := s.cfg.Login.Live(rec.WebSession); !ok || ws.User != rec.User {
		return nil
	}
	v, _, _ := s.takingUp.Do(key, func() (any, error) {
		s.mu.Lock()
		as := s.sessions[sk]
		s.mu.Unlock()
		if as != nil {
			return as, nil // taken up by a request just before this one
		}
		// Shared by the requests that wait for it: not cut short by the
		// first one's end.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), takeUpTimeout)
		defer cancel()
		as, err := s.startTakenUp(ctx, r.RemoteAddr, sk, label, rec)
		if err != nil {
			s.mu.Lock()
			s.refusedAt[key] = s.cfg.Now()
			s.mu.Unlock()
			s.log.Info("app session not taken up", "user", rec.User, "app", label, "err", err)
			return nil, err
		}
		s.log.Info("app session taken up from the store", "user", rec.User, "app", label)
		return as, nil
	})
	as, _ := v.(*session)
	return as
}

// startTakenUp starts the session of rec, whose key in Server.sessions
// is sk. A logout that
// ends it while it starts (the record removed, here or elsewhere, or the
// fleet session ended) finds nothing to end yet, so once it is live the
// record and the fleet session are checked again.
func (s *Server) startTakenUp(ctx context.Context, clientAddr, sk, label string, rec appRecord) (*session, error) {
	user, err := s.cfg.Users.Get(ctx, rec.User)
	if err != nil {
		return nil, err
	}
	ref, _ := apps.ParseRef(label)
	as, err := s.start(ctx, opening{user: user, ref: ref, clientAddr: clientAddr, key: sk, webSession: rec.WebSession,
		expires: rec.Expires, action: "resume", csrf: rec.CSRF, resumed: true})
	if err != nil {
		return nil, err
	}
	if _, err := s.cfg.Store.Get(ctx, recordKeyOf(sk)); err != nil {
		as.finish(ctx, endedElsewhere)
		return nil, fmt.Errorf("the app session ended as it was taken up: %w", err)
	}
	if _, ok := s.cfg.Login.Live(rec.WebSession); !ok {
		as.finish(ctx, "you logged out of the fleet")
		return nil, errors.New("the fleet session ended as the app session was taken up")
	}
	return as, nil
}

// Run follows the app sessions in the store until ctx ends, so that
// sessions started elsewhere are known here, and those that ended
// elsewhere (a logout) end here too. Without a store it returns at once.
func (s *Server) Run(ctx context.Context) {
	if s.cfg.Store == nil {
		return
	}
	store.Follow(ctx, s.cfg.Store, appSessionPrefix, store.FollowHandler{
		Reset: func(items []store.Item, _ int64) {
			next := map[string]appRecord{}
			for _, it := range items {
				if rec, ok := decodeRecord(it.Value); ok {
					next[it.Key] = rec
				}
			}
			s.mu.Lock()
			s.kept = next
			var missing []*session
			for k, as := range s.sessions {
				if strings.HasPrefix(k, "cookie:") {
					if _, ok := next[recordKeyOf(k)]; !ok {
						missing = append(missing, as)
					}
				}
			}
			s.mu.Unlock()
			// A record missing from the list may have ended while the
			// watch was behind, or have been written after the list: the
			// store says which.
			for _, as := range missing {
				_, err := s.cfg.Store.Get(ctx, recordKeyOf(as.key))
				if errors.Is(err, store.ErrNotFound) {
					as.finish(context.WithoutCancel(ctx), endedElsewhere)
				}
			}
		},
		Apply: func(ev store.Event) {
			if ev.Kind == store.EventPut {
				if rec, ok := decodeRecord(ev.Value); ok {
					s.mu.Lock()
					s.kept[ev.Key] = rec
					s.mu.Unlock()
				}
				return
			}
			s.mu.Lock()
			delete(s.kept, ev.Key)
			as := s.sessions[sessionKeyOf(ev.Key)]
			s.mu.Unlock()
			if as != nil {
				as.finish(context.WithoutCancel(ctx), endedElsewhere)
			}
		},
		Retry: func(err error, wait time.Duration) {
			s.log.Warn("follow the app sessions", "err", err, "retry_in", wait.String())
		},
	})
}

// endedElsewhere is why an app session ends when its record is removed
// by another fleetd: a logout of the app there, or its expiry.
const endedElsewhere = "your app session ended"

// Prune removes the expired app sessions from the store and returns how
// many it removed. One replica, the leader, runs it now and then.
func (s *Server) Prune(ctx context.Context) (int, error) {
	if s.cfg.Store == nil {
		return 0, nil
	}
	now := s.cfg.Now()
	n, err := store.Prune(ctx, s.cfg.Store, appSessionPrefix, func(b []byte) bool {
		rec, ok := decodeRecord(b)
		return !ok || !now.Before(rec.Expires)
	})
	if err != nil {
		return n, fmt.Errorf("appsrv: prune app sessions: %w", err)
	}
	return n, nil
}
