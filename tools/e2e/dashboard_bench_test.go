package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"remoteler.dev/edge/tools/harness"
)

// TestDashboardBenchmark measures the dashboard with many devices, in
// Debian's headless Chromium against a real fleetd whose devices are
// simulated (tools/devsim: real tunnel clients, one UDP socket each):
//
//   - the devices page, loaded cold right after the login (a new browser
//     profile): time to first paint, to the table (DOMContentLoaded), and
//     to an interactive, live list (its live stream open), and the time a
//     search takes to filter the table as one types;
//   - the page's weight: bytes on the wire and decoded, for the page, its
//     scripts and its styles;
//   - fleetd's CPU per connected dashboard with live updates: fleetd's
//     CPU (from /proc) over a window with no dashboard, and again with
//     several dashboards open on the devices page.
//
// It runs in CI small (200 devices, a 10 s window: so it cannot rot) and
// prints its figures with -v; the environment sets the real run
// (docs/benchmarks.md, "Dashboard"):
//
//	DASH_BENCH_DEVICES=10000 DASH_BENCH_PROCS=4 DASH_BENCH_DASHBOARDS=4 DASH_BENCH_WINDOW=60s \
//	  go test -count=1 -v -timeout 2h -run TestDashboardBenchmark ./tools/e2e
func TestDashboardBenchmark(t *testing.T) {
	devices, procs, dashboards, window := 200, 1, 2, 10*time.Second
	envInt := func(name string, dst *int) {
		if s := os.Getenv(name); s != "" {
			v, err := strconv.Atoi(s)
			if err != nil || v < 1 {
				t.Fatalf("%s=%q: want a positive number", name, s)
			}
			*dst = v
		}
	}
	envInt("DASH_BENCH_DEVICES", &devices)
	envInt("DASH_BENCH_PROCS", &procs)
	envInt("DASH_BENCH_DASHBOARDS", &dashboards)
	if s := os.Getenv("DASH_BENCH_WINDOW"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < time.Second {
			t.Fatalf("DASH_BENCH_WINDOW=%q: want a duration of a second or more", s)
		}
		window = d
	}
	simBin, err := harness.Build(t.Context(), t.TempDir(), nil, "remoteler.dev/edge/tools/cmd/devsim")
	if err != nil {
		t.Fatal(err)
	}
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	d := startDashFleet(t, "metrics_listen: "+metricsAddr+"\nlog_level: info\n")
	join := d.f.Token(fmt.Sprintf("--uses=%d", devices), "--ttl=4h")
	per := (devices + procs - 1) / procs
	for i := range procs {
		first, count := i*per, min(per, devices-i*per)
		if count <= 0 {
			break
		}
		harness.Start(t, harness.Cmd{Name: fmt.Sprintf("devsim-%d", i), Path: simBin.Path("devsim"),
			Args: []string{"--fleet", d.f.Addr, "--token", join, "--count", strconv.Itoa(count), "--first", strconv.Itoa(first),
				"--data", t.TempDir()}})
	}
	start := time.Now()
	if !harness.Eventually(40*time.Minute, func() bool {
		n, err := metricValue(metricsAddr, "fleet_tunnels")
		return err == nil && int(n) >= devices
	}) {
		t.Fatalf("the %d devices did not connect in 40 minutes", devices)
	}
	t.Logf("%d devices connected in %s", devices, time.Since(start).Round(time.Second))
	b := d.adminIn(t)
	waitJS(t, b.Ctx, "the live list", `document.querySelector('#fleet').dataset.liveAt`)
	load := pageValue[loadFigures](t, b, loadJS)
	// From the first key to a table of only the matching devices (the
	// page swaps the table in: watch the whole body).
	b.Do("search", chromedp.Evaluate[chromedp.Void](`window.searchStart = performance.now();
		new MutationObserver(function (m, o) {
			var names = [...document.querySelectorAll('table.devices a.name')].map(a => a.textContent);
			if (names.length > 0 && names.every(n => n.includes('sim-0009'))) { window.searchEnd = performance.now(); o.disconnect(); }
		}).observe(document.body, {childList: true, subtree: true});`),
		chromedp.SendKeys(chromedp.ID("q"), "sim-0009"))
	waitJS(t, b.Ctx, "the search", `window.searchEnd > 0`)
	search := pageValue[float64](t, b, `window.searchEnd - window.searchStart`)

	pid := d.f.Proc.PID()
	b.Do("leave", chromedp.Navigate("about:blank"))
	idle := cpuOver(t, pid, window)
	for i := range dashboards {
		tctx, cancel := chromedp.NewContext(b.Ctx)
		t.Cleanup(cancel)
		if err := chromedp.Do(tctx, chromedp.Navigate(d.origin()+"/web/")); err != nil {
			t.Fatalf("dashboard %d: %v", i, err)
		}
		if !harness.Eventually(5*time.Minute, func() bool {
			ok, err := chromedp.Run(tctx, chromedp.Evaluate[bool](`!!(document.querySelector('#fleet') && document.querySelector('#fleet').dataset.live === 'open')`))
			return err == nil && ok
		}) {
			t.Fatalf("dashboard %d did not go live", i)
		}
	}
	busy := cpuOver(t, pid, window)
	rss, _ := metricValue(metricsAddr, "process_resident_memory_bytes")

	var out strings.Builder
	fmt.Fprintf(&out, "\n**The devices page with %d devices** (cold: a new browser profile, right after the login; ms from the navigation's start):\n\n", devices)
	fmt.Fprintln(&out, "| first paint | first contentful paint | table in the DOM (DOMContentLoaded) | page loaded | live (stream open) | a search filters the table |")
	fmt.Fprintln(&out, "|---:|---:|---:|---:|---:|---:|")
	fmt.Fprintf(&out, "| %.0f | %.0f | %.0f | %.0f | %.0f | %.0f |\n\n", load.FirstPaint, load.FirstContentfulPaint, load.DOMContentLoaded, load.Load, load.Live, search)
	fmt.Fprintln(&out, "**Its weight** (bytes; on the wire: what the transfer took, gzip and headers included):")
	fmt.Fprintln(&out)
	fmt.Fprintln(&out, "| | on the wire | decoded |")
	fmt.Fprintln(&out, "|---|---:|---:|")
	fmt.Fprintf(&out, "| the page (HTML, 100 rows) | %d | %d |\n", load.PageWire, load.PageDecoded)
	fmt.Fprintf(&out, "| scripts (%d) | %d | %d |\n", load.Scripts, load.ScriptWire, load.ScriptDecoded)
	fmt.Fprintf(&out, "| styles (%d) | %d | %d |\n", load.Styles, load.StyleWire, load.StyleDecoded)
	fmt.Fprintf(&out, "| in all | %d | %d |\n\n", load.PageWire+load.ScriptWire+load.StyleWire, load.PageDecoded+load.ScriptDecoded+load.StyleDecoded)
	fmt.Fprintf(&out, "**fleetd's CPU with live dashboards** (%d devices connected; %s each; fleetd's RSS at the end %.0f MB):\n\n", devices, window, rss/1e6)
	fmt.Fprintln(&out, "| dashboards | fleetd CPU | per dashboard |")
	fmt.Fprintln(&out, "|---:|---:|---:|")
	fmt.Fprintf(&out, "| 0 | %.1f%% of a core | |\n", 100*idle)
	fmt.Fprintf(&out, "| %d | %.1f%% of a core | %.2f%% of a core |\n", dashboards, 100*busy, 100*(busy-idle)/float64(dashboards))
	t.Log(out.String())
	if load.Live <= 0 || load.PageDecoded <= 0 || load.Scripts == 0 {
		t.Errorf("the page's figures are missing: %+v", load)
	}
}

