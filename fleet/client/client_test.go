package client_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/clienttest"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/pin"
)

// newClient returns a client of the fake fleet f that trusts f's CA and
// presents a certificate for user (none when user is empty).
func newClient(t *testing.T, f *clienttest.Fleet, user string) *client.Client {
	t.Helper()
	var cert *tls.Certificate
	if user != "" {
		kp := f.CA.KeyPair(t, user, time.Now().Add(time.Hour))
		cert = &kp
	}
	conf, err := client.CATLS(f.Addr, []*x509.Certificate{f.CA.Cert}, cert)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(client.Config{Addr: f.Addr, TLS: conf, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// serve starts a TLS server of h and returns a client of it.
func serve(t *testing.T, h http.Handler) *client.Client {
	t.Helper()
	srv := httptest.NewTLSServer(h)
	t.Cleanup(srv.Close)
	conf, err := client.CATLS(srv.Listener.Addr().String(), []*x509.Certificate{srv.Certificate()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(client.Config{Addr: srv.Listener.Addr().String(), TLS: conf})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestErrorMapping(t *testing.T) {
	tests := []struct {
		name     string
		status   int
		body     string
		wantCode string
		wantMsg  string
	}{
		{"api error", 401, `{"code":"totp_required","error":"a TOTP code is required"}`, api.CodeTOTPRequired, "a TOTP code is required"},
		{"forbidden", 403, `{"code":"forbidden","error":"access denied"}`, api.CodeForbidden, "access denied"},
		{"code only", 404, `{"code":"not_found"}`, api.CodeNotFound, "the fleet answered 404 Not Found"},
		{"html from a proxy", 502, "<html>Bad Gateway</html>\nmore", api.CodeInternal, "the fleet answered 502 Bad Gateway: <html>Bad Gateway</html>"},
		{"empty 409", 409, "", api.CodeConflict, "the fleet answered 409 Conflict"},
		{"empty 400", 400, "", api.CodeBadRequest, "the fleet answered 400 Bad Request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			}))
			_, err := c.Devices(context.Background())
			var apiErr *api.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("Devices: got %v (%T), want *api.Error", err, err)
			}
			if apiErr.Code != tt.wantCode || apiErr.Message != tt.wantMsg {
				t.Errorf("got code %q message %q, want %q %q", apiErr.Code, apiErr.Message, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

func TestUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	conf, err := client.InsecureTLS(addr, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(client.Config{Addr: addr, TLS: conf})
	if err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"api":     func() error { _, err := c.Ping(context.Background()); return err },
		"connect": func() error { _, err := c.Connect(context.Background(), "d", "pi", "ssh"); return err },
	} {
		t.Run(name, func(t *testing.T) {
			err := call()
			var ue *client.UnreachableError
			if !errors.As(err, &ue) {
				t.Fatalf("got %v (%T), want *client.UnreachableError", err, err)
			}
			want := fmt.Sprintf("cannot reach the fleet at %s: connect: connection refused; is fleetd running?", addr)
			if err.Error() != want {
				t.Errorf("got %q, want %q", err, want)
			}
		})
	}
}

func TestExpiredCertificate(t *testing.T) {
	f := clienttest.NewFleet(t)
	kp := f.CA.KeyPair(t, "alice", time.Now().Add(time.Hour))
	conf, err := client.CATLS(f.Addr, []*x509.Certificate{f.CA.Cert}, &kp)
	if err != nil {
		t.Fatal(err)
	}
	later := func() time.Time { return time.Now().Add(2 * time.Hour) }
	for _, hint := range []string{"", "ask fleetd for a new identity"} {
		c, err := client.New(client.Config{Addr: f.Addr, TLS: conf, Now: later, LoginHint: hint})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Whoami(context.Background())
		var ee *client.ExpiredError
		if !errors.As(err, &ee) {
			t.Fatalf("got %v, want *client.ExpiredError", err)
		}
		wantHint := hint
		if wantHint == "" {
			wantHint = "run tsh login"
		}
		if !strings.HasPrefix(err.Error(), "your certificate expired at ") || !strings.HasSuffix(err.Error(), "; "+wantHint) {
			t.Errorf("got %q, want 'your certificate expired at ...; %s'", err, wantHint)
		}
		if _, err := c.Connect(context.Background(), "d", "pi", "ssh"); !errors.As(err, &ee) {
			t.Errorf("Connect: got %v, want *client.ExpiredError", err)
		}
	}
	if got := f.Calls(); len(got) != 0 {
		t.Errorf("the fleet got %v, want no request with an expired certificate", got)
	}
}

func TestTrust(t *testing.T) {
	f := clienttest.NewFleet(t)
	other := clienttest.NewCA(t, "other CA")
	tests := []struct {
		name    string
		conf    func() (*tls.Config, error)
		wantErr string // substring; empty: success
	}{
		{"pin", func() (*tls.Config, error) { return client.PinnedTLS(f.Addr, f.Pin, nil) }, ""},
		{"pin upper case", func() (*tls.Config, error) {
			return client.PinnedTLS(f.Addr, strings.ToUpper(f.Pin[:7])+f.Pin[7:], nil)
		}, ""},
		{"wrong pin", func() (*tls.Config, error) { return client.PinnedTLS(f.Addr, pin.Of(other.Cert), nil) }, "does not match the pin"},
		{"CA certs", func() (*tls.Config, error) { return client.CATLS(f.Addr, []*x509.Certificate{f.CA.Cert}, nil) }, ""},
		{"other CA", func() (*tls.Config, error) { return client.CATLS(f.Addr, []*x509.Certificate{other.Cert}, nil) }, "does not trust"},
		{"system roots", func() (*tls.Config, error) { return client.SystemTLS(f.Addr, nil) }, "does not trust"},
		{"insecure", func() (*tls.Config, error) { return client.InsecureTLS(f.Addr, io.Discard, nil) }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf, err := tt.conf()
			if err != nil {
				t.Fatal(err)
			}
			c, err := client.New(client.Config{Addr: f.Addr, TLS: conf})
			if err != nil {
				t.Fatal(err)
			}
			p, err := c.Ping(context.Background())
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Ping: %v", err)
			case tt.wantErr == "" && p.Cluster != "fleet":
				t.Errorf("got cluster %q, want fleet", p.Cluster)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("got error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
	t.Run("bad pin", func(t *testing.T) {
		if _, err := client.PinnedTLS(f.Addr, "sha256:abc", nil); err == nil {
			t.Error("got no error for a short pin")
		}
	})
	t.Run("insecure warns", func(t *testing.T) {
		var b strings.Builder
		client.InsecureTLS(f.Addr, &b, nil)
		if !strings.Contains(b.String(), "development only") {
			t.Errorf("got warning %q, want it to say development only", b.String())
		}
	})
}

func TestCalls(t *testing.T) {
	f := clienttest.NewFleet(t)
	f.AddUser("alice", clienttest.User{Roles: []string{"dev"}, Logins: []string{"pi"}})
	f.SetDevices(api.Device{Name: "gw1", Online: true})
	c := newClient(t, f, "alice")
	ctx := context.Background()
	tests := []struct {
		name string
		call func() error
		want string
	}{
		{"ping", func() error { _, err := c.Ping(ctx); return err }, "GET /v1/ping"},
		{"whoami", func() error {
			w, err := c.Whoami(ctx)
			if err == nil && w.User != "alice" {
				err = fmt.Errorf("got user %q", w.User)
			}
			return err
		}, "GET /v1/whoami"},
		{"devices", func() error {
			ds, err := c.Devices(ctx)
			if err == nil && (len(ds) != 1 || ds[0].Name != "gw1") {
				err = fmt.Errorf("got devices %+v", ds)
			}
			return err
		}, "GET /v1/devices"},
		{"add user", func() error {
			_, err := c.AddUser(ctx, &api.AddUserRequest{Name: "bob", Password: "pw", Roles: []string{"dev"}})
			return err
		}, "POST /v1/users"},
		{"users", func() error { _, err := c.Users(ctx); return err }, "GET /v1/users"},
		{"remove user", func() error { return c.RemoveUser(ctx, "bob") }, "DELETE /v1/users/bob"},
		{"put role", func() error {
			return c.PutRole(ctx, &api.Role{Kind: "role", Version: "v1", Metadata: api.Metadata{Name: "dev"}})
		}, "PUT /v1/roles"},
		{"roles", func() error { _, err := c.Roles(ctx); return err }, "GET /v1/roles"},
		{"remove role", func() error { return c.RemoveRole(ctx, "dev") }, "DELETE /v1/roles/dev"},
		{"add token", func() error {
			tok, err := c.AddToken(ctx, &api.AddTokenRequest{TTL: time.Hour})
			if err == nil && tok.JoinString == "" {
				err = errors.New("no join string")
			}
			return err
		}, "POST /v1/tokens"},
		{"tokens", func() error { _, err := c.Tokens(ctx); return err }, "GET /v1/tokens"},
		{"remove token", func() error { return c.RemoveToken(ctx, "tok1") }, "DELETE /v1/tokens/tok1"},
		{"remove device", func() error { return c.RemoveDevice(ctx, "gw1") }, "DELETE /v1/devices/gw1"},
		{"status", func() error { _, err := c.Status(ctx); return err }, "GET /v1/status"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); err != nil {
				t.Fatal(err)
			}
			calls := f.Calls()
			if got := calls[len(calls)-1]; got != tt.want {
				t.Errorf("got request %q, want %q", got, tt.want)
			}
		})
	}
	t.Run("not found", func(t *testing.T) {
		err := c.RemoveUser(ctx, "nobody")
		var apiErr *api.Error
		if !errors.As(err, &apiErr) || apiErr.Code != api.CodeNotFound {
			t.Errorf("got %v, want a not_found *api.Error", err)
		}
	})
	t.Run("no certificate", func(t *testing.T) {
		_, err := newClient(t, f, "").Devices(ctx)
		var apiErr *api.Error
		if !errors.As(err, &apiErr) || apiErr.Code != api.CodeUnauthorized {
			t.Errorf("got %v, want an unauthorized *api.Error", err)
		}
	})
}

func TestConnect(t *testing.T) {
	f := clienttest.NewFleet(t)
	f.AddUser("alice", clienttest.User{Logins: []string{"pi"}})
	type req struct{ device, login, service string }
	got := make(chan req, 1)
	// The fake greets first, in the same write as the 101 answer would be
	// flushed, so the client must hand over bytes its reader buffered.
	f.SetConnect(func(device, login, service string, conn net.Conn) {
		defer conn.Close()
		got <- req{device, login, service}
		io.WriteString(conn, "hello\n")
		io.Copy(conn, conn)
	})
	c := newClient(t, f, "alice")
	conn, err := c.Connect(context.Background(), "gw1", "pi", "ssh")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	if r := <-got; r != (req{"gw1", "pi", "ssh"}) {
		t.Errorf("fleet got %+v, want gw1/pi/ssh", r)
	}
	br := bufio.NewReader(conn)
	line, err := br.ReadString('\n')
	if err != nil || line != "hello\n" {
		t.Fatalf("got greeting %q, %v; want hello", line, err)
	}
	io.WriteString(conn, "ping\n")
	if line, err = br.ReadString('\n'); err != nil || line != "ping\n" {
		t.Errorf("got echo %q, %v; want ping", line, err)
	}
	cw, ok := conn.(interface{ CloseWrite() error })
	if !ok {
		t.Fatal("connection has no CloseWrite")
	}
	if err := cw.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Errorf("after CloseWrite got %q, %v; want EOF", rest, err)
	}
}

func TestConnectRefused(t *testing.T) {
	tests := []struct {
		name     string
		login    string
		online   bool
		wantCode string
		wantMsg  string
	}{
		{"access denied", "root", true, api.CodeForbidden, `access denied: login "root" on "gw1"`},
		{"device offline", "pi", false, api.CodeDeviceOffline, `device "gw1" is offline`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := clienttest.NewFleet(t)
			f.AddUser("alice", clienttest.User{Logins: []string{"pi"}})
			if tt.online {
				f.SetConnect(func(_, _, _ string, conn net.Conn) { conn.Close() })
			}
			_, err := newClient(t, f, "alice").Connect(context.Background(), "gw1", tt.login, "ssh")
			var apiErr *api.Error
			if !errors.As(err, &apiErr) {
				t.Fatalf("got %v, want *api.Error", err)
			}
			if apiErr.Code != tt.wantCode || apiErr.Message != tt.wantMsg {
				t.Errorf("got %q %q, want %q %q", apiErr.Code, apiErr.Message, tt.wantCode, tt.wantMsg)
			}
		})
	}
}

func TestConnectCancel(t *testing.T) {
	// A server that accepts TCP and never answers: ctx must end the wait.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	conf, _ := client.InsecureTLS(ln.Addr().String(), nil, nil)
	c, _ := client.New(client.Config{Addr: ln.Addr().String(), TLS: conf})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := c.Connect(ctx, "gw1", "pi", "ssh")
		done <- err
	}()
	conn := <-accepted
	t.Cleanup(func() { conn.Close() })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want context.Canceled", err)
	}
}

// TestLoginRetriesWhenBusy: a fleet busy checking other logins is asked
// again (a few times); other refusals are not retried.
func TestLoginRetriesWhenBusy(t *testing.T) {
	tests := []struct {
		name      string
		busy      int // busy answers before the real one
		refuse    bool
		wantCalls int32
		wantCode  string
	}{
		{"busy twice, then in", 2, false, 3, ""},
		{"busy throughout", 10, false, 4, api.CodeBusy},
		{"a wrong password is not retried", 0, true, 1, api.CodeUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			c := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n := int(calls.Add(1))
				switch {
				case n <= tt.busy:
					w.Header().Set("Retry-After", "1")
					w.WriteHeader(http.StatusServiceUnavailable)
					io.WriteString(w, `{"code":"busy","message":"the fleet is busy"}`)
				case tt.refuse:
					w.WriteHeader(http.StatusUnauthorized)
					io.WriteString(w, `{"code":"unauthorized","message":"wrong user name, password or code"}`)
				default:
					io.WriteString(w, `{"user":"alice"}`)
				}
			}))
			resp, err := c.Login(context.Background(), &api.LoginRequest{User: "alice"})
			var ae *api.Error
			switch {
			case tt.wantCode == "" && (err != nil || resp.User != "alice"):
				t.Errorf("login: %v, %+v; want alice in", err, resp)
			case tt.wantCode != "" && (!errors.As(err, &ae) || ae.Code != tt.wantCode):
				t.Errorf("login: %v, want code %s", err, tt.wantCode)
			}
			if got := calls.Load(); got != tt.wantCalls {
				t.Errorf("%d calls, want %d", got, tt.wantCalls)
			}
		})
	}
}
