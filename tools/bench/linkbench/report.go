package main

import (
	"fmt"
	"io"
	"math"
	"runtime"
	"time"

	"remoteler.dev/edge/tools/linksim"
)

// idleVirtualMBPerDay is fleet/tunnelsrv's TestIdleDataPerDay with no
// reconnects: an idle device over a simulated day with the shipped
// timers, on the wire, as docs/benchmarks.md gives it ("Tunnel recovery
// and idle data, in virtual time"). Update it with that section.
const idleVirtualMBPerDay = 0.118

// reconnectsPerDay are the days the idle figures are given for.
var reconnectsPerDay = []int{0, 6, 24}

func (r bulkRecovery) summary() string {
	if r.after <= 0 {
		return fmt.Sprintf("bulk %s: nothing after the %s blackout: %s", r.dir, r.blackout, r.note)
	}
	return fmt.Sprintf("bulk %s: bytes flowing %s after the link returned (%.1f RTT), %d reconnects", r.dir,
		r.after.Round(time.Millisecond), r.RTTs(), r.redials)
}

func (r recovery) summary() string {
	if r.after <= 0 {
		return fmt.Sprintf("no echo after the %s blackout: %s", r.blackout, r.note)
	}
	s := fmt.Sprintf("first echo %s after the link returned (%.1f RTT)", r.after.Round(time.Millisecond), r.RTTs())
	if r.intact {
		s += ", every byte back in order"
	} else {
		s += ", " + r.note
	}
	return s
}

