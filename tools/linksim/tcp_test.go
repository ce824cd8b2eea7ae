package linksim

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"
)

// tcpServer accepts connections on loopback and runs handle on each.
func tcpServer(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String()
}

func echo(c net.Conn) { io.Copy(c, c) }

func dialTCP(t *testing.T, r *TCPRelay) *net.TCPConn {
	t.Helper()
	c, err := net.DialTCP("tcp", nil, net.TCPAddrFromAddrPort(r.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestTCPStreamWithBlackout(t *testing.T) {
	const (
		size       = 4 << 20
		blackoutAt = 1 << 20
		outage     = 300 * time.Millisecond
	)
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{1}).Read(data)
	want := sha256.Sum256(data)

	// The sender writes the first blackoutAt bytes, waits until the server
	// has read them all (so that nothing is buffered in the relay or the
	// kernel), starts the blackout and writes the rest. The server notes
	// when the first of the rest arrives.
	type result struct {
		n          int
		firstAfter time.Time // the first read past blackoutAt
	}
	resc := make(chan result, 1)
	reached := make(chan struct{})
	addr := tcpServer(t, func(c net.Conn) {
		h := sha256.New()
		buf := make([]byte, 32<<10)
		var res result
		for {
			n, err := c.Read(buf)
			if n > 0 {
				if res.n >= blackoutAt && res.firstAfter.IsZero() {
					res.firstAfter = time.Now()
				}
				h.Write(buf[:n])
				before := res.n
				res.n += n
				if before < blackoutAt && res.n >= blackoutAt {
					close(reached)
				}
			}
			if err != nil {
				break
			}
		}
		c.Write(h.Sum(nil))
		resc <- res
	})
	imp := Impairment{Delay: 10 * time.Millisecond}
	l := newTestLink(t, Config{Profile: Profile{Up: imp, Down: imp}})
	r, err := l.ListenTCP("", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := dialTCP(t, r)
	blackoutStart := make(chan time.Time, 1)
	go func() {
		defer c.CloseWrite()
		if _, err := c.Write(data[:blackoutAt]); err != nil {
			return
		}
		select {
		case <-reached:
		case <-time.After(10 * time.Second):
			return
		}
		blackoutStart <- time.Now()
		l.Blackout(outage)
		c.Write(data[blackoutAt:])
	}()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read reply: %v", err)
	}
	if !bytes.Equal(got, want[:]) {
		t.Errorf("server's checksum %x, want %x", got, want)
	}
	res := <-resc
	if res.n != size {
		t.Fatalf("server got %d bytes, want %d", res.n, size)
	}
	// The held bytes flow again at the sender's retransmission after the
	// link returns: none arrives for at least the outage.
	if gap := res.firstAfter.Sub(<-blackoutStart); gap < outage-50*time.Millisecond {
		t.Errorf("first bytes after the blackout arrived %v after it began, want ≥ about %v", gap, outage)
	}
	eventually(t, "connection closed", func() bool { return l.Stats().Conns == 0 })
	st := l.Stats()
	if st.Up.Forwarded.Bytes != size || st.Down.Forwarded.Bytes != sha256.Size {
		t.Errorf("forwarded: up %d down %d, want %d %d", st.Up.Forwarded.Bytes, st.Down.Forwarded.Bytes, size, sha256.Size)
	}
	if st.Up.Queued.Bytes != 0 || st.Resets != 0 || st.Up.Dropped.Total() != 0 {
		t.Errorf("after close: queued %d resets %d drops %d, want 0 0 0", st.Up.Queued.Bytes, st.Resets, st.Up.Dropped.Total())
	}
}

func TestTCPDelay(t *testing.T) {
	const delay = 20 * time.Millisecond
	addr := tcpServer(t, echo)
	imp := Impairment{Delay: delay}
	l := newTestLink(t, Config{Profile: Profile{Up: imp, Down: imp}})
	r, err := l.ListenTCP("", addr)
	if err != nil {
		t.Fatal(err)
	}
	rtt := 2 * delay
	// The lower bounds are what the link must add; the upper ones catch a
	// delay applied many times over, with room for a busy machine.
	tests := []struct {
		name     string
		min, max time.Duration
	}{
		// The first exchange pays for the handshake: one more round trip.
		{"first", 2 * rtt, 2*rtt + time.Second},
		{"second", rtt, rtt + time.Second},
	}
	start := time.Now()
	c := dialTCP(t, r)
	buf := make([]byte, 4)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := c.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, buf); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); d < tt.min || d > tt.max {
				t.Errorf("echo after %v, want in [%v, %v]", d, tt.min, tt.max)
			}
			start = time.Now()
		})
	}
}

