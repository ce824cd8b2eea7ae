package audit

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"remoteler.dev/edge/proto"
)

// Recorder is the fleet's one way to record an event of its own: one call
// appends it to the hash-chained trail and writes a line on the audit
// logger, so no audited fact is a log line only, or an event only. The
// broker, the device lifecycle and the HTTPS API record with it.
//
// Events recorded at the same time share one commit (group commit): the
// first caller commits its event and every event that arrived meanwhile
// in one transaction (Log.AppendMany), so a busy fleet (an app's requests,
// say) pays one fsync per batch, not per event, and a lone event waits for
// no one.
//
// The zero value records nothing and logs nothing; a nil Log logs only.
type Recorder struct {
	// Log is the audit trail; nil keeps only the log lines.
	Log *Log
	// Cluster fills in events that name no cluster.
	Cluster string
	// Logger receives a line per event (the "audit" logger), and the
	// failures to record; nil discards.
	Logger *slog.Logger
	// Timeout bounds an append; default 10s. Appends run even when the
	// caller's context is cancelled (the user went away): the event still
	// happened.
	Timeout time.Duration

	mu         sync.Mutex // guards queue and committing
	queue      []*pending // events waiting for the next commit
	committing bool       // a caller is committing
}

// pending is an event waiting for its commit.
type pending struct {
	e    *proto.AuditEvent
	done chan error
}

// Record writes e to the trail and a line on the logger. Callers that must
// not go ahead unrecorded (a login, a session) check the error; the others
// go ahead, and the failure is logged. Outcome defaults to success.
func (r *Recorder) Record(ctx context.Context, e *proto.AuditEvent) error {
	if e.Outcome == "" {
		e.Outcome = proto.OutcomeSuccess
	}
	if e.Cluster == "" {
		e.Cluster = r.Cluster
	}
	log := r.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	level := slog.LevelInfo
	if e.Outcome != proto.OutcomeSuccess {
		level = slog.LevelWarn
	}
	log.Log(ctx, level, Message(e), logAttrs(e)...)
	if r.Log == nil {
		return nil
	}
	p := &pending{e: e, done: make(chan error, 1)}
	r.mu.Lock()
	r.queue = append(r.queue, p)
	lead := !r.committing
	r.committing = true
	r.mu.Unlock()
	if lead {
		r.commit(ctx)
	}
	err := <-p.done
	if err != nil {
		log.Error("audit event not recorded", "type", e.Type, "err", err)
	}
	return err
}

// commit commits what is queued, batch after batch, until the queue is
// empty.
func (r *Recorder) commit(ctx context.Context) {
	timeout := r.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	for {
		r.mu.Lock()
		batch := r.queue
		r.queue = nil
		if len(batch) == 0 {
			r.committing = false
			r.mu.Unlock()
			return
		}
		r.mu.Unlock()
		events := make([]*proto.AuditEvent, len(batch))
		for i, p := range batch {
			events[i] = p.e
		}
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		err := r.Log.AppendMany(actx, events)
		cancel()
		for _, p := range batch {
			p.done <- err
		}
	}
}

// Message is an event's log message, in words.
func Message(e *proto.AuditEvent) string {
	denied := e.Outcome == proto.OutcomeDenied
	switch e.Type {
	case proto.EventAccessDenied:
		return "access denied"
	case proto.EventSessionStart:
		return "session started"
	case proto.EventSessionEnd:
		return "session ended"
	case proto.EventDeviceJoin:
		if denied {
			return "join refused"
		}
		return "device joined"
	case proto.EventDeviceOnline:
		return "device online"
	case proto.EventDeviceOffline:
		return "device offline"
	case proto.EventCertIssued:
		if e.Fields["kind"] == "device" {
			return "device certificates renewed"
		}
		return "certificate issued"
	case proto.EventAppRequest:
		return "app request"
	}
	return e.Type
}

// logAttrs are an event's attributes on its log line: who, where, as
// whom, what, then the event's fields by name.
func logAttrs(e *proto.AuditEvent) []any {
	var attrs []any
	device := e.Fields["device_name"]
	if device == "" {
		device = e.Device
	}
	for _, kv := range [][2]string{{"user", e.User}, {"device", device}, {"login", e.Login}, {"service", e.Fields["service"]},
		{"session", e.Session}, {"remote", e.Addr}, {"event", e.Type}, {"outcome", e.Outcome}, {"reason", e.Message}} {
		if kv[1] != "" {
			attrs = append(attrs, kv[0], kv[1])
		}
	}
	if e.Device != "" && device != e.Device {
		attrs = append(attrs, "device_id", e.Device)
	}
	for _, k := range slices.Sorted(maps.Keys(e.Fields)) {
		if k != "device_name" && k != "service" {
			attrs = append(attrs, k, e.Fields[k])
		}
	}
	return attrs
}
