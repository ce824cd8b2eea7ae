package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"remoteler.dev/edge/tools/harness"
)

// agentRSSTarget is DESIGN.md's target for the agent's idle RSS.
const agentRSSTarget = 15_000_000

// report is everything one run measured.
type report struct {
	cfg        config
	login      string
	start, end time.Time
	machine    machine
	algDirect  algorithms
	algFleet   algorithms
	// idle and after are the memory of fleetd, the agent and the sshd
	// listener, in that order, after the idle wait and after the run.
	idle, after []harness.Stat
	copies      []copyResult
	rtts        []rttResult
}

// processNames name the entries of report.idle and report.after.
var processNames = []string{"fleetd", "edge-agent", "sshd (listener; reference)"}

// print writes the report as Markdown.
func (r *report) print(w io.Writer) {
	m := r.machine
	fmt.Fprintf(w, "\n## sshbench, %s\n\n", r.start.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "Command: `go run ./tools/bench/sshbench%s` (%s).\n", r.flags(), r.end.Sub(r.start).Round(time.Second))
	fmt.Fprintf(w, "Machine: %s, %d cores, Linux %s, %s, %s; 1-minute load average %s at the start, %s at the end.\n",
		orUnknown(m.cpu), m.cores, orUnknown(m.kernel), m.goVersion, orUnknown(m.openssh), m.loadStart, m.loadEnd)
	fmt.Fprintf(w, "Negotiated by OpenSSH: direct %s; via the fleet %s.\n\n", r.algDirect, r.algFleet)

	fmt.Fprintf(w, "### Copy a %s file (median of %d; MB/s = 10^6 bytes/s; whole command, connection set-up included)\n\n", humanSize(r.cfg.Size), r.cfg.Runs)
	fmt.Fprintln(w, "| path | up MB/s (range) | up vs direct | down MB/s (range) | down vs direct | CPU s up, server + client¹ | CPU s down, server + client¹ |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|")
	var baseUp, baseDown float64
	for i, c := range r.copies {
		up, down := mbps(r.cfg.Size, median(c.up.elapsed)), mbps(r.cfg.Size, median(c.down.elapsed))
		if i == 0 {
			baseUp, baseDown = up, down
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %.2f + %.2f | %.2f + %.2f |\n", c.name,
			rate(r.cfg.Size, c.up.elapsed), ratio(up, baseUp), rate(r.cfg.Size, c.down.elapsed), ratio(down, baseDown),
			median(c.up.serverCPU).Seconds(), median(c.up.clientCPU).Seconds(),
			median(c.down.serverCPU).Seconds(), median(c.down.clientCPU).Seconds())
	}

	fmt.Fprintln(w, "\n¹ Median CPU time of one copy: server = sshd and its session processes, or fleetd + edge-agent;"+
		" client = scp and ssh, or tsh (ssh does not wait for its ProxyCommand, so tsh proxy's share is not counted).")

	fmt.Fprintf(w, "\n### Exec round trip: `true` on the device (%d runs each)\n\n", r.cfg.RTTRuns)
	fmt.Fprintln(w, "| mode | median ms | p90 ms | median vs direct | failed |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|")
	var failures []string
	for _, t := range r.rtts {
		vs := "-"
		if t.base >= 0 {
			vs = ratio(float64(median(t.elapsed)), float64(median(r.rtts[t.base].elapsed)))
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %d |\n", t.name, ms(median(t.elapsed)), ms(quantile(t.elapsed, 0.9)), vs, t.failed)
		if t.failed > 0 {
			failures = append(failures, fmt.Sprintf("%s: %d of %d failed; the first: %v", t.name, t.failed, r.cfg.RTTRuns, t.firstErr))
		}
	}
	for _, f := range failures {
		fmt.Fprintf(w, "\nFAILED: %s\n", strings.TrimRight(f, "\n"))
	}

	fmt.Fprintf(w, "\n### Memory (MB = 10^6 bytes)\n\n")
	fmt.Fprintf(w, "| process | idle RSS (after %s, one device) | of it anon + file | RSS after the run | peak RSS | target |\n", r.cfg.Idle.Round(time.Second))
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---|")
	for i, name := range processNames {
		if i >= len(r.idle) || i >= len(r.after) {
			break
		}
		target := ""
		if name == "edge-agent" {
			verdict := "met"
			if r.idle[i].RSS > agentRSSTarget {
				verdict = "MISSED"
			}
			target = fmt.Sprintf("idle ≤ %s MB: %s (%.1f MiB)", mb(agentRSSTarget), verdict, float64(r.idle[i].RSS)/(1<<20))
		}
		fmt.Fprintf(w, "| %s | %s | %s + %s | %s | %s | %s |\n", name, mb(r.idle[i].RSS), mb(r.idle[i].Anon), mb(r.idle[i].File),
			mb(r.after[i].RSS), mb(r.after[i].Peak), target)
	}
	fmt.Fprintln(w)
}

// flags are the command-line flags that differ from a full run's.
func (r *report) flags() string {
	d := defaultConfig()
	var f []string
	if r.cfg.Size != d.Size {
		f = append(f, "-size "+strings.ReplaceAll(humanSize(r.cfg.Size), " ", ""))
	}
	if r.cfg.Runs != d.Runs {
		f = append(f, fmt.Sprintf("-runs %d", r.cfg.Runs))
	}
	if r.cfg.RTTRuns != d.RTTRuns {
		f = append(f, fmt.Sprintf("-rtt-runs %d", r.cfg.RTTRuns))
	}
	if r.cfg.Idle != d.Idle {
		f = append(f, "-idle "+r.cfg.Idle.String())
	}
	if len(f) == 0 {
		return ""
	}
	return " " + strings.Join(f, " ")
}

// rate formats the median throughput of samples, with their range when
// there are several.
func rate(size int64, samples []time.Duration) string {
	s := fmt.Sprintf("%.1f", mbps(size, median(samples)))
	if len(samples) > 1 {
		lo, hi := mbps(size, slices.Max(samples)), mbps(size, slices.Min(samples))
		s += fmt.Sprintf(" (%.0f–%.0f)", lo, hi)
	}
	return s
}

func (a algorithms) String() string {
	return fmt.Sprintf("KEX %s, host key %s, cipher %s", orUnknown(a.Kex), orUnknown(a.HostKey), orUnknown(a.Cipher))
}

func orUnknown(s string) string {
	if s == "" {
		return "?"
	}
	return s
}
