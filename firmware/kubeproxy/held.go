package kubeproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"remoteler.dev/edge/firmware/services"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/kubewire"
)

// errAuditWrite refuses what cannot be recorded.
var errAuditWrite = errors.New("kubeproxy: the audit event could not be kept")

// auditRefusal is what a user whose request could not be recorded sees.
const auditRefusal = "the device cannot keep its audit trail right now, so it does not pass on Kubernetes requests; try again later"

// heldExchange is one request on a user-held stream: what the audit
// records of it, and, for an upgraded exec or attach, its recording.
type heldExchange struct {
	p     *Proxy
	sc    *streamConn
	trail *services.Trail
	ev    kubewire.Event
	start time.Time
	tty   bool   // exec or attach with a terminal
	cmd   string // the exec's command
	// audited is set once a request's event is committed.
	audited atomic.Bool

	mu       sync.Mutex // guards the fields below
	upgraded bool
	wsProto  string // the WebSocket subprotocol the cluster chose
	rec      services.Recorder
}

type heldKey struct{}

func heldOf(ctx context.Context) *heldExchange {
	x, _ := ctx.Value(heldKey{}).(*heldExchange)
	return x
}

// serveHeld forwards a request of a user-held stream, auditing it as the
// fleet audits the requests it forwards (fleet/kubesrv): a request that
// changes the cluster and a long-running one have their start event kept
// before they are forwarded, every other one its event before its answer
// is passed on, and a session's end is recorded when it ends. What the
// trail refuses to record is refused with 503 (the agent's trail refuses
// what it cannot keep when its audit_when_full is "refuse"; with "allow",
// it keeps the action going and counts the drop, as for SSH).
func (p *Proxy) serveHeld(w http.ResponseWriter, r *http.Request, sc *streamConn, b *backend) {
	if sc == nil {
		kubewire.WriteStatus(w, r, http.StatusInternalServerError, "kube stream without its connection")
		return
	}
	h, now := sc.h, p.cfg.Now()
	id := &h.Identity
	info := kubewire.ParseRequest(r.Method, r.URL)
	x := &heldExchange{p: p, sc: sc, trail: p.trail.Load(), start: now,
		ev: kubewire.Event{
			Time: now, User: id.User, KubeUser: id.KubeUser, KubeGroups: id.KubeGroups,
			Method: r.Method, Path: r.URL.Path, Request: info, ClientAddr: h.ClientAddr,
			Session: h.SessionID, Kind: kubewire.SessionKind(r, info),
		},
	}
	q := r.URL.Query()
	x.tty, x.cmd = q.Get("tty") == "true" || q.Get("tty") == "1", strings.Join(q["command"], " ")
	if x.trail == nil || x.trail.Audit == nil {
		kubewire.WriteStatus(w, r, http.StatusServiceUnavailable, "this agent has no audit trail for Kubernetes requests, so it does not pass them on")
		return
	}
	if err := checkImpersonation(r.Header, id); err != nil {
		ev := x.ev
		ev.Type, ev.Code, ev.Reason = kubewire.EventRequest, http.StatusForbidden, err.Error()
		x.audit(ev)
		kubewire.WriteStatus(w, r, http.StatusForbidden, err.Error())
		return
	}
	switch {
	case x.ev.Kind != "":
		ev := x.ev
		ev.Type = kubewire.EventSessionStart
		if x.audit(ev) != nil {
			kubewire.WriteStatus(w, r, http.StatusServiceUnavailable, auditRefusal)
			return
		}
	case kubewire.Mutating(info):
		ev := x.ev
		ev.Type = kubewire.EventRequestStart
		if x.audit(ev) != nil {
			kubewire.WriteStatus(w, r, http.StatusServiceUnavailable, auditRefusal)
			return
		}
	}
	tap := &kubewire.ResponseTap{ResponseWriter: w, Follow: x.follow}
	// Deferred: the proxy ends a response it could not finish by
	// panicking with http.ErrAbortHandler.
	defer x.finish(tap)
	b.proxy.ServeHTTP(tap, r.WithContext(context.WithValue(r.Context(), heldKey{}, x)))
}

