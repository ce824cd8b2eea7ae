package linksim

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestUDPEcho(t *testing.T) {
	srv := newUDPServer(t, true)
	l := newTestLink(t, Config{})
	r, err := l.ListenUDP("", srv.addr())
	if err != nil {
		t.Fatal(err)
	}
	c := dialUDP(t, r)
	const n = 50
	for i := range n {
		want := fmt.Appendf(nil, "hello %d", i)
		if _, err := c.Write(want); err != nil {
			t.Fatal(err)
		}
		if got := readWithin(t, c, 5*time.Second); !bytes.Equal(got, want) {
			t.Fatalf("echo %d: got %q, want %q", i, got, want)
		}
	}
	// The client saw every echo, but a relay goroutine may not yet have
	// counted the datagram it just wrote: wait until each direction has
	// settled (everything received was forwarded or dropped) before reading.
	settled := func(s DirStats) bool {
		return s.Queued.Packets == 0 && s.Forwarded.Packets+s.Dropped.Total() == s.Received.Packets
	}
	eventually(t, "counters settled", func() bool {
		st := l.Stats()
		return st.Up.Received.Packets == n && st.Down.Received.Packets == n && settled(st.Up) && settled(st.Down)
	})
	st := l.Stats()
	for _, d := range []struct {
		name string
		s    DirStats
	}{{"up", st.Up}, {"down", st.Down}} {
		if d.s.Forwarded.Packets != n || d.s.Received.Packets != n || d.s.Dropped.Total() != 0 {
			t.Errorf("%s: got rx %d fwd %d dropped %d, want %d %d 0", d.name,
				d.s.Received.Packets, d.s.Forwarded.Packets, d.s.Dropped.Total(), n, n)
		}
	}
	if st.Mappings != 1 {
		t.Errorf("mappings: got %d, want 1", st.Mappings)
	}
	if got := r.Stats(); got != st {
		t.Errorf("relay stats %+v differ from link stats %+v", got, st)
	}
}

func TestUDPDelay(t *testing.T) {
	tests := []struct {
		name          string
		delay, jitter time.Duration
		reorder       bool
	}{
		{"fixed", 25 * time.Millisecond, 0, false},
		{"jitter", 20 * time.Millisecond, 10 * time.Millisecond, false},
		{"jitter reorder", 20 * time.Millisecond, 10 * time.Millisecond, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newUDPServer(t, true)
			imp := Impairment{Delay: tt.delay, Jitter: tt.jitter, Reorder: tt.reorder}
			l := newTestLink(t, Config{Profile: Profile{Up: imp, Down: imp}, Seed: 7})
			r, err := l.ListenUDP("", srv.addr())
			if err != nil {
				t.Fatal(err)
			}
			c := dialUDP(t, r)
			// No echo may come back sooner than the delay allows. A busy
			// machine only adds to a round trip, so the fastest of the
			// echoes tells whether the link added more than it should.
			lo, hi := 2*tt.delay, 2*(tt.delay+tt.jitter)+150*time.Millisecond
			fastest := time.Duration(math.MaxInt64)
			for i := range 5 {
				start := time.Now()
				c.Write([]byte{byte(i)})
				readWithin(t, c, 5*time.Second)
				rtt := time.Since(start)
				if rtt < lo {
					t.Errorf("echo %d: rtt %v, want ≥ %v", i, rtt, lo)
				}
				fastest = min(fastest, rtt)
			}
			if fastest > hi {
				t.Errorf("fastest of 5 echoes: rtt %v, want ≤ %v", fastest, hi)
			}
		})
	}
}

func TestUDPInOrderUnderJitter(t *testing.T) {
	srv := newUDPServer(t, false)
	imp := Impairment{Delay: 5 * time.Millisecond, Jitter: 20 * time.Millisecond}
	l := newTestLink(t, Config{Profile: Profile{Up: imp}, Seed: 3})
	r, err := l.ListenUDP("", srv.addr())
	if err != nil {
		t.Fatal(err)
	}
	c := dialUDP(t, r)
	const n = 200
	for i := range n {
		c.Write(binary.BigEndian.AppendUint32(nil, uint32(i)))
	}
	eventually(t, "all sent", func() bool { return l.Stats().Up.Received.Packets == n })
	for i := range n {
		p := srv.next(t)
		if got := binary.BigEndian.Uint32(p.data); got != uint32(i) {
			t.Fatalf("datagram %d: got seq %d, want in order", i, got)
		}
	}
}

