package tokens

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/logtest"
)

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newService(t *testing.T) (*Service, *clock, *memstore.Store) {
	t.Helper()
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	c := &clock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	return &Service{Store: st, Now: c.Now, Logger: logtest.Logger(t)}, c, st
}

func TestAddDefaultsAndSecretNotStored(t *testing.T) {
	ctx := context.Background()
	s, c, st := newService(t)
	tok, err := s.Add(ctx, api.AddTokenRequest{Labels: map[string]string{"site": "north"}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(tok.Token, "jt_") || len(tok.Token) != 3+52 {
		t.Errorf("got secret %q, want jt_ and 52 base32 characters", tok.Token)
	}
	if tok.ID != IDOf(tok.Token) || len(tok.ID) != 12 {
		t.Errorf("got ID %q, want IDOf(secret) = %q", tok.ID, IDOf(tok.Token))
	}
	if want := c.Now().Add(time.Hour); !tok.Expires.Equal(want) {
		t.Errorf("got expiry %v, want %v", tok.Expires, want)
	}
	if tok.UsesLeft != 1 {
		t.Errorf("got %d uses, want 1", tok.UsesLeft)
	}
	items, _ := st.List(ctx, "")
	for _, it := range items {
		if strings.Contains(string(it.Value), tok.Token) || strings.Contains(string(it.Value), strings.TrimPrefix(tok.Token, "jt_")) {
			t.Errorf("store key %q holds the secret", it.Key)
		}
	}
	list, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Token != "" || list[0].ID != tok.ID || list[0].Labels["site"] != "north" {
		t.Errorf("got list %+v, want one token without its secret", list)
	}
}

func TestAddRefuses(t *testing.T) {
	s, _, _ := newService(t)
	tests := []struct {
		name string
		req  api.AddTokenRequest
	}{
		{"negative ttl", api.AddTokenRequest{TTL: -time.Second}},
		{"negative uses", api.AddTokenRequest{Uses: -1}},
		{"bad label", api.AddTokenRequest{Labels: map[string]string{"env": "*"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.Add(context.Background(), tt.req); err == nil {
				t.Error("got no error, want one")
			}
		})
	}
}

func TestConsumeUntilUsedUp(t *testing.T) {
	ctx := context.Background()
	s, _, _ := newService(t)
	tok, err := s.Add(ctx, api.AddTokenRequest{Uses: 3, Labels: map[string]string{"site": "north"}})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		labels, err := s.Consume(ctx, tok.Token)
		if err != nil {
			t.Fatalf("use %d: %v", i+1, err)
		}
		if labels["site"] != "north" {
			t.Errorf("use %d: got labels %v, want site=north", i+1, labels)
		}
	}
	_, err = s.Consume(ctx, tok.Token)
	if !errors.Is(err, ErrTokenUsedUp) || !strings.Contains(err.Error(), "fleetctl tokens add") {
		t.Errorf("4th use: got %v, want ErrTokenUsedUp telling what to do", err)
	}
	list, _ := s.List(ctx)
	if len(list) != 1 || list[0].UsesLeft != 0 {
		t.Errorf("got list %+v, want the used-up token still listed with 0 uses", list)
	}
}

func TestConsumeErrors(t *testing.T) {
	ctx := context.Background()
	s, c, _ := newService(t)
	tok, err := s.Add(ctx, api.AddTokenRequest{TTL: 10 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		secret  string
		advance time.Duration
		want    error
		wantMsg string
	}{
		{"unknown", "jt_" + strings.Repeat("a", 52), 0, ErrTokenInvalid, "fleetctl tokens add"},
		{"no prefix", strings.TrimPrefix(tok.Token, "jt_"), 0, ErrTokenInvalid, ""},
		{"truncated", tok.Token[:len(tok.Token)-1], 0, ErrTokenInvalid, ""},
		{"empty", "", 0, ErrTokenInvalid, ""},
		{"expired", tok.Token, 10 * time.Minute, ErrTokenExpired, "expired at 2026-03-01T12:10:00Z; create a new one with `fleetctl tokens add`"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.Add(tt.advance)
			_, err := s.Consume(ctx, tt.secret)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("got message %q, want it to contain %q", err, tt.wantMsg)
			}
		})
	}
}

func TestConsumeWithSurroundingSpace(t *testing.T) {
	ctx := context.Background()
	s, _, _ := newService(t)
	tok, err := s.Add(ctx, api.AddTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Consume(ctx, " "+tok.Token+"\n"); err != nil {
		t.Errorf("got %v, want a pasted token with a newline accepted", err)
	}
}

// TestConcurrentConsumeOneUse: of 20 joins at once with a one-use token,
// on four fleetd replicas sharing the store, exactly one succeeds.
func TestConcurrentConsumeOneUse(t *testing.T) {
	ctx := context.Background()
	s, c, st := newService(t)
	s.Logger = nil // 20 log lines add nothing
	tok, err := s.Add(ctx, api.AddTokenRequest{Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	replicas := []*Service{s, {Store: st, Now: c.Now}, {Store: st, Now: c.Now}, {Store: st, Now: c.Now}}
	var ok, usedUp atomic.Int32
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			_, err := replicas[i%len(replicas)].Consume(ctx, tok.Token)
			switch {
			case err == nil:
				ok.Add(1)
			case errors.Is(err, ErrTokenUsedUp):
				usedUp.Add(1)
			default:
				t.Errorf("got %v, want nil or ErrTokenUsedUp", err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 1 || usedUp.Load() != 19 {
		t.Errorf("got %d successes and %d used-up, want 1 and 19", ok.Load(), usedUp.Load())
	}
}

func TestDelete(t *testing.T) {
	ctx := context.Background()
	s, _, _ := newService(t)
	tok, err := s.Add(ctx, api.AddTokenRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, strings.ToUpper(tok.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Consume(ctx, tok.Token); !errors.Is(err, ErrTokenInvalid) {
		t.Errorf("Consume after Delete: got %v, want ErrTokenInvalid", err)
	}
	for _, id := range []string{tok.ID, "zz", "../../users/x"} {
		if err := s.Delete(ctx, id); !errors.Is(err, ErrNotFound) || !errors.Is(err, store.ErrNotFound) {
			t.Errorf("Delete(%q): got %v, want ErrNotFound", id, err)
		}
	}
}

func TestPrune(t *testing.T) {
	ctx := context.Background()
	s, c, _ := newService(t)
	usedUp, _ := s.Add(ctx, api.AddTokenRequest{TTL: 48 * time.Hour})
	if _, err := s.Consume(ctx, usedUp.Token); err != nil {
		t.Fatal(err)
	}
	expiring, _ := s.Add(ctx, api.AddTokenRequest{TTL: time.Hour})
	live, _ := s.Add(ctx, api.AddTokenRequest{TTL: 72 * time.Hour})
	tests := []struct {
		name    string
		advance time.Duration
		want    []string // IDs left
	}{
		{"nothing old enough", 24 * time.Hour, []string{usedUp.ID, expiring.ID, live.ID}},
		{"used up over a day ago", time.Minute, []string{expiring.ID, live.ID}},
		{"expired over a day ago", time.Hour, []string{live.ID}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.Add(tt.advance)
			if _, err := s.Prune(ctx); err != nil {
				t.Fatal(err)
			}
			list, _ := s.List(ctx)
			got := map[string]bool{}
			for _, tok := range list {
				got[tok.ID] = true
			}
			if len(got) != len(tt.want) {
				t.Errorf("got %d tokens left, want %d", len(got), len(tt.want))
			}
			for _, id := range tt.want {
				if !got[id] {
					t.Errorf("token %s was pruned, want it kept", id)
				}
			}
		})
	}
}

// TestRefund: a use given back can be spent again, and a used-up token
// given a use back is no longer used up.
func TestRefund(t *testing.T) {
	ctx := context.Background()
	s, _, _ := newService(t)
	tok, err := s.Add(ctx, api.AddTokenRequest{Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Consume(ctx, tok.Token); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Consume(ctx, tok.Token); !errors.Is(err, ErrTokenUsedUp) {
		t.Fatalf("second use: %v, want used up", err)
	}
	if err := s.Refund(ctx, tok.Token); err != nil {
		t.Fatal(err)
	}
	list, _ := s.List(ctx)
	if len(list) != 1 || list[0].UsesLeft != 1 {
		t.Fatalf("after the refund: %+v, want one use left", list)
	}
	if _, err := s.Consume(ctx, tok.Token); err != nil {
		t.Fatalf("use after the refund: %v", err)
	}
	if err := s.Refund(ctx, "jt_unknown"); !errors.Is(err, ErrTokenInvalid) {
		t.Errorf("refund of an unknown token: %v, want invalid", err)
	}
}

// TestCheck: Check says what Consume would, and spends nothing.
func TestCheck(t *testing.T) {
	ctx := context.Background()
	s, clk, _ := newService(t)
	tok, err := s.Add(ctx, api.AddTokenRequest{Uses: 1, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := s.Check(ctx, tok.Token, api.TokenDevice); err != nil {
			t.Fatalf("check of a good token: %v", err)
		}
	}
	if list, _ := s.List(ctx); len(list) != 1 || list[0].UsesLeft != 1 {
		t.Fatalf("after checks: %+v, want the use still there", list)
	}
	tests := []struct {
		name, secret, typ string
		want              error
	}{
		{"unknown", "jt_unknown", api.TokenDevice, ErrTokenInvalid},
		{"another type", tok.Token, api.TokenTrustedCluster, ErrTokenType},
	}
	for _, tt := range tests {
		if err := s.Check(ctx, tt.secret, tt.typ); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
	if _, err := s.Consume(ctx, tok.Token); err != nil {
		t.Fatal(err)
	}
	if err := s.Check(ctx, tok.Token, api.TokenDevice); !errors.Is(err, ErrTokenUsedUp) {
		t.Errorf("check of a used-up token: %v, want used up", err)
	}
	clk.Add(2 * time.Hour)
	if err := s.Check(ctx, tok.Token, api.TokenDevice); !errors.Is(err, ErrTokenExpired) {
		t.Errorf("check of an expired token: %v, want expired", err)
	}
}

// swapCounter counts compare-and-swaps and the conflicts among them.
type swapCounter struct {
	store.Store
	swaps, conflicts atomic.Int32
}

func (c *swapCounter) CompareAndSwap(ctx context.Context, key string, old, next []byte, opts ...store.WriteOption) error {
	err := c.Store.CompareAndSwap(ctx, key, old, next, opts...)
	c.swaps.Add(1)
	if errors.Is(err, store.ErrConflict) {
		c.conflicts.Add(1)
	}
	return err
}

// TestConcurrentConsumesTakeTurns: joins with one token at once on one
// fleetd take turns, so none fails another's compare-and-swap in the
// store (a crowd of them used to give up after 32 conflicts); and one
// whose request ends while it waits gives up with its context's error,
// spending no use.
func TestConcurrentConsumesTakeTurns(t *testing.T) {
	ctx := context.Background()
	mem := memstore.New()
	t.Cleanup(func() { mem.Close() })
	sc := &swapCounter{Store: mem}
	s := &Service{Store: sc}
	tok, err := s.Add(ctx, api.AddTokenRequest{Uses: 100})
	if err != nil {
		t.Fatal(err)
	}
	const n = 40
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			if _, err := s.Consume(ctx, tok.Token); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got, c := sc.swaps.Load(), sc.conflicts.Load(); got != n || c != 0 {
		t.Errorf("%d joins at once: %d swaps, %d conflicts; want %d and 0", n, got, c, n)
	}

	// Hold the token's turn; a join whose request ends meanwhile gives up.
	sum, _ := hashOf(tok.Token)
	release, err := s.turn(ctx, sum[0])
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Consume(cctx, tok.Token); !errors.Is(err, context.Canceled) {
		t.Errorf("a join whose request ended while it waited: %v, want context.Canceled", err)
	}
	release()
	list, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].UsesLeft != 100-n {
		t.Errorf("uses left %+v, want %d", list, 100-n)
	}
}
