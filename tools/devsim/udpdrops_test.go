package devsim

import (
	"net/netip"
	"strings"
	"testing"
)

const procUDP = `   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops            
  100: 0100007F:2328 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1001 2 0000000000000000 17        
  101: 0106027F:C350 0100007F:2328 01 00000000:00000000 00:00000000 00000000     0        0 1002 2 0000000000000000 3         
  102: 0101017F:D000 0100007F:4E20 01 00000000:00000000 00:00000000 00000000     0        0 1003 2 0000000000000000 5         
  103: 0100007F:4E20 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1004 2 0000000000000000 11        
  104: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1005 2 0000000000000000 2         
  105: garbage
`

const procSNMP = `Ip: Forwarding DefaultTTL
Ip: 1 64
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 19792975 787111 445266 15375642 445266 0 0 0 0
UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
UdpLite: 0 0 0 0 0 0 0 0 0
`

func TestParseProc(t *testing.T) {
	total, err := parseRcvbufErrors(strings.NewReader(procSNMP))
	if err != nil || total != 445266 {
		t.Fatalf("RcvbufErrors = %d, %v; want 445266", total, err)
	}
	if _, err := parseRcvbufErrors(strings.NewReader("Ip: 1\n")); err == nil {
		t.Error("no Udp line: want an error")
	}
	socks := map[uint64]udpSocket{}
	parseUDPSockets(strings.NewReader(procUDP), socks)
	want := map[uint64]udpSocket{
		1001: {netip.MustParseAddrPort("127.0.0.1:9000"), 17},
		1002: {netip.MustParseAddrPort("127.2.6.1:50000"), 3},
		1003: {netip.MustParseAddrPort("127.1.1.1:53248"), 5},
		1004: {netip.MustParseAddrPort("127.0.0.1:20000"), 11},
		1005: {netip.MustParseAddrPort("0.0.0.0:53"), 2},
	}
	if len(socks) != len(want) {
		t.Fatalf("parsed %v, want %v", socks, want)
	}
	for inode, w := range want {
		if socks[inode] != w {
			t.Errorf("inode %d: %+v, want %+v", inode, socks[inode], w)
		}
	}
	if ap, ok := parseProcAddr("00000000000000000000000001000000:0050"); !ok || ap != netip.MustParseAddrPort("[::1]:80") {
		t.Errorf("IPv6 loopback: %v %v", ap, ok)
	}
}

func TestDropsBetween(t *testing.T) {
	a := udpSample{ok: true, total: 100, sockets: map[uint64]udpSocket{
		1: {netip.MustParseAddrPort("127.0.0.1:9000"), 10}, // a replica
		2: {netip.MustParseAddrPort("127.0.0.1:20000"), 4}, // a balancer's listener
		3: {netip.MustParseAddrPort("127.1.1.1:40000"), 1}, // a device, closed by b
	}}
	b := udpSample{ok: true, total: 190, sockets: map[uint64]udpSocket{
		1: {netip.MustParseAddrPort("127.0.0.1:9000"), 50},
		2: {netip.MustParseAddrPort("127.0.0.1:20000"), 4},
		4: {netip.MustParseAddrPort("127.2.1.1:41000"), 6},  // a new flow
		5: {netip.MustParseAddrPort("127.1.1.2:42000"), 20}, // a new device socket
		6: {netip.MustParseAddrPort("127.0.0.1:5353"), 1},
	}}
	d := dropsBetween(a, b, []string{"127.0.0.1:9000"}, []string{"127.0.0.1:20000"})
	want := UDPDrops{ok: true, total: 90, replicas: 40, listen: 0, flows: 6, devices: 20, other: 1}
	if d != want {
		t.Fatalf("drops %+v, want %+v", d, want)
	}
	if s := d.String(); !strings.Contains(s, "90 on the machine") || !strings.Contains(s, "replicas 40") || !strings.Contains(s, "the rest, 23, on sockets closed meanwhile") {
		t.Errorf("String() = %q", s)
	}
	if s := dropsBetween(udpSample{}, b, nil, nil).String(); !strings.Contains(s, "not known") {
		t.Errorf("without /proc: %q", s)
	}
}