// sendLockstep sends n numbered datagrams in batches, waiting after each
// batch until the server has it or the relay dropped it, so no kernel buffer
// overflows. It returns which sequence numbers arrived.
func sendLockstep(t *testing.T, l *Link, c *net.UDPConn, srv *udpServer, n int) []bool {
	t.Helper()
	arrived := make([]bool, n)
	got := 0
	const batch = 50
	for sent := 0; sent < n; {
		for range min(batch, n-sent) {
			if _, err := c.Write(binary.BigEndian.AppendUint32(make([]byte, 0, 100), uint32(sent))); err != nil {
				t.Fatal(err)
			}
			sent++
		}
		deadline := time.After(5 * time.Second)
		for got+int(l.Stats().Up.Dropped.Total()) < sent {
			select {
			case p := <-srv.got:
				arrived[binary.BigEndian.Uint32(p.data)] = true
				got++
			case <-time.After(time.Millisecond):
			case <-deadline:
				t.Fatalf("batch up to %d: %d arrived, %d dropped", sent, got, l.Stats().Up.Dropped.Total())
			}
		}
	}
	return arrived
}

func TestUDPLoss(t *testing.T) {
	const n = 2000
	run := func(seed int64) (lossCount uint64, arrived []bool) {
		srv := newUDPServer(t, false)
		l := newTestLink(t, Config{Profile: Profile{Up: Impairment{Loss: 0.1}}, Seed: seed})
		r, err := l.ListenUDP("", srv.addr())
		if err != nil {
			t.Fatal(err)
		}
		arrived = sendLockstep(t, l, dialUDP(t, r), srv, n)
		return l.Stats().Up.Dropped.Loss, arrived
	}
	lost1, arrived1 := run(42)
	if rate := float64(lost1) / n; rate < 0.08 || rate > 0.12 {
		t.Errorf("loss rate: got %.3f (%d of %d), want 0.10 ± 0.02", rate, lost1, n)
	}
	missing := 0
	for _, ok := range arrived1 {
		if !ok {
			missing++
		}
	}
	if uint64(missing) != lost1 {
		t.Errorf("missing at server: got %d, want %d (the loss counter)", missing, lost1)
	}
	lost2, arrived2 := run(42)
	if lost2 != lost1 || fmt.Sprint(arrived1) != fmt.Sprint(arrived2) {
		t.Errorf("same seed: got %d losses, want %d at the same positions", lost2, lost1)
	}
}

func TestUDPBurstLoss(t *testing.T) {
	const n = 2000
	tests := []struct {
		name      string
		imp       Impairment
		minBurst  float64
		maxBurst  float64
		wantLoss  float64
		tolerance float64
	}{
		// Mean burst 1/R = 4, mean loss P/(P+R) = 1/6.
		{"gilbert-elliott", Impairment{Burst: GilbertElliott{P: 0.05, R: 0.25}}, 2.5, 6, 1.0 / 6, 0.05},
		// Independent loss at about the same rate: bursts of about 1/(1-p).
		{"independent", Impairment{Loss: 1.0 / 6}, 1, 1.5, 1.0 / 6, 0.03},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newUDPServer(t, false)
			l := newTestLink(t, Config{Profile: Profile{Up: tt.imp}, Seed: 9})
			r, err := l.ListenUDP("", srv.addr())
			if err != nil {
				t.Fatal(err)
			}
			arrived := sendLockstep(t, l, dialUDP(t, r), srv, n)
			lost, bursts, run := 0, 0, 0
			for _, ok := range arrived {
				if !ok {
					lost++
					run++
					continue
				}
				if run > 0 {
					bursts++
				}
				run = 0
			}
			if run > 0 {
				bursts++
			}
			if bursts == 0 {
				t.Fatal("no losses")
			}
			mean := float64(lost) / float64(bursts)
			if mean < tt.minBurst || mean > tt.maxBurst {
				t.Errorf("mean burst length: got %.2f over %d bursts, want in [%.1f, %.1f]", mean, bursts, tt.minBurst, tt.maxBurst)
			}
			if rate := float64(lost) / n; rate < tt.wantLoss-tt.tolerance || rate > tt.wantLoss+tt.tolerance {
				t.Errorf("loss rate: got %.3f, want %.3f ± %.2f", rate, tt.wantLoss, tt.tolerance)
			}
		})
	}
}