func TestTCPBandwidth(t *testing.T) {
	const (
		rate = 4_000_000 // bit/s
		size = 256 << 10
	)
	addr := tcpServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	l := newTestLink(t, Config{Profile: Profile{Up: Impairment{Bandwidth: rate}}})
	r, err := l.ListenTCP("", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := dialTCP(t, r)
	start := time.Now()
	if _, err := c.Write(make([]byte, size)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "all bytes forwarded", func() bool { return l.Stats().Up.Forwarded.Bytes == size })
	took := time.Since(start)
	wire := size + 40*((size+1459)/1460)
	ideal := time.Duration(float64(wire*8) / rate * float64(time.Second))
	if took < ideal*85/100 || took > ideal*3/2 {
		t.Errorf("took %v, want about %v at %d bit/s", took, ideal, rate)
	}
}

func TestTCPReset(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		act  func(*testing.T, *Link)
	}{
		{"reset on blackout", Config{ResetOnBlackout: true}, func(_ *testing.T, l *Link) { l.Blackout(time.Hour) }},
		{"reset on down", Config{ResetOnBlackout: true}, func(_ *testing.T, l *Link) { l.SetDown(true) }},
		{"reset on scheduled outage", Config{ResetOnBlackout: true, Schedule: []Outage{{At: 200 * time.Millisecond, For: time.Hour}}}, func(*testing.T, *Link) {}},
		{"rebind", Config{}, func(_ *testing.T, l *Link) { l.Rebind() }},
		{"move", Config{}, func(t *testing.T, l *Link) {
			if err := l.MoveTo(netip.MustParseAddr("127.0.0.2")); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr := tcpServer(t, echo)
			l := newTestLink(t, tt.cfg)
			r, err := l.ListenTCP("", addr)
			if err != nil {
				t.Fatal(err)
			}
			c := dialTCP(t, r)
			buf := make([]byte, 4)
			c.Write([]byte("ping"))
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.ReadFull(c, buf); err != nil {
				t.Fatalf("echo before: %v", err)
			}
			tt.act(t, l)
			_, err = c.Read(buf)
			if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("read after %s: got %v, want the connection reset", tt.name, err)
			}
			if got := l.Stats().Resets; got != 1 {
				t.Errorf("resets: got %d, want 1", got)
			}
			eventually(t, "no connections", func() bool { return l.Stats().Conns == 0 })
		})
	}
}

func TestTCPConnectDuringOutage(t *testing.T) {
	addr := tcpServer(t, echo)
	l := newTestLink(t, Config{})
	r, err := l.ListenTCP("", addr)
	if err != nil {
		t.Fatal(err)
	}
	l.SetDown(true)
	start := time.Now()
	c := dialTCP(t, r)
	c.Write([]byte("ping"))
	eventually(t, "relay accepted", func() bool { return l.Stats().Conns == 1 })
	l.SetDown(false)
	buf := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("echo: %v", err)
	}
	// The SYN sent into the outage is retried after the 1 s initial RTO.
	if d := time.Since(start); d < synRTO-50*time.Millisecond || d > synRTO+time.Second {
		t.Errorf("echo after %v, want about %v (the SYN retry)", d, synRTO)
	}
}
