package dashboard

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/linkhist"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/tools/browsertest"
)

// These tests drive the dashboard in Debian's headless Chromium
// (tools/browsertest): what only a browser shows (the policy refusing
// inline script, htmx and the live stream swapping the table, the charts
// drawn, the player playing, the phone layout). The dashboard runs over
// the real fleet services in memory (fixture_test.go) behind a stand-in
// login; tools/e2e runs it in fleetd with the real login, devices and
// terminal.

// browse starts a browser logged in as user on f's server.
func browse(t *testing.T, f *fixture, user string, opt browsertest.Options) *browsertest.Browser {
	t.Helper()
	f.testLogin()
	b := browsertest.New(t, opt)
	b.Do("log in", chromedp.Navigate(f.http.URL+"/test-login?user="+user))
	return b
}

// testLogin adds a stand-in login page: it logs the browser in as the user
// it names (a test server only).
func (f *fixture) testLogin() {
	f.loginOnce.Do(func() {
		f.mux.HandleFunc("GET /test-login", func(w http.ResponseWriter, r *http.Request) {
			c, _ := f.login.logIn(r.URL.Query().Get("user"))
			http.SetCookie(w, c)
			http.Redirect(w, r, "/web/", http.StatusSeeOther)
		})
	})
}

// poll waits until the page's expression is true (through navigations:
// an evaluation that fails while a page loads is tried again).
func poll(t *testing.T, b *browsertest.Browser, what, expr string) time.Duration {
	t.Helper()
	start := time.Now()
	var last error
	for time.Since(start) < 60*time.Second {
		ctx, cancel := context.WithTimeout(b.Ctx, 5*time.Second)
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool]("!!("+expr+")"))
		cancel()
		if err == nil && ok {
			return time.Since(start)
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("browser: waited 60s for %s (%s); last error %v", what, expr, last)
	return 0
}

func eval[T any](t *testing.T, b *browsertest.Browser, expr string) T {
	t.Helper()
	return browsertest.Get(b, expr, chromedp.Evaluate[T](expr))
}

// TestBrowserRefusesInlineScript: the policy holds in the browser: an
// inline script put in the page does not run, nor does an event handler
// attribute, while the fleet's own scripts (htmx, the dashboard's) do.
func TestBrowserRefusesInlineScript(t *testing.T) {
	f := newFixture(t, false)
	ctx := context.Background()
	// An event a device wrote, shown to the admin on the device's page.
	xss := `<script>window.pwned=1</script><img src=x onerror="window.pwned=2">`
	if err := f.events.Append(ctx, &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, Device: f.ids["pi-1"], Message: xss}); err != nil {
		t.Fatal(err)
	}
	b := browse(t, f, "alice", browsertest.Options{})
	b.Do("open pi-1", chromedp.Navigate(f.http.URL+"/web/devices/pi-1"), chromedp.WaitVisible(chromedp.CSS("h1")))
	if got := eval[bool](t, b, "typeof htmx === 'object' && !!document.querySelector('time[title]')"); !got {
		t.Error("the fleet's own scripts did not run (htmx, relative times)")
	}
	text := browsertest.Get(b, "events", chromedp.Text(chromedp.CSS("main")))
	if !strings.Contains(text, "<script>window.pwned=1</script>") {
		t.Error("the event's text is not shown as text")
	}
	// Script put in the page by other means.
	b.Do("inject", chromedp.Evaluate[chromedp.Void](`(function () {
		var s = document.createElement('script'); s.textContent = 'window.pwned = 3'; document.body.appendChild(s);
		var d = document.createElement('div'); d.innerHTML = '<img src="/nope" onerror="window.pwned = 4">'; document.body.appendChild(d);
		var st = document.createElement('style'); st.textContent = 'body { background: red }';
		st.removeAttribute('nonce'); st.nonce = ''; document.head.appendChild(st);
	})()`))
	time.Sleep(500 * time.Millisecond) // the image's error event, had it been allowed
	if got := eval[string](t, b, "String(window.pwned)"); got != "undefined" {
		t.Errorf("injected script ran: window.pwned = %s", got)
	}
	if bg := eval[string](t, b, "getComputedStyle(document.body).backgroundColor"); bg == "rgb(255, 0, 0)" {
		t.Error("an inline style element without the nonce applied")
	}
}

