package fleetd

import (
	"context"
	"log/slog"
	"time"

	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/store"
)

// followCA reloads the CAs whenever their records change in the store, so
// that a rotation step taken on another replica (or by another process on
// the store) reaches this one within the store's watch latency. It runs
// until ctx ends.
func followCA(ctx context.Context, st store.Store, auth *ca.Authority, log *slog.Logger) {
	reload := func() {
		if err := auth.Reload(ctx); err != nil && ctx.Err() == nil {
			log.Error("reload the CAs after a change in the store", "err", err)
		}
	}
	store.Follow(ctx, st, "ca/", store.FollowHandler{
		Reset: func([]store.Item, int64) { reload() },
		Apply: func(store.Event) { reload() },
		Retry: func(err error, wait time.Duration) {
			log.Warn("watch the CAs", "err", err, "retry_in", wait.String())
		},
	})
}
