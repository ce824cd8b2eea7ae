package kubesrv

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/kubestatus"
)

// exchange is one request on its way through Serve: what the audit records
// of it, and, for a long-running request (a watch, a followed log, an
// upgraded exec, attach or port-forward), the live session.
type exchange struct {
	s     *Server
	grant broker.Grant
	ev    Event
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
	wsProto  string   // the WebSocket subprotocol the cluster chose
	conn     *tapConn // the upgraded connection, once hijacked
	rec      *terminal
}

type exchangeKey struct{}

func exchangeOf(ctx context.Context) *exchange {
	x, _ := ctx.Value(exchangeKey{}).(*exchange)
	return x
}

// sessionKind says whether a request is long-running, and what it is: an
// upgrade ("exec", "attach", "portforward", or "upgrade" for others), a
// "watch" or a followed "log". Those are sessions: registered while they
// run, audited at start and end.
func sessionKind(r *http.Request, info RequestInfo) string {
	switch {
	case r.Header.Get("Upgrade") != "":
		switch info.Subresource {
		case "exec", "attach", "portforward":
			return info.Subresource
		}
		return "upgrade"
	case info.Verb == "watch":
		return "watch"
	case info.Subresource == "log" && r.URL.Query().Get("follow") == "true":
		return "log"
	}
	return ""
}

// mutating reports whether a request changes the cluster: its event is
// committed before it is forwarded.
func mutating(info RequestInfo) bool {
	switch info.Verb {
	case "create", "update", "patch", "delete", "deletecollection":
		return true
	}
	return false
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
	info := ParseRequest(r.Method, r.URL)
	x := &exchange{s: s, grant: *g, query: r.URL.Query(), start: start}
	gs := &x.grant.Session
	x.ev = Event{
		Time: start, User: gs.User, Cluster: gs.DeviceName, DeviceID: gs.DeviceID,
		KubeUser: gs.KubeUser, KubeGroups: gs.KubeGroups,
		Method: r.Method, Path: r.URL.Path, Request: info, ClientAddr: gs.ClientAddr,
	}
	x.kind = sessionKind(r, info)
	proxy := s.device
	if gs.DeviceID == "" {
		if s.local == nil {
			WriteStatus(w, r, http.StatusNotFound, fmt.Sprintf("no Kubernetes cluster %q", gs.DeviceName))
			return
		}
		proxy = s.local
	} else if !s.cfg.Broker.Online(gs.DeviceID) {
		ev := x.ev
		ev.Type, ev.Code = EventRequest, http.StatusServiceUnavailable
		s.audit(ev)
		WriteStatus(w, r, http.StatusServiceUnavailable, fmt.Sprintf("device %q is offline; it reconnects by itself when its link is back", gs.DeviceName))
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
		ev.Type = EventSessionStart
		if s.audit(ev) != nil {
			WriteStatus(w, r, http.StatusServiceUnavailable, auditRefusal)
			return
		}
		live, err := s.cfg.Broker.Start(ctx, &x.grant, broker.StartOptions{End: x.end, NoEvents: true})
		if err != nil {
			ev := x.ev
			ev.Type, ev.Code, ev.Reason = EventSessionEnd, http.StatusUnauthorized, err.Error()
			s.audit(ev)
			WriteStatus(w, r, http.StatusUnauthorized, err.Error())
			return
		}
		x.live = live
	case mutating(info):
		ev := x.ev
		ev.Type = EventRequestStart
		if s.audit(ev) != nil {
			WriteStatus(w, r, http.StatusServiceUnavailable, auditRefusal)
			return
		}
	}
	tap := &responseTap{ResponseWriter: w, x: x}
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
	ev.Type, ev.Code, ev.Duration = EventRequest, resp.StatusCode, s.cfg.Now().Sub(x.start)
	if s.audit(ev) != nil {
		return errAuditWrite
	}
	x.audited.Store(true)
	return nil
}

// finish records how the request or session ended. When the fleet ended a
// JSON watch, the watch ends with an ERROR event that carries a Status
// saying why, as an API server ends a watch it cannot go on with.
func (x *exchange) finish(tap *responseTap, r *http.Request) {
	p := recover()
	if p != nil && p != http.ErrAbortHandler {
		panic(p)
	}
	x.mu.Lock()
	reason, upgraded, rec := x.reason, x.upgraded, x.rec
	x.mu.Unlock()
	if p != nil && reason != "" && tap.endWatch(reason) {
		p = nil // the response ends cleanly, with the reason
	}
	s := x.s
	ev := x.ev
	ev.Code, ev.Duration = tap.status(), s.cfg.Now().Sub(x.start)
	switch {
	case x.kind != "":
		ev.Type, ev.Reason = EventSessionEnd, reason
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
		ev.Type = EventRequest
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
		conn.endWith(reason)
	}
	x.cancel(fmt.Errorf("kubesrv: session ended: %s", reason))
}

