package balancer

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// replica is a stand-in for a fleetd replica: HTTPS answering /v1/ready
// (200 unless told otherwise) and a UDP socket on the same port, which
// reports every datagram it receives and its source address.
type replica struct {
	addr   string
	got    chan received
	udp    *net.UDPConn
	status atomic.Int32 // what /v1/ready answers
}

// received is a datagram a replica received.
type received struct {
	data string
	from netip.AddrPort
}

func startReplica(t *testing.T) *replica {
	t.Helper()
	l, u, err := Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{addr: l.Addr().String(), got: make(chan received, 100), udp: u}
	r.status.Store(http.StatusOK)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(int(r.status.Load()))
	}))
	srv.Listener = l
	srv.StartTLS()
	t.Cleanup(srv.Close)
	t.Cleanup(func() { u.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			n, a, err := u.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			r.got <- received{string(buf[:n]), a}
		}
	}()
	return r
}

// readyReplica is a replica that stays ready: its address and what its UDP
// socket receives from.
func readyReplica(t *testing.T) (addr string, from <-chan netip.AddrPort) {
	r := startReplica(t)
	ch := make(chan netip.AddrPort, 100)
	go func() {
		for d := range r.got {
			ch <- d.from
		}
	}()
	return r.addr, ch
}

// TestFlowsSpreadOverLocalAddrs: each UDP flow's socket to its replica is
// bound to the next of LocalAddrs, so the replica sees the flows come from
// every one of them; and a socket that cannot be had is reported.
func TestFlowsSpreadOverLocalAddrs(t *testing.T) {
	for _, tc := range []struct {
		name      string
		local     []string
		flows     int
		wantFrom  map[string]int // flows seen from each address
		wantError string
	}{
		{name: "none: the kernel picks", flows: 2, wantFrom: map[string]int{"127.0.0.1": 2}},
		{name: "one address", local: []string{"127.2.200.1"}, flows: 3, wantFrom: map[string]int{"127.2.200.1": 3}},
		{name: "two addresses in turn", local: []string{"127.2.200.1", "127.2.200.2"}, flows: 4, wantFrom: map[string]int{"127.2.200.1": 2, "127.2.200.2": 2}},
		{name: "an address not on this machine", local: []string{"192.0.2.1"}, flows: 1, wantError: "balancer: open a socket to replica"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			backend, from := readyReplica(t)
			var local []netip.Addr
			for _, s := range tc.local {
				local = append(local, netip.MustParseAddr(s))
			}
			socketErrs := make(chan error, 10)
			b, err := Start(Config{Backends: []string{backend}, LocalAddrs: local, OnSocketError: func(err error) { socketErrs <- err }})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(b.Close)
			if !b.Up(0) {
				t.Fatal("the replica failed its first readiness check")
			}
			ra, err := net.ResolveUDPAddr("udp", b.Addr())
			if err != nil {
				t.Fatal(err)
			}
			for range tc.flows {
				c, err := net.DialUDP("udp", nil, ra)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				if _, err := c.Write([]byte("hello")); err != nil {
					t.Fatal(err)
				}
			}
			if tc.wantError != "" {
				select {
				case err := <-socketErrs:
					if !strings.Contains(err.Error(), tc.wantError) || !strings.Contains(err.Error(), backend) {
						t.Errorf("socket error %q; want it to say %q and name the replica", err, tc.wantError)
					}
				case <-time.After(30 * time.Second):
					t.Fatal("a socket that could not be had was not reported")
				}
				return
			}
			got := map[string]int{}
			seen := map[netip.AddrPort]bool{}
			for range tc.flows {
				select {
				case a := <-from:
					if seen[a] {
						t.Fatalf("two flows share the socket %s", a)
					}
					seen[a] = true
					got[a.Addr().Unmap().String()]++
				case <-time.After(30 * time.Second):
					t.Fatalf("the replica received %d of %d flows' datagrams", len(seen), tc.flows)
				}
			}
			for a, n := range tc.wantFrom {
				if got[a] != n {
					t.Errorf("flows from %s: %d; want %d (all: %v)", a, got[a], n, got)
				}
			}
			select {
			case err := <-socketErrs:
				t.Errorf("socket error with every socket open: %v", err)
			default:
			}
		})
	}
}