// loadFigures are what the page's Performance API says of its load.
type loadFigures struct {
	FirstPaint           float64 `json:"first_paint"`
	FirstContentfulPaint float64 `json:"first_contentful_paint"`
	DOMContentLoaded     float64 `json:"dom_content_loaded"`
	Load                 float64 `json:"load"`
	Live                 float64 `json:"live"`
	PageWire             int64   `json:"page_wire"`
	PageDecoded          int64   `json:"page_decoded"`
	Scripts              int     `json:"scripts"`
	ScriptWire           int64   `json:"script_wire"`
	ScriptDecoded        int64   `json:"script_decoded"`
	Styles               int     `json:"styles"`
	StyleWire            int64   `json:"style_wire"`
	StyleDecoded         int64   `json:"style_decoded"`
}

const loadJS = `(function () {
	var nav = performance.getEntriesByType('navigation')[0], out = {};
	performance.getEntriesByType('paint').forEach(function (p) {
		if (p.name === 'first-paint') out.first_paint = p.startTime;
		if (p.name === 'first-contentful-paint') out.first_contentful_paint = p.startTime;
	});
	out.dom_content_loaded = nav.domContentLoadedEventEnd;
	out.load = nav.loadEventEnd;
	out.live = +document.querySelector('#fleet').dataset.liveAt;
	out.page_wire = nav.transferSize; out.page_decoded = nav.decodedBodySize;
	out.scripts = 0; out.script_wire = 0; out.script_decoded = 0; out.styles = 0; out.style_wire = 0; out.style_decoded = 0;
	performance.getEntriesByType('resource').forEach(function (r) {
		if (r.initiatorType === 'script') { out.scripts++; out.script_wire += r.transferSize; out.script_decoded += r.decodedBodySize; }
		if (r.initiatorType === 'link' || /\.css(\?|$)/.test(r.name)) { out.styles++; out.style_wire += r.transferSize; out.style_decoded += r.decodedBodySize; }
	});
	return out;
})()`

// cpuOver measures a process's CPU (user and system) over d, as a share
// of one core.
func cpuOver(t *testing.T, pid int, d time.Duration) float64 {
	t.Helper()
	a, err := cpuTicks(pid)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	time.Sleep(d) // a measuring window, not synchronisation
	b, err := cpuTicks(pid)
	if err != nil {
		t.Fatal(err)
	}
	const ticksPerSecond = 100 // USER_HZ on Linux
	return float64(b-a) / ticksPerSecond / time.Since(start).Seconds()
}

func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The fields after the command's closing parenthesis: utime and stime
	// are the line's 14th and 15th.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+2 > len(s) {
		return 0, errors.New("unreadable /proc stat")
	}
	f := strings.Fields(s[i+2:])
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, errors.New("bad /proc stat")
	}
	return u + st, nil
}

// metricValue reads one unlabelled metric from fleetd's metrics endpoint.
func metricValue(addr, name string) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/metrics", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var body strings.Builder
	buf := make([]byte, 32<<10)
	for {
		n, err := resp.Body.Read(buf)
		body.Write(buf[:n])
		if err != nil {
			break
		}
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(body.String())
	if m == nil {
		return 0, fmt.Errorf("no %s in the metrics", name)
	}
	return strconv.ParseFloat(m[1], 64)
}
