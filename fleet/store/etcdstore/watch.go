package etcdstore

import (
	"context"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"remoteler.dev/edge/fleet/backoff"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/hub"
)

// watchState is one running watch: the queue its events wait in and what
// cancels the etcd watch feeding it.
type watchState struct {
	queue  *hub.Queue
	cancel context.CancelFunc
}

// Watch implements store.Store. With after == 0 it first asks etcd for its
// current revision, so that a watch that has to be re-established resumes
// from there rather than from a later "now".
func (s *Store) Watch(ctx context.Context, prefix string, after int64) (<-chan store.Event, error) {
	if err := s.check(ctx, "watch", prefix); err != nil {
		return nil, err
	}
	if after <= 0 {
		rev, err := s.currentRevision(ctx)
		if err != nil {
			return nil, s.fail(ctx, "watch", prefix, err)
		}
		after = rev
	}
	wctx, cancel := context.WithCancel(ctx)
	w := &watchState{queue: hub.NewQueue(s.cfg.WatchQueue), cancel: cancel}
	s.mu.Lock()
	if s.closed.Load() {
		s.mu.Unlock()
		cancel()
		return nil, fmt.Errorf("etcdstore: watch %q: %w", prefix, store.ErrClosed)
	}
	s.watchers[w] = struct{}{}
	s.mu.Unlock()

	out := make(chan store.Event)
	s.wg.Go(func() {
		w.queue.Run(wctx, out, after)
		cancel()
		s.mu.Lock()
		delete(s.watchers, w)
		s.mu.Unlock()
	})
	s.wg.Go(func() { s.feed(wctx, prefix, after, w.queue) })
	return out, nil
}

// feed copies etcd's watch of prefix into q until ctx ends or q stops
// taking events. When the etcd watch breaks (the member lost its leader,
// the connection could not be resumed) it watches again from the revision
// after the last event pushed, after a back-off; when etcd has compacted
// that revision away, q resyncs.
func (s *Store) feed(ctx context.Context, prefix string, last int64, q *hub.Queue) {
	wait := time.Duration(0)
	for {
		actx, acancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := s.watcher.Watch(actx, prefix, clientv3.WithPrefix(), clientv3.WithRev(last+1))
		progressed, werr := false, error(nil)
	recv:
		for resp := range wch {
			if resp.CompactRevision != 0 {
				acancel()
				q.Resync(fmt.Errorf("%w (revision %d; etcd compacted its history up to %d)", hub.ErrCompacted, last+1, resp.CompactRevision))
				return
			}
			if err := resp.Err(); err != nil {
				werr = err
				break recv
			}
			for _, ev := range resp.Events {
				e := store.Event{Kind: store.EventPut, Key: string(ev.Kv.Key), Value: value(ev.Kv), Revision: ev.Kv.ModRevision}
				if ev.Type == mvccpb.DELETE {
					e = store.Event{Kind: store.EventDelete, Key: string(ev.Kv.Key), Revision: ev.Kv.ModRevision}
				}
				if !q.Push(e) {
					acancel()
					return
				}
				last = ev.Kv.ModRevision
				progressed = true
			}
		}
		acancel()
		if ctx.Err() != nil || s.closed.Load() {
			return
		}
		if progressed {
			wait = 0
		}
		wait = backoff.Next(wait, 100*time.Millisecond, 5*time.Second)
		s.log.Debug("watch broke; resuming", "prefix", prefix, "after", last, "retry_in", wait.String(), "err", fmt.Sprint(werr))
		if !backoff.Wait(ctx, wait) {
			return
		}
	}
}
