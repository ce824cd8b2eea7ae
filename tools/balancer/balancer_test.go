package balancer

import (
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// readyReplica is a stand-in for a fleetd replica: HTTPS answering
// /v1/ready and a UDP socket on the same port, which reports the source
// address of every datagram it receives.
func readyReplica(t *testing.T) (addr string, from <-chan netip.AddrPort) {
	t.Helper()
	for range 20 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		u, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(l.Addr().(*net.TCPAddr).AddrPort()))
		if err != nil {
			l.Close()
			continue
		}
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
		srv.Listener = l
		srv.StartTLS()
		t.Cleanup(srv.Close)
		t.Cleanup(func() { u.Close() })
		ch := make(chan netip.AddrPort, 100)
		go func() {
			buf := make([]byte, 1500)
			for {
				_, a, err := u.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				ch <- a
			}
		}()
		return l.Addr().String(), ch
	}
	t.Fatal("no port free for both TCP and UDP")
	return "", nil
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
