package devsim

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func TestLoopbackHosts(t *testing.T) {
	addrs := func(ss ...string) []netip.Addr {
		var as []netip.Addr
		for _, s := range ss {
			as = append(as, netip.MustParseAddr(s))
		}
		return as
	}
	for _, tc := range []struct {
		name    string
		first   string
		sockets int
		want    []netip.Addr
		err     string
	}{
		{name: "none still gets one", first: "127.1.1.1", sockets: 0, want: addrs("127.1.1.1")},
		{name: "one address full", first: "127.1.1.1", sockets: SocketsPerAddr, want: addrs("127.1.1.1")},
		{name: "one more opens the next", first: "127.1.1.1", sockets: SocketsPerAddr + 1, want: addrs("127.1.1.1", "127.1.1.2")},
		{name: "30,000 over four", first: "127.1.1.1", sockets: 30000, want: addrs("127.1.1.1", "127.1.1.2", "127.1.1.3", "127.1.1.4")},
		{name: "carries into the next octet", first: "127.1.1.254", sockets: 3 * SocketsPerAddr, want: addrs("127.1.1.254", "127.1.1.255", "127.1.2.0")},
		{name: "not loopback", first: "10.0.0.1", sockets: 1, err: "want an IPv4 loopback address"},
		{name: "IPv6 loopback", first: "::1", sockets: 1, err: "want an IPv4 loopback address"},
		{name: "past the end of 127/8", first: "127.255.255.254", sockets: 2 * SocketsPerAddr, err: "past the end of 127.0.0.0/8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := LoopbackHosts(netip.MustParseAddr(tc.first), tc.sockets)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("LoopbackHosts(%s, %d) = %v, %v; want an error saying %q", tc.first, tc.sockets, got, err, tc.err)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("LoopbackHosts(%s, %d) = %v, %v; want %v", tc.first, tc.sockets, got, err, tc.want)
			}
		})
	}
}

func TestProcHosts(t *testing.T) {
	for _, tc := range []struct {
		name          string
		role, i, sock int
		want          []string
		err           string
	}{
		{name: "first simulator", role: roleSim, i: 1, sock: 5000, want: []string{"127.1.1.1"}},
		{name: "sixth balancer", role: roleBalancer, i: 6, sock: 5000, want: []string{"127.2.6.1"}},
		{name: "a large process", role: roleSim, i: 2, sock: 20000, want: []string{"127.1.2.1", "127.1.2.2", "127.1.2.3"}},
		{name: "process 0", role: roleSim, i: 0, sock: 1, err: "want both from 1 to 255"},
		{name: "role 0 would be 127.0.x.y", role: 0, i: 1, sock: 1, err: "want both from 1 to 255"},
		{name: "more than one process's addresses hold", role: roleSim, i: 3, sock: 255 * SocketsPerAddr, err: "more than 127.1.3.1 to .254 hold"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ProcHosts(tc.role, tc.i, tc.sock)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ProcHosts(%d, %d, %d) = %v, %v; want an error saying %q", tc.role, tc.i, tc.sock, got, err, tc.err)
				}
				return
			}
			if err != nil || joinAddrs(got) != strings.Join(tc.want, ",") {
				t.Fatalf("ProcHosts(%d, %d, %d) = %v, %v; want %v", tc.role, tc.i, tc.sock, got, err, tc.want)
			}
		})
	}
}

// TestDeviceSocketsSpreadOverLocalAddrs opens real sockets: device i's is
// bound to LocalAddrs[i % n] on a port of its own, and a socket that
// cannot be had (an address not on this machine) stops the simulation
// with the reason.
func TestDeviceSocketsSpreadOverLocalAddrs(t *testing.T) {
	hosts := []netip.Addr{netip.MustParseAddr("127.1.200.1"), netip.MustParseAddr("127.1.200.2")}
	s, err := New(Config{Fleet: "127.0.0.1:1", DataDir: t.TempDir(), Count: 5, LocalAddrs: hosts})
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range s.devices {
		c, err := s.listen(d)
		if err != nil {
			t.Fatalf("device %d: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		got := c.LocalAddr().(*net.UDPAddr).AddrPort()
		if want := hosts[i%len(hosts)]; got.Addr().Unmap() != want || got.Port() == 0 {
			t.Errorf("device %d bound to %s; want %s on a port of its own", i, got, want)
		}
	}
	select {
	case err := <-s.fatal:
		t.Fatalf("sockets that opened stopped the simulation: %v", err)
	default:
	}

	bad, err := New(Config{Fleet: "127.0.0.1:1", DataDir: t.TempDir(), Count: 1, LocalAddrs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := bad.listen(bad.devices[0]); err == nil {
		c.Close()
		t.Fatal("a socket on 192.0.2.1, not an address of this machine, opened")
	}
	select {
	case err := <-bad.fatal:
		if !strings.Contains(err.Error(), "sim-00001: open its UDP socket") || !strings.Contains(err.Error(), "192.0.2.1") {
			t.Errorf("the simulation stopped with %q; want the device, the address and why", err)
		}
	default:
		t.Fatal("a socket that could not be had did not stop the simulation")
	}
}
