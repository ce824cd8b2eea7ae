package direct_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"

	"remoteler.dev/edge/firmware/direct"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/tools/directtest"
	"remoteler.dev/edge/tools/pkitest"
)

// TestMain fails the run when a goroutine outlives the tests: the node
// serves each connection on goroutines of its own, and Serve must stop
// them all.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestServe: the fleet's stream is checked, then handled, and its bytes
// flow both ways; a refusal reaches the fleet with its code.
func TestServe(t *testing.T) {
	auth := directtest.FleetCA(t, "fleet")
	id := directtest.NewID()
	var handled atomic.Int32
	node := directtest.StartNode(t, direct.Config{
		TLSConfig: directtest.FleetOnly(auth, directtest.DeviceCert(t, auth, id)),
		Check: func(h *proto.StreamHeader) error {
			switch h.Identity.Login {
			case "nobody":
				return &proto.Error{Code: proto.CodeNotFound, Message: "no such login"}
			case "plain":
				return errors.New("not today")
			}
			return nil
		},
		Handle: func(ctx context.Context, h *proto.StreamHeader, conn net.Conn) {
			handled.Add(1)
			directtest.Echo(ctx, h, conn)
		},
	})
	d := directtest.Dialer(t, auth, nil)
	tests := []struct {
		name     string
		login    string
		wantCode proto.ErrorCode // 0: accepted
		wantMsg  string
	}{
		{"accepted", "root", 0, ""},
		{"refused with a code", "nobody", proto.CodeNotFound, "no such login"},
		{"refused with a plain error", "plain", proto.CodeForbidden, "not today"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			before := handled.Load()
			h := directtest.Header("s-" + tt.login)
			h.Identity.Login = tt.login
			conn, err := d.Open(ctx, id, node.Addr().String(), h)
			if tt.wantCode != 0 {
				var pe *proto.Error
				if !errors.As(err, &pe) || pe.Code != tt.wantCode || !strings.Contains(pe.Message, tt.wantMsg) {
					t.Fatalf("Open = %v; want %v saying %q", err, tt.wantCode, tt.wantMsg)
				}
				if handled.Load() != before {
					t.Error("a refused stream was handled")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := conn.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			conn.(interface{ CloseWrite() error }).CloseWrite()
			got, err := io.ReadAll(conn)
			if err != nil || string(got) != "hello" {
				t.Errorf("echo = %q, %v", got, err)
			}
		})
	}
}

// dialRaw dials the node as a client with cert (none when nil), and tries
// a stream: it returns the first error the client sees.
func dialRaw(t *testing.T, addr string, cert *tls.Certificate) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conf := &tls.Config{NextProtos: []string{proto.DirectALPN}, MinVersion: tls.VersionTLS13, InsecureSkipVerify: true}
	if cert != nil {
		conf.Certificates = []tls.Certificate{*cert}
	}
	qc, err := quic.DialAddr(ctx, addr, conf, &quic.Config{HandshakeIdleTimeout: 10 * time.Second})
	if err != nil {
		return err
	}
	defer qc.CloseWithError(0, "")
	st, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	if err := proto.WriteMsg(st, directtest.Header("raw")); err != nil {
		return err
	}
	return proto.ReadAccept(proto.NewReader(st))
}

// TestOnlyTheFleet: mutual TLS, always. A client without a certificate,
// with another CA's, or with a certificate of the fleet's CA that is not
// the fleet's own is refused before any stream is read; so is every
// client when the node's TLS config forgot to ask for a certificate.
func TestOnlyTheFleet(t *testing.T) {
	auth := directtest.FleetCA(t, "fleet")
	id := directtest.NewID()
	devCert := directtest.DeviceCert(t, auth, id)
	fleetCert, err := auth.FleetClientCert(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	otherCert, err := directtest.FleetCA(t, "fleet").FleetClientCert(time.Hour) // same name, another CA
	if err != nil {
		t.Fatal(err)
	}
	anonCert := pkitest.NewCA(t).Client(t, "fleet")
	peerDevice := directtest.DeviceCert(t, auth, directtest.NewID())

	var handled atomic.Int32
	seen := make(chan struct{}, 16)
	handle := func(ctx context.Context, h *proto.StreamHeader, conn net.Conn) {
		handled.Add(1)
		seen <- struct{}{}
		conn.Close()
	}
	node := directtest.StartNode(t, direct.Config{TLSConfig: directtest.FleetOnly(auth, devCert), Handle: handle})
	// A node whose config asks for no client certificate and checks none:
	// the listener still requires one and refuses the handshake.
	careless := directtest.StartNode(t, direct.Config{Handle: handle, TLSConfig: func() (*tls.Config, error) {
		return &tls.Config{Certificates: []tls.Certificate{devCert}}, nil
	}})

	tests := []struct {
		name string
		addr string
		cert *tls.Certificate
		ok   bool
	}{
		{"the fleet", node.Addr().String(), &fleetCert, true},
		{"no certificate", node.Addr().String(), nil, false},
		{"another fleet's CA", node.Addr().String(), &otherCert, false},
		{"a stranger's CA", node.Addr().String(), &anonCert, false},
		{"another device of the fleet", node.Addr().String(), &peerDevice, false},
		{"no certificate, careless config", careless.Addr().String(), nil, false},
		{"the fleet, careless config", careless.Addr().String(), &fleetCert, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := handled.Load()
			err := dialRaw(t, tt.addr, tt.cert)
			if tt.ok {
				if err != nil {
					t.Fatalf("the fleet was refused: %v", err)
				}
				// The node handles the stream after the dial returns: wait
				// for it, so that it is not counted against the next case.
				select {
				case <-seen:
				case <-time.After(time.Minute):
					t.Fatal("the node never handled the fleet's stream")
				}
				return
			}
			if err == nil {
				t.Fatal("the node took the stream")
			}
			if handled.Load() != before {
				t.Error("the node handled a stream of a client it should have refused")
			}
		})
	}
}

