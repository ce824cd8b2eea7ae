package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"remoteler.dev/edge/tools/harness"
)

// rssTarget is DESIGN.md's target for the agent's idle RSS, in bytes.
const rssTarget = 15_000_000

// report is everything one run measured.
type report struct {
	cfg        config
	start, end time.Time
	machine    machine
	sizes      []binSize
	agents     []*agent // the native one first
	qemuNote   string   // why there is no agent under qemu; "" when there is
	xzNote     string   // why there are no xz figures; "" when there are
}

// print writes the report as Markdown.
func (r *report) print(w io.Writer) {
	m := r.machine
	fmt.Fprintf(w, "\n### armbench, %s\n\n", r.start.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "Command: `go run ./tools/bench/armbench%s` (%s).\n", r.flags(), r.end.Sub(r.start).Round(time.Second))
	fmt.Fprintf(w, "Machine: %s, %d cores, Linux %s, %s, %s, %s; 1-minute load average %s at the start, %s at the end.\n\n",
		orUnknown(m.cpu), m.cores, orUnknown(m.kernel), m.goVersion, orNone(m.qemu, qemuBinary), orNone(m.xz, "xz"), m.loadStart, m.loadEnd)

	fmt.Fprintln(w, "**Agent binary size** (cross/build.sh: static, stripped, as released; MB = 10^6 bytes; ratio = compressed / raw):")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | bytes | MB | gzip -9 MB | gzip ratio | xz -9 MB | xz ratio | of the 12 MB budget |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|")
	for _, s := range r.sizes {
		xz, xzRatio := "n/a", "n/a"
		if s.xz > 0 {
			xz, xzRatio = fmt.Sprintf("%.2f", mb(s.xz)), percent(s.xz, s.raw)
		}
		budget := "—"
		if s.target == budgetTarget {
			budget = fmt.Sprintf("%s (%.2f MB left)", percent(s.raw, sizeBudget), mb(sizeBudget-s.raw))
			if s.raw > sizeBudget {
				budget = fmt.Sprintf("%s (**over by %.2f MB**)", percent(s.raw, sizeBudget), mb(s.raw-sizeBudget))
			}
		}
		fmt.Fprintf(w, "| %s | %s | %.2f | %.2f | %s | %s | %s | %s |\n",
			s.target, thousands(s.raw), mb(s.raw), mb(s.gzip), percent(s.gzip, s.raw), xz, xzRatio, budget)
	}
	if r.xzNote != "" {
		fmt.Fprintf(w, "\nxz: n/a, %s.\n", r.xzNote)
	}

	fmt.Fprintln(w)
	fmt.Fprintf(w, "**Agent idle** (joined, tunnel up, no sessions; memory read at the end of a %s idle window that starts %s after the device is online; CPU = utime+stime over the window as %% of one core; switches = context switches of all its threads per second over the window, about how often it wakes up):\n\n",
		r.cfg.Idle, r.cfg.Settle)
	fmt.Fprintln(w, "| agent | runs as | VmRSS MB | RssAnon MB | RssFile MB | VmHWM MB | CPU % | switches/s | RSS vs the 15 MB target |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|---:|---:|---|")
	for _, a := range r.agents {
		cpu := 100 * a.idleCPU.Seconds() / a.window.Seconds()
		vs := fmt.Sprintf("%s of it", percent(a.mem.RSS, rssTarget))
		if a.mem.RSS > rssTarget {
			vs = fmt.Sprintf("**over**: %s of it", percent(a.mem.RSS, rssTarget))
		}
		if a.emulated {
			vs = "not comparable: the emulator's RSS¹"
		}
		if a.downs > 0 {
			vs += fmt.Sprintf(" (tunnel went down %d× while idle)", a.downs)
		}
		fmt.Fprintf(w, "| %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.1f | %s |\n",
			a.target, a.runsAs(), mb(a.mem.RSS), mb(a.mem.Anon), mb(a.mem.File), mb(a.mem.Peak), cpu, float64(a.wakeups)/a.window.Seconds(), vs)
	}
	if r.qemuNote != "" {
		fmt.Fprintf(w, "| %s | under %s | n/a | n/a | n/a | n/a | n/a | n/a | %s |\n", qemuTarget, qemuBinary, r.qemuNote)
	}
	if runtime.GOARCH != "arm64" {
		fmt.Fprintf(w, "| %s | on an arm64 CPU | not measurable here | | | | | | |\n", qemuTarget)
	}
	if r.qemuNote == "" {
		fmt.Fprintf(w, "\n¹ Under qemu-user the process measured is the emulator (%s): its RSS holds qemu itself, its translated-code cache and the guest's memory, and its CPU includes the translation. Neither is the agent's figure on an arm64 CPU.\n", qemuBinary)
	}

	fmt.Fprintln(w)
	fmt.Fprintf(w, "**Start to tunnel up** (wall time from exec to the agent's `tunnel up` log line; fleetd on 127.0.0.1; a restart is of the joined agent, median of %d):\n\n", r.cfg.Restarts)
	fmt.Fprintln(w, "| agent | runs as | first start (join + tunnel) s | restart, median s | restart, range s | restart vs native |")
	fmt.Fprintln(w, "|---|---|---:|---:|---:|---:|")
	var base time.Duration
	for i, a := range r.agents {
		med := median(a.restarts)
		if i == 0 {
			base = med
		}
		fmt.Fprintf(w, "| %s | %s | %.3f | %.3f | %.3f–%.3f | %.1f× |\n", a.target, a.runsAs(), a.first.Seconds(), med.Seconds(),
			slices.Min(a.restarts).Seconds(), slices.Max(a.restarts).Seconds(), med.Seconds()/base.Seconds())
	}
	if r.qemuNote != "" {
		fmt.Fprintf(w, "| %s | under %s | n/a | n/a | n/a | n/a |\n", qemuTarget, qemuBinary)
	}
	if runtime.GOARCH != "arm64" {
		fmt.Fprintf(w, "| %s | on an arm64 CPU | not measurable here | | | |\n", qemuTarget)
	}
	if r.qemuNote == "" {
		fmt.Fprintln(w, "\nUnder qemu the time includes bash running cross/qemu-exec.sh and qemu's own start-up, and every instruction of the agent (TLS and certificate crypto above all) is emulated.")
	}
}