// TestBrowserDevicesLive: the table shows a device that joins and marks a
// device offline when its tunnel goes, without a reload; the filters work
// as one types; the summary counts filter.
func TestBrowserDevicesLive(t *testing.T) {
	f := newFixture(t, false)
	b := browse(t, f, "bob", browsertest.Options{})
	b.Do("open the devices", chromedp.WaitVisible(chromedp.CSS("table.devices")))
	poll(t, b, "the live stream", `document.querySelector('#fleet').dataset.live === 'open'`)
	b.Do("mark", chromedp.Evaluate[chromedp.Void](`window.notReloaded = true`))

	joinedAt := time.Now()
	d, err := f.reg.Register(context.Background(), devices.Device{Name: "pi-9", Labels: map[string]string{"site": "north"}})
	if err != nil {
		t.Fatal(err)
	}
	poll(t, b, "pi-9 to show", `[...document.querySelectorAll('table.devices a.name')].some(a => a.textContent === 'pi-9')`)
	t.Logf("a device that joined showed in %s", time.Since(joinedAt).Round(time.Millisecond))
	f.links.set(d.ID, true, 20*time.Millisecond)
	poll(t, b, "pi-9 online", fmt.Sprintf(`!!document.querySelector('#d-%s.is-online')`, d.ID))
	goneAt := time.Now()
	f.links.set(d.ID, false, 0)
	poll(t, b, "pi-9 offline", fmt.Sprintf(`!!document.querySelector('#d-%s.is-offline')`, d.ID))
	t.Logf("a device whose tunnel went showed offline in %s", time.Since(goneAt).Round(time.Millisecond))
	if !eval[bool](t, b, "window.notReloaded === true") {
		t.Error("the page reloaded")
	}

	// Typing filters.
	b.Do("type", chromedp.SendKeys(chromedp.ID("q"), "pi-9"))
	poll(t, b, "the filter", `document.querySelectorAll('table.devices a.name').length === 1`)
	poll(t, b, "the address to follow", `location.search.includes('q=pi-9')`)
	b.Do("clear", chromedp.Evaluate[chromedp.Void](`(function () { var q = document.getElementById('q'); q.value = ''; q.dispatchEvent(new Event('input', {bubbles: true})); })()`),
		chromedp.SendKeys(chromedp.ID("label"), "site=north"))
	poll(t, b, "the label filter", `document.querySelectorAll('table.devices a.name').length === 3`)
	// A status chosen with the keyboard filters too.
	b.Do("choose a status", chromedp.Focus(chromedp.ID("status")), chromedp.KeyEvent(kb.ArrowDown))
	poll(t, b, "the status filter", `location.search.includes('status=online') && document.querySelectorAll('table.devices a.name').length === 0`)
	// A count is a filter.
	b.Do("click offline", chromedp.Click(chromedp.CSS(`a.count.offline`)))
	poll(t, b, "the offline filter", `location.search.includes('status=offline') && document.querySelector('a.count.offline.active')`)
	// "/" goes to the search box.
	b.Do("slash", chromedp.Click(chromedp.CSS("h1")), chromedp.KeyEvent("/"))
	if got := eval[string](t, b, "document.activeElement.id"); got != "q" {
		t.Errorf("after /, the focus is on %q, want the search box", got)
	}
}

