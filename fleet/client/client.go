// Package client is the client library of fleetd's HTTPS API (proto/api),
// shared by tsh and fleetctl: typed JSON calls, the /v1/connect Upgrade that
// carries a brokered connection, TLS configs for the ways a client trusts the
// fleet, and the admin identity file format.
//
// It imports only proto/... and libraries, never the fleet's server packages,
// so that tsh and fleetctl stay free of server code. fleetd may import it
// (for the identity file format).
//
// Every non-2xx answer comes back as a *api.Error (use errors.As and branch
// on Code, e.g. api.CodeTOTPRequired). Failing to reach the fleet gives an
// *UnreachableError, and a client certificate past its NotAfter gives an
// *ExpiredError before anything is sent; both messages say what to do next.
package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"remoteler.dev/edge/proto/api"
)

// Config configures a Client. Addr and TLS are required; the other fields
// have working zero values.
type Config struct {
	// Addr is the fleet's HTTPS address, HOST:PORT. Required.
	Addr string
	// TLS says whom to trust and which client certificate to present; build
	// it with PinnedTLS, SystemTLS, CATLS or InsecureTLS. Required. The
	// client clones it and never changes it.
	TLS *tls.Config
	// Timeout bounds each API call, and the Upgrade exchange of Connect
	// (not the brokered connection after it). Zero means 30s.
	Timeout time.Duration
	// LoginHint is what a user whose client certificate is expired or
	// refused should do. Zero means "run tsh login".
	LoginHint string
	// UserAgent is sent with each request. Zero means "remoteler-client".
	UserAgent string
	// Now is the clock used to spot an expired certificate. Zero means
	// time.Now.
	Now func() time.Time
	// LocalAddr is the address to connect from; nil lets the system
	// choose.
	LocalAddr net.Addr
}

func (c *Config) setDefaults() {
	if c.Timeout == 0 {
		c.Timeout = 30 * time.Second
	}
	if c.LoginHint == "" {
		c.LoginHint = "run tsh login"
	}
	if c.UserAgent == "" {
		c.UserAgent = "remoteler-client"
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// Client calls fleetd's HTTPS API. It is safe for concurrent use.
type Client struct {
	cfg    Config
	tls    *tls.Config // cfg.TLS cloned, ServerName filled in
	http   *http.Client
	dialer net.Dialer
	// prefix is put before the API paths of a leaf cluster reached
	// through this fleet (In).
	prefix string
}

// In returns a client of the leaf cluster called cluster, reached through
// the fleet c talks to (trusted clusters: api.ClusterPath): its listings,
// connections, Kubernetes clusters and audit are the leaf's, as the leaf's
// roles allow them for this user. It shares c's connections; "" returns
// c itself.
func (c *Client) In(cluster string) *Client {
	if cluster == "" {
		return c
	}
	cc := *c
	cc.prefix = api.ClusterPath(cluster, "")
	return &cc
}

// url is the address of an API path, in the cluster of In.
func (c *Client) url(path string) string { return "https://" + c.cfg.Addr + c.prefix + path }

// New returns a client for the fleet at cfg.Addr.
func New(cfg Config) (*Client, error) {
	cfg.setDefaults()
	host, _, err := net.SplitHostPort(cfg.Addr)
	if err != nil || host == "" {
		return nil, fmt.Errorf("client: fleet address %q is not HOST:PORT", cfg.Addr)
	}
	if cfg.TLS == nil {
		return nil, errors.New("client: no TLS config")
	}
	c := &Client{cfg: cfg, tls: cfg.TLS.Clone()}
	if c.tls.ServerName == "" {
		c.tls.ServerName = host
	}
	c.dialer = net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second, LocalAddr: cfg.LocalAddr}
	c.http = &http.Client{
		Transport: &http.Transport{
			DialContext:         c.dial,
			TLSClientConfig:     c.tls,
			TLSHandshakeTimeout: cfg.Timeout,
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     90 * time.Second,
		},
		// The API never redirects; a redirect would leak nothing but is a
		// sign of talking to the wrong server.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c, nil
}

// Addr returns the fleet address the client talks to.
func (c *Client) Addr() string { return c.cfg.Addr }

// Close releases idle connections.
func (c *Client) Close() error {
	c.http.CloseIdleConnections()
	return nil
}

func (c *Client) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	conn, err := c.dialer.DialContext(ctx, network, addr)
	if err != nil {
		return nil, &UnreachableError{Addr: c.cfg.Addr, Err: err}
	}
	return conn, nil
}

// Ping calls GET /v1/ping (open).
func (c *Client) Ping(ctx context.Context) (*api.Ping, error) {
	var out api.Ping
	return &out, c.do(ctx, http.MethodGet, api.PathPing, nil, &out)
}

// loginRetries are the pauses before trying a login again when the fleet
// answers that it is busy (api.CodeBusy: its password checks are all
// taken, by a flood of logins say); each is jittered by up to half.
var loginRetries = []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second}

