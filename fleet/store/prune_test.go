package store_test

import (
	"context"
	"errors"
	"testing"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/memstore"
)

// TestPrune: stale items go; fresh ones, items outside the prefix, one
// changed after it was judged and one removed meanwhile stay (or stay
// gone), without an error.
func TestPrune(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	defer st.Close()
	for k, v := range map[string]string{"s/old": "stale", "s/new": "fresh", "s/changing": "stale", "s/going": "stale", "t/old": "stale"} {
		if err := st.Put(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	n, err := store.Prune(ctx, st, "s/", func(v []byte) bool {
		// Another replica acts between the judgement and the removal.
		if err := st.Put(ctx, "s/changing", []byte("renewed")); err != nil {
			t.Fatal(err)
		}
		st.Delete(ctx, "s/going")
		return string(v) == "stale"
	})
	if err != nil || n != 1 {
		t.Fatalf("Prune = %d, %v; want 1 removed, no error", n, err)
	}
	for k, want := range map[string]string{"s/old": "", "s/new": "fresh", "s/changing": "renewed", "s/going": "", "t/old": "stale"} {
		b, err := st.Get(ctx, k)
		switch {
		case want == "" && !errors.Is(err, store.ErrNotFound):
			t.Errorf("%s: %q %v, want it gone", k, b, err)
		case want != "" && string(b) != want:
			t.Errorf("%s: %q %v, want %q", k, b, err, want)
		}
	}
}
