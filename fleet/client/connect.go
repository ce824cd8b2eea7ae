package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/userframe"
)

// Connect asks the fleet for a brokered connection to service ("ssh") on
// device as login, with the GET /v1/connect Upgrade exchange described in
// proto/api. On 101 Switching Protocols it returns the connection, which
// carries the service's raw bytes from then on. Any other answer is an
// *api.Error with the fleet's message (access denied, device offline, ...).
//
// ctx bounds only the exchange; cancelling it later does not close the
// returned connection. The connection implements CloseWrite (a TLS
// close_notify), to signal end of input while still reading.
func (c *Client) Connect(ctx context.Context, device, login, service string) (net.Conn, error) {
	u, _, err := c.connect(ctx, device, login, service, nil)
	if err != nil {
		return nil, err
	}
	return u, nil
}

// connect is Connect with extra request headers; it returns the fleet's
// 101 answer too.
func (c *Client) connect(ctx context.Context, device, login, service string, extra http.Header) (*upgradedConn, *http.Response, error) {
	if err := c.checkExpiry(); err != nil {
		return nil, nil, err
	}
	op := "connect to " + device
	conf := c.tls.Clone()
	conf.NextProtos = []string{"http/1.1"}
	raw, err := c.dial(ctx, "tcp", c.cfg.Addr)
	if err != nil {
		return nil, nil, err
	}
	tc := tls.Client(raw, conf)
	// Until the upgrade is done, the exchange is bounded by ctx, and by
	// Timeout beyond the fleet's wait for the device: the fleet's answer
	// says why a device did not answer, a timeout here would not.
	tc.SetDeadline(c.cfg.Now().Add(c.cfg.Timeout + api.ConnectWait))
	stop := context.AfterFunc(ctx, func() { tc.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (*upgradedConn, *http.Response, error) {
		stop()
		tc.Close()
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("client: %s: %w", op, ctx.Err())
		}
		return nil, nil, err
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return fail(c.transportError(op, err))
	}
	q := url.Values{"device": {device}, "login": {login}, "service": {service}}
	req, err := http.NewRequest(http.MethodGet, c.url(api.PathConnect+"?"+q.Encode()), nil)
	if err != nil {
		return fail(fmt.Errorf("client: %s: %w", op, err))
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", api.UpgradeProto)
	req.Header.Set(api.HeaderFrames, "1")
	req.Header.Set("User-Agent", c.cfg.UserAgent)
	for k, v := range extra {
		req.Header[k] = v
	}
	if err := req.Write(tc); err != nil {
		return fail(c.transportError(op, err))
	}
	br := bufio.NewReader(tc)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return fail(c.transportError(op, err))
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		return fail(errorFromResponse(resp.StatusCode, body))
	}
	if !strings.EqualFold(resp.Header.Get("Upgrade"), api.UpgradeProto) {
		return fail(fmt.Errorf("client: %s: the fleet upgraded to %q, want %q; is %s a fleetd of this version?",
			op, resp.Header.Get("Upgrade"), api.UpgradeProto, c.cfg.Addr))
	}
	if !stop() {
		// ctx was cancelled while we read the answer.
		tc.Close()
		return nil, nil, fmt.Errorf("client: %s: %w", op, ctx.Err())
	}
	tc.SetDeadline(time.Time{})
	u := &upgradedConn{Conn: tc, tc: tc, br: br, device: device, session: resp.Header.Get(api.HeaderSession), token: resp.Header.Get(api.HeaderSessionToken)}
	if resp.Header.Get(api.HeaderFrames) == "1" {
		u.frames = userframe.NewReader(rawReader{u})
		u.frames.OnEnd = u.ended
	}
	return u, resp, nil
}

// OnEnd sets f to be called, from the goroutine reading conn (a
// connection Connect returned), with the reason the moment the fleet
// says it ended the session: before conn returns any byte sent after
// that, and before it closes. A fleet that does not frame its side
// (api.HeaderFrames) never calls it: ask SessionEnd after the close.
func OnEnd(conn net.Conn, f func(reason string)) {
	if h, ok := conn.(*heldConn); ok {
		h.mu.Lock()
		h.onEnd = f
		h.mu.Unlock()
		return
	}
	if u, ok := conn.(*upgradedConn); ok {
		u.mu.Lock()
		u.onEnd = f
		u.mu.Unlock()
	}
}

// EndReason returns the reason the fleet gave in-band for ending conn's
// session, or "" when it gave none (yet).
func EndReason(conn net.Conn) string {
	if h, ok := conn.(*heldConn); ok {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.reason
	}
	if u, ok := conn.(*upgradedConn); ok {
		u.mu.Lock()
		defer u.mu.Unlock()
		return u.reason
	}
	return ""
}

// SessionID returns the fleet's ID of a connection Connect returned, or "".
func SessionID(conn net.Conn) string {
	if u, ok := current(conn); ok {
		return u.session
	}
	return ""
}

// SessionDevice returns the device a connection Connect returned reaches,
// or "".
func SessionDevice(conn net.Conn) string {
	if u, ok := current(conn); ok {
		return u.device
	}
	return ""
}

// SessionEnd asks the fleet how the brokered session of conn (a connection
// Connect returned) ended. It shows the session's token, not the client
// certificate, which may have expired or been revoked by then: that is
// often why the session ended.
func (c *Client) SessionEnd(ctx context.Context, conn net.Conn) (*api.SessionEnd, error) {
	u, ok := current(conn)
	if !ok || u.session == "" || u.token == "" {
		return nil, errors.New("client: session end: the fleet named no session for this connection")
	}
	path := api.PathSessions + "/" + url.PathEscape(u.session)
	op := "get " + path
	conf := c.tls.Clone()
	conf.Certificates, conf.GetClientCertificate = nil, nil
	tr := &http.Transport{DialContext: c.dial, TLSClientConfig: conf, TLSHandshakeTimeout: c.cfg.Timeout}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(path), nil)
	if err != nil {
		return nil, fmt.Errorf("client: %s: %w", op, err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.cfg.UserAgent)
	req.Header.Set(api.HeaderSessionToken, u.token)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, c.transportError(op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return nil, c.transportError(op, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, errorFromResponse(resp.StatusCode, data)
	}
	var end api.SessionEnd
	if err := json.Unmarshal(data, &end); err != nil {
		return nil, fmt.Errorf("client: %s: decode answer: %w", op, err)
	}
	return &end, nil
}

// upgradedConn is a connection after the Upgrade: reads first drain what the
// response reader already buffered, then go to the TLS connection.
type upgradedConn struct {
	net.Conn
	tc      *tls.Conn
	br      *bufio.Reader
	device  string
	session string
	token   string // lets SessionEnd ask without a certificate
	// frames decodes the fleet's side when it frames it; nil: raw.
	frames *userframe.Reader

	mu     sync.Mutex // guards onEnd and reason
	onEnd  func(string)
	reason string
}

func (c *upgradedConn) ended(reason string) {
	c.mu.Lock()
	c.reason = reason
	f := c.onEnd
	c.mu.Unlock()
	if f != nil {
		f(reason)
	}
}

func (c *upgradedConn) Read(p []byte) (int, error) {
	if c.frames != nil {
		return c.frames.Read(p)
	}
	return c.readRaw(p)
}

// rawReader reads an upgradedConn's bytes as they came.
type rawReader struct{ c *upgradedConn }

func (r rawReader) Read(p []byte) (int, error) { return r.c.readRaw(p) }

func (c *upgradedConn) readRaw(p []byte) (int, error) {
	if c.br != nil {
		if c.br.Buffered() > 0 {
			return c.br.Read(p)
		}
		c.br = nil // only this goroutine reads, by net.Conn's contract
	}
	return c.tc.Read(p)
}

// CloseWrite sends a TLS close_notify: the far side reads EOF while this
// side can still read.
func (c *upgradedConn) CloseWrite() error { return c.tc.CloseWrite() }
