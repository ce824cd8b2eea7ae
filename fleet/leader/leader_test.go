package leader_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"remoteler.dev/edge/fleet/leader"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/memstore"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const wait = 60 * time.Second

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(wait):
		t.Fatalf("%s not within %s", what, wait)
	}
}

func TestLocalFirstCampaignWins(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	ctx := t.Context()
	e := &leader.Local{Store: st, Name: "rollouts", ID: "replica-a"}
	term, err := e.Campaign(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := leader.Fenced(st, term).Put(ctx, "rollouts/state", []byte("1")); err != nil {
		t.Fatalf("the leader's fenced write: %v", err)
	}
	items, err := st.List(ctx, leader.KeyPrefix)
	if err != nil || len(items) != 1 || items[0].Key != "leader/rollouts" || items[0].Lease == 0 {
		t.Fatalf("claims = %+v, %v; want leader/rollouts under a lease", items, err)
	}
	if err := term.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, term.Done(), "Done after Resign")
	if err := leader.Fenced(st, term).Put(ctx, "rollouts/state", []byte("2")); !errors.Is(err, store.ErrFenced) {
		t.Errorf("a fenced write after Resign: err = %v, want ErrFenced", err)
	}
	if items, _ := st.List(ctx, leader.KeyPrefix); len(items) != 0 {
		t.Errorf("claims after Resign = %+v, want none", items)
	}
	if err := term.Resign(ctx); err != nil {
		t.Errorf("second Resign: %v", err)
	}
}

// TestLocalFencing deposes a leader behind its back (its claim goes, as
// when its lease expires while it is paused): another candidate takes
// over, and the old leader's fenced writes fail while the new one's land.
func TestLocalFencing(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	ctx := t.Context()
	a := &leader.Local{Store: st, Name: "retention", ID: "a"}
	b := &leader.Local{Store: st, Name: "retention", ID: "b"}
	ta, err := a.Campaign(ctx)
	if err != nil {
		t.Fatal(err)
	}
	won := make(chan leader.Term, 1)
	go func() {
		tb, err := b.Campaign(ctx)
		if err != nil {
			t.Error(err)
			close(won)
			return
		}
		won <- tb
	}()
	// b waits while a leads.
	if err := leader.Fenced(st, ta).Put(ctx, "owner", []byte("a")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-won:
		t.Fatal("a second candidate won while the first leads")
	default:
	}
	// a's claim goes without a noticing first.
	if err := st.Delete(ctx, ta.Guard().Key); err != nil {
		t.Fatal(err)
	}
	var tb leader.Term
	select {
	case tb = <-won:
	case <-time.After(wait):
		t.Fatal("b never won after a's claim went")
	}
	if tb == nil {
		t.FailNow()
	}
	defer tb.Resign(ctx)
	if err := leader.Fenced(st, tb).Put(ctx, "owner", []byte("b")); err != nil {
		t.Fatalf("the new leader's write: %v", err)
	}
	if err := leader.Fenced(st, ta).Put(ctx, "owner", []byte("a again")); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("the deposed leader's write: err = %v, want ErrFenced", err)
	}
	if v, _ := st.Get(ctx, "owner"); string(v) != "b" {
		t.Errorf("owner = %q, want %q", v, "b")
	}
	waitClosed(t, ta.Done(), "the deposed term's Done")
	if closed(tb.Done()) {
		t.Error("the new term is over already")
	}
}

func TestLocalCampaignCanceled(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	a := &leader.Local{Store: st, Name: "j"}
	ta, err := a.Campaign(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer ta.Resign(t.Context())
	ctx, cancel := context.WithTimeout(t.Context(), 200*time.Millisecond)
	defer cancel()
	if _, err := (&leader.Local{Store: st, Name: "j"}).Campaign(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a campaign that cannot win before its context ends: err = %v, want DeadlineExceeded", err)
	}
	items, _ := st.List(t.Context(), leader.KeyPrefix)
	if len(items) != 1 || string(items[0].Value) != string(ta.Guard().Value) {
		t.Errorf("claims = %+v, want only the leader's", items)
	}
}

// TestRun runs a job under Run: it starts leading, its context ends when
// the term is lost, Run campaigns again and the job runs again; when Run's
// context ends the job stops and the claim goes.
func TestRun(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	ctx, cancel := context.WithCancel(t.Context())
	var runs atomic.Int32
	started := make(chan struct{}, 4)
	e := &leader.Local{Store: st, Name: "job", TTL: time.Second}
	var current atomic.Value
	done := make(chan error, 1)
	go func() {
		done <- leader.Run(ctx, "job", e, st, nil, func(ctx context.Context, fenced store.Store) error {
			runs.Add(1)
			if err := fenced.Put(ctx, "job/heartbeat", []byte("x")); err != nil {
				return err
			}
			items, _ := st.List(ctx, leader.KeyPrefix)
			if len(items) == 1 {
				current.Store(items[0].Key)
			}
			started <- struct{}{}
			<-ctx.Done()
			return nil
		})
	}()
	select {
	case <-started:
	case <-time.After(wait):
		t.Fatal("the job never started")
	}
	// Lose the term: the claim goes.
	if err := st.Delete(t.Context(), current.Load().(string)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-time.After(wait):
		t.Fatal("the job did not run again after the term was lost")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	case <-time.After(wait):
		t.Fatal("Run did not return after its context ended")
	}
	if n := runs.Load(); n != 2 {
		t.Errorf("job ran %d times, want 2", n)
	}
	if items, _ := st.List(t.Context(), leader.KeyPrefix); len(items) != 0 {
		t.Errorf("claims after Run returned = %+v, want none", items)
	}
}
