package client

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/resume"
)

// ConnectHeld is Connect for a session whose fleet end of the resume state
// this client holds (api.HeaderResume): the fleet relays the session's
// frames (proto/resume) to and from the device's agent, so the session
// outlives the fleetd replica the client is connected to. When that
// connection breaks without the fleet ending the session, the returned
// connection reconnects by itself, to any replica, and the session goes
// on without a byte lost, for as long as hold allows (resume.DefaultHold
// when zero); reads and writes wait meanwhile. A fleet that does not hold
// such sessions (or a device it cannot, such as a direct node) gives a
// plain Connect connection instead.
//
// OnEnd, EndReason, SessionID, SessionDevice, SessionEnd and OnResume work
// on the returned connection.
func (c *Client) ConnectHeld(ctx context.Context, device, login, service string, hold time.Duration) (net.Conn, error) {
	return c.connectHeld(ctx, device, login, service, hold, nil)
}

// ConnectKube is ConnectHeld to device's Kubernetes API, for tsh proxy
// kube: the connection carries kubectl's own HTTP/1.1, which the device
// audits. It acts as Kubernetes user as and groups asGroups, among what
// the user's roles allow there (empty: the one user they allow, and all
// their groups), for the whole session.
func (c *Client) ConnectKube(ctx context.Context, device, as string, asGroups []string, hold time.Duration) (net.Conn, error) {
	extra := http.Header{}
	if as != "" {
		extra["Impersonate-User"] = []string{as}
	}
	if len(asGroups) > 0 {
		extra["Impersonate-Group"] = asGroups
	}
	return c.connectHeld(ctx, device, "", proto.ServiceKube, hold, extra)
}

// connectHeld is ConnectHeld, with extra headers on every connect of the
// session (its first and its resumes).
func (c *Client) connectHeld(ctx context.Context, device, login, service string, hold time.Duration, extra http.Header) (net.Conn, error) {
	hdr := http.Header{api.HeaderResume: {"1"}}
	for k, v := range extra {
		hdr[k] = v
	}
	u, resp, err := c.connect(ctx, device, login, service, hdr)
	if err != nil {
		return nil, err
	}
	secret, err := base64.RawURLEncoding.DecodeString(resp.Header.Get(api.HeaderResumeSecret))
	if err != nil || len(secret) == 0 {
		return u, nil // the fleet holds the session itself
	}
	if hold <= 0 {
		hold = resume.DefaultHold
	}
	h := &heldConn{c: c, device: device, login: login, service: service, extra: extra, secret: secret, leg: u, closed: make(chan struct{})}
	h.Conn = resume.New(resume.Config{Hold: hold, OnDetach: h.lost, OnDone: func(error) { h.close() }})
	h.watch(u)
	if err := h.Conn.Attach(u, 0); err != nil {
		u.Close()
		return nil, fmt.Errorf("client: connect to %s: %w", device, err)
	}
	return h, nil
}

// heldConn is a user-held session: a resumable connection whose
// transport is the current upgraded connection to some fleet replica.
type heldConn struct {
	*resume.Conn
	c                      *Client
	device, login, service string
	extra                  http.Header // sent on every connect
	secret                 []byte
	closed                 chan struct{} // closed when the session is over
	closeOnce              sync.Once
	mu                     sync.Mutex // guards what follows
	leg                    *upgradedConn
	reason                 string // the fleet's reason for ending the session
	onEnd                  func(string)
	onResume               func(msg string)
	redialing              bool
	again                  bool // the connection broke again while reconnecting
}

func (h *heldConn) close() { h.closeOnce.Do(func() { close(h.closed) }) }

// Close ends the application's use of the session (see resume.Conn.Close)
// and stops reconnecting once it is over.
func (h *heldConn) Close() error {
	err := h.Conn.Close()
	h.mu.Lock()
	leg := h.leg
	h.mu.Unlock()
	if h.Conn.Err() != nil && leg != nil {
		leg.Close()
	}
	return err
}

// watch passes the fleet's in-band end of the session on u to the
// session: it is over then, whatever happens to the connection.
func (h *heldConn) watch(u *upgradedConn) { OnEnd(u, h.ended) }

// ended records why the session is over (the fleet ended it, or refused
// to resume it for good) and tells OnEnd's function, once.
func (h *heldConn) ended(reason string) {
	h.mu.Lock()
	if h.reason != "" {
		h.mu.Unlock()
		return
	}
	h.reason = reason
	f := h.onEnd
	h.mu.Unlock()
	if f != nil {
		f(reason)
	}
}

