package kubewire

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Terminal records an exec or attach terminal: what the cluster sends the
// user (Output), what the user types (Input, which a Terminal may drop
// when it records output only) and the terminal's sizes.
type Terminal interface {
	Output(p []byte)
	Input(p []byte)
	Resize(cols, rows int)
	Close() error
}

// ErrNotAudited refuses what could not be recorded: Answered returns it,
// and a forwarder answers it with 503.
var ErrNotAudited = errors.New("kubewire: the audit event could not be kept")

// Exchange is one request on its way through a forwarder that audits it:
// the fleet's (fleet/kubesrv) for the requests it forwards, and the
// agent's (firmware/kubeproxy) for those of a user-held stream, which the
// fleet only relays. Nothing is forwarded or answered unrecorded:
//
//   - Begin keeps the start event of a session (a watch, a followed log,
//     an upgrade) or of a request that changes the cluster, before the
//     forwarder sends it on;
//   - Answered (the reverse proxy's ModifyResponse) keeps every other
//     request's event before its answer is passed on;
//   - Follow (the ResponseTap's) follows an upgrade: it records an exec's
//     or attach's terminal and lets End tell the user why it ends;
//   - Finish (deferred) keeps how it ended.
//
// Create it with NewExchange.
type Exchange struct {
	// Ev is what the audit records of the request; Ev.Kind names a
	// session (SessionKind).
	Ev Event
	// Audit keeps an event; an error means it could not be, and what it
	// records does not go ahead.
	Audit func(Event) error
	// Record, when set, starts the recording of an exec or attach terminal
	// (a request with tty=true) once its remote command WebSocket is
	// followed; a nil Terminal: not recorded.
	Record func() Terminal
	// Cancel, when set, cuts the forwarding when End is called.
	Cancel context.CancelCauseFunc
	// Log receives what goes wrong with a recording; nil discards it.
	Log *slog.Logger

	now     func() time.Time
	start   time.Time
	tty     bool
	audited atomic.Bool // the request's event is kept

	mu       sync.Mutex // guards the fields below
	reason   string     // why the session was ended, once it was
	upgraded bool
	wsProto  string   // the WebSocket subprotocol the cluster chose
	conn     *TapConn // the upgraded connection, once hijacked
	rec      Terminal
}

// NewExchange returns the exchange of r, whose audit events start as ev
// (who, where) with the request's method, path, what it does and its
// session kind filled in. now is the clock.
func NewExchange(r *http.Request, ev Event, now func() time.Time) *Exchange {
	info := ParseRequest(r.Method, r.URL)
	ev.Method, ev.Path, ev.Request, ev.Kind = r.Method, r.URL.Path, info, SessionKind(r, info)
	x := &Exchange{Ev: ev, now: now, start: now()}
	x.Ev.Time = x.start
	tty := r.URL.Query().Get("tty")
	x.tty = (ev.Kind == "exec" || ev.Kind == "attach") && (tty == "true" || tty == "1")
	return x
}

// Begin keeps what must be kept before the request is forwarded: a
// session's start, or the start of a request that changes the cluster.
// An error means it could not be: the request must be refused (503).
func (x *Exchange) Begin() error {
	ev := x.Ev
	switch {
	case x.Ev.Kind != "":
		ev.Type = EventSessionStart
	case Mutating(x.Ev.Request):
		ev.Type = EventRequestStart
	default:
		return nil
	}
	return x.Audit(ev)
}

// Refused keeps the event of a request refused before it was forwarded,
// with the answer's code and why.
func (x *Exchange) Refused(code int, why string) {
	ev := x.Ev
	ev.Type, ev.Code, ev.Reason = EventRequest, code, why
	x.Audit(ev)
}

