package kubeproxy

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	"remoteler.dev/edge/firmware/services"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/kubewire"
)

// auditRefusal is what a user whose request could not be recorded sees.
const auditRefusal = "the device cannot keep its audit trail right now, so it does not pass on Kubernetes requests; try again later"

// heldKey carries a user-held stream's request's exchange to
// modifyResponse.
type heldKey struct{}

// heldRequest is the request a user-held stream is serving: the stream
// ends it (End) when the fleet ends the session, and waits for done.
type heldRequest struct {
	x    *kubewire.Exchange
	done chan struct{}
}

// serveHeld forwards a request of a user-held stream, auditing it in the
// device's trail as the fleet audits the requests it forwards
// (kubewire.Exchange): a request that changes the cluster and a
// long-running one have their start event kept before they are forwarded,
// every other one its event before its answer is passed on, and a
// session's end when it ends. What the trail refuses to record is refused
// with 503 (the agent's trail refuses what it cannot keep when its
// audit_when_full is "refuse"; with "allow", it keeps the action going and
// counts the drop, as for SSH).
func (p *Proxy) serveHeld(w http.ResponseWriter, r *http.Request, sc *streamConn, b *backend) {
	if sc == nil {
		kubewire.WriteStatus(w, r, http.StatusInternalServerError, "kube stream without its connection")
		return
	}
	h := sc.h
	id := &h.Identity
	trail := p.trail.Load()
	if trail == nil || trail.Audit == nil {
		kubewire.WriteStatus(w, r, http.StatusServiceUnavailable, "this agent has no audit trail for Kubernetes requests, so it does not pass them on")
		return
	}
	x := kubewire.NewExchange(r, kubewire.Event{
		User: id.User, KubeUser: id.KubeUser, KubeGroups: id.KubeGroups, ClientAddr: h.ClientAddr, Session: h.SessionID,
	}, p.cfg.Now)
	x.Log = p.log
	x.Audit = func(ev kubewire.Event) error {
		e := ev.AuditEvent()
		e.Cluster = id.Cluster
		if err := trail.Audit(sc.ctx, e); err != nil {
			p.log.Error("kubernetes audit event not kept", "type", ev.Type, "user", ev.User, "session", ev.Session, "err", err)
			return err
		}
		return nil
	}
	if trail.Record != nil {
		info := services.SessionInfo{Kind: "kube." + x.Ev.Kind, Command: strings.Join(r.URL.Query()["command"], " "), Cols: 80, Rows: 24}
		x.Record = func() kubewire.Terminal {
			if rec := trail.Record(sc.ctx, info); rec != nil {
				return terminal{rec}
			}
			return nil
		}
	}
	if err := checkImpersonation(r.Header, id); err != nil {
		x.Refused(http.StatusForbidden, err.Error())
		kubewire.WriteStatus(w, r, http.StatusForbidden, err.Error())
		return
	}
	if x.Begin() != nil {
		kubewire.WriteStatus(w, r, http.StatusServiceUnavailable, auditRefusal)
		return
	}
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	x.Cancel = cancel
	cur := &heldRequest{x: x, done: make(chan struct{})}
	sc.current.Store(cur)
	defer func() {
		sc.current.CompareAndSwap(cur, nil)
		close(cur.done)
	}()
	tap := &kubewire.ResponseTap{ResponseWriter: w, Follow: x.Follow}
	// Deferred: the proxy ends a response it could not finish (a watch
	// that the fleet ended) by panicking with http.ErrAbortHandler.
	defer func() {
		p := recover()
		if p != nil && p != http.ErrAbortHandler {
			panic(p)
		}
		if _, p = x.Finish(tap, p); p != nil {
			panic(p)
		}
	}()
	b.proxy.ServeHTTP(tap, r.WithContext(context.WithValue(ctx, heldKey{}, x)))
}

// endHeld ends the request a user-held stream is serving, if any, with
// the fleet's reason (an exec hears it on its error channel, a watch in
// an ERROR event), and waits a moment for it to say so before the stream
// closes.
func (sc *streamConn) endHeld(reason string) {
	cur := sc.current.Load()
	if cur == nil {
		return
	}
	cur.x.End(reason)
	select {
	case <-cur.done:
	case <-time.After(time.Second):
	}
}

// terminal records a terminal with the agent's recorder: its input only
// when the recorder records input (a role asked for it).
type terminal struct{ services.Recorder }

func (t terminal) Input(p []byte) {
	if ir, ok := t.Recorder.(services.InputRecorder); ok {
		ir.Input(p)
	}
}

// checkImpersonation refuses a request of a user-held stream that asks to
// act as anyone but the session's Kubernetes user and groups: those were
// chosen, among what the user's roles allow, when the session started (tsh
// proxy kube --as, --as-group). Asking for another is refused, never
// ignored.
func checkImpersonation(h http.Header, id *proto.Identity) error {
	// The server parsed h: its keys are canonical.
	for k, v := range h {
		switch {
		case !strings.HasPrefix(k, "Impersonate-"):
		case k == "Impersonate-User":
			if len(v) != 1 || v[0] != id.KubeUser {
				return fmt.Errorf("this session acts as Kubernetes user %q, chosen when tsh proxy kube started (--as); it cannot act as %q", id.KubeUser, strings.Join(v, ", "))
			}
		case k == "Impersonate-Group":
			if !slices.Equal(slices.Compact(slices.Sorted(slices.Values(v))), slices.Sorted(slices.Values(id.KubeGroups))) {
				return fmt.Errorf("this session has Kubernetes groups %q, chosen when tsh proxy kube started (--as-group); it cannot have %q", strings.Join(id.KubeGroups, ", "), strings.Join(v, ", "))
			}
		default:
			return fmt.Errorf("the device does not pass on %s: impersonate only with tsh proxy kube --as and --as-group", k)
		}
	}
	return nil
}

// modifyResponse sees the cluster's answer to a user-held stream's request
// before it is passed on (kubewire.Exchange.Answered).
func (p *Proxy) modifyResponse(resp *http.Response) error {
	x, _ := resp.Request.Context().Value(heldKey{}).(*kubewire.Exchange)
	if x == nil {
		return nil
	}
	return x.Answered(resp)
}
