package devsim

import (
	"fmt"
	"net/netip"
)

// SocketsPerAddr is the most UDP sockets devsim puts on one local address.
// A socket bound to HOST:0 takes a port from the kernel's ephemeral range
// (about 28,000 ports on Linux by default) for that HOST only: spreading
// the sockets of a large fleet (a device's, a balancer's flow to a
// replica) over several loopback addresses keeps every address, and
// above all 127.0.0.1 that every other program uses, well within it.
const SocketsPerAddr = 8000

// LoopbackHosts returns the consecutive loopback addresses, from first,
// that hold sockets sockets at SocketsPerAddr each (at least one address).
// Every address of 127.0.0.0/8 is on the loopback interface on Linux.
func LoopbackHosts(first netip.Addr, sockets int) ([]netip.Addr, error) {
	if !first.Is4() || !first.IsLoopback() {
		return nil, fmt.Errorf("devsim: local address %s: want an IPv4 loopback address (127.x.y.z)", first)
	}
	n := max(1, (sockets+SocketsPerAddr-1)/SocketsPerAddr)
	hosts := make([]netip.Addr, 0, n)
	a := first
	for range n {
		if !a.IsLoopback() || a == netip.AddrFrom4([4]byte{127, 255, 255, 255}) {
			return nil, fmt.Errorf("devsim: %d sockets from %s need %d addresses: past the end of 127.0.0.0/8", sockets, first, n)
		}
		hosts = append(hosts, a)
		a = a.Next()
	}
	return hosts, nil
}

// ProcHosts returns the loopback addresses of process i (from 1) of a
// role (1 for simulators, 2 for balancers) holding sockets sockets:
// 127.ROLE.I.1 and on, so that no two processes share an address and none
// uses 127.0.0.1.
func ProcHosts(role, i, sockets int) ([]netip.Addr, error) {
	if role < 1 || role > 255 || i < 1 || i > 255 {
		return nil, fmt.Errorf("devsim: loopback addresses of process %d of role %d: want both from 1 to 255", i, role)
	}
	hosts, err := LoopbackHosts(netip.AddrFrom4([4]byte{127, byte(role), byte(i), 1}), sockets)
	if err != nil {
		return nil, err
	}
	if last := hosts[len(hosts)-1].As4(); last[2] != byte(i) || last[3] == 255 {
		return nil, fmt.Errorf("devsim: %d sockets need %d addresses: more than 127.%d.%d.1 to .254 hold", sockets, len(hosts), role, i)
	}
	return hosts, nil
}
