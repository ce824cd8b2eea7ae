// Package audittest is a stand-in for the fleet's audit recorder in tests:
// a Trail keeps the events it is given, in order, and can be told to fail
// (an audit log that cannot be written). Packages whose recorder is an
// interface (the broker, the device lifecycle, admin actions, the web
// terminal) test what they record with it; fleet/audit's own tests use
// the real log.
//
// Only tests import this package.
package audittest

import (
	"context"
	"errors"
	"sync"

	"remoteler.dev/edge/proto"
)

// ErrFull is what a failing Trail answers.
var ErrFull = errors.New("audittest: the audit log cannot be written (disk full)")

// Trail records audit events. The zero value is ready; it is safe for
// concurrent use.
type Trail struct {
	mu   sync.Mutex // guards evs and fail
	evs  []*proto.AuditEvent
	fail bool
}

// Record keeps e, or fails with ErrFull while Fail is set.
func (tr *Trail) Record(_ context.Context, e *proto.AuditEvent) error {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.fail {
		return ErrFull
	}
	tr.evs = append(tr.evs, e)
	return nil
}

// Fail makes Record fail (true) or keep events again (false).
func (tr *Trail) Fail(fail bool) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.fail = fail
}

// Events returns every event kept, in order.
func (tr *Trail) Events() []*proto.AuditEvent {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]*proto.AuditEvent(nil), tr.evs...)
}

// Find returns the events of type typ, and of outcome when it is not "".
func (tr *Trail) Find(typ, outcome string) []*proto.AuditEvent {
	var out []*proto.AuditEvent
	for _, e := range tr.Events() {
		if e.Type == typ && (outcome == "" || e.Outcome == outcome) {
			out = append(out, e)
		}
	}
	return out
}

// Types returns the types of the events kept, in order.
func (tr *Trail) Types() []string {
	var out []string
	for _, e := range tr.Events() {
		out = append(out, e.Type)
	}
	return out
}

// Last returns the last event kept, or nil.
func (tr *Trail) Last() *proto.AuditEvent {
	evs := tr.Events()
	if len(evs) == 0 {
		return nil
	}
	return evs[len(evs)-1]
}
