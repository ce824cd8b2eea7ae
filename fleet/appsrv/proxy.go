package appsrv

import (
	"bufio"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"

	"remoteler.dev/edge/fleet/appjwt"
	"remoteler.dev/edge/fleet/apps"
	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/web/login"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// fleetCookiePrefix names the fleet's own cookies: never passed to an
// app, and an app may not set them.
const fleetCookiePrefix = "__Host-fleet_"

// isFleetCookie reports whether a cookie name is the fleet's, in any case.
func isFleetCookie(name string) bool {
	return len(name) >= len(fleetCookiePrefix) && strings.EqualFold(name[:len(fleetCookiePrefix)], fleetCookiePrefix)
}

// serve proxies one request of a live app session and records it.
func (s *Server) serve(w http.ResponseWriter, r *http.Request, as *session) {
	start := s.cfg.Now()
	tap := &tap{ResponseWriter: w}
	if isWebSocket(r) {
		tap.ended = as.endedWhy
	}
	in := &counter{}
	defer func() {
		if as.leaf != "" {
			return // the leaf records its app's requests
		}
		// Recorded after the answer, off the request's path: the next
		// request on the connection does not wait for the commit, and
		// requests recorded together share one (audit.Recorder).
		d, n := s.cfg.Now().Sub(start), in.n
		s.records.Go(func() { s.recordRequest(r, as, tap, n, d) })
	}()
	if r.ContentLength > s.cfg.UploadLimit {
		s.tooLarge(tap, r)
		return
	}
	if r.Body != nil && r.Body != http.NoBody {
		in.r = http.MaxBytesReader(tap, r.Body, s.cfg.UploadLimit)
		r.Body = in
	}
	// The request ends with the session: the registry ends it when
	// access ends.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(as.ctx, cancel)
	defer stop()
	ctx = context.WithValue(ctx, sessionKey{}, as)
	s.proxy.ServeHTTP(tap, r.WithContext(ctx))
}

// isWebSocket reports whether r asks for a websocket (RFC 6455 section
// 4.1).
func isWebSocket(r *http.Request) bool {
	return strings.EqualFold(r.Header.Get("Upgrade"), "websocket")
}

// tooLarge answers an upload over the cap.
func (s *Server) tooLarge(w http.ResponseWriter, r *http.Request) {
	plain(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("the upload is larger than the fleet allows for apps (%d bytes; fleetd's app_upload_limit)", s.cfg.UploadLimit))
}

// recordRequest records one request in the audit trail: method, path
// (without the query, which may hold secrets), status, bytes both ways.
func (s *Server) recordRequest(r *http.Request, as *session, t *tap, in int64, d time.Duration) {
	status := t.status()
	outcome := proto.OutcomeSuccess
	if status == http.StatusRequestEntityTooLarge && t.fleet {
		outcome = proto.OutcomeDenied
	}
	f := map[string]string{"service": proto.ServiceApp, "device_name": as.device, "app": as.app.Name,
		"method": r.Method, "path": r.URL.Path, "status": strconv.Itoa(status),
		"bytes_in": strconv.FormatInt(in, 10), "bytes_out": strconv.FormatInt(t.n, 10),
		"duration": d.Round(time.Millisecond).String()}
	if as.root != "" {
		f["user_cluster"] = as.root
	}
	s.cfg.Broker.Record(r.Context(), &proto.AuditEvent{Type: proto.EventAppRequest, Outcome: outcome, User: as.user.Name,
		Session: as.live.ID(), Device: as.grant.Session.DeviceID, Addr: r.RemoteAddr, Fields: f})
}

// rewrite shapes the request the app gets.
func (s *Server) rewrite(pr *httputil.ProxyRequest) {
	as := sessionOf(pr.In.Context())
	out := pr.Out
	out.URL.Scheme, out.URL.Host = "http", as.internal
	out.Host = as.internal
	h := out.Header
	h.Del(apps.JWTHeader)
	h.Del("Forwarded")
	h.Del(api.HeaderAppSession)
	stripFleetCookies(h)
	switch {
	case as.leaf != "":
		// To the leaf, which decides, signs the app's identity and
		// records the request: the public side, and the session it
		// belongs to.
		pr.SetXForwarded()
		h.Set(api.HeaderAppSession, as.live.ID())
		return
	case as.root != "":
		// From the root: the public side is what the root saw.
		for _, k := range []string{"X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto"} {
			if v := pr.In.Header.Get(k); v != "" {
				h.Set(k, v)
			}
		}
	default:
		pr.SetXForwarded()
	}
	if tok, err := as.token(); err == nil {
		h.Set(apps.JWTHeader, tok)
	} else {
		s.log.Error("app identity not signed", "app", as.label, "err", err)
	}
	if rw := as.app.Rewrite; rw != nil {
		roles := strings.Join(as.user.Roles, ",")
		for _, hd := range rw.Headers {
			h.Set(hd.Name, strings.NewReplacer("{{user}}", as.user.Name, "{{roles}}", roles).Replace(hd.Value))
		}
	}
}

// stripFleetCookies drops the fleet's cookies from a request's Cookie
// headers.
func stripFleetCookies(h http.Header) {
	lines := h.Values("Cookie")
	if len(lines) == 0 {
		return
	}
	var kept []string
	for _, line := range lines {
		for _, part := range strings.Split(line, ";") {
			name, _, _ := strings.Cut(strings.TrimSpace(part), "=")
			if name != "" && !isFleetCookie(strings.TrimSpace(name)) {
				kept = append(kept, strings.TrimSpace(part))
			}
		}
	}
	h.Del("Cookie")
	if len(kept) > 0 {
		h.Set("Cookie", strings.Join(kept, "; "))
	}
}

// token returns the session's JWT, signing a new one when the last is
// past half its life.
func (as *session) token() (string, error) {
	s := as.s
	now := s.cfg.Now()
	as.mu.Lock()
	defer as.mu.Unlock()
	if as.jwt != "" && now.Add(s.cfg.JWTLifetime/2).Before(as.jwtExp) {
		return as.jwt, nil
	}
	exp := earliest(now.Add(s.cfg.JWTLifetime), as.expires)
	c := &appjwt.Claims{
		Claims: jwt.Claims{Issuer: s.cfg.Addr.FleetOrigin(), Subject: as.user.Name, Audience: jwt.Audience{as.origin},
			IssuedAt: jwt.NewNumericDate(now), NotBefore: jwt.NewNumericDate(now.Add(-30 * time.Second)), Expiry: jwt.NewNumericDate(exp),
			ID: rand.Text()},
		Username: as.user.Name, Roles: as.user.Roles, Traits: as.user.Traits,
	}
	tok, err := s.cfg.Keys.Sign(c)
	if err != nil {
		return "", err
	}
	as.jwt, as.jwtExp = tok, exp
	return tok, nil
}

// modifyResponse rewrites what names the app's internal origin, and keeps
// the app from setting the fleet's cookies.
func (s *Server) modifyResponse(resp *http.Response) error {
	as := sessionOf(resp.Request.Context())
	if as == nil {
		return nil
	}
	if as.leaf != "" {
		// The leaf rewrote what names its app; it may have ended the
		// session it keeps for this one.
		if why := resp.Header.Get(api.HeaderAppEnded); why != "" {
			resp.Header.Del(api.HeaderAppEnded)
			go as.finish(context.Background(), "the leaf cluster "+as.leaf+" ended it: "+why)
		}
	} else if loc := resp.Header.Get("Location"); loc != "" {
		resp.Header.Set("Location", as.publicLocation(loc))
	}
	if cookies := resp.Header.Values("Set-Cookie"); len(cookies) > 0 {
		resp.Header.Del("Set-Cookie")
		for _, line := range cookies {
			if c, ok := as.publicCookie(line); ok {
				resp.Header.Add("Set-Cookie", c)
			}
		}
	}
	return nil
}

// internalHost reports whether hostport (from a Location URL) is one of
// the names the app gives itself: its URI's host, or a rewrite redirect.
func (as *session) internalHost(scheme, hostport string) bool {
	norm := func(scheme, h string) string {
		h = strings.ToLower(h)
		if _, _, err := net.SplitHostPort(h); err != nil {
			if scheme == "https" {
				return h + ":443"
			}
			return h + ":80"
		}
		return h
	}
	u, err := url.Parse(as.app.URI)
	if err == nil && norm(scheme, hostport) == norm(u.Scheme, u.Host) {
		return true
	}
	if rw := as.app.Rewrite; rw != nil {
		for _, h := range rw.Redirect {
			if strings.EqualFold(h, hostport) || strings.EqualFold(norm(scheme, h), norm(scheme, hostport)) {
				return true
			}
		}
	}
	return false
}

// publicLocation rewrites a Location that names the app's internal origin
// to its public one.
func (as *session) publicLocation(loc string) string {
	u, err := url.Parse(loc)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || !as.internalHost(u.Scheme, u.Host) {
		return loc
	}
	pub, _ := url.Parse(as.origin)
	u.Scheme, u.Host = pub.Scheme, pub.Host
	return u.String()
}

// publicCookie adjusts one Set-Cookie line: a Domain naming the app's
// internal host is dropped (the cookie becomes host-only on the public
// host), and the fleet's own cookie names are refused.
func (as *session) publicCookie(line string) (string, bool) {
	// By its name as a browser reads it, whether or not it parses here
	// (browsers take the prefix in any case).
	name, _, _ := strings.Cut(line, "=")
	if isFleetCookie(strings.TrimSpace(name)) {
		return "", false
	}
	c, err := http.ParseSetCookie(line)
	if err != nil {
		return line, true // not ours to judge: the browser will
	}
	if c.Domain == "" {
		return line, true
	}
	d := strings.TrimPrefix(strings.ToLower(c.Domain), ".")
	u, _ := url.Parse(as.app.URI)
	internal := u != nil && d == strings.ToLower(u.Hostname())
	if rw := as.app.Rewrite; rw != nil && !internal {
		for _, h := range rw.Redirect {
			if host, _, err := net.SplitHostPort(h); err == nil {
				h = host
			}
			internal = internal || strings.EqualFold(d, h)
		}
	}
	if !internal {
		return line, true
	}
	c.Domain = ""
	return c.String(), true
}

// proxyError answers a request the proxy could not pass on.
func (s *Server) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	as := sessionOf(r.Context())
	var mbe *http.MaxBytesError
	var ref *broker.Refusal
	status, title, msg := http.StatusBadGateway, "The app did not answer", ""
	switch {
	case errors.As(err, &mbe):
		if t, ok := w.(*tap); ok {
			t.fleet = true
		}
		s.tooLarge(w, r)
		return
	case as != nil && as.endedWhy() != "":
		status, title, msg = http.StatusUnauthorized, "Your app session ended", as.endedWhy()
	case errors.Is(err, context.Canceled):
		return // the user went away
	case errors.As(err, &ref) && ref.Status == broker.StatusOffline:
		status, title, msg = http.StatusServiceUnavailable, "The device is offline", ref.Msg+"; it reconnects by itself when its link is back"
	case errors.As(err, &ref):
		status, msg = http.StatusBadGateway, ref.Msg
	default:
		msg = fmt.Sprintf("the fleet could not reach the app: %v", err)
		s.log.Warn("app request failed", "app", label(as), "path", r.URL.Path, "err", err)
	}
	if !browser(r) {
		plain(w, status, msg)
		return
	}
	s.cfg.Login.Page(w, status, nil, login.Page{Static: pathStatic, Title: title, Message: msg, Link: r.URL.RequestURI(), LinkText: "Try again"})
}

