// Package audittest is a test double of the fleet's audit recorder: it
// keeps the events a package under test records (the Record method of the
// consumer-declared Recorder interfaces of fleet/sso, fleet/deviceauth and
// others), so a test can assert which events were written.
//
// Only tests import this package.
package audittest

import (
	"context"
	"sync"

	"remoteler.dev/edge/proto"
)

// Recorder keeps events. Its zero value is ready; it is safe for
// concurrent use.
type Recorder struct {
	mu  sync.Mutex // guards all
	all []proto.AuditEvent
	// Err, when set, is what Record returns (the trail cannot be
	// written); the event is not kept then.
	Err error
}

// Record keeps a copy of e.
func (r *Recorder) Record(_ context.Context, e *proto.AuditEvent) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.Err != nil {
		return r.Err
	}
	r.all = append(r.all, *e)
	return nil
}

// Events returns the events kept, oldest first.
func (r *Recorder) Events() []proto.AuditEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]proto.AuditEvent(nil), r.all...)
}

// Last returns the newest event (the zero event when there is none).
func (r *Recorder) Last() proto.AuditEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.all) == 0 {
		return proto.AuditEvent{}
	}
	return r.all[len(r.all)-1]
}

// Find returns the first event of type typ.
func (r *Recorder) Find(typ string) (proto.AuditEvent, bool) {
	for _, e := range r.Events() {
		if e.Type == typ {
			return e, true
		}
	}
	return proto.AuditEvent{}, false
}

// Types lists the types of the events kept, oldest first.
func (r *Recorder) Types() []string {
	var out []string
	for _, e := range r.Events() {
		out = append(out, e.Type)
	}
	return out
}

// FindAll returns every event of type typ, and of outcome when it is not
// "", oldest first.
func (r *Recorder) FindAll(typ, outcome string) []proto.AuditEvent {
	var out []proto.AuditEvent
	for _, e := range r.Events() {
		if e.Type == typ && (outcome == "" || e.Outcome == outcome) {
			out = append(out, e)
		}
	}
	return out
}
