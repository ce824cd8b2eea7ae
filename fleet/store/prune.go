package store

import (
	"context"
	"errors"
)

// Prune removes the items under prefix whose value stale reports as
// stale (expired, or unreadable), and returns how many it removed. Each
// is removed only if it still holds the value that was judged (a guard
// on it): one changed meanwhile is not Prune's to drop, and is skipped,
// as is one gone already (removed by another replica, a logout).
// Services whose records expire (browser and app sessions) run it on the
// leader.
func Prune(ctx context.Context, st Store, prefix string, stale func(value []byte) bool) (int, error) {
	items, err := st.List(ctx, prefix)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, it := range items {
		if !stale(it.Value) {
			continue
		}
		err := st.Delete(ctx, it.Key, If(Guard{Key: it.Key, Value: it.Value}))
		switch {
		case err == nil:
			n++
		case errors.Is(err, ErrNotFound), errors.Is(err, ErrFenced):
		default:
			return n, err
		}
	}
	return n, nil
}