// Answered sees the cluster's answer before it is passed on (the reverse
// proxy's ModifyResponse): an upgrade is noted for Follow; any other
// answer to a request that is not a session has its event kept, or is not
// passed on (ErrNotAudited).
func (x *Exchange) Answered(resp *http.Response) error {
	if resp.StatusCode == http.StatusSwitchingProtocols {
		x.mu.Lock()
		x.upgraded, x.wsProto = true, resp.Header.Get("Sec-WebSocket-Protocol")
		x.mu.Unlock()
		return nil
	}
	if x.Ev.Kind != "" {
		return nil
	}
	ev := x.Ev
	ev.Type, ev.Code, ev.Duration = EventRequest, resp.StatusCode, x.now().Sub(x.start)
	if x.Audit(ev) != nil {
		return ErrNotAudited
	}
	x.audited.Store(true)
	return nil
}

// Follow wraps the user's upgraded connection (ResponseTap.Follow): on a
// remote command WebSocket, it records an exec or attach terminal (Record)
// and lets End tell the user why the session ends, on its error channel.
func (x *Exchange) Follow(conn net.Conn) net.Conn {
	x.mu.Lock()
	defer x.mu.Unlock()
	if !FollowsProtocol(x.wsProto) {
		x.conn = NewTapConn(conn, nil, nil) // SPDY, or base64 channels
		return x.conn
	}
	var toUser, fromUser func(ch int, p []byte)
	var resized func(cols, rows int)
	if x.tty && x.Record != nil {
		if rec := x.Record(); rec != nil {
			x.rec = rec
			toUser = func(ch int, p []byte) {
				if ch == ChStdout || ch == ChStderr {
					rec.Output(p)
				}
			}
			fromUser = func(ch int, p []byte) {
				if ch == ChStdin {
					rec.Input(p)
				}
			}
			resized = rec.Resize
		}
	}
	x.conn = NewTapConn(conn, NewChannelTap(toUser, nil), NewChannelTap(fromUser, resized))
	return x.conn
}

// End ends the session for reason: an upgraded exec or attach hears it on
// its error channel now, a JSON watch in an ERROR event when Finish runs,
// and the forwarding is cut (Cancel).
func (x *Exchange) End(reason string) {
	x.mu.Lock()
	x.reason = reason
	conn := x.conn
	x.mu.Unlock()
	if conn != nil {
		conn.EndWith(reason)
	}
	if x.Cancel != nil {
		x.Cancel(fmt.Errorf("session ended: %s", reason))
	}
}

// Finish keeps how the request or session ended, with the response as tap
// passed it on, and returns why the session was ended ("" when it was
// not). p is what the forwarder recovered: a reverse proxy ends a
// response it could not finish by panicking with http.ErrAbortHandler,
// which Finish takes back when it could end a watch cleanly with the
// reason; it returns what is left to panic with (nil: nothing).
func (x *Exchange) Finish(tap *ResponseTap, p any) (reason string, panicking any) {
	x.mu.Lock()
	reason, upgraded, rec := x.reason, x.upgraded, x.rec
	x.mu.Unlock()
	if p != nil && reason != "" && x.Ev.Kind == "watch" && tap.EndWatch(reason) {
		p = nil // the response ends cleanly, with the reason
	}
	ev := x.Ev
	ev.Code, ev.Duration = tap.Status(), x.now().Sub(x.start)
	switch {
	case x.Ev.Kind != "":
		ev.Type, ev.Reason = EventSessionEnd, reason
		if upgraded {
			ev.Code = http.StatusSwitchingProtocols
		}
		if rec != nil {
			if err := rec.Close(); err != nil && x.Log != nil {
				x.Log.Warn("kubernetes session recording", "session", ev.Session, "err", err)
			}
			ev.Recorded = true
		}
		x.Audit(ev)
	case !x.audited.Load():
		// Answered by the forwarder (the cluster did not answer, or its
		// answer could not be recorded): recorded as well as it can be.
		ev.Type = EventRequest
		x.Audit(ev)
	}
	return reason, p
}