// runsAs says how the agent ran.
func (a *agent) runsAs() string {
	if a.emulated {
		return "under " + qemuBinary
	}
	return "native"
}

// flags are the command-line flags that differ from a full run's.
func (r *report) flags() string {
	d := defaultConfig()
	c := r.cfg
	var b strings.Builder
	if !slices.Equal(c.Targets, d.Targets) {
		fmt.Fprintf(&b, " -targets %s", strings.Join(c.Targets, ","))
	}
	if c.Idle != d.Idle {
		fmt.Fprintf(&b, " -idle %s", c.Idle)
	}
	if c.Settle != d.Settle {
		fmt.Fprintf(&b, " -settle %s", c.Settle)
	}
	if c.Restarts != d.Restarts {
		fmt.Fprintf(&b, " -restarts %d", c.Restarts)
	}
	if c.NoQEMU {
		b.WriteString(" -no-qemu")
	}
	return b.String()
}

// median is the middle value (the lower of the two middle ones for an
// even count); 0 for none.
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

// mb is n bytes in MB (10^6 bytes).
func mb(n int64) float64 { return float64(n) / 1e6 }

// percent is a/b as a whole percentage.
func percent(a, b int64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.0f%%", 100*float64(a)/float64(b))
}

// thousands writes n with commas between groups of three digits.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func orNone(s, what string) string {
	if s == "" {
		return "no " + what
	}
	return s
}

// machine describes where the figures come from.
type machine struct {
	cpu       string
	cores     int
	kernel    string
	goVersion string
	qemu      string // first line of qemu-aarch64-static --version
	xz        string // first line of xz --version
	loadStart string
	loadEnd   string
}

// describeMachine reads the CPU model, core count, kernel and versions.
func describeMachine(ctx context.Context) machine {
	m := machine{cores: runtime.NumCPU(), goVersion: runtime.Version(), loadStart: loadAverage()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for l := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.kernel = strings.TrimSpace(string(b))
	}
	firstLine := func(s string) string { l, _, _ := strings.Cut(s, "\n"); return strings.TrimSpace(l) }
	if r, err := harness.RunErr(ctx, "", harness.Cmd{Path: qemuBinary, Args: []string{"--version"}}); err == nil {
		m.qemu = firstLine(r.Stdout)
	}
	if r, err := harness.RunErr(ctx, "", harness.Cmd{Path: "xz", Args: []string{"--version"}}); err == nil {
		m.xz = firstLine(r.Stdout)
	}
	return m
}

// loadAverage is the 1-minute load average.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}