// Login calls POST /v1/login (open). While the fleet answers that it is
// busy, it tries again a few times (about 5 s in all) before returning
// that answer.
func (c *Client) Login(ctx context.Context, req *api.LoginRequest) (*api.LoginResponse, error) {
	for i := 0; ; i++ {
		var out api.LoginResponse
		err := c.do(ctx, http.MethodPost, api.PathLogin, req, &out)
		var ae *api.Error
		if err == nil || i == len(loginRetries) || !errors.As(err, &ae) || ae.Code != api.CodeBusy {
			return &out, err
		}
		d := loginRetries[i]
		t := time.NewTimer(d + mrand.N(d/2))
		select {
		case <-ctx.Done():
			t.Stop()
			return &out, err
		case <-t.C:
		}
	}
}

// Whoami calls GET /v1/whoami.
func (c *Client) Whoami(ctx context.Context) (*api.Whoami, error) {
	var out api.Whoami
	return &out, c.do(ctx, http.MethodGet, api.PathWhoami, nil, &out)
}

// Devices calls GET /v1/devices; the answer is a JSON array.
func (c *Client) Devices(ctx context.Context) ([]api.Device, error) {
	var out []api.Device
	return out, c.do(ctx, http.MethodGet, api.PathDevices, nil, &out)
}

// RemoveDevice calls DELETE /v1/devices/NAME (admin).
func (c *Client) RemoveDevice(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, item(api.PathDevices, name), nil, nil)
}

// Users calls GET /v1/users (admin); the answer is a JSON array.
func (c *Client) Users(ctx context.Context) ([]api.User, error) {
	var out []api.User
	return out, c.do(ctx, http.MethodGet, api.PathUsers, nil, &out)
}

// AddUser calls POST /v1/users (admin).
func (c *Client) AddUser(ctx context.Context, req *api.AddUserRequest) (*api.AddUserResponse, error) {
	var out api.AddUserResponse
	return &out, c.do(ctx, http.MethodPost, api.PathUsers, req, &out)
}

// RemoveUser calls DELETE /v1/users/NAME (admin).
func (c *Client) RemoveUser(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, item(api.PathUsers, name), nil, nil)
}

// Roles calls GET /v1/roles (admin); the answer is a JSON array.
func (c *Client) Roles(ctx context.Context) ([]api.Role, error) {
	var out []api.Role
	return out, c.do(ctx, http.MethodGet, api.PathRoles, nil, &out)
}

// PutRole calls PUT /v1/roles (admin), creating or replacing the role. A body
// in the answer, if any, is ignored.
func (c *Client) PutRole(ctx context.Context, role *api.Role) error {
	return c.do(ctx, http.MethodPut, api.PathRoles, role, nil)
}

// RemoveRole calls DELETE /v1/roles/NAME (admin).
func (c *Client) RemoveRole(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, item(api.PathRoles, name), nil, nil)
}

// Tokens calls GET /v1/tokens (admin); the answer is a JSON array.
func (c *Client) Tokens(ctx context.Context) ([]api.Token, error) {
	var out []api.Token
	return out, c.do(ctx, http.MethodGet, api.PathTokens, nil, &out)
}

// AddToken calls POST /v1/tokens (admin).
func (c *Client) AddToken(ctx context.Context, req *api.AddTokenRequest) (*api.Token, error) {
	var out api.Token
	return &out, c.do(ctx, http.MethodPost, api.PathTokens, req, &out)
}

// RemoveToken calls DELETE /v1/tokens/ID (admin).
func (c *Client) RemoveToken(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, item(api.PathTokens, id), nil, nil)
}

// Status calls GET /v1/status (admin).
func (c *Client) Status(ctx context.Context) (*api.Status, error) {
	var out api.Status
	return &out, c.do(ctx, http.MethodGet, api.PathStatus, nil, &out)
}

// item is the path of one named resource under a collection path.
func item(collection, name string) string {
	return collection + "/" + url.PathEscape(name)
}

// maxBody bounds what the client reads of an answer.
const maxBody = 16 << 20

// do sends one JSON request and decodes a 2xx answer into out (when out is
// not nil and the answer has a body).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	if err := c.checkExpiry(); err != nil {
		return err
	}
	op := strings.ToLower(method) + " " + path
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("client: %s: encode request: %w", op, err)
		}
		body = bytes.NewReader(b)
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.url(path), body)
	if err != nil {
		return fmt.Errorf("client: %s: %w", op, err)
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.cfg.UserAgent)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return c.transportError(op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return c.transportError(op, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return errorFromResponse(resp.StatusCode, data)
	}
	if out == nil || len(bytes.TrimSpace(data)) == 0 {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("client: %s: decode answer from %s: %w; is %s a fleet (fleetd) address?", op, c.cfg.Addr, err, c.cfg.Addr)
	}
	return nil
}

// Locks calls GET /v1/locks (admin): the locks in force.
func (c *Client) Locks(ctx context.Context) ([]api.Lock, error) {
	var out api.LockList
	return out.Items, c.do(ctx, http.MethodGet, api.PathLocks, nil, &out)
}

// AddLock calls POST /v1/locks (admin).
func (c *Client) AddLock(ctx context.Context, req *api.LockRequest) (*api.Lock, error) {
	var out api.Lock
	return &out, c.do(ctx, http.MethodPost, api.PathLocks, req, &out)
}

// RemoveLock calls DELETE /v1/locks/ID (admin).
func (c *Client) RemoveLock(ctx context.Context, id string) error {
	return c.do(ctx, http.MethodDelete, item(api.PathLocks, id), nil, nil)
}
