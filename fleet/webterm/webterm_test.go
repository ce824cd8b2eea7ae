package webterm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/audittest"
	"remoteler.dev/edge/tools/logtest"
	"remoteler.dev/edge/tools/pkitest"
)

// These tests put a stand-in device behind the broker: an SSH server of
// golang.org/x/crypto/ssh that checks the session's certificate as the
// agent's does (its CA, key ID, principal) and runs a fake shell that
// echoes. tools/e2e drives the real agent through the dashboard.

// testCA signs user certificates and vouches for the device's host key.
type testCA struct {
	user, host ssh.Signer
}

func (c *testCA) SignUserSSH(pub ssh.PublicKey, user string, logins []string, ttl time.Duration) (*ssh.Certificate, error) {
	cert := &ssh.Certificate{Key: pub, CertType: ssh.UserCert, KeyId: user, ValidPrincipals: logins,
		ValidAfter: uint64(time.Now().Add(-time.Minute).Unix()), ValidBefore: uint64(time.Now().Add(ttl).Unix()),
		Permissions: ssh.Permissions{Extensions: map[string]string{"permit-pty": ""}}}
	return cert, cert.SignCert(rand.Reader, c.user)
}

func (c *testCA) HostCAKeys() []ssh.PublicKey { return []ssh.PublicKey{c.host.PublicKey()} }

// device is the stand-in device: what its shell saw.
type device struct {
	mu      sync.Mutex // guards the fields below
	offline bool
	// stall holds the device's answers to global requests (keep-alives)
	// while it is open: a link that carries nothing.
	stall  chan struct{}
	size   [][2]uint32 // the terminal sizes asked for: pty-req, window-change
	login  string
	closed chan struct{} // closed when a shell's channel closes
	// held, when set (before the session), is closed when the shell's
	// start is asked; the device then holds its answer until the fleet
	// tells it to end the session, and refuses the shell.
	held     chan struct{}
	hold     chan struct{}
	holdOnce sync.Once
}

func (d *device) sizes() [][2]uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([][2]uint32(nil), d.size...)
}

// tunnels opens streams to the device's SSH server.
type tunnels struct {
	d   *device
	cfg *ssh.ServerConfig
	t   *testing.T
}

// Open connects a loopback TCP pair (net.Pipe has no buffer, and both
// sides of an SSH handshake write first).
func (tn *tunnels) Open(ctx context.Context, id string, h *proto.StreamHeader) (net.Conn, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return nil, err
	}
	b, err := ln.Accept()
	if err != nil {
		a.Close()
		return nil, err
	}
	go tn.serve(b, h)
	return a, nil
}

// Send takes the fleet's messages to the device: a session's end lets a
// held shell start go, refused.
func (tn *tunnels) Send(_ string, m proto.Message) error {
	if _, ok := m.(*proto.SessionEnd); ok && tn.d.hold != nil {
		tn.d.holdOnce.Do(func() { close(tn.d.hold) })
	}
	return nil
}

func (tn *tunnels) Online(string) bool {
	tn.d.mu.Lock()
	defer tn.d.mu.Unlock()
	return !tn.d.offline
}

// serve runs one SSH connection: a shell that echoes, and exits on "exit".
func (tn *tunnels) serve(conn net.Conn, h *proto.StreamHeader) {
	sc, chans, reqs, err := ssh.NewServerConn(conn, tn.cfg)
	if err != nil {
		tn.t.Logf("device: handshake: %v", err)
		return
	}
	defer sc.Close()
	go func() {
		for r := range reqs {
			tn.d.mu.Lock()
			stall := tn.d.stall
			tn.d.mu.Unlock()
			if stall != nil {
				<-stall
			}
			r.Reply(false, nil)
		}
	}()
	tn.d.mu.Lock()
	tn.d.login = sc.User()
	tn.d.mu.Unlock()
	for nc := range chans {
		ch, creqs, err := nc.Accept()
		if err != nil {
			return
		}
		go func() {
			for r := range creqs {
				switch r.Type {
				case "pty-req", "window-change":
					var dims [2]uint32
					p := r.Payload
					if r.Type == "pty-req" {
						n := int(p[0])<<24 | int(p[1])<<16 | int(p[2])<<8 | int(p[3])
						p = p[4+n:]
					}
					dims[0], dims[1] = uint32(p[0])<<24|uint32(p[1])<<16|uint32(p[2])<<8|uint32(p[3]), uint32(p[4])<<24|uint32(p[5])<<16|uint32(p[6])<<8|uint32(p[7])
					tn.d.mu.Lock()
					tn.d.size = append(tn.d.size, dims)
					tn.d.mu.Unlock()
					r.Reply(true, nil)
				case "shell":
					if tn.d.held != nil {
						close(tn.d.held)
						<-tn.d.hold
						r.Reply(false, nil)
						continue
					}
					r.Reply(true, nil)
				default:
					r.Reply(false, nil)
				}
			}
		}()
		buf := make([]byte, 1024)
		var line []byte
		for {
			n, err := ch.Read(buf)
			if err != nil {
				break
			}
			ch.Write(buf[:n])
			line = append(line, buf[:n]...)
			if bytes.Contains(line, []byte("exit\r")) {
				ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{0}))
				break
			}
		}
		ch.Close()
		close(tn.d.closed)
	}
}

