package fleetd

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/store/memstore"
)

// TestFollowCA rotates the X.509 CA on one replica and checks that
// another replica on the same store trusts, then signs with, the new key.
func TestFollowCA(t *testing.T) {
	st := memstore.New()
	defer st.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	a, err := ca.LoadOrCreate(ctx, st, "fleet", time.Now)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ca.LoadOrCreate(ctx, st, "fleet", time.Now)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		followCA(ctx, st, b, slog.New(slog.DiscardHandler))
	}()
	defer func() { cancel(); <-done }()

	id, err := a.AddKey(ctx, ca.X509)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Activate(ctx, ca.X509, id); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		keys := b.Keys(ca.X509)
		if len(keys) == 2 && keys[0].ID == id && keys[0].Active {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the other replica's X.509 keys = %+v, want %s active", keys, id)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if b.Pin() != a.Pin() {
		t.Errorf("pins differ after the rotation: %s and %s", b.Pin(), a.Pin())
	}
}
