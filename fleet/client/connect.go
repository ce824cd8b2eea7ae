package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"remoteler.dev/edge/proto/api"
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
	if err := c.checkExpiry(); err != nil {
		return nil, err
	}
	op := "connect to " + device
	conf := c.tls.Clone()
	conf.NextProtos = []string{"http/1.1"}
	raw, err := c.dial(ctx, "tcp", c.cfg.Addr)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(raw, conf)
	// Until the upgrade is done, the exchange is bounded by ctx, and by
	// Timeout beyond the fleet's wait for the device: the fleet's answer
	// says why a device did not answer, a timeout here would not.
	tc.SetDeadline(c.cfg.Now().Add(c.cfg.Timeout + api.ConnectWait))
	stop := context.AfterFunc(ctx, func() { tc.SetDeadline(time.Unix(1, 0)) })
	fail := func(err error) (net.Conn, error) {
		stop()
		tc.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("client: %s: %w", op, ctx.Err())
		}
		return nil, err
	}
	if err := tc.HandshakeContext(ctx); err != nil {
		return fail(c.transportError(op, err))
	}
	q := url.Values{"device": {device}, "login": {login}, "service": {service}}
	req, err := http.NewRequest(http.MethodGet, "https://"+c.cfg.Addr+api.PathConnect+"?"+q.Encode(), nil)
	if err != nil {
		return fail(fmt.Errorf("client: %s: %w", op, err))
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", api.UpgradeProto)
	req.Header.Set("User-Agent", c.cfg.UserAgent)
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
		return nil, fmt.Errorf("client: %s: %w", op, ctx.Err())
	}
	tc.SetDeadline(time.Time{})
	return &upgradedConn{Conn: tc, tc: tc, br: br, session: resp.Header.Get(api.HeaderSession)}, nil
}

// SessionID returns the fleet's ID of a connection Connect returned, or "".
func SessionID(conn net.Conn) string {
	if u, ok := conn.(*upgradedConn); ok {
		return u.session
	}
	return ""
}

// SessionEnd asks the fleet how a brokered session ended.
func (c *Client) SessionEnd(ctx context.Context, id string) (*api.SessionEnd, error) {
	var end api.SessionEnd
	return &end, c.do(ctx, http.MethodGet, api.PathSessions+"/"+url.PathEscape(id), nil, &end)
}

// upgradedConn is a connection after the Upgrade: reads first drain what the
// response reader already buffered, then go to the TLS connection.
type upgradedConn struct {
	net.Conn
	tc      *tls.Conn
	br      *bufio.Reader
	session string
}

func (c *upgradedConn) Read(p []byte) (int, error) {
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