// TestBrowserClickDuringRedraw: a click whose press and release straddle a
// live update is not lost. The update waits while the button is held, and
// is drawn on release; a filter typed a moment before does not redraw the
// region again when the focus leaves the box.
func TestBrowserClickDuringRedraw(t *testing.T) {
	f := newFixture(t, false)
	b := browse(t, f, "bob", browsertest.Options{})
	b.Do("open the devices", chromedp.WaitVisible(chromedp.CSS("table.devices")))
	poll(t, b, "the live stream", `document.querySelector('#fleet').dataset.live === 'open'`)
	b.Do("type", chromedp.SendKeys(chromedp.ID("label"), "site=north"))
	poll(t, b, "the label filter", `location.search.includes('label=site') && document.querySelector('#fleet').dataset.live === 'open'`)
	center := func(sel string) (float64, float64) {
		r := eval[[]float64](t, b, fmt.Sprintf(`(function () { var r = document.querySelector(%q).getBoundingClientRect(); return [r.x + r.width/2, r.y + r.height/2]; })()`, sel))
		return r[0], r[1]
	}
	press := func(x, y float64) {
		b.Do("press", chromedp.MouseEvent(chromedp.MousePressed, x, y, chromedp.ButtonLeft, chromedp.ClickCount(1)))
	}
	release := func(x, y float64) {
		b.Do("release", chromedp.MouseEvent(chromedp.MouseReleased, x, y, chromedp.ButtonLeft, chromedp.ClickCount(1)))
	}

	// Held on a count, right after typing, while an update comes: the
	// click still filters.
	b.Do("mark", chromedp.Evaluate[chromedp.Void](`window.notReloaded = true`))
	x, y := center("a.count.offline")
	press(x, y)
	f.links.set(f.ids["pi-1"], true, 20*time.Millisecond)
	poll(t, b, "the update to wait", `document.querySelector('#fleet').dataset.held === 'true'`)
	release(x, y)
	poll(t, b, "the offline filter", `location.search.includes('status=offline') && location.search.includes('label=site') && !!document.querySelector('a.count.offline.active') && window.notReloaded === undefined`)

	// Held on the heading, with no click to make: the update waits, and
	// is drawn on release.
	b.Do("the label filter again", chromedp.Navigate(f.http.URL+"/web/?label=site%3Dnorth"))
	poll(t, b, "the live stream", `document.querySelector('#fleet').dataset.live === 'open'`)
	x, y = center("h1")
	press(x, y)
	f.links.set(f.ids["pi-1"], false, 0)
	poll(t, b, "the update to wait", `document.querySelector('#fleet').dataset.held === 'true'`)
	if eval[bool](t, b, fmt.Sprintf(`!!document.querySelector('#d-%s.is-offline')`, f.ids["pi-1"])) {
		t.Error("the update was drawn while the button was held")
	}
	release(x, y)
	poll(t, b, "the update on release", fmt.Sprintf(`!!document.querySelector('#d-%s.is-offline') && !document.querySelector('#fleet').dataset.held`, f.ids["pi-1"]))
}

// TestBrowserChartsAndPlayer: the device page draws its link charts from
// the history, and a recording plays, pauses and changes speed.
func TestBrowserChartsAndPlayer(t *testing.T) {
	f := newFixture(t, false)
	id := f.ids["pi-1"]
	now := time.Now()
	since := now.Add(-48 * time.Hour)
	var up, sent uint64
	for h := 47; h >= 0; h-- {
		up += 5000
		sent += 100
		f.history.Record(now.Add(-time.Duration(h)*time.Hour), []linkhist.Sample{{DeviceID: id, Online: h%7 != 0, Since: since,
			RTT: time.Duration(30+h%11) * time.Millisecond, BytesUp: up, BytesDown: up / 3, Sent: sent, Lost: sent / 50, Connects: 10 + h/20}})
	}
	var cast strings.Builder
	cast.WriteString(`{"version": 2, "width": 80, "height": 24}` + "\n")
	for i := range 20 {
		fmt.Fprintf(&cast, "[%.2f, \"o\", \"line %02d from the device\\r\\n\"]\n", 0.1*float64(i), i)
	}
	f.recording("r-1", "bob", "pi-1", cast.String())
	b := browse(t, f, "bob", browsertest.Options{})
	b.Do("open pi-1", chromedp.Navigate(f.http.URL+"/web/devices/pi-1"))
	poll(t, b, "the charts", `document.querySelector('#charts').dataset.drawn === 'hours' && document.querySelectorAll('#charts .uplot canvas').length === 4`)
	if n := eval[int](t, b, `+document.querySelector('[data-chart="rtt"]').dataset.points`); n < 30 {
		t.Errorf("the RTT chart has %d points, want the 40-odd online hours", n)
	}
	b.Do("days", chromedp.Click(chromedp.CSS(`button[data-range="days"]`)))
	poll(t, b, "the daily charts", `document.querySelector('#charts').dataset.drawn === 'days'`)

	b.Do("play", chromedp.Navigate(f.http.URL+"/web/recordings/r-1"), chromedp.WaitEnabled(chromedp.ID("play")))
	b.Do("speed", chromedp.SetValue(chromedp.ID("speed"), "4"), chromedp.Click(chromedp.ID("play")))
	poll(t, b, "the player to finish", `document.getElementById('player').dataset.state === 'finished'`)
	text := eval[string](t, b, `(function () { var t = window.dashPlayer, out = []; for (var i = 0; i < t.buffer.active.length; i++) out.push(t.buffer.active.getLine(i).translateToString(true)); return out.join('\n'); })()`)
	if !strings.Contains(text, "line 00 from the device") || !strings.Contains(text, "line 19 from the device") {
		t.Errorf("the player showed %q", text)
	}
	// Seek back to the start, play, pause.
	b.Do("again", chromedp.Click(chromedp.ID("play")))
	b.Do("pause", chromedp.Click(chromedp.ID("play")))
	if st := eval[string](t, b, `document.getElementById('player').dataset.state`); st != "paused" && st != "finished" {
		t.Errorf("after pause the player is %q", st)
	}
}