func TestUDPBandwidth(t *testing.T) {
	const (
		rate    = 1_000_000 // bit/s
		queue   = 64 << 10  // half a second at the cap: a sender held up by a busy machine leaves it busy
		payload = 1000
		n       = 200
		every   = 4 * time.Millisecond // offered: about twice the cap
	)
	srv := newUDPServer(t, false)
	l := newTestLink(t, Config{Profile: Profile{Up: Impairment{Bandwidth: rate, QueueBytes: queue}}})
	r, err := l.ListenUDP("", srv.addr())
	if err != nil {
		t.Fatal(err)
	}
	c := dialUDP(t, r)
	tick := time.NewTicker(every)
	defer tick.Stop()
	// Send what is due by the clock, catching up after a late tick, so
	// that the offered rate stays twice the cap on a busy machine.
	start := time.Now()
	for sent := 0; sent < n; {
		<-tick.C
		for due := min(n, int(time.Since(start)/every)+1); sent < due; sent++ {
			c.Write(make([]byte, payload))
		}
	}
	eventually(t, "every datagram through or dropped", func() bool {
		s := l.Stats().Up
		return s.Forwarded.Packets+s.Dropped.Total() == n
	})
	st := l.Stats().Up
	if st.Dropped.Queue == 0 {
		t.Errorf("queue drops: got 0, want some (offered twice the cap)")
	}
	var first, last time.Time
	got := 0
	for range st.Forwarded.Packets {
		p := srv.next(t)
		if got == 0 {
			first = p.at
		}
		last = p.at
		got++
	}
	span := last.Sub(first)
	measured := float64((got-1)*(payload+28)*8) / span.Seconds()
	if measured < 0.85*rate || measured > 1.15*rate {
		t.Errorf("throughput: got %.0f bit/s (%d datagrams in %v), want %d ± 15%%", measured, got, span, rate)
	}
	if st.Forwarded.Packets+st.Dropped.Queue != n {
		t.Errorf("forwarded %d + queue drops %d != sent %d", st.Forwarded.Packets, st.Dropped.Queue, n)
	}
}

func TestUDPMTU(t *testing.T) {
	tests := []struct {
		name    string
		payload int
		drop    bool
	}{
		{"fits", 1200 - 28, false},
		{"one byte over", 1200 - 28 + 1, true},
		{"jumbo", 9000, true},
		{"small", 10, false},
	}
	srv := newUDPServer(t, true)
	l := newTestLink(t, Config{Profile: Profile{Up: Impairment{MTU: 1200}}})
	r, err := l.ListenUDP("", srv.addr())
	if err != nil {
		t.Fatal(err)
	}
	c := dialUDP(t, r)
	var drops uint64
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.Write(make([]byte, tt.payload))
			if tt.drop {
				drops++
				eventually(t, "mtu drop", func() bool { return l.Stats().Up.Dropped.MTU == drops })
				return
			}
			if got := readWithin(t, c, 5*time.Second); len(got) != tt.payload {
				t.Errorf("echo: got %d bytes, want %d", len(got), tt.payload)
			}
		})
	}
}