func seconds(d time.Duration) string {
	if d <= 0 {
		return "—"
	}
	if d < 10*time.Second {
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

func ratio(num, den float64) string {
	if num <= 0 || den <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f×", num/den)
}

// write prints the results as Markdown.
func (res *results) write(w io.Writer) {
	p := res.profile
	fmt.Fprintf(w, "## Links: ours versus an OpenSSH reverse tunnel, through linksim\n\n")
	mode := "full"
	if res.cfg.Quick {
		mode = "-quick"
	}
	fmt.Fprintf(w, "Run %s (%s mode), %s; %d CPUs, load average %s at the start and %s at the end.\n",
		res.started.UTC().Format("2006-01-02 15:04 MST"), mode, res.took.Round(time.Second), runtime.NumCPU(), res.load[0], res.load[1])
	fmt.Fprintf(w, "Profile %s; its mean round trip (RTT) is %s.\n\n", p, p.RTT())

	fmt.Fprintf(w, "### Recovery after a blackout (%s)\n\n", p.Name)
	fmt.Fprintf(w, "Time from the link's return to the first echo of an interactive stream (a byte every 100 ms into cat).\n\n")
	fmt.Fprintf(w, "| blackout | ours | ours, RTTs | peer | peer, RTTs | peer / ours | bytes intact (ours, peer) | reconnects (ours, peer) |\n|---|---|---|---|---|---|---|---|\n")
	for _, bo := range res.cfg.Blackouts {
		var o, pe recovery
		for _, r := range res.recoveries {
			if r.blackout != bo {
				continue
			}
			if r.system == "ours" {
				o = r
			} else {
				pe = r
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s, %s | %d, %d |\n", bo, recTime(o), recRTTs(o), recTime(pe), recRTTs(pe),
			ratio(pe.after.Seconds(), o.after.Seconds()), yesNo(o.intact), yesNo(pe.intact), o.redials, pe.redials)
	}
	for _, r := range res.recoveries {
		if r.note != "" {
			fmt.Fprintf(w, "\n%s, %s blackout: %s", r.system, r.blackout, r.note)
		}
	}
	fmt.Fprintln(w)

	if len(res.bulkRecs) > 0 {
		fmt.Fprintf(w, "### Bulk transfers through a blackout (%s)\n\n", p.Name)
		fmt.Fprintf(w, "A transfer at the link's rate, blacked out after 3 s; time from the link's return to the first bytes at the receiver: up = device to user (head -c on the device, read by the user), down = user to device (timed on the device by the arrivals helper). DESIGN.md's target: 1 RTT + 100 ms = %s.\n\n",
			(p.RTT() + 100*time.Millisecond).Round(time.Millisecond))
		fmt.Fprintf(w, "| blackout | direction | ours | ours, RTTs | peer | peer, RTTs | peer / ours | reconnects (ours, peer) |\n|---|---|---|---|---|---|---|---|\n")
		for _, bo := range res.cfg.Blackouts {
			for _, dir := range []string{dirUp, dirDown} {
				var o, pe bulkRecovery
				for _, r := range res.bulkRecs {
					if r.blackout != bo || r.dir != dir {
						continue
					}
					if r.system == "ours" {
						o = r
					} else {
						pe = r
					}
				}
				fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %d, %d |\n", bo, dir, bulkRecTime(o), bulkRecRTTs(o), bulkRecTime(pe), bulkRecRTTs(pe),
					ratio(pe.after.Seconds(), o.after.Seconds()), o.redials, pe.redials)
			}
		}
		fmt.Fprintln(w)
	}

	if len(res.bulks) > 0 {
		fmt.Fprintf(w, "### Bulk throughput\n\n")
		fmt.Fprintf(w, "MB/s (10⁶ bytes) measured at the receiver; up = device to user (head -c on the device), down = user to device (dd on the device).\n")
		fmt.Fprintf(w, "Sizes: %s, each transfer cut at %s.\n\n", joinSizes(res.cfg.Sizes), res.cfg.Cap)
		fmt.Fprintf(w, "| profile | loss | direction | ours MB/s | peer MB/s | ours / peer | ours reconnects | TCP Reno estimate MB/s |\n|---|---|---|---|---|---|---|---|\n")
		for _, c := range res.cfg.Bulk {
			for _, dir := range []string{dirDown, dirUp} {
				var o, pe bulk
				for _, b := range res.bulks {
					if b.profile != c.profile || b.loss != c.loss || b.dir != dir {
						continue
					}
					if b.system == "ours" {
						o = b
					} else {
						pe = b
					}
				}
				fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %d | %.3f |\n", c.profile, linksim.FormatRatio(c.loss), dir,
					mbps(o), mbps(pe), ratio(o.rate(), pe.rate()), o.redials, mathis(c, dir)/1e6)
			}
		}
		for _, b := range res.bulks {
			if b.note != "" {
				fmt.Fprintf(w, "\n%s %s %s %s: %s", b.system, b.profile, linksim.FormatRatio(b.loss), b.dir, b.note)
			}
		}
		fmt.Fprintln(w)
	}

	fmt.Fprintf(w, "\n### Idle data per device (%s, NAT timeout %s)\n\n", p.Name, res.cfg.NATTimeout)
	fmt.Fprintf(w, "From linksim's counters over the idle window, both directions, headers included (UDP: 28 B a datagram; TCP: 40 B a segment, pure ACKs not modelled, so the peer's figure is a floor), scaled to a day.\n\n")
	fmt.Fprintf(w, "| system | window | packets up / down | bytes (wire) | MB/day | of it path MTU probes (both sides, est.) | MB/day without them | reconnects | NAT drops | reachable at the end |\n|---|---|---|---|---|---|---|---|---|---|\n")
	var oursDay, oursSteady float64
	for _, i := range res.idles {
		fmt.Fprintf(w, "| %s | %s | %d / %d | %d | %.3f | %d B in %d | %.3f | %d | %d | %s |\n", i.system, i.window.Round(time.Second),
			i.up.Packets, i.down.Packets, i.wire(), i.perDay()/1e6, i.probes.Bytes, i.probes.Packets, i.steadyPerDay()/1e6,
			i.reconnects, i.natDrops, yesNo(i.reachable))
		if i.system == "ours" {
			oursDay, oursSteady = i.perDay(), i.steadyPerDay()
		}
	}
	fmt.Fprintf(w, "\nVirtual-time figure (TestIdleDataPerDay, a simulated day): %.3f MB/day; measured here: %.3f MB/day, %.3f without the path MTU probes (a one-time cost per connection and per address change).\n",
		idleVirtualMBPerDay, oursDay/1e6, oursSteady/1e6)
	for _, i := range res.idles {
		if i.note != "" {
			fmt.Fprintf(w, "%s: %s\n", i.system, i.note)
		}
	}
	if len(res.reconnectBytes) > 0 {
		fmt.Fprintf(w, "\nA day of an idle device that reconnects N times: the idle figure above (without path MTU probes, which are off by default; a connection that probes adds them) plus N times what one reconnect after the server closed the connection cost on the wire (measured below: %d B ours, %d B the peer; the peer's TCP ACKs are not counted).\n\n",
			res.reconnectBytes["ours"], res.reconnectBytes["peer"])
		fmt.Fprintf(w, "| reconnects a day | ours MB/day | peer MB/day | peer / ours |\n|---|---|---|---|\n")
		for _, n := range reconnectsPerDay {
			var o, pe float64
			for _, i := range res.idles {
				d := i.steadyPerDay() + float64(n)*float64(res.reconnectBytes[i.system])
				if i.system == "ours" {
					o = d
				} else {
					pe = d
				}
			}
			fmt.Fprintf(w, "| %d | %.3f | %.3f | %s |\n", n, o/1e6, pe/1e6, ratio(pe, o))
		}
	}
	fmt.Fprintf(w, "\nPackets by size on the wire (count×bytes):\n\n")
	for _, i := range res.idles {
		fmt.Fprintf(w, "- %s, device to fleet: %s\n- %s, fleet to device: %s\n", i.system, i.sizeSummary(0), i.system, i.sizeSummary(1))
	}

	fmt.Fprintf(w, "\n### Connection set-up (%s)\n\n", p.Name)
	fmt.Fprintf(w, "Median time to a usable tunnel; RTTs = (time on %s − time on a perfect link) / %s, what the link adds.\n\n", p.Name, p.RTT())
	fmt.Fprintf(w, "| case | system | on %s | on a perfect link | RTTs | trials | note |\n|---|---|---|---|---|---|---|\n", p.Name)
	for _, c := range res.connects {
		rtts := "—"
		if c.took > 0 {
			rtts = fmt.Sprintf("%.1f", c.RTTs())
		}
		perfect := seconds(c.perfect)
		if c.perfect == 0 && c.took > 0 {
			perfect = "(not measured)"
			rtts = fmt.Sprintf("%.1f", c.took.Seconds()/c.rtt.Seconds())
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %d | %s |\n", c.what, c.system, seconds(c.took), perfect, rtts, c.trials, c.note)
	}
	fmt.Fprintln(w)
}

// mathis estimates what a long-lived TCP Reno flow gets through random
// loss p at round trip RTT (Mathis et al., 1997): MSS/RTT × √(3/2)/√p,
// capped by the link's rate for that direction (payload share of 1500-byte
// packets). linksim's TCP model does not slow down on loss, so the peer's
// measured figure is the link's rate; this is what a real TCP would get.
func mathis(c bulkCase, dir string) float64 {
	p, err := linksim.ProfileByName(c.profile)
	if err != nil || c.loss <= 0 {
		return 0
	}
	const mss = 1460
	rate := mss / p.RTT().Seconds() * math.Sqrt(1.5/c.loss)
	imp := p.Down
	if dir == dirUp {
		imp = p.Up
	}
	if imp.Bandwidth > 0 {
		rate = min(rate, float64(imp.Bandwidth)/8*mss/1500)
	}
	return rate
}

func recTime(r recovery) string {
	if r.after <= 0 {
		if r.note != "" {
			return r.note
		}
		return "—"
	}
	return seconds(r.after)
}

func recRTTs(r recovery) string {
	if r.after <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f", r.RTTs())
}

func mbps(b bulk) string {
	if b.rate() <= 0 {
		if b.note != "" {
			return "failed"
		}
		return "—"
	}
	s := fmt.Sprintf("%.3f", b.rate()/1e6)
	if b.capped {
		s += " (cut)"
	}
	return s
}

func yesNo(ok bool) string {
	if ok {
		return "yes"
	}
	return "no"
}

func bulkRecTime(r bulkRecovery) string {
	if r.after <= 0 {
		if r.note != "" {
			return r.note
		}
		return "—"
	}
	return seconds(r.after)
}

func bulkRecRTTs(r bulkRecovery) string {
	if r.after <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.1f", r.RTTs())
}