// TestBrowserPhone: on a phone-sized screen the tables become cards and
// nothing is wider than the screen.
func TestBrowserPhone(t *testing.T) {
	f := newFixture(t, false)
	b := browse(t, f, "alice", browsertest.Options{})
	b.Do("open", chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile, chromedp.EmulateTouch), chromedp.Reload(),
		chromedp.WaitVisible(chromedp.CSS("table.devices")))
	if pos := eval[string](t, b, `getComputedStyle(document.querySelector('table.devices thead')).position`); pos != "absolute" {
		t.Errorf("the table's head is %q on a phone, want hidden (absolute)", pos)
	}
	if w := eval[int](t, b, `document.documentElement.scrollWidth`); w > 400 {
		t.Errorf("the page is %d px wide on a 390 px screen", w)
	}
	b.Do("device", chromedp.Navigate(f.http.URL+"/web/devices/pi-1"), chromedp.WaitVisible(chromedp.CSS("h1")))
	if w := eval[int](t, b, `document.documentElement.scrollWidth`); w > 400 {
		t.Errorf("the device page is %d px wide on a 390 px screen", w)
	}
	b.Screenshot(t.TempDir(), "phone")
}

// TestBrowserDevicePageLive: the device page's status follows the device
// without a reload, and its Connect button comes with the device.
func TestBrowserDevicePageLive(t *testing.T) {
	f := newFixture(t, false)
	b := browse(t, f, "bob", browsertest.Options{})
	b.Do("pi-2", chromedp.Navigate(f.http.URL+"/web/devices/pi-2"), chromedp.WaitVisible(chromedp.CSS("h1")))
	poll(t, b, "the live stream", `document.getElementById('device-live').dataset.live === 'open'`)
	b.Do("mark", chromedp.Evaluate[chromedp.Void](`window.notReloaded = true`))
	if !eval[bool](t, b, `document.querySelector('#device-status .badge.offline') !== null && !document.getElementById('connect')`) {
		t.Fatal("pi-2 does not show offline, or offers Connect")
	}
	f.links.set(f.ids["pi-2"], true, 30*time.Millisecond)
	poll(t, b, "pi-2 online", `document.querySelector('#device-status .badge.online') !== null && /30 ms/.test(document.getElementById('device-status').textContent)`)
	poll(t, b, "the Connect button", `!!document.getElementById('connect')`)
	if !eval[bool](t, b, "window.notReloaded === true") {
		t.Error("the page reloaded")
	}
}

// TestBrowserHiddenTabLetsItsStreamGo: a hidden tab closes its live
// stream (a browser holds six connections to a host over HTTP/1.1) and
// opens a new one when shown, which brings what changed meanwhile.
func TestBrowserHiddenTabLetsItsStreamGo(t *testing.T) {
	f := newFixture(t, false)
	b := browse(t, f, "bob", browsertest.Options{})
	b.Do("open", chromedp.WaitVisible(chromedp.CSS("table.devices")))
	poll(t, b, "the live stream", `document.querySelector('#fleet').dataset.live === 'open'`)
	setHidden := func(hidden bool) {
		b.Do(fmt.Sprintf("hidden=%v", hidden), chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`(function () {
			Object.defineProperty(document, 'hidden', {configurable: true, get: function () { return %v; }});
			document.dispatchEvent(new Event('visibilitychange'));
		})()`, hidden)))
	}
	setHidden(true)
	poll(t, b, "the stream parked", `document.querySelector('#fleet').dataset.live === 'parked'`)
	deadline := time.Now().Add(30 * time.Second)
	for f.streams.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d live streams still open on the server for a hidden tab", f.streams.Load())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := f.reg.Register(context.Background(), devices.Device{Name: "pi-8", Labels: map[string]string{"site": "north"}}); err != nil {
		t.Fatal(err)
	}
	setHidden(false)
	poll(t, b, "a new stream", `document.querySelector('#fleet').dataset.live === 'open'`)
	if n := f.streams.Load(); n != 1 {
		t.Errorf("%d live streams open on the server, want 1", n)
	}
	poll(t, b, "pi-8 listed", `[...document.querySelectorAll('table.devices a.name')].some(a => a.textContent === 'pi-8')`)
}
