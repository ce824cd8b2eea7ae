package direct_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	fwdirect "remoteler.dev/edge/firmware/direct"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/direct"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/tools/directtest"
)

// TestMain fails the run when a goroutine outlives the tests: every dial
// the fleet makes must end with its connection.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// node is a direct node on loopback that records the headers it handled.
type node struct {
	srv     *fwdirect.Server
	mu      sync.Mutex
	headers []*proto.StreamHeader
	ends    chan proto.Message
}

func newNode(t *testing.T, cfg fwdirect.Config) *node {
	t.Helper()
	n := &node{ends: make(chan proto.Message, 4)}
	cfg.Handle = func(ctx context.Context, h *proto.StreamHeader, conn net.Conn) {
		n.mu.Lock()
		n.headers = append(n.headers, h)
		n.mu.Unlock()
		directtest.Echo(ctx, h, conn)
	}
	cfg.OnMessage = func(m proto.Message) { n.ends <- m }
	n.srv = directtest.StartNode(t, cfg)
	return n
}

func (n *node) handled() []*proto.StreamHeader {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*proto.StreamHeader(nil), n.headers...)
}

func (n *node) addr() string { return n.srv.Addr().String() }

// TestOpenIsMutualTLS: the fleet dials only the device it means, and the
// device takes only its fleet: a node with another device's certificate,
// or another fleet's, is refused by the fleet; a node of another fleet
// refuses the fleet's certificate.
func TestOpenIsMutualTLS(t *testing.T) {
	auth, other := directtest.FleetCA(t, "fleet"), directtest.FleetCA(t, "fleet")
	id := directtest.NewID()
	tests := []struct {
		name string
		cfg  fwdirect.Config
		want string // "" opens
	}{
		{"the device", fwdirect.Config{TLSConfig: directtest.FleetOnly(auth, directtest.DeviceCert(t, auth, id))}, ""},
		{"another device's certificate", fwdirect.Config{TLSConfig: directtest.FleetOnly(auth, directtest.DeviceCert(t, auth, directtest.NewID()))},
			"not device " + id},
		{"the device's ID from another fleet's CA", fwdirect.Config{TLSConfig: directtest.FleetOnly(other, directtest.DeviceCert(t, other, id))},
			"node certificate"},
		{"a node that trusts another fleet", fwdirect.Config{TLSConfig: directtest.FleetOnly(other, directtest.DeviceCert(t, auth, id))},
			"node " + id + " at "},
	}
	d := directtest.Dialer(t, auth, nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := newNode(t, tt.cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			conn, err := d.Open(ctx, id, n.addr(), directtest.Header("s-1"))
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				if d.Sessions() != 1 {
					t.Errorf("the Dialer holds %d sessions; want 1", d.Sessions())
				}
				if _, err := conn.Write([]byte("ping")); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 4)
				if _, err := conn.Read(buf); err != nil || string(buf) != "ping" {
					t.Errorf("echo = %q, %v", buf, err)
				}
				return
			}
			if err == nil {
				conn.Close()
				t.Fatal("the fleet opened a stream to a node it should not have")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Open = %v; want it to say %q", err, tt.want)
			}
			if len(n.handled()) != 0 {
				t.Error("the node handled a stream over a refused handshake")
			}
		})
	}
	if d.Sessions() != 0 {
		t.Errorf("the Dialer holds %d sessions after they closed", d.Sessions())
	}
}

// TestOpenNodeDown: a dial to a node that does not answer ends with the
// caller's deadline and a clear error, and leaves nothing behind.
func TestOpenNodeDown(t *testing.T) {
	auth := directtest.FleetCA(t, "fleet")
	// A port nothing listens on, and one that reads and never answers.
	closed, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedAddr := closed.LocalAddr().String()
	closed.Close()
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	before := goleak.IgnoreCurrent()

	tests := []struct{ name, addr string }{
		{"closed port", closedAddr},
		{"silent", silent.LocalAddr().String()},
	}
	d := direct.New(direct.Config{CA: auth, ListenPacket: func() (net.PacketConn, error) { return net.ListenPacket("udp", "127.0.0.1:0") }})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id := directtest.NewID()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			done := make(chan error, 1)
			go func() {
				conn, err := d.Open(ctx, id, tt.addr, directtest.Header("s-down"))
				if conn != nil {
					conn.Close()
				}
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("Open to a node that is down succeeded")
				}
				if !strings.Contains(err.Error(), "dial node "+id+" at "+tt.addr) {
					t.Errorf("Open = %v; want it to name the node and its address", err)
				}
				if ctx.Err() == nil {
					t.Logf("refused before the deadline: %v", err)
				} else if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("Open = %v after the deadline; want it to wrap context.DeadlineExceeded", err)
				}
			case <-time.After(time.Minute):
				t.Fatal("Open outlived its context's deadline by a minute")
			}
			if d.Sessions() != 0 {
				t.Errorf("a failed dial left %d sessions", d.Sessions())
			}
		})
	}
	d.Close()
	goleak.VerifyNone(t, before)
}

// tunnels stands in for the tunnel server (fleet/tunnelsrv) and records
// what the Router sends down tunnels: a fake, because what is under test
// is only which way the Router goes, which a real tunnel server would not
// show without a device on a tunnel.
type tunnels struct {
	mu     sync.Mutex
	opened []string
	sent   []string
	online map[string]bool
}