type fixture struct {
	srv   *httptest.Server
	dev   *device
	reg   *sessions.Registry
	trail *audittest.Recorder
}

const rolePi = "metadata: {name: pi}\nspec: {allow: {logins: [pi], device_labels: {site: north}}}"

func newFixture(t *testing.T, cfg Config, roleDoc string) *fixture {
	t.Helper()
	ca := &testCA{user: pkitest.SSHSigner(t), host: pkitest.SSHSigner(t)}
	hostKey := pkitest.SSHSigner(t)
	hostCert := &ssh.Certificate{Key: hostKey.PublicKey(), CertType: ssh.HostCert, KeyId: "dev", ValidPrincipals: []string{"pi-1"},
		ValidBefore: ssh.CertTimeInfinity}
	if err := hostCert.SignCert(rand.Reader, ca.host); err != nil {
		t.Fatal(err)
	}
	hostSigner, err := ssh.NewCertSigner(hostCert, hostKey)
	if err != nil {
		t.Fatal(err)
	}
	checker := &ssh.CertChecker{IsUserAuthority: func(k ssh.PublicKey) bool { return bytes.Equal(k.Marshal(), ca.user.PublicKey().Marshal()) }}
	scfg := &ssh.ServerConfig{PublicKeyCallback: func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
		cert, ok := key.(*ssh.Certificate)
		if !ok || cert.KeyId != "bob" {
			return nil, errors.New("want bob's certificate")
		}
		return checker.Authenticate(meta, key)
	}}
	scfg.AddHostKey(hostSigner)
	f := &fixture{dev: &device{closed: make(chan struct{})}, trail: &audittest.Recorder{}}
	devs := &devices.Registry{Store: memstore.New()}
	ctx := context.Background()
	d, err := devs.Register(ctx, devices.Device{Name: "pi-1", Labels: map[string]string{"site": "north"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := devs.Update(ctx, d.ID, func(x *devices.Device) error { x.Services = []string{proto.ServiceSSH}; return nil }); err != nil {
		t.Fatal(err)
	}
	f.reg = sessions.New(sessions.Config{})
	t.Cleanup(f.reg.Close)
	cfg.Broker = broker.New(broker.Config{Tunnels: &tunnels{d: f.dev, cfg: scfg, t: t}, Devices: devs, Sessions: f.reg, Audit: f.trail,
		Cluster: "test", Logger: logtest.Logger(t)})
	cfg.CA = ca
	cfg.Logger = logtest.Logger(t)
	term := New(cfg)
	role, err := rbac.Decode([]byte(roleDoc))
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		term.Serve(w, r, Request{User: api.User{Name: "bob", Roles: []string{"pi"}}, Checker: rbac.NewChecker([]api.Role{role}, nil),
			Device: "pi-1", Login: "pi", Expires: time.Now().Add(time.Hour), ClientAddr: r.RemoteAddr, Cols: 80, Rows: 24})
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) dial(t *testing.T) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(f.srv.URL, "http"), &websocket.DialOptions{HTTPHeader: http.Header{"Origin": {f.srv.URL}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// read reads until the bytes seen contain want, or a text message of type
// typ comes, and returns it.
func read(t *testing.T, c *websocket.Conn, want, typ string) message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var seen []byte
	for {
		kind, data, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("read: %v (seen %q)", err, seen)
		}
		if kind == websocket.MessageBinary {
			seen = append(seen, data...)
			if want != "" && bytes.Contains(seen, []byte(want)) {
				return message{}
			}
			continue
		}
		var m message
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatalf("text message %q: %v", data, err)
		}
		if m.Type == typ {
			return m
		}
	}
}

func TestTerminal(t *testing.T) {
	f := newFixture(t, Config{StatusEvery: 20 * time.Millisecond, PauseAfter: 200 * time.Millisecond}, rolePi)
	c := f.dial(t)
	ctx := context.Background()
	if m := read(t, c, "", "status"); m.State != "live" {
		t.Errorf("first status %+v, want live", m)
	}
	if err := c.Write(ctx, websocket.MessageBinary, []byte("echo hello\r")); err != nil {
		t.Fatal(err)
	}
	read(t, c, "echo hello", "")
	if len(f.reg.List(sessions.Filter{})) != 1 {
		t.Error("the terminal is not a live session")
	}
	// A resize reaches the device.
	c.Write(ctx, websocket.MessageText, []byte(`{"type":"resize","cols":120,"rows":40}`))
	// A link blackout shows, and its end.
	f.dev.mu.Lock()
	f.dev.offline = true
	f.dev.mu.Unlock()
	if m := read(t, c, "", "status"); m.State != "paused" || !strings.Contains(m.Message, "Nothing you type or the device prints is lost") {
		t.Errorf("status during a blackout: %+v", m)
	}
	f.dev.mu.Lock()
	f.dev.offline = false
	f.dev.mu.Unlock()
	if m := read(t, c, "", "status"); m.State != "live" {
		t.Errorf("status after the blackout: %+v", m)
	}
	// The tunnel stays up but the device does not answer (the first
	// seconds of a blackout): paused too, until the answers come.
	stall := make(chan struct{})
	f.dev.mu.Lock()
	f.dev.stall = stall
	f.dev.mu.Unlock()
	if m := read(t, c, "", "status"); m.State != "paused" {
		t.Errorf("status while the device does not answer: %+v", m)
	}
	f.dev.mu.Lock()
	f.dev.stall = nil
	f.dev.mu.Unlock()
	close(stall)
	if m := read(t, c, "", "status"); m.State != "live" {
		t.Errorf("status once the device answers: %+v", m)
	}
	c.Write(ctx, websocket.MessageBinary, []byte("exit\r"))
	if m := read(t, c, "", "end"); m.Message != "the shell exited" {
		t.Errorf("end: %+v", m)
	}
	c.Close(websocket.StatusNormalClosure, "")
	if got := f.dev.sizes(); len(got) != 2 || got[0] != [2]uint32{80, 24} || got[1] != [2]uint32{120, 40} {
		t.Errorf("sizes the device saw: %v, want 80x24 then 120x40", got)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(f.trail.FindAll(proto.EventSessionEnd, "")) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	starts, ends := f.trail.FindAll(proto.EventSessionStart, ""), f.trail.FindAll(proto.EventSessionEnd, "")
	if len(starts) != 1 || starts[0].User != "bob" || starts[0].Login != "pi" || starts[0].Fields["client"] != "web" {
		t.Errorf("session starts: %+v", starts)
	}
	if len(ends) != 1 || ends[0].Fields["bytes_up"] == "0" {
		t.Errorf("session ends: %+v", ends)
	}
	if len(f.reg.List(sessions.Filter{})) != 0 {
		t.Error("the session outlived the terminal")
	}
}

// TestDeadWebsocket: a page that stops answering (no close, no pongs)
// ends the remote shell after DeadAfter.
func TestDeadWebsocket(t *testing.T) {
	f := newFixture(t, Config{PingEvery: 50 * time.Millisecond, DeadAfter: 300 * time.Millisecond}, rolePi)
	c := f.dial(t)
	read(t, c, "", "status")
	// From here the page reads nothing: pings go unanswered.
	select {
	case <-f.dev.closed:
	case <-time.After(60 * time.Second):
		t.Fatal("the shell outlived a dead page")
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(f.trail.FindAll(proto.EventSessionEnd, "")) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	ends := f.trail.FindAll(proto.EventSessionEnd, "")
	if len(ends) != 1 || !strings.Contains(ends[0].Fields["reason"], "did not answer") {
		t.Errorf("session end %+v, want the reason: the browser did not answer", ends)
	}
}

// TestRefusedBeforeUpgrade: a user whose roles do not give the login gets
// the broker's refusal as an HTTP answer, before any websocket.
func TestRefusedBeforeUpgrade(t *testing.T) {
	f := newFixture(t, Config{}, "metadata: {name: pi}\nspec: {allow: {logins: [root], device_labels: {site: north}}}")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, resp, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(f.srv.URL, "http"), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("got %v, %v; want 403", resp, err)
	}
	if denied := f.trail.FindAll(proto.EventAccessDenied, ""); len(denied) != 1 || denied[0].User != "bob" {
		t.Errorf("refusal recorded: %+v", denied)
	}
}

// TestEndedWhileStarting: a session the fleet ends (a lock) while its
// shell starts ends with the fleet's reason on the page, not with the
// failed start's.
func TestEndedWhileStarting(t *testing.T) {
	f := newFixture(t, Config{}, rolePi)
	f.dev.held, f.dev.hold = make(chan struct{}), make(chan struct{})
	c := f.dial(t)
	select {
	case <-f.dev.held:
	case <-time.After(30 * time.Second):
		t.Fatal("the shell's start never reached the device")
	}
	const why = `locked (lock 1 on user "bob"): laptop stolen`
	if n := f.reg.End(func(*sessions.Session) bool { return true }, why); n != 1 {
		t.Fatalf("ended %d sessions, want the terminal's", n)
	}
	if m := read(t, c, "", "end"); m.Message != why {
		t.Errorf("the page was told %q, want %q", m.Message, why)
	}
}
