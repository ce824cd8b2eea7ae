package kubesrv

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/kubewire"
)

// exchange is one request on its way through Serve: what the audit records
// of it, and, for a long-running request (a watch, a followed log, an
// upgraded exec, attach or port-forward), the live session.
type exchange struct {
	s     *Server
	grant broker.Grant
	ev    kubewire.Event
	query url.Values
	start time.Time
	// kind is the session kind of a long-running request, "" for others.
	kind string
	// id names the session.
	id     string
	cancel context.CancelCauseFunc
	live   *broker.Session
	// audited is set once a request's event is committed.
	audited atomic.Bool

	mu       sync.Mutex // guards the fields below
	reason   string     // why the fleet ended the session, once it did
	upgraded bool
	wsProto  string            // the WebSocket subprotocol the cluster chose
	conn     *kubewire.TapConn // the upgraded connection, once hijacked
	rec      *terminal
}

type exchangeKey struct{}

func exchangeOf(ctx context.Context) *exchange {
	x, _ := ctx.Value(exchangeKey{}).(*exchange)
	return x
}

// errAuditWrite refuses what cannot be recorded.
var errAuditWrite = errors.New("kubesrv: the audit event could not be written")

// auditRefusal is what a user whose request could not be recorded sees.
const auditRefusal = "the fleet cannot write its audit log right now, so it does not pass on Kubernetes requests; try again later"

// Serve forwards r to the cluster g names, as the Kubernetes user and
// groups g.Session names (the caller resolved them: see Resolve). r.URL.Path (and RawPath) must
// already be the cluster's API path ("/api/v1/pods"): the caller strips its
// own prefix.
//
// Nothing is forwarded or answered unrecorded: a request that changes the
// cluster and a long-running one have their start event committed before
// they are forwarded; every other request has its event committed before
// its answer is passed on. When the audit log cannot be written, the user
// gets a 503 Status instead.
func (s *Server) Serve(w http.ResponseWriter, r *http.Request, g *broker.Grant) {
	start := s.cfg.Now()
	info := kubewire.ParseRequest(r.Method, r.URL)
	x := &exchange{s: s, grant: *g, query: r.URL.Query(), start: start}
	gs := &x.grant.Session
	x.ev = kubewire.Event{
		Time: start, User: gs.User, Cluster: gs.DeviceName, DeviceID: gs.DeviceID,
		KubeUser: gs.KubeUser, KubeGroups: gs.KubeGroups,
		Method: r.Method, Path: r.URL.Path, Request: info, ClientAddr: gs.ClientAddr,
	}
	x.kind = kubewire.SessionKind(r, info)
	proxy := s.device
	if gs.DeviceID == "" {
		if s.local == nil {
			kubewire.WriteStatus(w, r, http.StatusNotFound, fmt.Sprintf("no Kubernetes cluster %q", gs.DeviceName))
			return
		}
		proxy = s.local
	} else if !s.cfg.Broker.Online(gs.DeviceID) {
		ev := x.ev
		ev.Type, ev.Code = kubewire.EventRequest, http.StatusServiceUnavailable
		s.audit(ev)
		kubewire.WriteStatus(w, r, http.StatusServiceUnavailable, fmt.Sprintf("device %q is offline; it reconnects by itself when its link is back", gs.DeviceName))
		return
	}
	ctx := r.Context()
	if !gs.Expires.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, gs.Expires)
		defer cancel()
	}
	ctx, x.cancel = context.WithCancelCause(ctx)
	defer x.cancel(nil)
	switch {
	case x.kind != "":
		x.id = broker.NewID()
		gs.ID, gs.Kind, gs.Service = x.id, x.kind, proto.ServiceKube
		x.ev.Session, x.ev.Kind = x.id, x.kind
		ev := x.ev
		ev.Type = kubewire.EventSessionStart
		if s.audit(ev) != nil {
			kubewire.WriteStatus(w, r, http.StatusServiceUnavailable, auditRefusal)
			return
		}
		live, err := s.cfg.Broker.Start(ctx, &x.grant, broker.StartOptions{End: x.end, NoEvents: true})
		if err != nil {
			ev := x.ev
			ev.Type, ev.Code, ev.Reason = kubewire.EventSessionEnd, http.StatusUnauthorized, err.Error()
			s.audit(ev)
			kubewire.WriteStatus(w, r, http.StatusUnauthorized, err.Error())
			return
		}
		x.live = live
	case kubewire.Mutating(info):
		ev := x.ev
		ev.Type = kubewire.EventRequestStart
		if s.audit(ev) != nil {
			kubewire.WriteStatus(w, r, http.StatusServiceUnavailable, auditRefusal)
			return
		}
	}
	tap := &kubewire.ResponseTap{ResponseWriter: w, Follow: x.follow}
	// Deferred: the proxy ends a response it could not finish (a watch
	// whose client left, or that the fleet ended) by panicking with
	// http.ErrAbortHandler.
	defer x.finish(tap, r)
	ctx = context.WithValue(ctx, exchangeKey{}, x)
	ctx = context.WithValue(ctx, grantKey{}, &x.grant)
	proxy.ServeHTTP(tap, r.WithContext(ctx))
}

