package devsim

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// A UDP datagram that arrives at a socket whose receive buffer is full is
// dropped by the kernel, which counts it for the socket (/proc/net/udp's
// drops, which also count a few other kinds of drop) and for the machine
// (/proc/net/snmp's RcvbufErrors). Under a
// crowd of handshakes on two cores, that is where datagrams die unseen:
// sampleUDP reads both, so that the report can say whose sockets lost
// them.

// udpSocket is one UDP socket as /proc/net/udp lists it.
type udpSocket struct {
	local netip.AddrPort
	drops uint64
}

// udpSample is the machine's UDP receive-buffer drops at one moment: its
// total, and each open socket's, by inode.
type udpSample struct {
	total   uint64
	sockets map[uint64]udpSocket
	ok      bool // the files were there (Linux)
}

// sampleUDP reads the machine's UDP drops; on a system without /proc's
// files, it returns a sample that says so.
func sampleUDP() udpSample {
	s := udpSample{sockets: map[uint64]udpSocket{}}
	f, err := os.Open("/proc/net/snmp")
	if err != nil {
		return s
	}
	s.total, err = parseRcvbufErrors(f)
	f.Close()
	if err != nil {
		return s
	}
	for _, name := range []string{"/proc/net/udp", "/proc/net/udp6"} {
		f, err := os.Open(name)
		if err != nil {
			continue
		}
		parseUDPSockets(f, s.sockets)
		f.Close()
	}
	s.ok = true
	return s
}

// parseRcvbufErrors returns the Udp line's RcvbufErrors from /proc/net/snmp.
func parseRcvbufErrors(r io.Reader) (uint64, error) {
	sc := bufio.NewScanner(r)
	var names []string
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || fields[0] != "Udp:" {
			continue
		}
		if names == nil {
			names = fields
			continue
		}
		for i, n := range names {
			if n == "RcvbufErrors" && i < len(fields) {
				return strconv.ParseUint(fields[i], 10, 64)
			}
		}
		break
	}
	return 0, fmt.Errorf("devsim: no Udp RcvbufErrors in /proc/net/snmp")
}

// parseUDPSockets adds the sockets of /proc/net/udp (or udp6) to into, by
// inode. Lines it cannot read are skipped.
func parseUDPSockets(r io.Reader, into map[uint64]udpSocket) {
	sc := bufio.NewScanner(r)
	sc.Scan() // the header
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 13 {
			continue
		}
		local, ok := parseProcAddr(f[1])
		if !ok {
			continue
		}
		inode, err1 := strconv.ParseUint(f[9], 10, 64)
		drops, err2 := strconv.ParseUint(f[len(f)-1], 10, 64)
		if err1 != nil || err2 != nil {
			continue
		}
		into[inode] = udpSocket{local: local, drops: drops}
	}
}

// parseProcAddr reads /proc/net/udp's "0100007F:1F90": the address as the
// kernel stores it (32-bit words in host order, little-endian here) and
// the port in hex.
func parseProcAddr(s string) (netip.AddrPort, bool) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, false
	}
	b, err := hex.DecodeString(h)
	port, perr := strconv.ParseUint(p, 16, 16)
	if err != nil || perr != nil || (len(b) != 4 && len(b) != 16) {
		return netip.AddrPort{}, false
	}
	for i := 0; i < len(b); i += 4 { // each 32-bit word is little-endian
		b[i], b[i+1], b[i+2], b[i+3] = b[i+3], b[i+2], b[i+1], b[i]
	}
	addr, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), true
}

// UDPDrops is how many datagrams were dropped between two samples: on the
// machine, and on the sockets open at the end, by whose they are.
type UDPDrops struct {
	ok       bool
	total    uint64
	replicas uint64 // the fleetd replicas' tunnel sockets
	listen   uint64 // the balancers' listening sockets
	flows    uint64 // the balancers' sockets to the replicas (127.2.0.0/16)
	devices  uint64 // the simulated devices' sockets (127.1.0.0/16)
	other    uint64 // any other socket of the machine
}

// dropsBetween compares two samples; replicas and listeners are the
// replicas' and the balancers' addresses. A socket opened in between
// counts all its drops; one closed in between is in the total alone.
func dropsBetween(a, b udpSample, replicas, listeners []string) UDPDrops {
	d := UDPDrops{ok: a.ok && b.ok}
	if !d.ok {
		return d
	}
	d.total = b.total - min(a.total, b.total)
	is := func(list []string, ap netip.AddrPort) bool {
		for _, s := range list {
			if x, err := netip.ParseAddrPort(s); err == nil && x.Port() == ap.Port() && (x.Addr() == ap.Addr() || ap.Addr().IsUnspecified()) {
				return true
			}
		}
		return false
	}
	flows, devices := netip.MustParsePrefix("127.2.0.0/16"), netip.MustParsePrefix("127.1.0.0/16")
	for inode, s := range b.sockets {
		n := s.drops
		if old, ok := a.sockets[inode]; ok && old.local == s.local {
			n -= min(old.drops, n)
		}
		switch {
		case n == 0:
		case is(replicas, s.local):
			d.replicas += n
		case is(listeners, s.local):
			d.listen += n
		case flows.Contains(s.local.Addr()):
			d.flows += n
		case devices.Contains(s.local.Addr()):
			d.devices += n
		default:
			d.other += n
		}
	}
	return d
}

// String says where the datagrams were dropped.
func (d UDPDrops) String() string {
	if !d.ok {
		return "not known here (no /proc/net/udp)"
	}
	open := d.replicas + d.listen + d.flows + d.devices + d.other
	var b bytes.Buffer
	fmt.Fprintf(&b, "%d on the machine (its receive-buffer errors); the drops of the sockets still open: replicas %d, balancers' listeners %d, balancers' flows %d, devices %d, others %d",
		d.total, d.replicas, d.listen, d.flows, d.devices, d.other)
	if d.total > open {
		fmt.Fprintf(&b, "; the rest, %d, on sockets closed meanwhile", d.total-open)
	}
	return b.String()
}
