package rollouts

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// Several replicas.
//
// Every fleetd replica runs an Engine. The elected leader's Run advances,
// halts and finishes rollouts; a device's statuses reach the replica
// holding its tunnel, which records them and offers the device its
// release. Serve, on every replica, keeps the engine's rollouts, pins and
// device states as the store has them (a rollout created or paused on one
// replica, a stage advanced by the leader, a status heard by another), and
// pushes offers to the devices ready here.

// followed is one prefix of the store that Serve keeps the engine's view
// of: put takes an item, del drops a key, and keys lists the keys the
// view holds (nil: its items are never deleted).
type followed struct {
	prefix string
	put    func(key string, v []byte)
	del    func(key string)
	keys   func() []string
}

func (e *Engine) followed() []followed {
	return []followed{
		{rolloutPrefix, e.putRollout, func(string) {}, nil}, // rollouts are never deleted
		{pinPrefix, e.putPin, e.deletePin, func() []string { return viewKeys(e, pinPrefix, e.pins) }},
		{statusPrefix, e.putStatus, e.deleteStatus, func() []string { return viewKeys(e, statusPrefix, e.status) }},
	}
}

// viewKeys lists the store keys of the entries of m, a map of the view.
func viewKeys[V any](e *Engine, prefix string, m map[string]V) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, prefix+k)
	}
	return keys
}

// reset replaces f's part of the view with items, the whole of it in the
// store: what was deleted while the watch was down goes too.
func (f followed) reset(items []store.Item) {
	if f.keys != nil {
		in := make(map[string]bool, len(items))
		for _, it := range items {
			in[it.Key] = true
		}
		for _, k := range f.keys() {
			if !in[k] {
				f.del(k)
			}
		}
	}
	for _, it := range items {
		f.put(it.Key, it.Value)
	}
}

// Serve follows the store and offers releases to the devices ready on this
// fleetd until ctx ends.
func (e *Engine) Serve(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, f := range e.followed() {
		wg.Go(func() {
			store.Follow(ctx, e.cfg.Store, f.prefix, store.FollowHandler{
				Reset: func(items []store.Item, _ int64) {
					f.reset(items)
					e.poke()
				},
				Apply: func(ev store.Event) {
					if ev.Kind == store.EventDelete {
						f.del(ev.Key)
					} else {
						f.put(ev.Key, ev.Value)
					}
					e.poke()
				},
				Retry: func(err error, wait time.Duration) {
					e.log.Warn("watch the rollouts", "prefix", f.prefix, "err", err, "retry_in", wait.String())
				},
			})
		})
	}
	t := time.NewTicker(e.cfg.Tick)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-e.offerWake:
		}
		e.offerReady(ctx)
	}
}

// offerReady offers the running rollouts' release to the devices ready
// here that have not had it, and cancels the updates this replica offered
// for a rollout aborted since (on any replica).
func (e *Engine) offerReady(ctx context.Context) {
	var sends []send
	e.mu.Lock()
	for _, r := range e.rollouts {
		switch r.State {
		case api.RolloutRunning:
			sends = append(sends, e.offersLocked(ctx, r, e.progressLocked(r))...)
		case api.RolloutAborted:
			for _, d := range r.DeviceIDs {
				if st := e.status[d]; e.offered[d] == r.ID && e.ready[d] && st != nil && st.Rollout == r.ID && !terminal(st.State) {
					delete(e.offered, d)
					sends = append(sends, send{d, &proto.UpdateOffer{Rollout: r.ID, Cancel: true}})
				}
			}
		}
	}
	e.mu.Unlock()
	e.deliver(sends)
}

// putRollout takes a rollout as stored, unless this engine holds a later
// version of it (its own write, not yet seen back).
func (e *Engine) putRollout(_ string, v []byte) {
	var r record
	if json.Unmarshal(v, &r) != nil || r.ID == "" {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if cur, ok := e.rollouts[r.ID]; ok && cur.UpdatedAt.After(r.UpdatedAt) {
		return
	}
	e.rollouts[r.ID] = &r
}

func (e *Engine) putPin(_ string, v []byte) {
	var p api.Pin
	if json.Unmarshal(v, &p) != nil || p.Name == "" {
		return
	}
	e.mu.Lock()
	e.pins[p.Name] = p
	e.mu.Unlock()
}

func (e *Engine) deletePin(key string) {
	e.mu.Lock()
	delete(e.pins, strings.TrimPrefix(key, pinPrefix))
	e.mu.Unlock()
}

// putStatus takes a device's update state as stored, unless this engine
// heard a later one.
func (e *Engine) putStatus(key string, v []byte) {
	var st devStatus
	if json.Unmarshal(v, &st) != nil {
		return
	}
	id := strings.TrimPrefix(key, statusPrefix)
	e.mu.Lock()
	defer e.mu.Unlock()
	if cur := e.status[id]; cur != nil && cur.At.After(st.At) {
		return
	}
	e.status[id] = &st
}

func (e *Engine) deleteStatus(key string) {
	e.mu.Lock()
	delete(e.status, strings.TrimPrefix(key, statusPrefix))
	e.mu.Unlock()
}

// noticeOfflineLocked, on several replicas, marks offline (from now) the
// devices of r in the middle of their update that no replica holds a
// tunnel of, for the offline deadline: the replica that held the tunnel
// saw it end, not this one. A device back on any replica is not offline.
func (e *Engine) noticeOfflineLocked(r *record, now time.Time) {
	if e.cfg.Elsewhere == nil {
		return
	}
	for _, id := range r.DeviceIDs {
		st := e.status[id]
		switch {
		case e.ready[id]:
		case e.cfg.Elsewhere(id):
			delete(e.offline, id)
		case st != nil && st.Rollout == r.ID && st.State != proto.StateIdle && !terminal(st.State):
			if _, ok := e.offline[id]; !ok {
				e.offline[id] = now
			}
		}
	}
}
