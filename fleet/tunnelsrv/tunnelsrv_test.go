package tunnelsrv

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"remoteler.dev/edge/firmware/tunnel"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/tools/logtest"
	"remoteler.dev/edge/tools/pkitest"
)

// testPKI is a throw-away CA with a server certificate for 127.0.0.1.
type testPKI struct {
	*pkitest.CA
	server tls.Certificate
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	ca := pkitest.NewCAFor(t, 30*24*time.Hour) // virtual days redial
	return &testPKI{CA: ca, server: ca.Server(t, "fleet")}
}

func (p *testPKI) clientTLS(cert tls.Certificate) func() (*tls.Config, error) {
	return func() (*tls.Config, error) {
		return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: p.Pool, ServerName: "127.0.0.1"}, nil
	}
}

type harness struct {
	srv    *Server
	addr   string
	pki    *testPKI
	hello  chan *proto.Hello
	cancel context.CancelFunc
	done   chan struct{}
}

// startServer serves on addr ("127.0.0.1:0" for a new port).
func startServer(t *testing.T, pki *testPKI, addr string) *harness {
	t.Helper()
	return startServerWith(t, pki, addr, nil)
}

// startServerWith is startServer with mod applied to the config.
func startServerWith(t *testing.T, pki *testPKI, addr string, mod func(*Config)) *harness {
	t.Helper()
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{pki: pki, addr: pc.LocalAddr().String(), hello: make(chan *proto.Hello, 16), done: make(chan struct{})}
	cfg := Config{
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{pki.server}, ClientCAs: pki.Pool},
		Authenticate: func(cs tls.ConnectionState) (string, error) {
			cn := cs.PeerCertificates[0].Subject.CommonName
			if cn == "banned" {
				return "", errors.New("device banned")
			}
			return cn, nil
		},
		OnHello: func(ctx context.Context, id string, addr net.Addr, hl *proto.Hello) (*proto.HelloAck, error) {
			if hl.Name != id {
				return nil, proto.Errorf(proto.CodeForbidden, "device %s may not call itself %s", id, hl.Name)
			}
			h.hello <- hl
			return &proto.HelloAck{DeviceID: id, ServerTime: time.Now().UnixMilli()}, nil
		},
		Logger: logtest.Logger(t).With("side", "fleet"),
	}
	if mod != nil {
		mod(&cfg)
	}
	h.srv = New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() {
		defer close(h.done)
		h.srv.Serve(ctx, pc)
		pc.Close()
	}()
	t.Cleanup(h.stop)
	return h
}

func (h *harness) stop() {
	h.cancel()
	<-h.done
}

// startAgent runs a tunnel client named name that echoes every stream.
func startAgent(t *testing.T, h *harness, name, cn string, check func(*proto.StreamHeader) error) (*tunnel.Client, chan bool) {
	t.Helper()
	return startAgentWith(t, h, name, cn, check, nil)
}

// startAgentWith is startAgent with mod applied to the config.
func startAgentWith(t *testing.T, h *harness, name, cn string, check func(*proto.StreamHeader) error, mod func(*tunnel.Config)) (*tunnel.Client, chan bool) {
	t.Helper()
	state := make(chan bool, 16)
	cfg := tunnel.Config{
		Addr:      h.addr,
		TLSConfig: h.pki.clientTLS(h.pki.Client(t, cn)),
		Hello:     func() *proto.Hello { return &proto.Hello{Name: name, AgentVersion: "test"} },
		Check:     check,
		Handle: func(ctx context.Context, hd *proto.StreamHeader, conn net.Conn) {
			defer conn.Close()
			io.Copy(conn, conn)
		},
		OnState:    func(up bool) { state <- up },
		MinBackoff: 20 * time.Millisecond,
		MaxBackoff: 200 * time.Millisecond,
		Logger:     logtest.Logger(t).With("side", "agent"),
	}
	if mod != nil {
		mod(&cfg)
	}
	c := tunnel.New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Run(ctx)
	}()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	agentStops[c] = stop
	return c, state
}

// agentStops stops the agents startAgent started, before the test ends.
var agentStops = map[*tunnel.Client]func(){}

