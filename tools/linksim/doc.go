// Package linksim is a user-space link impairment relay: it sits between a
// device (the client) and the fleet (the server) on loopback and makes the
// path behave like a cellular or satellite link with a NAT in front of it.
// It exists because the kernels we test on have no netem. Tests, benchmarks
// and the linksim command import it; product code (firmware/, fleet/,
// proto/) must not.
//
// A Link is one device's access link. UDP relays (for QUIC) and TCP relays
// (for a TCP peer measured over the same link, such as an OpenSSH reverse
// tunnel) attach to it and share its impairments, bandwidth, outages and
// public address:
//
//	link, err := linksim.New(linksim.Config{Profile: lte, Seed: 1, NATTimeout: 30 * time.Second})
//	udp, err := link.ListenUDP("127.0.0.1:0", fleetAddr) // agent dials udp.Addr()
//	tcp, err := link.ListenTCP("127.0.0.1:0", sshdAddr)
//	link.Blackout(10 * time.Second)
//	link.MoveTo(netip.MustParseAddr("127.0.0.2"))
//	fmt.Println(link.Stats())
//	link.Close()
//
// # The UDP model
//
// Each datagram, per direction (Up is client→server, Down server→client),
// goes through these steps in order; the first that applies decides:
//
//   - Outage: while the link is out (Blackout, SetDown, or Config.Schedule)
//     the datagram is dropped, and so is one whose release time falls in an
//     outage (it was in flight when the link went).
//   - MTU: a datagram whose IP size (payload plus 28 bytes for IPv4/UDP, 48
//     for IPv6) exceeds Impairment.MTU is dropped.
//   - Loss: random loss (Impairment.Loss) and the Gilbert-Elliott burst model
//     (Impairment.Burst) each draw; a lost datagram uses no bandwidth.
//   - Bandwidth: a FIFO bottleneck sends Bandwidth bits per second (headers
//     counted); a datagram that finds more than QueueBytes queued is dropped
//     (tail drop). Queued bytes delay the datagram by their transmission time.
//   - Delay: the datagram leaves the bottleneck, then waits Delay plus a
//     uniform jitter in [0, Jitter). Unless Reorder is set, it never
//     overtakes an earlier datagram: one that draws less delay waits for the
//     one ahead.
//
// All relays share the two channels (bottleneck, random source, burst state)
// of their link, as all the traffic of a device shares its radio. With a
// fixed Config.Seed the decisions repeat exactly for the same sequence of
// packets.
//
// The NAT sits at the server end of the link. For each client address it
// opens an upstream socket (bound to Config.BindIP, then to the address
// given to MoveTo); that socket's address is what the server sees. A mapping
// idle for NATTimeout (client→server traffic refreshes it) is forgotten: the
// server's packets to it are dropped as nat-expired and the client's next
// packet gets a new socket, so a new port. Rebind forgets all mappings at
// once; MoveTo also changes the IP. Forgotten sockets stay open for two
// minutes so late server packets are counted rather than answered with ICMP.
//
// # The TCP model
//
// TCP is relayed as a byte stream between two real kernel connections (the
// client's, accepted by the relay, and one the relay dials upstream), so the
// endpoints' own TCP never sees loss; the relay models what loss, outages and
// the handshake would cost instead. It is a model, not an emulation:
//
//   - Handshake: the client's connect returns at once (the relay's kernel
//     accepts it), but its bytes are let in only one round trip later, and
//     the upstream connection is made half a round trip after that: when the
//     SYN-ACK and the final ACK would have crossed the link. So the first
//     exchange costs the extra round trip a real handshake costs.
//   - Delay, jitter and bandwidth apply to each chunk read (up to 16 KiB) as
//     to a datagram, with 40 bytes of headers per segment of MTU-40 bytes
//     (1460 without an MTU). Bytes are never reordered.
//   - Queue: when the bottleneck queue is full the relay stops reading, so
//     back-pressure reaches the sender through its socket buffers: TCP does
//     not tail-drop. At most 4 MiB per direction are in flight, like a
//     receive window.
//   - Loss: each segment draws from the same loss models as UDP; a chunk
//     with a lost segment is delivered one round trip late, the cost of a
//     fast retransmit (later bytes wait behind it: head-of-line blocking).
//     Losses that would need a retransmission timeout, and congestion
//     control's reaction to loss, are not modelled, so TCP over a lossy
//     profile looks somewhat better here than on a real link.
//   - Outage: bytes are held, not lost. When the link returns, held bytes
//     flow again at the sender's next retransmission: the stall began when
//     the first held byte came due, and retransmissions follow at RTO =
//     round trip + 200 ms (Linux's minimum), then doubling up to 120 s, plus
//     the one-way delay. A connection made during an outage waits likewise,
//     from a 1 s SYN timeout. With Config.ResetOnBlackout every connection
//     is reset (RST to both ends) when an outage starts, like a NAT that
//     forgot it; new connections made during the outage are reset too.
//   - Rebind and MoveTo reset every connection: a TCP connection does not
//     survive its address changing. New connections dial from the new
//     address.
//   - MTU caps nothing (the kernels segment the stream).
//
// # Time and goroutines
//
// The relay runs in real time on real sockets. Every decision reads
// Config.Now; each direction of each relay (and of each TCP connection) has
// one delay line: a heap ordered by release time served by one goroutine
// with one timer. A UDP relay also runs a reader per socket and a janitor;
// Close stops every goroutine it started and is idempotent.
package linksim