// TestBadHeader: a stream that does not start with a header is reset and
// never handled; the node serves the next connection.
func TestBadHeader(t *testing.T) {
	auth := directtest.FleetCA(t, "fleet")
	id := directtest.NewID()
	var handled atomic.Int32
	node := directtest.StartNode(t, direct.Config{TLSConfig: directtest.FleetOnly(auth, directtest.DeviceCert(t, auth, id)),
		Handle: func(ctx context.Context, h *proto.StreamHeader, conn net.Conn) {
			handled.Add(1)
			directtest.Echo(ctx, h, conn)
		}})
	fleetCert, err := auth.FleetClientCert(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		msg  []byte
	}{
		{"junk", []byte("GET / HTTP/1.1\r\n\r\n")},
		{"another message first", mustFrame(t, &proto.SessionEnd{SessionID: "x"})},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			qc, err := quic.DialAddr(ctx, node.Addr().String(), &tls.Config{Certificates: []tls.Certificate{fleetCert},
				NextProtos: []string{proto.DirectALPN}, InsecureSkipVerify: true}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer qc.CloseWithError(0, "")
			st, err := qc.OpenStreamSync(ctx)
			if err != nil {
				t.Fatal(err)
			}
			st.Write(tt.msg)
			_, err = io.ReadAll(st)
			var se *quic.StreamError
			if !errors.As(err, &se) || se.ErrorCode != quic.StreamErrorCode(proto.CodeBadRequest) {
				t.Errorf("reading the stream: %v; want it reset with bad request", err)
			}
		})
	}
	if handled.Load() != 0 {
		t.Error("a stream without a header was handled")
	}
	d := directtest.Dialer(t, auth, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := d.Open(ctx, id, node.Addr().String(), directtest.Header("after"))
	if err != nil {
		t.Fatalf("the node no longer serves after bad headers: %v", err)
	}
	conn.Close()
}

func mustFrame(t *testing.T, m proto.Message) []byte {
	t.Helper()
	var b strings.Builder
	if err := proto.WriteMsg(&b, m); err != nil {
		t.Fatal(err)
	}
	return []byte(b.String())
}

// TestSessionEnd: the fleet's session-end, on a later stream of the
// session's connection, reaches OnMessage.
func TestSessionEnd(t *testing.T) {
	auth := directtest.FleetCA(t, "fleet")
	id := directtest.NewID()
	got := make(chan proto.Message, 1)
	node := directtest.StartNode(t, direct.Config{TLSConfig: directtest.FleetOnly(auth, directtest.DeviceCert(t, auth, id)),
		Handle:    directtest.Echo,
		OnMessage: func(m proto.Message) { got <- m },
	})
	d := directtest.Dialer(t, auth, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := d.Open(ctx, id, node.Addr().String(), directtest.Header("s-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := d.Send(&proto.SessionEnd{SessionID: "s-1", Message: "your access ended"}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if end, ok := m.(*proto.SessionEnd); !ok || end.SessionID != "s-1" || end.Message != "your access ended" {
			t.Errorf("OnMessage got %+v", m)
		}
	case <-ctx.Done():
		t.Fatal("the session-end did not reach the node")
	}
}

// TestServeStops: Serve returns once its context ends, with a session
// still open, and leaves no goroutine behind (TestMain checks).
func TestServeStops(t *testing.T) {
	auth := directtest.FleetCA(t, "fleet")
	id := directtest.NewID()
	srv, err := direct.Listen(direct.Config{Listen: "127.0.0.1:0", TLSConfig: directtest.FleetOnly(auth, directtest.DeviceCert(t, auth, id)),
		Handle: func(ctx context.Context, _ *proto.StreamHeader, conn net.Conn) {
			defer conn.Close()
			<-ctx.Done()
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	d := directtest.Dialer(t, auth, nil)
	octx, ocancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer ocancel()
	conn, err := d.Open(octx, id, srv.Addr().String(), directtest.Header("s-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve = %v", err)
		}
	case <-octx.Done():
		t.Fatal("Serve did not return with a session open")
	}
	pc, err := net.ListenPacket("udp", srv.Addr().String())
	if err != nil {
		t.Fatalf("the node's port is still held after Serve returned: %v", err)
	}
	pc.Close()
}

func TestListenRefuses(t *testing.T) {
	auth := directtest.FleetCA(t, "fleet")
	tlsConf := directtest.FleetOnly(auth, directtest.DeviceCert(t, auth, directtest.NewID()))
	busy := directtest.StartNode(t, direct.Config{TLSConfig: tlsConf, Handle: directtest.Echo})
	for _, tt := range []struct {
		name string
		cfg  direct.Config
		want string
	}{
		{"no TLS config", direct.Config{Listen: "127.0.0.1:0", Handle: directtest.Echo}, "required"},
		{"no handler", direct.Config{Listen: "127.0.0.1:0", TLSConfig: tlsConf}, "required"},
		{"a busy port", direct.Config{Listen: busy.Addr().String(), TLSConfig: tlsConf, Handle: directtest.Echo}, "listen on"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if srv, err := direct.Listen(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
				if srv != nil {
					srv.Serve(canceled())
				}
				t.Fatalf("Listen = %v; want an error saying %q", err, tt.want)
			}
		})
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}
