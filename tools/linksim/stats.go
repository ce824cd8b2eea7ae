package linksim

import (
	"fmt"
	"strings"
	"sync/atomic"
)

// Counter counts packets and bytes (payload bytes, headers not included).
// For TCP, packets are the segments the model accounts for (bytes divided by
// the segment size, rounded up per read).
type Counter struct {
	Packets uint64
	Bytes   uint64
}

// Drops counts dropped packets by reason.
type Drops struct {
	Loss       uint64 // random or bursty loss (UDP)
	Queue      uint64 // bandwidth queue full (UDP)
	MTU        uint64 // larger than the path MTU (UDP)
	Blackout   uint64 // sent or due while the link was out (UDP)
	NATExpired uint64 // server packet to a mapping the NAT gave up (UDP)
	Error      uint64 // socket errors
}

// Total is the sum of all reasons.
func (d Drops) Total() uint64 {
	return d.Loss + d.Queue + d.MTU + d.Blackout + d.NATExpired + d.Error
}

// DirStats is a snapshot of one direction.
type DirStats struct {
	// Received is what the relay read from the sender.
	Received Counter
	// Forwarded is what the relay delivered to the receiver.
	Forwarded Counter
	// Dropped counts dropped packets by reason.
	Dropped Drops
	// Retransmitted counts TCP segments the loss model "lost"; they were
	// delivered late (one round trip), not dropped.
	Retransmitted uint64
	// Queued is what sits in the delay lines now: in flight, queued behind
	// the bandwidth cap, or held during a TCP blackout.
	Queued Counter
}

// Stats is a snapshot of a relay's or a whole link's counters.
type Stats struct {
	Up, Down DirStats
	// Mappings is the number of live UDP NAT mappings.
	Mappings int
	// Conns is the number of live TCP connections.
	Conns int
	// Resets counts TCP connections the link killed (ResetOnBlackout,
	// Rebind, MoveTo).
	Resets uint64
}

func (c Counter) add(o Counter) Counter { return Counter{c.Packets + o.Packets, c.Bytes + o.Bytes} }

func (d Drops) add(o Drops) Drops {
	return Drops{d.Loss + o.Loss, d.Queue + o.Queue, d.MTU + o.MTU, d.Blackout + o.Blackout,
		d.NATExpired + o.NATExpired, d.Error + o.Error}
}

func (d DirStats) add(o DirStats) DirStats {
	return DirStats{
		Received:      d.Received.add(o.Received),
		Forwarded:     d.Forwarded.add(o.Forwarded),
		Dropped:       d.Dropped.add(o.Dropped),
		Retransmitted: d.Retransmitted + o.Retransmitted,
		Queued:        d.Queued.add(o.Queued),
	}
}

func (s Stats) add(o Stats) Stats {
	return Stats{
		Up:       s.Up.add(o.Up),
		Down:     s.Down.add(o.Down),
		Mappings: s.Mappings + o.Mappings,
		Conns:    s.Conns + o.Conns,
		Resets:   s.Resets + o.Resets,
	}
}

// String formats the snapshot on one line per direction.
func (s Stats) String() string {
	var b strings.Builder
	for _, d := range []struct {
		name string
		st   DirStats
	}{{"up", s.Up}, {"down", s.Down}} {
		st := d.st
		fmt.Fprintf(&b, "%-4s rx %d pkt %s, fwd %d pkt %s, queued %d pkt %s, drop loss=%d queue=%d mtu=%d blackout=%d nat-expired=%d error=%d",
			d.name, st.Received.Packets, formatBytes(st.Received.Bytes),
			st.Forwarded.Packets, formatBytes(st.Forwarded.Bytes),
			st.Queued.Packets, formatBytes(st.Queued.Bytes),
			st.Dropped.Loss, st.Dropped.Queue, st.Dropped.MTU, st.Dropped.Blackout,
			st.Dropped.NATExpired, st.Dropped.Error)
		if st.Retransmitted > 0 {
			fmt.Fprintf(&b, ", tcp retransmitted=%d", st.Retransmitted)
		}
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "nat mappings %d, tcp conns %d, tcp resets %d", s.Mappings, s.Conns, s.Resets)
	return b.String()
}

func formatBytes(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// dirCounters are the live counters of one direction of one relay.
type dirCounters struct {
	rxPkts, rxBytes   atomic.Uint64
	fwdPkts, fwdBytes atomic.Uint64
	drops             [numReasons]atomic.Uint64
	retrans           atomic.Uint64
	qPkts, qBytes     atomic.Int64
}

func (c *dirCounters) received(bytes, pkts int) {
	c.rxPkts.Add(uint64(pkts))
	c.rxBytes.Add(uint64(bytes))
}

func (c *dirCounters) forwarded(bytes, pkts int) {
	c.fwdPkts.Add(uint64(pkts))
	c.fwdBytes.Add(uint64(bytes))
}

func (c *dirCounters) drop(r Reason) { c.drops[r].Add(1) }

func (c *dirCounters) queued(bytes, pkts int) {
	c.qPkts.Add(int64(pkts))
	c.qBytes.Add(int64(bytes))
}

func (c *dirCounters) snapshot() DirStats {
	return DirStats{
		Received:  Counter{c.rxPkts.Load(), c.rxBytes.Load()},
		Forwarded: Counter{c.fwdPkts.Load(), c.fwdBytes.Load()},
		Dropped: Drops{
			Loss:       c.drops[ReasonLoss].Load(),
			Queue:      c.drops[ReasonQueue].Load(),
			MTU:        c.drops[ReasonMTU].Load(),
			Blackout:   c.drops[ReasonBlackout].Load(),
			NATExpired: c.drops[ReasonNATExpired].Load(),
			Error:      c.drops[ReasonError].Load(),
		},
		Retransmitted: c.retrans.Load(),
		Queued:        Counter{uint64(max(c.qPkts.Load(), 0)), uint64(max(c.qBytes.Load(), 0))},
	}
}
