package main

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"remoteler.dev/edge/tools/linksim"
)

// Header bytes per packet that linksim's payload counters leave out.
const (
	udpHeaders = 28 // IPv4 + UDP
	tcpHeaders = 40 // IPv4 + TCP, per segment; pure ACKs are not counted
)

// idle is an idle device's traffic over a window, from its link's
// counters.
type idle struct {
	system   string
	window   time.Duration
	up, down linksim.Counter // what each side sent (before any drop)
	header   int             // header bytes per packet added for the wire
	natDrops uint64          // fleet packets dropped as nat-expired
	// probes estimates the QUIC path MTU probes of both sides (packets of
	// probeSize bytes and more), a one-time cost of each new connection or
	// path: wire bytes and count.
	probes linksim.Counter
	// samples are the counter changes seen 50 ms apart, per direction
	// (0: device to fleet, 1: fleet to device): an idle link sends one
	// packet between samples, or a few at once (a heartbeat and the probe
	// that follows it).
	samples    [2][]sample
	reconnects int  // tunnel connections the device made in the window
	reachable  bool // a new session worked at the end
	note       string
}

// probeSize is the smallest datagram counted as a path MTU probe: an idle
// tunnel sends nothing else that large (quic-go probes from 1280 bytes up).
const probeSize = 1200

// sample is what one direction sent between two samples: packets and wire
// bytes.
type sample struct {
	packets, bytes uint64
}

// countProbes estimates the path MTU probes in the samples: a sample of
// probeSize bytes or more holds one, and its other packets are taken at
// the mean size of the lone small packets seen.
func countProbes(samples [2][]sample) (probes linksim.Counter) {
	for _, ss := range samples {
		var n, sum uint64
		for _, s := range ss {
			if s.packets == 1 && s.bytes < probeSize {
				n++
				sum += s.bytes
			}
		}
		small := uint64(60)
		if n > 0 {
			small = sum / n
		}
		for _, s := range ss {
			if s.bytes >= probeSize+(s.packets-1)*small {
				probes.Packets++
				probes.Bytes += s.bytes - (s.packets-1)*small
			}
		}
	}
	return probes
}

// steadyPerDay is perDay without the path MTU probes.
func (i idle) steadyPerDay() float64 {
	if i.window <= 0 {
		return 0
	}
	return float64(i.wire()-i.probes.Bytes) * float64(24*time.Hour) / float64(i.window)
}

// sizeSummary lists direction d's samples as COUNT×SIZE for lone packets
// and COUNT×(N packets, SIZE together) for several, smallest first.
func (i idle) sizeSummary(d int) string {
	type key struct{ packets, bytes uint64 }
	counts := map[key]int{}
	for _, s := range i.samples[d] {
		counts[key(s)]++
	}
	keys := slices.SortedFunc(maps.Keys(counts), func(a, b key) int { return cmp.Compare(a.bytes, b.bytes) })
	var parts []string
	for _, k := range keys {
		if k.packets == 1 {
			parts = append(parts, fmt.Sprintf("%d×%d B", counts[k], k.bytes))
		} else {
			parts = append(parts, fmt.Sprintf("%d×(%d packets, %d B together)", counts[k], k.packets, k.bytes))
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// wire is the bytes on the wire in the window, headers included.
func (i idle) wire() uint64 {
	return i.up.Bytes + i.down.Bytes + uint64(i.header)*(i.up.Packets+i.down.Packets)
}

// perDay extrapolates wire to 24 hours.
func (i idle) perDay() float64 {
	if i.window <= 0 {
		return 0
	}
	return float64(i.wire()) * float64(24*time.Hour) / float64(i.window)
}

// idleWatch measures an idle link from now for window, then checks that
// the device still takes a new session (reach).
type idleWatch struct {
	system string
	link   *linksim.Link
	header int
	start  time.Time
	s0     linksim.Stats
	done   chan idle
}

func watchIdle(ctx context.Context, sys system, header int, window time.Duration, reach func(context.Context) error) *idleWatch {
	link := sys.Link()
	w := &idleWatch{system: sys.Name(), link: link, header: header, start: time.Now(), s0: link.Stats(), done: make(chan idle, 1)}
	conns := sys.Connects()
	go func() {
		r := idle{system: sys.Name(), header: header}
		// Sample often enough that an idle link sends at most one datagram
		// between samples, so large ones can be told apart.
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		end := time.After(window)
		last := [2]linksim.Counter{w.s0.Up.Received, w.s0.Down.Received}
	sampling:
		for {
			select {
			case <-ctx.Done():
				r.note = "interrupted"
				w.done <- r
				return
			case <-end:
				break sampling
			case <-tick.C:
				st := link.Stats()
				for d, now := range [2]linksim.Counter{st.Up.Received, st.Down.Received} {
					dp := now.Packets - last[d].Packets
					if dp == 0 {
						continue
					}
					r.samples[d] = append(r.samples[d], sample{dp, now.Bytes - last[d].Bytes + uint64(header)*dp})
					last[d] = now
				}
			}
		}
		s1 := link.Stats()
		r.window = time.Since(w.start)
		r.probes = countProbes(r.samples)
		r.up = linksim.Counter{Packets: s1.Up.Received.Packets - w.s0.Up.Received.Packets, Bytes: s1.Up.Received.Bytes - w.s0.Up.Received.Bytes}
		r.down = linksim.Counter{Packets: s1.Down.Received.Packets - w.s0.Down.Received.Packets, Bytes: s1.Down.Received.Bytes - w.s0.Down.Received.Bytes}
		r.natDrops = s1.Down.Dropped.NATExpired - w.s0.Down.Dropped.NATExpired
		r.reconnects = sys.Connects() - conns
		if err := reach(ctx); err != nil {
			r.note = "not reachable: " + err.Error()
		} else {
			r.reachable = true
		}
		w.done <- r
	}()
	return w
}

// result waits for the measurement.
func (w *idleWatch) result(ctx context.Context) idle {
	select {
	case r := <-w.done:
		return r
	case <-ctx.Done():
		return idle{system: w.system, note: "interrupted"}
	}
}