// modifyResponse sees the cluster's answer before it is passed on: an
// upgrade starts following the connection; any other answer to a request
// that is not a session has its event committed, or is not passed on.
func (s *Server) modifyResponse(resp *http.Response) error {
	x := exchangeOf(resp.Request.Context())
	if x == nil {
		return nil
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		x.mu.Lock()
		x.upgraded, x.wsProto = true, resp.Header.Get("Sec-WebSocket-Protocol")
		x.mu.Unlock()
		return nil
	}
	if x.kind != "" {
		return nil
	}
	ev := x.ev
	ev.Type, ev.Code, ev.Duration = kubewire.EventRequest, resp.StatusCode, s.cfg.Now().Sub(x.start)
	if s.audit(ev) != nil {
		return errAuditWrite
	}
	x.audited.Store(true)
	return nil
}

// finish records how the request or session ended. When the fleet ended a
// JSON watch, the watch ends with an ERROR event that carries a Status
// saying why, as an API server ends a watch it cannot go on with.
func (x *exchange) finish(tap *kubewire.ResponseTap, r *http.Request) {
	p := recover()
	if p != nil && p != http.ErrAbortHandler {
		panic(p)
	}
	x.mu.Lock()
	reason, upgraded, rec := x.reason, x.upgraded, x.rec
	x.mu.Unlock()
	if p != nil && reason != "" && x.kind == "watch" && tap.EndWatch(reason) {
		p = nil // the response ends cleanly, with the reason
	}
	s := x.s
	ev := x.ev
	ev.Code, ev.Duration = tap.Status(), s.cfg.Now().Sub(x.start)
	switch {
	case x.kind != "":
		ev.Type, ev.Reason = kubewire.EventSessionEnd, reason
		if upgraded {
			ev.Code = http.StatusSwitchingProtocols
		}
		if rec != nil {
			if err := rec.close(); err != nil {
				s.log.Warn("kubernetes session recording", "session", x.id, "err", err)
			}
			ev.Recorded = true
		}
		s.audit(ev)
		if x.live != nil {
			x.live.DoneSilently(reason)
		}
	case !x.audited.Load():
		// Answered by the fleet (the cluster did not answer, or its answer
		// could not be recorded): recorded as well as it can be.
		ev.Type = kubewire.EventRequest
		s.audit(ev)
	}
	if p != nil {
		panic(p)
	}
}

// end is the session's end function (sessions.Registry): it tells the
// user why where the protocol allows (a WebSocket's error channel, a
// watch's ERROR event) and cuts the session.
func (x *exchange) end(reason string) {
	x.mu.Lock()
	x.reason = reason
	conn := x.conn
	x.mu.Unlock()
	if conn != nil {
		conn.EndWith(reason)
	}
	x.cancel(fmt.Errorf("kubesrv: session ended: %s", reason))
}

// follow wraps the user's upgraded connection: on a remote command
// WebSocket, it records a terminal session and can end it with a message
// on the error channel.
func (x *exchange) follow(conn net.Conn) net.Conn {
	x.mu.Lock()
	defer x.mu.Unlock()
	if !kubewire.FollowsProtocol(x.wsProto) {
		x.conn = kubewire.NewTapConn(conn, nil, nil) // SPDY, or a protocol the fleet does not follow
		return x.conn
	}
	var toUser, fromUser func(ch int, p []byte)
	var resized func(cols, rows int)
	s := x.s
	if s.cfg.Recordings != nil && (x.kind == "exec" || x.kind == "attach") && x.query.Get("tty") == "true" {
		rec, err := s.startRecording(x)
		if err != nil {
			s.log.Warn("kubernetes session not recorded", "session", x.id, "err", err)
			ev := x.ev
			ev.Type, ev.Reason = kubewire.EventRecordingSkipped, err.Error()
			s.audit(ev)
		} else {
			x.rec = rec
			toUser, fromUser = rec.fromCluster, rec.fromUser
			resized = func(cols, rows int) { rec.cast.Resize(cols, rows) }
		}
	}
	x.conn = kubewire.NewTapConn(conn, kubewire.NewChannelTap(toUser, nil), kubewire.NewChannelTap(fromUser, resized))
	return x.conn
}
