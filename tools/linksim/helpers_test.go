package linksim

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/tools/logtest"
)

// newTestLink makes a Link closed at the end of the test.
func newTestLink(t *testing.T, cfg Config) *Link {
	t.Helper()
	if cfg.Logger == nil && testing.Verbose() {
		cfg.Logger = logtest.Logger(t)
	}
	l, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := l.Close(); err != nil {
			t.Errorf("second Close: %v", err)
		}
	})
	return l
}

// fakeClock is a clock moved by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// packet is a datagram the test server received.
type packet struct {
	from netip.AddrPort
	data []byte
	at   time.Time
}

// udpServer is a UDP server on loopback that reports every datagram on got
// and, if echo is set, sends it back.
type udpServer struct {
	conn *net.UDPConn
	got  chan packet
}

func newUDPServer(t *testing.T, echo bool) *udpServer {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadBuffer(4 << 20)
	s := &udpServer{conn: conn, got: make(chan packet, 10000)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, maxDatagram)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			p := packet{from: from, data: append([]byte(nil), buf[:n]...), at: time.Now()}
			if echo {
				conn.WriteToUDPAddrPort(p.data, from)
			}
			select {
			case s.got <- p:
			default:
				t.Errorf("test server: receive channel full")
			}
		}
	}()
	t.Cleanup(func() { conn.Close(); <-done })
	return s
}

func (s *udpServer) addr() string { return s.conn.LocalAddr().String() }

// next waits for the next datagram.
func (s *udpServer) next(t *testing.T) packet {
	t.Helper()
	select {
	case p := <-s.got:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("test server: no datagram within 5s")
		return packet{}
	}
}

// dialUDP connects a client socket to the relay.
func dialUDP(t *testing.T, r *UDPRelay) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(r.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadBuffer(4 << 20)
	t.Cleanup(func() { c.Close() })
	return c
}

// readWithin reads one datagram or fails after d.
func readWithin(t *testing.T, c *net.UDPConn, d time.Duration) []byte {
	t.Helper()
	buf := make([]byte, maxDatagram)
	c.SetReadDeadline(time.Now().Add(d))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return buf[:n]
}

// eventually polls cond until it holds, failing after 10 s (generous for a
// loaded machine; it returns as soon as cond holds).
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