var errNoTunnel = errors.New("no tunnel")

func (f *tunnels) Open(_ context.Context, id string, _ *proto.StreamHeader) (net.Conn, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.opened = append(f.opened, id)
	return nil, errNoTunnel
}

func (f *tunnels) Send(id string, _ proto.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, id)
	return errNoTunnel
}

func (f *tunnels) Online(id string) bool { return f.online[id] }

func (f *tunnels) calls() (opened, sent []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.opened...), append([]string(nil), f.sent...)
}

// TestRouter: the broker's streams reach a direct node at the address it
// registered, and nothing else is dialled: a device on a tunnel, a leaf
// cluster's tunnel, an unknown device or an address are the tunnel
// server's to refuse. The stream header's target never picks an address.
func TestRouter(t *testing.T) {
	ctx := context.Background()
	auth := directtest.FleetCA(t, "fleet")
	reg := &devices.Registry{Store: memstore.New()}
	plc, err := reg.Register(ctx, devices.Device{Name: "plc"})
	if err != nil {
		t.Fatal(err)
	}
	n := newNode(t, fwdirect.Config{TLSConfig: directtest.FleetOnly(auth, directtest.DeviceCert(t, auth, plc.ID))})
	if _, err := reg.Update(ctx, plc.ID, func(d *devices.Device) error { d.DirectAddr = n.addr(); return nil }); err != nil {
		t.Fatal(err)
	}
	pi, err := reg.Register(ctx, devices.Device{Name: "pi"})
	if err != nil {
		t.Fatal(err)
	}
	// A node that listens, at an address no device registered.
	stray := newNode(t, fwdirect.Config{TLSConfig: directtest.FleetOnly(auth, directtest.DeviceCert(t, auth, pi.ID))})
	tun := &tunnels{online: map[string]bool{pi.ID: true}}
	r := &direct.Router{Tunnels: tun, Direct: directtest.Dialer(t, auth, reg), Devices: reg}

	tests := []struct {
		name   string
		id     string
		target string
		direct bool // dialled; otherwise down the tunnel
	}{
		{"a direct node", plc.ID, "", true},
		{"a direct node, a target naming another address", plc.ID, stray.addr(), true},
		{"a device on a tunnel", pi.ID, stray.addr(), false},
		{"an unknown device", directtest.NewID(), "", false},
		{"a leaf cluster", "cluster:leaf", "", false},
		{"an address", stray.addr(), "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			octx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			h := directtest.Header("s-" + tt.name)
			h.Target = tt.target
			beforeOpened, _ := tun.calls()
			conn, err := r.Open(octx, tt.id, h)
			opened, _ := tun.calls()
			if !tt.direct {
				if !errors.Is(err, errNoTunnel) || len(opened) != len(beforeOpened)+1 || opened[len(opened)-1] != tt.id {
					t.Fatalf("Open = %v; want it sent down the tunnel %q", err, tt.id)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			conn.Close()
			if len(opened) != len(beforeOpened) {
				t.Error("a direct node's stream also went to the tunnels")
			}
			hs := n.handled()
			if len(hs) == 0 || hs[len(hs)-1].SessionID != h.SessionID {
				t.Errorf("the node did not get the stream: %+v", hs)
			}
		})
	}
	if hs := stray.handled(); len(hs) != 0 {
		t.Errorf("the fleet dialled an address no device registered: %+v", hs)
	}

	t.Run("session end", func(t *testing.T) {
		octx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		conn, err := r.Open(octx, plc.ID, directtest.Header("s-end"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, before := tun.calls()
		if err := r.Send(plc.ID, &proto.SessionEnd{SessionID: "s-end", Message: "bye"}); err != nil {
			t.Fatal(err)
		}
		select {
		case m := <-n.ends:
			if end, ok := m.(*proto.SessionEnd); !ok || end.SessionID != "s-end" {
				t.Errorf("the node got %+v", m)
			}
		case <-octx.Done():
			t.Fatal("the session end did not reach the direct node")
		}
		if err := r.Send(pi.ID, &proto.SessionEnd{SessionID: "s-elsewhere"}); !errors.Is(err, errNoTunnel) {
			t.Errorf("Send of a session no direct connection carries = %v; want it down the tunnel", err)
		}
		if _, after := tun.calls(); len(after) != len(before)+1 || after[len(after)-1] != pi.ID {
			t.Errorf("tunnel sends %q; want one to %s", after, pi.ID)
		}
	})

	t.Run("online", func(t *testing.T) {
		if !r.Online(plc.ID) {
			t.Error("a direct node that checked in just now is offline")
		}
		if !r.Online(pi.ID) || r.Online(directtest.NewID()) || r.Online("cluster:leaf") {
			t.Error("Online does not follow the tunnels for the others")
		}
		late := &direct.Router{Tunnels: tun, Direct: r.Direct, Devices: reg,
			Now: func() time.Time { return time.Now().Add(devices.DirectWindow + time.Minute) }}
		if late.Online(plc.ID) {
			t.Errorf("a direct node silent for longer than %v is online", devices.DirectWindow)
		}
	})
}
