package sourcelimit

import (
	"fmt"
	"net"
	"testing"
	"time"

	"golang.org/x/time/rate"
)

func TestKey(t *testing.T) {
	tests := []struct{ name, addr, want string }{
		{"ipv4 with port", "192.0.2.7:4431", "192.0.2.7"},
		{"ipv4 bare", "192.0.2.7", "192.0.2.7"},
		{"ipv4-mapped ipv6", "[::ffff:192.0.2.7]:80", "192.0.2.7"},
		{"ipv6 keyed by its /64", "[2001:db8:1:2:aaaa::1]:443", "2001:db8:1:2::/64"},
		{"same /64, other host", "[2001:db8:1:2:bbbb::9]:443", "2001:db8:1:2::/64"},
		{"ipv6 zone dropped", "[fe80::1%eth0]:22", "fe80::/64"},
		{"not an address", "pipe", "pipe"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Key(tt.addr); got != tt.want {
				t.Errorf("Key(%q) = %q, want %q", tt.addr, got, tt.want)
			}
		})
	}
}

// dialFrom connects to addr from the loopback address src.
func dialFrom(t *testing.T, src, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// closedByServer reports whether the server closed c (read gives EOF or a
// reset within the deadline) rather than keeping it open.
func closedByServer(c net.Conn, wait time.Duration) bool {
	c.SetReadDeadline(time.Now().Add(wait))
	_, err := c.Read(make([]byte, 1))
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return false
	}
	return err != nil
}

func TestListenerCapsConnectionsPerSource(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := make(chan string, 16)
	l := &Listener{Listener: inner, Max: 2, OnRefuse: func(k string) { refused <- k }}
	defer l.Close()
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	addr := inner.Addr().String()
	var held []net.Conn
	for range 2 {
		dialFrom(t, "127.0.0.1", addr)
		held = append(held, <-accepted)
	}
	third := dialFrom(t, "127.0.0.1", addr)
	if k := <-refused; k != "127.0.0.1" {
		t.Errorf("refused source %q, want 127.0.0.1", k)
	}
	if !closedByServer(third, 10*time.Second) {
		t.Error("a third connection from the same source was kept open")
	}
	// Another source is not affected.
	dialFrom(t, "127.0.0.2", addr)
	select {
	case c := <-accepted:
		held = append(held, c)
	case <-time.After(10 * time.Second):
		t.Fatal("a connection from another source was not accepted")
	}
	// A closed connection frees its slot.
	held[0].Close()
	held[0].Close() // twice: the slot is given back once
	if n := l.Open("127.0.0.1"); n != 1 {
		t.Errorf("127.0.0.1 holds %d after a close, want 1", n)
	}
	dialFrom(t, "127.0.0.1", addr)
	select {
	case c := <-accepted:
		c.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("a slot freed by a close was not given to the next connection")
	}
	for _, c := range held[1:] {
		c.Close()
	}
	if n := l.Open("127.0.0.1") + l.Open("127.0.0.2"); n != 0 {
		t.Errorf("%d connections counted after all closed", n)
	}
}

func TestLimiter(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	l := &Limiter{Rate: rate.Every(10 * time.Second), Burst: 3, Now: func() time.Time { return now }}
	for i := range 3 {
		if v := l.Allow("a"); !v.OK {
			t.Fatalf("attempt %d within the burst refused", i+1)
		}
	}
	v := l.Allow("a")
	if v.OK || v.Wait <= 0 || v.Wait > 10*time.Second || !v.First {
		t.Fatalf("past the burst: %+v; want refused, first, with a wait of at most 10s", v)
	}
	if v := l.Allow("b"); !v.OK {
		t.Error("another source was refused")
	}
	now = now.Add(10 * time.Second)
	if v := l.Allow("a"); !v.OK {
		t.Error("refused after a token refilled")
	}
	if v := l.Allow("a"); v.OK || !v.First {
		t.Errorf("the next attempt: %+v, want the first refusal since the last allowed one", v)
	}
	// A refused attempt costs nothing: the wait does not grow.
	w1 := l.Allow("a")
	w2 := l.Allow("a")
	if w2.Wait > w1.Wait || w1.First || w2.First {
		t.Errorf("refused attempts: %+v then %+v; want no longer wait, not first", w1, w2)
	}
	var off Limiter
	for range 100 {
		if v := off.Allow("x"); !v.OK {
			t.Fatal("the zero Limiter refused")
		}
	}
}

func TestLimiterMemoryIsBounded(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	l := &Limiter{Rate: rate.Every(time.Minute), Burst: 2, MaxSources: 100, Now: func() time.Time { return now }}
	// A flood from many sources, each emptying its bucket.
	for i := range 1000 {
		k := fmt.Sprintf("10.0.%d.%d", i/256, i%256)
		l.Allow(k)
		l.Allow(k)
		now = now.Add(time.Millisecond)
		if n := l.Sources(); n > 100 {
			t.Fatalf("%d sources tracked, the bound is 100", n)
		}
	}
	// The newest sources are still limited: eviction took the oldest.
	if v := l.Allow("10.0.3.231"); v.OK {
		t.Error("the most recent flooding source was forgotten")
	}
	// Once buckets have refilled, they are dropped first.
	now = now.Add(time.Hour)
	l.Allow("fresh")
	if n := l.Sources(); n != 1 {
		t.Errorf("%d sources tracked after every bucket refilled, want 1", n)
	}
}

func TestLimiterMarks(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	l := &Limiter{Rate: rate.Every(time.Second), Burst: 5, MarkFor: time.Minute, Now: func() time.Time { return now }}
	if v := l.Allow("a"); !v.OK || v.Marked {
		t.Fatalf("first attempt: %+v, want allowed and unmarked", v)
	}
	l.Mark("a")
	if v := l.Allow("a"); !v.OK || !v.Marked {
		t.Errorf("after a mark: %+v, want allowed and marked", v)
	}
	if v := l.Allow("b"); v.Marked {
		t.Error("another source is marked")
	}
	now = now.Add(time.Minute)
	if v := l.Allow("a"); v.Marked {
		t.Error("still marked after MarkFor")
	}
	var off Limiter
	off.Mark("x")
	if v := off.Allow("x"); v.Marked || off.Sources() != 0 {
		t.Error("the zero Limiter remembered a mark")
	}
}