func TestUDPBlackout(t *testing.T) {
	const d = 300 * time.Millisecond
	tests := []struct {
		name  string
		cfg   Config
		start func(*Link)
		end   func(*Link) // nil: the outage ends by itself
	}{
		{"set down", Config{}, func(l *Link) { l.SetDown(true) }, func(l *Link) { l.SetDown(false) }},
		{"blackout", Config{}, func(l *Link) { l.Blackout(d) }, nil},
		{"blackout ended by up", Config{}, func(l *Link) { l.Blackout(time.Hour) }, func(l *Link) { l.SetDown(false) }},
		{"schedule", Config{Schedule: []Outage{{At: 0, For: d}}}, func(*Link) {}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newUDPServer(t, true)
			l := newTestLink(t, tt.cfg)
			r, err := l.ListenUDP("", srv.addr())
			if err != nil {
				t.Fatal(err)
			}
			c := dialUDP(t, r)
			start := time.Now()
			tt.start(l)
			if !l.Out() {
				t.Fatal("Out: got false after the outage started")
			}
			for i := range 5 {
				c.Write([]byte{byte(i)})
			}
			eventually(t, "blackout drops", func() bool { return l.Stats().Up.Dropped.Blackout == 5 })
			if tt.end != nil {
				tt.end(l)
			}
			// Recovery: retry until an echo comes back.
			buf := make([]byte, 16)
			for {
				c.Write([]byte("ping"))
				c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				if _, err := c.Read(buf); err == nil {
					break
				}
				if time.Since(start) > 5*time.Second {
					t.Fatal("link did not come back within 5s")
				}
			}
			if tt.end == nil && time.Since(start) < d {
				t.Errorf("recovered after %v, before the %v outage ended", time.Since(start), d)
			}
			if l.Out() {
				t.Error("Out: got true after recovery")
			}
		})
	}
}

func TestUDPBlackoutDropsInFlight(t *testing.T) {
	srv := newUDPServer(t, false)
	l := newTestLink(t, Config{Profile: Profile{Up: Impairment{Delay: 200 * time.Millisecond}}})
	r, err := l.ListenUDP("", srv.addr())
	if err != nil {
		t.Fatal(err)
	}
	c := dialUDP(t, r)
	c.Write([]byte("in flight"))
	eventually(t, "queued", func() bool { return l.Stats().Up.Queued.Packets == 1 })
	l.SetDown(true)
	eventually(t, "dropped on release", func() bool { return l.Stats().Up.Dropped.Blackout == 1 })
	if st := l.Stats().Up; st.Forwarded.Packets != 0 || st.Queued.Packets != 0 {
		t.Errorf("got forwarded %d queued %d, want 0 0", st.Forwarded.Packets, st.Queued.Packets)
	}
}

func TestNATExpiry(t *testing.T) {
	clk := newFakeClock()
	srv := newUDPServer(t, false)
	l := newTestLink(t, Config{NATTimeout: 30 * time.Second, Now: clk.Now})
	r, err := l.ListenUDP("", srv.addr())
	if err != nil {
		t.Fatal(err)
	}
	c := dialUDP(t, r)
	c.Write([]byte("a"))
	a := srv.next(t).from
	srv.conn.WriteToUDPAddrPort([]byte("reply a"), a)
	if got := readWithin(t, c, 5*time.Second); string(got) != "reply a" {
		t.Fatalf("reply: got %q", got)
	}

	clk.Advance(29 * time.Second) // still fresh: the same mapping
	c.Write([]byte("b"))
	if b := srv.next(t).from; b != a {
		t.Fatalf("before expiry: server saw %v, want %v", b, a)
	}

	clk.Advance(31 * time.Second)
	srv.conn.WriteToUDPAddrPort([]byte("to expired"), a)
	eventually(t, "nat-expired drop", func() bool { return l.Stats().Down.Dropped.NATExpired == 1 })
	c.Write([]byte("c"))
	cAddr := srv.next(t).from
	if cAddr == a || cAddr.Addr() != a.Addr() {
		t.Errorf("after expiry: server saw %v, want a new port on %v", cAddr, a.Addr())
	}
	if pub, ok := r.PublicAddr(netip.MustParseAddrPort(c.LocalAddr().String())); !ok || pub != cAddr {
		t.Errorf("PublicAddr: got %v %v, want %v", pub, ok, cAddr)
	}
	srv.conn.WriteToUDPAddrPort([]byte("reply c"), cAddr)
	if got := readWithin(t, c, 5*time.Second); string(got) != "reply c" {
		t.Errorf("reply through the new mapping: got %q", got)
	}
	if m := l.Stats().Mappings; m != 1 {
		t.Errorf("mappings: got %d, want 1", m)
	}
}