// startBalancer starts a balancer with cfg, closed when t ends, and
// returns it with a function that opens a UDP client to it.
func startBalancer(t *testing.T, cfg Config) (*Balancer, func() *net.UDPConn) {
	t.Helper()
	b, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ra, err := net.ResolveUDPAddr("udp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	return b, func() *net.UDPConn {
		c, err := net.DialUDP("udp", nil, ra)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
}

// TestBackendNote: what a replica's run of health checks makes of it.
func TestBackendNote(t *testing.T) {
	const drain, downAfter = 10 * time.Second, 3
	t0 := time.Unix(1000, 0)
	type step struct {
		h                  health
		at                 time.Duration // after t0
		ready, keeps, lost bool
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"ready", []step{{healthReady, 0, true, true, false}}},
		{"not ready: no new clients, its flows kept for the drain, then moved", []step{
			{healthReady, 0, true, true, false},
			{healthNotReady, time.Second, false, true, false},
			{healthNotReady, 10 * time.Second, false, true, false},
			{healthNotReady, 11 * time.Second, false, false, true},
			{healthNotReady, 12 * time.Second, false, false, false},
		}},
		{"ready again ends the drain", []step{
			{healthReady, 0, true, true, false},
			{healthNotReady, time.Second, false, true, false},
			{healthReady, 2 * time.Second, true, true, false},
			{healthNotReady, 20 * time.Second, false, true, false},
		}},
		{"unanswered checks: down at the third", []step{
			{healthReady, 0, true, true, false},
			{healthNoAnswer, time.Second, true, true, false},
			{healthNoAnswer, 2 * time.Second, true, true, false},
			{healthNoAnswer, 3 * time.Second, false, false, true},
		}},
		{"an answer resets the count", []step{
			{healthReady, 0, true, true, false},
			{healthNoAnswer, time.Second, true, true, false},
			{healthNoAnswer, 2 * time.Second, true, true, false},
			{healthReady, 3 * time.Second, true, true, false},
			{healthNoAnswer, 4 * time.Second, true, true, false},
		}},
		{"refused: down at once, draining or not", []step{
			{healthReady, 0, true, true, false},
			{healthNotReady, time.Second, false, true, false},
			{healthRefused, 2 * time.Second, false, false, true},
		}},
		{"down, then not ready: nothing to drain", []step{
			{healthRefused, 0, false, false, false},
			{healthNotReady, time.Second, false, false, false},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var bk backend
			for i, st := range tc.steps {
				lost := bk.note(st.h, t0.Add(st.at), drain, downAfter)
				if got := [3]bool{bk.ready.Load(), bk.keeps.Load(), lost}; got != [3]bool{st.ready, st.keeps, st.lost} {
					t.Fatalf("step %d: ready, keeps, lost = %v; want %v", i, got, [3]bool{st.ready, st.keeps, st.lost})
				}
			}
		})
	}
}