// say tells the user about reconnecting, when asked to (OnResume).
func (h *heldConn) say(format string, args ...any) {
	h.mu.Lock()
	f := h.onResume
	h.mu.Unlock()
	if f != nil {
		f(fmt.Sprintf(format, args...))
	}
}

// Reconnecting: the first wait, its growth and its bound.
const (
	redialFirst = 200 * time.Millisecond
	redialMax   = 2 * time.Second
)

// lost runs when the current connection broke: it connects again until
// the session is back, over, or refused.
func (h *heldConn) lost() {
	h.mu.Lock()
	if h.redialing {
		// The loop that runs sees it when it is done.
		h.again = true
		h.mu.Unlock()
		return
	}
	h.redialing = true
	h.mu.Unlock()
	for h.reconnect() {
	}
}

// reconnect connects again until the session is back, over, or refused.
// It reports whether the connection it brought broke meanwhile, and must
// be replaced in turn.
func (h *heldConn) reconnect() (again bool) {
	defer func() {
		h.mu.Lock()
		again, h.again = h.again && h.Conn.Err() == nil, false
		h.redialing = again
		h.mu.Unlock()
	}()
	h.mu.Lock()
	reason := h.reason
	h.mu.Unlock()
	if reason != "" {
		h.Conn.Abort(fmt.Errorf("the fleet ended the session: %s", reason))
		return
	}
	h.say("the connection to the fleet broke; resuming the session")
	wait := redialFirst
	for try := 1; ; try++ {
		if h.Conn.Err() != nil {
			return // over: finished, aborted, or the hold ran out
		}
		h.mu.Lock()
		h.again = false // the connection being replaced is this one
		h.mu.Unlock()
		err := h.redial()
		if err == nil {
			h.say("session resumed (try %d)", try)
			return
		}
		var ae *api.Error
		var expired *ExpiredError
		if errors.As(err, &ae) && permanent(ae.Code) || errors.As(err, &expired) {
			h.ended(err.Error())
			h.Conn.Abort(err)
			return
		}
		h.say("resuming the session: %v; trying again in %v", err, wait.Round(10*time.Millisecond))
		select {
		case <-h.closed:
			return
		case <-time.After(wait + rand.N(wait/4+1)):
		}
		wait = min(2*wait, redialMax)
	}
}

// permanent reports whether a refusal to resume is final: the user may no
// longer reach the device, or the device no longer holds the session.
func permanent(code string) bool {
	switch code {
	case api.CodeForbidden, api.CodeNotFound, api.CodeBadRequest, api.CodeUnauthorized:
		return true
	}
	return false
}

// redial connects once, asking to resume the session, and attaches the
// new connection.
func (h *heldConn) redial() error {
	h.mu.Lock()
	id := h.leg.session
	h.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), h.c.cfg.Timeout+api.ConnectWait)
	defer cancel()
	hdr := http.Header{
		api.HeaderResume:         {id},
		api.HeaderResumeSecret:   {base64.RawURLEncoding.EncodeToString(h.secret)},
		api.HeaderResumeReceived: {strconv.FormatUint(h.Conn.Received(), 10)},
	}
	for k, v := range h.extra {
		hdr[k] = v
	}
	u, resp, err := h.c.connect(ctx, h.device, h.login, h.service, hdr)
	if err != nil {
		return err
	}
	devReceived, err := strconv.ParseUint(resp.Header.Get(api.HeaderResumeReceived), 10, 64)
	if err != nil {
		u.Close()
		return &api.Error{Code: api.CodeBadRequest, Message: "the fleet resumed the session without saying how much of it the device has"}
	}
	h.watch(u)
	h.mu.Lock()
	h.leg = u
	h.mu.Unlock()
	if err := h.Conn.Attach(u, devReceived); err != nil {
		u.Close()
		h.Conn.Abort(err)
		return err
	}
	return nil
}

// OnResume sets f to be told, in words, when a connection ConnectHeld
// returned loses the fleet and resumes the session; other connections
// never call it.
func OnResume(conn net.Conn, f func(msg string)) {
	if h, ok := conn.(*heldConn); ok {
		h.mu.Lock()
		h.onResume = f
		h.mu.Unlock()
	}
}

// current returns the connection to the fleet that carries conn now: conn
// itself, or a held session's current one.
func current(conn net.Conn) (*upgradedConn, bool) {
	switch c := conn.(type) {
	case *upgradedConn:
		return c, true
	case *heldConn:
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.leg, true
	}
	return nil, false
}