func TestRebindAndMove(t *testing.T) {
	tests := []struct {
		name   string
		act    func(*testing.T, *Link)
		wantIP netip.Addr
	}{
		{"rebind", func(t *testing.T, l *Link) { l.Rebind() }, netip.MustParseAddr("127.0.0.1")},
		{"move", func(t *testing.T, l *Link) {
			if err := l.MoveTo(netip.MustParseAddr("127.0.0.2")); err != nil {
				t.Fatal(err)
			}
		}, netip.MustParseAddr("127.0.0.2")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := newUDPServer(t, false)
			l := newTestLink(t, Config{})
			r, err := l.ListenUDP("", srv.addr())
			if err != nil {
				t.Fatal(err)
			}
			c := dialUDP(t, r)
			c.Write([]byte("before"))
			a := srv.next(t).from
			tt.act(t, l)
			c.Write([]byte("after"))
			b := srv.next(t).from
			if b.Addr() != tt.wantIP || b == a {
				t.Errorf("after %s: server saw %v (was %v), want a new port on %v", tt.name, b, a, tt.wantIP)
			}
			srv.conn.WriteToUDPAddrPort([]byte("late"), a)
			eventually(t, "nat-expired drop", func() bool { return l.Stats().Down.Dropped.NATExpired == 1 })
			srv.conn.WriteToUDPAddrPort([]byte("new"), b)
			if got := readWithin(t, c, 5*time.Second); string(got) != "new" {
				t.Errorf("through the new mapping: got %q, want %q", got, "new")
			}
		})
	}
}

func TestMoveToBadAddress(t *testing.T) {
	l := newTestLink(t, Config{})
	if err := l.MoveTo(netip.MustParseAddr("192.0.2.1")); err == nil {
		t.Error("MoveTo an address not on this host: got nil error")
	}
}

func TestCloseStopsEverything(t *testing.T) {
	srv := newUDPServer(t, true)
	tcpAddr := tcpServer(t, echo)
	l, err := New(Config{Schedule: []Outage{{At: time.Hour, For: time.Second}}, NATTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	u, err := l.ListenUDP("", srv.addr())
	if err != nil {
		t.Fatal(err)
	}
	tr, err := l.ListenTCP("", tcpAddr)
	if err != nil {
		t.Fatal(err)
	}
	c := dialUDP(t, u)
	c.Write([]byte("x"))
	readWithin(t, c, 5*time.Second)
	l.Rebind() // leaves a retired mapping with its reader
	c.Write([]byte("y"))
	readWithin(t, c, 5*time.Second)
	tc := dialTCP(t, tr)
	tc.Write([]byte("ping"))
	tc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(tc, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}

	if err := u.Close(); err != nil {
		t.Errorf("relay Close: %v", err)
	}
	if err := u.Close(); err != nil {
		t.Errorf("second relay Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("link Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second link Close: %v", err)
	}
	// A goroutine that has called wg.Done may still be returning: poll.
	running := func() string {
		buf := make([]byte, 1<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		for _, fn := range []string{"(*UDPRelay)", "(*TCPRelay)", "(*tcpConn)", "(*tcpDir)", "(*line).run", "(*Link).watchSchedule"} {
			if strings.Contains(stacks, "linksim."+fn) {
				return fn
			}
		}
		return ""
	}
	deadline := time.Now().Add(time.Second)
	for fn := running(); fn != ""; fn = running() {
		if time.Now().After(deadline) {
			t.Fatalf("a goroutine in %s is still running after Close", fn)
		}
		runtime.Gosched()
	}
	if _, err := net.Dial("tcp", tr.Addr().String()); err == nil {
		t.Error("TCP relay still accepts after Close")
	}
	if _, err := l.ListenUDP("", srv.addr()); err == nil {
		t.Error("ListenUDP on a closed link: got nil error")
	}
}