func label(as *session) string {
	if as == nil {
		return ""
	}
	return as.label
}

// refuse answers a refused app certificate's request.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, label string, ref *broker.Refusal) {
	status, _ := refusalStatus(ref)
	plain(w, status, ref.Msg)
}

// tap passes a response on and keeps its status and size.
type tap struct {
	http.ResponseWriter
	code int
	n    int64
	// fleet says the fleet answered (not the app).
	fleet bool
	// ended, set for a websocket's request, says why the fleet ended
	// the session ("" while it is live): the hijacked connection tells
	// the user (wsConn).
	ended func() string
}

func (t *tap) WriteHeader(code int) {
	if t.code == 0 && code >= 200 || code == http.StatusSwitchingProtocols {
		t.code = code
	}
	t.ResponseWriter.WriteHeader(code)
}

func (t *tap) Write(b []byte) (int, error) {
	if t.code == 0 {
		t.code = http.StatusOK
	}
	n, err := t.ResponseWriter.Write(b)
	t.n += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (t *tap) Unwrap() http.ResponseWriter { return t.ResponseWriter }

// Hijack hands the connection over for an upgrade (a websocket).
func (t *tap) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	t.code = http.StatusSwitchingProtocols
	conn, brw, err := http.NewResponseController(t.ResponseWriter).Hijack()
	if err != nil || t.ended == nil {
		return conn, brw, err
	}
	return &wsConn{Conn: conn, why: t.ended}, brw, nil
}

func (t *tap) status() int {
	if t.code == 0 {
		return http.StatusOK
	}
	return t.code
}

// counter counts the bytes of a request body.
type counter struct {
	r io.ReadCloser
	n int64
}

func (c *counter) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.n += int64(n)
	return n, err
}

func (c *counter) Close() error { return c.r.Close() }