// checkImpersonation refuses a request of a user-held stream that asks to
// act as anyone but the session's Kubernetes user and groups: those were
// chosen, among what the user's roles allow, when the session started (tsh
// proxy kube --as, --as-group). Asking for another is refused, never
// ignored.
func checkImpersonation(h http.Header, id *proto.Identity) error {
	for k, v := range h {
		ck := http.CanonicalHeaderKey(k)
		switch {
		case !hasPrefixFold(k, "Impersonate-"):
		case ck != k:
			return fmt.Errorf("malformed impersonation header %q", k)
		case ck == "Impersonate-User":
			if len(v) != 1 || v[0] != id.KubeUser {
				return fmt.Errorf("this session acts as Kubernetes user %q, chosen when tsh proxy kube started (--as); it cannot act as %q", id.KubeUser, strings.Join(v, ", "))
			}
		case ck == "Impersonate-Group":
			if !slices.Equal(slices.Compact(slices.Sorted(slices.Values(v))), slices.Sorted(slices.Values(id.KubeGroups))) {
				return fmt.Errorf("this session has Kubernetes groups %q, chosen when tsh proxy kube started (--as-group); it cannot have %q", strings.Join(id.KubeGroups, ", "), strings.Join(v, ", "))
			}
		default:
			return fmt.Errorf("the device does not pass on %s: impersonate only with tsh proxy kube --as and --as-group", ck)
		}
	}
	return nil
}

// audit keeps ev in the device's audit trail; an error means it could not
// be, and what it records must not go ahead.
func (x *heldExchange) audit(ev kubewire.Event) error {
	e := ev.AuditEvent()
	e.Cluster = x.sc.h.Identity.Cluster
	if err := x.trail.Audit(x.sc.ctx, e); err != nil {
		x.p.log.Error("kubernetes audit event not kept", "type", ev.Type, "user", ev.User, "session", ev.Session, "err", err)
		return err
	}
	return nil
}

// modifyResponse sees the cluster's answer to a user-held stream's request
// before it is passed on: an upgrade starts following the connection; any
// other answer to a request that is not a session has its event kept, or
// is not passed on.
func (p *Proxy) modifyResponse(resp *http.Response) error {
	x := heldOf(resp.Request.Context())
	if x == nil {
		return nil
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		x.mu.Lock()
		x.upgraded, x.wsProto = true, resp.Header.Get("Sec-WebSocket-Protocol")
		x.mu.Unlock()
		return nil
	}
	if x.ev.Kind != "" {
		return nil
	}
	ev := x.ev
	ev.Type, ev.Code, ev.Duration = kubewire.EventRequest, resp.StatusCode, p.cfg.Now().Sub(x.start)
	if x.audit(ev) != nil {
		return errAuditWrite
	}
	x.audited.Store(true)
	return nil
}

// finish records how the request or session ended.
func (x *heldExchange) finish(tap *kubewire.ResponseTap) {
	p := recover()
	if p != nil && p != http.ErrAbortHandler {
		panic(p)
	}
	x.mu.Lock()
	upgraded, rec := x.upgraded, x.rec
	x.mu.Unlock()
	ev := x.ev
	ev.Code, ev.Duration = tap.Status(), x.p.cfg.Now().Sub(x.start)
	switch {
	case x.ev.Kind != "":
		ev.Type = kubewire.EventSessionEnd
		var end *services.Ended
		if errors.As(context.Cause(x.sc.ctx), &end) {
			ev.Reason = end.Message
		}
		if upgraded {
			ev.Code = http.StatusSwitchingProtocols
		}
		if rec != nil {
			if err := rec.Close(); err != nil {
				x.p.log.Warn("kubernetes session recording", "session", ev.Session, "err", err)
			}
			ev.Recorded = true
		}
		x.audit(ev)
	case !x.audited.Load():
		// Answered here (the cluster did not answer, or its answer could
		// not be recorded): recorded as well as it can be.
		ev.Type = kubewire.EventRequest
		x.audit(ev)
	}
	if p != nil {
		panic(p)
	}
}

// follow wraps the user's upgraded connection: on a remote command
// WebSocket it records an exec or attach terminal, and the stream can end
// it with the fleet's reason on the error channel.
func (x *heldExchange) follow(conn net.Conn) net.Conn {
	x.mu.Lock()
	defer x.mu.Unlock()
	var down, up *kubewire.ChannelTap
	if kubewire.FollowsProtocol(x.wsProto) {
		var toUser, fromUser func(ch int, p []byte)
		var resized func(cols, rows int)
		kind := x.ev.Kind
		if x.tty && (kind == "exec" || kind == "attach") && x.trail.Record != nil {
			rec := x.trail.Record(x.sc.ctx, services.SessionInfo{Kind: "kube." + kind, Command: x.cmd, Cols: 80, Rows: 24})
			if rec != nil {
				x.rec = rec
				toUser = func(ch int, p []byte) {
					if ch == kubewire.ChStdout || ch == kubewire.ChStderr {
						rec.Output(p)
					}
				}
				if ir, ok := rec.(services.InputRecorder); ok {
					fromUser = func(ch int, p []byte) {
						if ch == kubewire.ChStdin {
							ir.Input(p)
						}
					}
				}
				resized = rec.Resize
			}
		}
		down, up = kubewire.NewChannelTap(toUser, nil), kubewire.NewChannelTap(fromUser, resized)
	}
	tc := kubewire.NewTapConn(conn, down, up)
	x.sc.tap.Store(tc)
	return tc
}