func waitState(t *testing.T, ch chan bool, want bool) {
	t.Helper()
	select {
	case got := <-ch:
		if got != want {
			t.Fatalf("tunnel state = %v, want %v", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("tunnel never went %v", want)
	}
}

func echo(t *testing.T, conn net.Conn, msg string) {
	t.Helper()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatal(err)
	}
	if string(buf) != msg {
		t.Fatalf("echo = %q, want %q", buf, msg)
	}
}

func TestOpenEcho(t *testing.T) {
	h := startServer(t, newPKI(t), "127.0.0.1:0")
	_, state := startAgent(t, h, "pi-1", "pi-1", nil)
	waitState(t, state, true)
	if hl := <-h.hello; hl.ProtocolVersion != proto.Version || hl.AgentVersion != "test" {
		t.Errorf("hello = %+v", hl)
	}
	if !h.srv.Online("pi-1") || h.srv.Count() != 1 {
		t.Fatalf("online = %v, count = %d", h.srv.Online("pi-1"), h.srv.Count())
	}
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := h.srv.Open(ctx, "pi-1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: fmt.Sprint("s", i)})
			if err != nil {
				t.Error(err)
				return
			}
			defer conn.Close()
			echo(t, conn, strings.Repeat("x", 100000+i))
		}()
	}
	wg.Wait()
	if _, err := h.srv.Open(ctx, "pi-2", &proto.StreamHeader{Service: proto.ServiceSSH}); !errors.Is(err, ErrOffline) {
		t.Errorf("open offline device: err = %v, want ErrOffline", err)
	}
}

func TestStreamRefused(t *testing.T) {
	h := startServer(t, newPKI(t), "127.0.0.1:0")
	_, state := startAgent(t, h, "pi-1", "pi-1", func(hd *proto.StreamHeader) error {
		return proto.Errorf(proto.CodeForbidden, "login %q not allowed here", hd.Identity.Login)
	})
	waitState(t, state, true)
	_, err := h.srv.Open(context.Background(), "pi-1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "r", Identity: proto.Identity{Login: "root"}})
	var pe *proto.Error
	if !errors.As(err, &pe) || pe.Code != proto.CodeForbidden || !strings.Contains(pe.Message, `"root"`) {
		t.Fatalf("err = %v, want forbidden naming the login", err)
	}
}

func TestReconnectAfterFleetRestart(t *testing.T) {
	pki := newPKI(t)
	h := startServer(t, pki, "127.0.0.1:0")
	c, state := startAgent(t, h, "pi-1", "pi-1", nil)
	waitState(t, state, true)
	h.stop()
	waitState(t, state, false)
	h2 := startServer(t, pki, h.addr)
	waitState(t, state, true)
	conn, err := h2.srv.Open(context.Background(), "pi-1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "after"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	echo(t, conn, "after restart")
	if c.Reconnects() < 1 {
		t.Errorf("reconnects = %d, want >= 1", c.Reconnects())
	}
}

func TestRefusals(t *testing.T) {
	pki := newPKI(t)
	h := startServer(t, pki, "127.0.0.1:0")
	tests := []struct {
		name, hello, cn string
		foreignCA       bool
		want            string
	}{
		{"name differs from certificate", "pi-2", "pi-1", false, "may not call itself"},
		{"authenticate refuses", "banned", "banned", false, "device banned"},
		{"certificate from another CA", "pi-1", "pi-1", true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := pki
			if tt.foreignCA {
				p = newPKI(t)
			}
			tc, _ := p.clientTLS(p.Client(t, tt.cn))()
			tc.RootCAs = pki.Pool
			tc.NextProtos = []string{proto.ALPN}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			qc, err := quic.DialAddr(ctx, h.addr, tc, nil)
			if err != nil {
				if tt.foreignCA {
					return // refused in the handshake: what we want
				}
				t.Fatal(err)
			}
			defer qc.CloseWithError(0, "")
			st, err := qc.OpenStreamSync(ctx)
			if err != nil {
				t.Fatal(err)
			}
			proto.WriteMsg(st, &proto.Hello{ProtocolVersion: proto.Version, Name: tt.hello})
			<-qc.Context().Done()
			cause := context.Cause(qc.Context())
			if tt.foreignCA {
				// TLS 1.3: the server checks the client certificate after
				// the client thinks the handshake is done.
				if !strings.Contains(cause.Error(), "unknown certificate authority") {
					t.Fatalf("closed with %v, want unknown certificate authority", cause)
				}
				return
			}
			var ae *quic.ApplicationError
			if !errors.As(cause, &ae) || !strings.Contains(ae.ErrorMessage, tt.want) {
				t.Fatalf("closed with %v, want a message with %q", cause, tt.want)
			}
		})
	}
	// The server still serves a good device after all that.
	_, state := startAgent(t, h, "pi-1", "pi-1", nil)
	waitState(t, state, true)
}

func TestMalformedControlFrames(t *testing.T) {
	pki := newPKI(t)
	h := startServer(t, pki, "127.0.0.1:0")
	tests := []struct {
		name  string
		bytes []byte
	}{
		{"garbage", []byte("GET / HTTP/1.1\r\n\r\n")},
		{"oversized", []byte{byte(proto.KindHello), 0xff, 0xff, 0xff, 0xff, 0x0f}},
		{"bad cbor", []byte{byte(proto.KindHello), 2, 0xff, 0xff}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc, _ := pki.clientTLS(pki.Client(t, "pi-9"))()
			tc.NextProtos = []string{proto.ALPN}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			qc, err := quic.DialAddr(ctx, h.addr, tc, nil)
			if err != nil {
				t.Fatal(err)
			}
			st, _ := qc.OpenStreamSync(ctx)
			st.Write(tt.bytes)
			// The fleet answers with an error frame, or closes first with
			// the same code and reason.
			m, err := proto.ReadMsg(bufio.NewReader(st), proto.MaxControlFrame)
			if pe, ok := m.(*proto.Error); ok {
				if pe.Code != proto.CodeBadRequest {
					t.Errorf("error frame %v, want bad request", pe)
				}
			} else {
				var ae *quic.ApplicationError
				if !errors.As(err, &ae) || ae.ErrorCode != quic.ApplicationErrorCode(proto.CodeBadRequest) || ae.ErrorMessage == "" {
					t.Errorf("answer = %v, %v; want a bad-request error frame or close", m, err)
				}
			}
			<-qc.Context().Done()
		})
	}
	_, state := startAgent(t, h, "pi-1", "pi-1", nil)
	waitState(t, state, true)
}

