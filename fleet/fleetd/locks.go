package fleetd

import (
	"context"
	"log/slog"
	"time"

	fleetaudit "remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/authz"
	"remoteler.dev/edge/fleet/leader"
	"remoteler.dev/edge/fleet/locks"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// enforceLocks is the locks' OnLock on this replica: it ends the live
// sessions a new lock shuts out, with the lock's message (the registry
// tells each session's user in the way its service can), and for a
// device lock closes the device's tunnel too. A role lock also has every
// session checked again against its user's current roles.
func enforceLocks(live *sessions.Registry, tunnels *tunnelsrv.Server, log *slog.Logger) func(api.Lock) {
	return func(l api.Lock) {
		reason := locks.Reason(&l)
		n := live.End(func(s *sessions.Session) bool { return locks.Matches(&l, authz.Subject(s, nil)) }, reason)
		if l.Target.Role != "" {
			live.Changed()
		}
		if l.DeviceID != "" {
			tunnels.Disconnect(l.DeviceID, reason)
		}
		log.Info("lock enforced", "lock", l.ID, "target", locks.Describe(l.Target), "sessions_ended", n)
	}
}

// followLocks keeps set up to date with the store's locks until ctx ends.
// It returns once the first list is loaded (or ctx ended), so that the
// fleet serves nobody a lock should shut out; the following goes on in
// the background, owned by wg's caller through ctx.
func followLocks(ctx context.Context, st store.Store, set *locks.Set, goFn func(func())) {
	goFn(func() { set.Follow(ctx, st) })
	set.WaitReady(ctx)
}

// expireLocks is the leader's job (leader.Run, "lock-expiry"): it deletes
// the locks that ran out, writing through the term's fenced store, and
// records each expiry. Access comes back at the expiry on every replica
// whether or not this has run (an expired lock no longer matches).
func expireLocks(svc *locks.Service, rec *fleetaudit.Recorder, period time.Duration, log *slog.Logger) leader.Job {
	return func(ctx context.Context, fenced store.Store) error {
		prune := func() {
			gone, err := svc.Prune(ctx, fenced)
			for _, l := range gone {
				f := map[string]string{"lock": l.ID, "lock_target": locks.Describe(l.Target), "expires": l.Expires.UTC().Format(time.RFC3339)}
				if err := rec.Record(context.WithoutCancel(ctx), &proto.AuditEvent{Type: proto.EventLockExpire, Message: l.Message, Fields: f}); err != nil {
					log.Error("audit event not recorded", "type", proto.EventLockExpire, "err", err)
				}
			}
			if err != nil && ctx.Err() == nil {
				log.Warn("expire locks", "err", err)
			}
		}
		prune()
		every(ctx, period, prune)
		return nil
	}
}