// TestNotReadyReplicaKeepsItsFlows: a replica that turns not ready (as a
// stopping fleetd does) takes no new UDP client, but its flows stay with
// it, both ways, until the drain ends; then they move.
func TestNotReadyReplicaKeepsItsFlows(t *testing.T) {
	r0, r1 := startReplica(t), startReplica(t)
	const drain = 10 * time.Second
	b, client := startBalancer(t, Config{Backends: []string{r0.addr, r1.addr}, Rule: Prefer(2, "udp", 0, 1),
		HealthEvery: 20 * time.Millisecond, Drain: drain})
	// arrives sends what from c until r receives it (a datagram may be
	// lost on a busy machine: loopback UDP has no delivery promise), and
	// returns the flow's address at r. Copies of earlier steps' datagrams
	// are passed over.
	arrives := func(c *net.UDPConn, r, other *replica, what string) netip.AddrPort {
		t.Helper()
		deadline := time.After(30 * time.Second)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if _, err := c.Write([]byte(what)); err != nil {
				t.Fatal(err)
			}
			select {
			case d := <-r.got:
				if d.data == what {
					return d.from
				}
			case d := <-other.got:
				if d.data == what {
					t.Fatalf("%s: reached the wrong replica (from %s)", what, d.from)
				}
			case <-deadline:
				t.Fatalf("%s: never reached its replica", what)
			case <-tick.C:
			}
		}
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for !cond() {
			select {
			case <-ctx.Done():
				t.Fatalf("%s: not within 30s", what)
			case <-tick.C:
			}
		}
	}

	c1 := client()
	flow := arrives(c1, r0, r1, "the first client")
	r0.status.Store(http.StatusServiceUnavailable)
	waitFor("replica 0 not ready", func() bool { return !b.Up(0) })
	start := time.Now()
	if !b.Keeps(0) {
		t.Fatal("a replica that answers not ready dropped its flows at once")
	}
	// Both ways while it drains: the client's datagrams reach replica 0,
	// and what replica 0 sends (a close frame) reaches the client.
	if got := arrives(c1, r0, r1, "the first client while its replica drains"); got != flow {
		t.Errorf("the flow reached replica 0 from %s, then %s: a new flow", flow, got)
	}
	buf := make([]byte, 100)
	for try := 0; ; try++ {
		if try == 150 {
			t.Fatal("the draining replica's datagrams never reached its client")
		}
		if _, err := r0.udp.WriteToUDPAddrPort([]byte("bye"), flow); err != nil {
			t.Fatal(err)
		}
		c1.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if n, err := c1.Read(buf); err == nil && string(buf[:n]) == "bye" {
			break
		}
	}
	arrives(client(), r1, r0, "a new client while replica 0 drains")
	if !b.Keeps(0) {
		t.Fatalf("the drain ended %v after it began, before the checks made during it were done (want %v)", time.Since(start), drain)
	}

	waitFor("the drain to end", func() bool { return !b.Keeps(0) })
	if took := time.Since(start); took < drain-time.Second {
		t.Errorf("the flows moved %v after the replica turned not ready; want about %v", took, drain)
	}
	arrives(c1, r1, r0, "the first client after the drain")
}

// TestIdleFlowsEnd: a flow no replica answered ends after 30 s idle, one
// answered after FlowIdle, each with its socket (a crowd of redialling
// devices, a new port each dial, ran a balancer out of descriptors).
func TestIdleFlowsEnd(t *testing.T) {
	r := startReplica(t)
	b, client := startBalancer(t, Config{Backends: []string{r.addr}})
	var flowAt [2]netip.AddrPort
	var clients [2]*net.UDPConn
	for i := range clients {
		c := client()
		clients[i] = c
		for try := 0; flowAt[i] == (netip.AddrPort{}); try++ {
			if try == 300 {
				t.Fatal("the replica received nothing from a client in 30s")
			}
			hello := fmt.Sprintf("client %d", i)
			c.Write([]byte(hello))
			select {
			case d := <-r.got:
				if d.data == hello { // not a copy of the other client's
					flowAt[i] = d.from
				}
			case <-time.After(100 * time.Millisecond): // sent again: loopback UDP may drop
			}
		}
	}
	// The replica answers the first client.
	r.udp.WriteToUDPAddrPort([]byte("welcome"), flowAt[0])
	clients[0].SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := clients[0].Read(make([]byte, 64)); err != nil {
		t.Fatalf("the replica's answer: %v", err)
	}
	flow := func(c *net.UDPConn) *flow {
		b.mu.Lock()
		defer b.mu.Unlock()
		return b.flows[c.LocalAddr().String()]
	}
	age := func(c *net.UDPConn, d time.Duration) { flow(c).last.Store(time.Now().Add(-d).UnixNano()) }
	for _, tc := range []struct {
		name            string
		answered, other time.Duration // idle times
		want            [2]bool       // flows left
	}{
		{"both fresh", time.Second, time.Second, [2]bool{true, true}},
		{"31 s idle: the unanswered one ends", 31 * time.Second, 31 * time.Second, [2]bool{true, false}},
		{"past FlowIdle: the answered one ends", 2*time.Minute + time.Second, 0, [2]bool{false, false}},
	} {
		for i, c := range clients {
			if flow(c) != nil {
				age(c, [2]time.Duration{tc.answered, tc.other}[i])
			}
		}
		b.sweepFlows()
		if got := [2]bool{flow(clients[0]) != nil, flow(clients[1]) != nil}; got != tc.want {
			t.Errorf("%s: flows left %v; want %v", tc.name, got, tc.want)
		}
	}
}