// TestRemovalDuringHelloRefusesTheDevice removes a device (from a
// registry the test keeps, then with Disconnect, as fleetd does) after its
// hello was checked but before its connection is registered: Recheck must
// refuse it, and it must never come up.
func TestRemovalDuringHelloRefusesTheDevice(t *testing.T) {
	pki := newPKI(t)
	var (
		mu      sync.Mutex
		removed = map[string]bool{}
		srv     *Server
	)
	h := startServerWith(t, pki, "127.0.0.1:0", func(c *Config) {
		hello := c.OnHello
		c.OnHello = func(ctx context.Context, id string, addr net.Addr, hl *proto.Hello) (*proto.HelloAck, error) {
			mu.Lock()
			gone := removed[id]
			removed[id] = true // the removal lands right after this check
			mu.Unlock()
			if gone {
				return nil, proto.Errorf(proto.CodeForbidden, "device %s was removed", id)
			}
			srv.Disconnect(id, "removed") // finds no connection yet
			return hello(ctx, id, addr, hl)
		}
		c.Recheck = func(ctx context.Context, id string) error {
			mu.Lock()
			defer mu.Unlock()
			if removed[id] {
				return proto.Errorf(proto.CodeForbidden, "device %s was removed", id)
			}
			return nil
		}
	})
	srv = h.srv
	_, state := startAgent(t, h, "pi-1", "pi-1", nil)
	select {
	case <-h.hello: // the hello was checked (twice at most: the retry is refused)
	case <-time.After(10 * time.Second):
		t.Fatal("the agent never said hello")
	}
	deadline := time.After(2 * time.Second) // a margin for a wrong "up" to show; not a synchronisation
	for {
		select {
		case up := <-state:
			if up {
				t.Fatal("a device removed during its hello came up")
			}
		case <-deadline:
			if srv.Online("pi-1") || srv.Count() != 0 {
				t.Fatal("the removed device is registered as online")
			}
			return
		}
	}
}

// TestDisconnectEndsHeldSessions: a removed device's sessions end at once
// instead of waiting the hold time for it to come back.
func TestDisconnectEndsHeldSessions(t *testing.T) {
	pki := newPKI(t)
	h := startServerWith(t, pki, "127.0.0.1:0", func(c *Config) { c.SessionHold = time.Hour })
	_, state := startAgent(t, h, "pi-1", "pi-1", nil)
	waitState(t, state, true)
	<-h.hello
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := h.srv.Open(ctx, "pi-1", &proto.StreamHeader{Service: "echo", SessionID: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	echo(t, conn, "hello")
	h.srv.Disconnect("pi-1", "this device was removed from the fleet")
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	if err == nil || !strings.Contains(err.Error(), "removed from the fleet") {
		t.Fatalf("read after Disconnect: %v, want the session ended with the reason", err)
	}
	for deadline := time.Now().Add(10 * time.Second); h.srv.Sessions("pi-1") != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions still held", h.srv.Sessions("pi-1"))
		}
	}
}
