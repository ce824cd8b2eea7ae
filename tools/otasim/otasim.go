// Package otasim simulates the agent's side of OTA updates on simulated
// devices (tools/devsim): each device reports its update status when its
// tunnel comes up, as edge-agent does, and answers an update offer with
// "downloading" and then "committed" (after which it runs the new
// version), or "rolled_back" for the devices Fail picks. Nothing is
// downloaded: it exercises the fleet's rollout engine over real tunnels.
//
//	agents := &otasim.Agents{Running: "v1.0.0", Target: "linux-amd64", Fail: func(i int) bool { return i%10 == 0 }}
//	sim, _ := devsim.New(devsim.Config{..., OnUp: agents.OnUp, OnMessage: agents.OnMessage})
//
// It is a developer tool for tests and benchmarks; product code does not
// import it.
package otasim

import (
	"sync"
	"time"

	"remoteler.dev/edge/proto"
)

// Agents is the update behaviour of a set of simulated devices.
type Agents struct {
	// Running is every device's version before any update.
	Running string
	// Target is the devices' build target ("linux-amd64").
	Target string
	// Fail says whether device i's updates roll back; nil: none do.
	Fail func(device int) bool
	// FailEvery, when above 0, rolls back every FailEvery-th offer taken
	// (the FailEvery-th, the 2×FailEvery-th, ...), so that any share of
	// the devices fails at the same rate, whichever devices it holds.
	FailEvery int

	mu        sync.Mutex // guards the fields below
	run       map[int]string
	committed map[int]time.Time
	offers    int
}

func (a *Agents) running(i int) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if v, ok := a.run[i]; ok {
		return v
	}
	return a.Running
}

// OnUp is devsim's Config.OnUp: the device reports its status.
func (a *Agents) OnUp(i int, send func(proto.Message) error) {
	send(&proto.UpdateStatus{State: proto.StateIdle, Running: a.running(i), Target: a.Target})
}

// OnMessage is devsim's Config.OnMessage: an offer is taken and ends
// committed or rolled back.
func (a *Agents) OnMessage(i int, m proto.Message, send func(proto.Message) error) {
	o, ok := m.(*proto.UpdateOffer)
	if !ok || o.Cancel {
		return
	}
	a.mu.Lock()
	a.offers++
	fail := (a.FailEvery > 0 && a.offers%a.FailEvery == 0) || (a.Fail != nil && a.Fail(i))
	a.mu.Unlock()
	run := a.running(i)
	st := proto.UpdateStatus{Rollout: o.Rollout, Version: o.Version, Running: run, Target: a.Target, State: proto.StateDownloading}
	send(&st)
	if fail {
		st.State, st.Reason = proto.StateRolledBack, "simulated: the new agent was not healthy"
		send(&st)
		return
	}
	a.mu.Lock()
	if a.run == nil {
		a.run, a.committed = map[int]string{}, map[int]time.Time{}
	}
	a.run[i] = o.Version
	a.committed[i] = time.Now()
	a.mu.Unlock()
	st.State, st.Running = proto.StateCommitted, o.Version
	send(&st)
}

// SetFailure changes which offers fail (see FailEvery and Fail) while
// the devices run.
func (a *Agents) SetFailure(every int, fail func(device int) bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.FailEvery, a.Fail = every, fail
}

// Offers returns how many offers the devices received.
func (a *Agents) Offers() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.offers
}

// Committed returns how many devices committed an update, and when the
// last did.
func (a *Agents) Committed() (int, time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var last time.Time
	for _, t := range a.committed {
		if t.After(last) {
			last = t
		}
	}
	return len(a.committed), last
}
