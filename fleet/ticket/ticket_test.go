package ticket

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/store/memstore"
)

func newService(t *testing.T, now *time.Time) *Service {
	t.Helper()
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	return &Service{Store: st, Now: func() time.Time { return *now }}
}

func TestRedeemOnce(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0)
	s := newService(t, &now)
	tk := Ticket{User: "carol@example.com", Method: "sso", Connector: "okta", SSHPublicKey: "ssh-ed25519 AAAA", TTL: time.Hour, Challenge: Challenge("v1")}
	secret, err := s.Issue(ctx, tk)
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Redeem(ctx, secret, "v1")
	if err != nil {
		t.Fatal(err)
	}
	if got.User != tk.User || got.Connector != "okta" || got.TTL != time.Hour || !got.Expires.Equal(now.Add(DefaultTTL)) {
		t.Errorf("redeemed %+v", got)
	}
	if _, err := s.Redeem(ctx, secret, "v1"); !errors.Is(err, ErrUnknown) {
		t.Errorf("second redeem: %v, want ErrUnknown", err)
	}

	t.Run("a wrong verifier spends it", func(t *testing.T) {
		secret, _ := s.Issue(ctx, tk)
		if _, err := s.Redeem(ctx, secret, "v2"); !errors.Is(err, ErrVerifier) {
			t.Errorf("wrong verifier: %v", err)
		}
		if _, err := s.Redeem(ctx, secret, "v1"); !errors.Is(err, ErrUnknown) {
			t.Errorf("right verifier after a wrong one: %v, want ErrUnknown", err)
		}
	})
	t.Run("expired", func(t *testing.T) {
		secret, _ := s.Issue(ctx, tk)
		now = now.Add(DefaultTTL)
		if _, err := s.Redeem(ctx, secret, "v1"); !errors.Is(err, ErrUnknown) {
			t.Errorf("expired: %v", err)
		}
	})
	t.Run("made up", func(t *testing.T) {
		for _, secret := range []string{"", "tk_nope", string(make([]byte, 300))} {
			if _, err := s.Redeem(ctx, secret, "v1"); !errors.Is(err, ErrUnknown) {
				t.Errorf("Redeem(%q): %v", secret, err)
			}
		}
	})
	t.Run("bad challenge", func(t *testing.T) {
		bad := tk
		bad.Challenge = "short"
		if _, err := s.Issue(ctx, bad); err == nil {
			t.Error("issued with a bad challenge")
		}
	})
}

func TestRedeemRace(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	s := newService(t, &now)
	secret, err := s.Issue(ctx, Ticket{User: "u", Challenge: Challenge("v")})
	if err != nil {
		t.Fatal(err)
	}
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			if _, err := s.Redeem(ctx, secret, "v"); err == nil {
				wins.Add(1)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Errorf("%d redeems won, want 1", wins.Load())
	}
}

func TestPrune(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	s := newService(t, &now)
	s.Issue(ctx, Ticket{User: "old", Challenge: Challenge("v")})
	now = now.Add(DefaultTTL + time.Second)
	fresh, _ := s.Issue(ctx, Ticket{User: "new", Challenge: Challenge("v")})
	if n, err := s.Prune(ctx, s.Store); err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v", n, err)
	}
	if _, err := s.Redeem(ctx, fresh, "v"); err != nil {
		t.Errorf("the fresh ticket after Prune: %v", err)
	}
}