// responseTap passes a response on and keeps what the fleet needs of it:
// its status, whether a JSON stream stands at an event boundary, and the
// upgraded connection.
type responseTap struct {
	http.ResponseWriter
	x    *exchange
	code int
	// last is the last byte written; a JSON watch stands between events
	// when it is a newline.
	last byte
	n    int64
}

func (t *responseTap) WriteHeader(code int) {
	if t.code == 0 && code >= 200 {
		t.code = code
	}
	t.ResponseWriter.WriteHeader(code)
}

func (t *responseTap) Write(b []byte) (int, error) {
	if t.code == 0 {
		t.code = http.StatusOK
	}
	n, err := t.ResponseWriter.Write(b)
	if n > 0 {
		t.last = b[n-1]
		t.n += int64(n)
	}
	return n, err
}

// Unwrap lets http.ResponseController reach Flush.
func (t *responseTap) Unwrap() http.ResponseWriter { return t.ResponseWriter }

// Hijack hands the upgraded connection to the proxy, followed by the fleet.
func (t *responseTap) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(t.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	return t.x.follow(conn), brw, nil
}

func (t *responseTap) status() int {
	if t.code == 0 {
		return http.StatusOK
	}
	return t.code
}

// endWatch ends a JSON watch response with an ERROR event for reason, if
// the response is one and stands between events; it reports whether it
// did.
func (t *responseTap) endWatch(reason string) bool {
	mt, _, _ := mime.ParseMediaType(t.Header().Get("Content-Type"))
	if t.x.kind != "watch" || t.code != http.StatusOK || mt != "application/json" || (t.n > 0 && t.last != '\n') {
		return false
	}
	ev := fmt.Sprintf(`{"type":"ERROR","object":%s}`+"\n", kubestatus.JSON(http.StatusForbidden, reason))
	if _, err := t.ResponseWriter.Write([]byte(ev)); err != nil {
		return false
	}
	http.NewResponseController(t.ResponseWriter).Flush()
	return true
}

// follow wraps the user's upgraded connection: on a remote command
// WebSocket, it records a terminal session and can end it with a message
// on the error channel.
func (x *exchange) follow(conn net.Conn) net.Conn {
	tc := &tapConn{Conn: conn}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.conn = tc
	if !channelProtocols[x.wsProto] {
		return tc // SPDY, or a protocol the fleet does not follow
	}
	var toUser, fromUser func(ch int, p []byte)
	var resized func(cols, rows int)
	s := x.s
	if s.cfg.Recordings != nil && (x.kind == "exec" || x.kind == "attach") && x.query.Get("tty") == "true" {
		rec, err := s.startRecording(x)
		if err != nil {
			s.log.Warn("kubernetes session not recorded", "session", x.id, "err", err)
			ev := x.ev
			ev.Type, ev.Reason = EventRecordingSkipped, err.Error()
			s.audit(ev)
		} else {
			x.rec = rec
			toUser, fromUser = rec.fromCluster, rec.fromUser
			resized = func(cols, rows int) { rec.cast.Resize(cols, rows) }
		}
	}
	tc.down = newChannelTap(toUser, nil)
	tc.up = newChannelTap(fromUser, resized)
	return tc
}

// tapConn is the user's side of an upgraded connection. Writes carry the
// cluster's bytes to the user; reads the user's to the cluster. When it
// follows a remote command WebSocket (down, up set), it feeds both
// directions to their taps, and endWith can put an error frame and a close
// frame between the cluster's frames.
type tapConn struct {
	net.Conn
	down, up *channelTap

	wmu   sync.Mutex // serialises writes to the user; guards ended
	ended bool       // the fleet ended the session: no more bytes to the user
}

func (c *tapConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.ended {
		return 0, net.ErrClosed
	}
	n, err := c.Conn.Write(b)
	if c.down != nil && n > 0 {
		c.down.ws.feed(b[:n])
	}
	return n, err
}

func (c *tapConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if c.up != nil && n > 0 {
		c.up.ws.feed(b[:n])
	}
	return n, err
}

// endWith tells the user why the session ends, on the error channel, when
// the WebSocket stands between frames, and lets no more of the cluster's
// bytes through.
func (c *tapConn) endWith(reason string) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.ended {
		return
	}
	c.ended = true
	if c.down == nil || !c.down.ws.atBoundary() {
		return
	}
	msg := append([]byte{chError}, kubestatus.JSON(http.StatusForbidden, reason)...)
	c.Conn.SetWriteDeadline(time.Now().Add(time.Second))
	c.Conn.Write(append(wsFrame(wsBinary, msg), wsFrame(wsClose, []byte{0x03, 0xe8})...))
}
