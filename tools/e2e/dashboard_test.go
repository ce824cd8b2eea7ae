package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/input"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"
	"github.com/pquerna/otp/totp"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/browsertest"
	"remoteler.dev/edge/tools/harness"
	"remoteler.dev/edge/tools/linksim"
	"remoteler.dev/edge/tools/oidcprovider"
)

// The dashboard in Debian's headless Chromium, against real fleetd, real
// agents and the fleet's real browser login. fleet/dashboard's own tests
// cover its pages over the fleet's services in memory.

// dashDomain is the fleet's web name in these tests; the browser maps it
// to loopback.
const dashDomain = "fleet.test"

// dashRoles: north sees only site=north devices, as root.
const dashRoles = `kind: role
version: v1
metadata: {name: north}
spec:
  allow: {device_labels: {site: north}, logins: [root]}
`

// dashFleet is a fleetd with its web name and fast link history samples.
type dashFleet struct {
	f    *harness.Fleet
	port string
	spki string // base64 SHA-256 of the fleet CA's key, for Chromium
}

func startDashFleet(t *testing.T, config string) *dashFleet {
	t.Helper()
	f := startFleetWith(t, "apps_domain: "+dashDomain+"\npublic_addrs: ["+dashDomain+", 127.0.0.1, localhost]\nlink_history_every: 1s\n"+config)
	d := &dashFleet{f: f}
	_, d.port, _ = net.SplitHostPort(f.Addr)
	spki, err := harness.CASPKI(f.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	d.spki = spki
	f.Ctl(dashRoles, "create", "-f", "-")
	return d
}

func (d *dashFleet) origin() string { return "https://" + dashDomain + ":" + d.port }

// browser starts Chromium that reaches the fleet by its name and trusts
// its CA.
func (d *dashFleet) browser(t *testing.T) *browsertest.Browser {
	t.Helper()
	return browsertest.New(t, browsertest.Options{Hosts: map[string]string{dashDomain: "127.0.0.1"}, TrustedSPKI: []string{d.spki},
		Timeout: 10 * time.Minute})
}

// logIn fills the login form; totpSecret, when set, answers the one-time
// code question.
func (d *dashFleet) logIn(t *testing.T, b *browsertest.Browser, user, password, totpSecret string) {
	t.Helper()
	b.Do("open the dashboard", chromedp.Navigate(d.origin()+"/web/"), chromedp.WaitVisible(chromedp.ID("password")))
	b.Do("log in", chromedp.SendKeys(chromedp.ID("user"), user), chromedp.SendKeys(chromedp.ID("password"), password),
		chromedp.Click(chromedp.ID("login")))
	if totpSecret != "" {
		waitJS(t, b.Ctx, "the one-time code question", `document.getElementById('error') && /one-time code/.test(document.getElementById('error').textContent)`)
		code, err := totp.GenerateCode(totpSecret, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		b.Do("the code", chromedp.SendKeys(chromedp.ID("password"), password), chromedp.SendKeys(chromedp.ID("totp"), code),
			chromedp.Click(chromedp.ID("login")))
	}
	waitJS(t, b.Ctx, "the devices page", `location.pathname === '/web/' && !!document.querySelector('table.devices')`)
}

// adminIn adds alice, an admin who may log in as root, and logs her in
// in a new browser.
func (d *dashFleet) adminIn(t *testing.T) *browsertest.Browser {
	t.Helper()
	d.f.AddUser("alice", "admin,access", "root")
	b := d.browser(t)
	d.logIn(t, b, "alice", harness.Password("alice"), "")
	return b
}

func pageValue[T any](t *testing.T, b *browsertest.Browser, expr string, opts ...chromedp.EvaluateOption) T {
	t.Helper()
	return browsertest.Get(b, expr, chromedp.Evaluate[T](expr, opts...))
}

// termText is the terminal's whole buffer, scrollback included.
const termText = `(function () { var t = window.dashTerm, out = []; for (var i = 0; i < t.buffer.active.length; i++) out.push(t.buffer.active.getLine(i).translateToString(true)); return out.join('\n'); })()`

// typeInTerminal types keys into the page's terminal as a keyboard does:
// each key's keydown carries its text, so the page can take the key there
// (xterm.js does, and cancels the rest). chromedp's SendKeys sends the
// text in a separate char event, which a cancelled keydown does not stop:
// xterm.js would see every key twice.
func typeInTerminal(b *browsertest.Browser, keys string) {
	b.Do("type "+keys, chromedp.Evaluate[chromedp.Void]("window.dashTerm.focus()"), chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		for _, r := range keys {
			var down, up *input.DispatchKeyEventParams
			text, unmodified := "", ""
			for _, e := range kb.Encode(r) {
				switch e.Type {
				case kb.KeyDown:
					down = e
				case kb.KeyChar:
					text, unmodified = e.Text, e.UnmodifiedText
				case kb.KeyUp:
					up = e
				}
			}
			down.Text, down.UnmodifiedText = text, unmodified
			for _, e := range []*input.DispatchKeyEventParams{down, up} {
				if _, err := cdp.Call(ctx, tg, input.DispatchKeyEvent, *e); err != nil {
					return err
				}
			}
		}
		return nil
	}))
}

// deviceCharts opens a device's page and reloads it until its round-trip
// chart has a point (the link history takes a sample a second here).
func (d *dashFleet) deviceCharts(t *testing.T, b *browsertest.Browser, name string) {
	t.Helper()
	b.Do(name, chromedp.Navigate(d.origin()+"/web/devices/"+name))
	if !harness.Eventually(2*time.Minute, func() bool {
		b.Do("reload", chromedp.Reload())
		waitJS(t, b.Ctx, "the charts", `document.querySelector('#charts').dataset.drawn === 'hours' && document.querySelectorAll('#charts .uplot canvas').length === 4`)
		return pageValue[int](t, b, `+(document.querySelector('[data-chart="rtt"]').dataset.points || 0)`) > 0
	}) {
		t.Fatalf("%s's round-trip chart has no point after two minutes of samples", name)
	}
}

// TestDashboardLogin: the browser login guards the dashboard: a wrong
// password is refused, a user with an authenticator is asked for the
// one-time code; the session cookie is Secure, HttpOnly and SameSite; the
// pages carry the Content-Security-Policy; a form posted without the
// page's CSRF token is refused.
func TestDashboardLogin(t *testing.T) {
	d := startDashFleet(t, "")
	d.f.AddUser("alice", "admin,access", "root")
	out := d.f.Ctl(harness.Password("carol")+"\n", "users", "add", "carol", "--roles=access", "--totp")
	m := regexp.MustCompile(`secret=([A-Z2-7]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no TOTP secret in %q", out)
	}

	b := d.browser(t)
	b.Do("open", chromedp.Navigate(d.origin()+"/web/"), chromedp.WaitVisible(chromedp.ID("password")))
	if loc := pageValue[string](t, b, "location.pathname"); loc != "/web/login" {
		t.Errorf("the dashboard sent a stranger to %q, want the login", loc)
	}
	b.Do("wrong password", chromedp.SendKeys(chromedp.ID("user"), "alice"), chromedp.SendKeys(chromedp.ID("password"), "not the password"),
		chromedp.Click(chromedp.ID("login")))
	waitJS(t, b.Ctx, "the refusal", `document.getElementById('error') && /Wrong/.test(document.getElementById('error').textContent)`)
	if pageValue[bool](t, b, "!!document.querySelector('table.devices')") {
		t.Fatal("a wrong password got in")
	}
	d.logIn(t, b, "alice", harness.Password("alice"), "")

	cookies, err := chromedp.Call(b.Ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{d.origin() + "/web/"}})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range cookies.Cookies {
		if c.Name == "__Host-fleet_session" {
			found = true
			if !c.Secure || !c.HTTPOnly || c.SameSite != network.CookieSameSiteLax || c.Path != "/" || c.Domain != dashDomain {
				t.Errorf("session cookie %+v: want Secure, HttpOnly, SameSite=Lax, host-only", c)
			}
		}
	}
	if !found {
		t.Errorf("no session cookie among %d", len(cookies.Cookies))
	}
	resp, err := chromedp.Run(b.Ctx, chromedp.NavigateResponse(d.origin()+"/web/"))
	if err != nil {
		t.Fatal(err)
	}
	if csp, _ := resp.Headers["Content-Security-Policy"].(string); !strings.Contains(csp, "script-src 'self';") || strings.Contains(csp, "unsafe") {
		t.Errorf("Content-Security-Policy %q", csp)
	}
	// An inline script put in the page does not run.
	b.Do("inject", chromedp.Evaluate[chromedp.Void](`(function () { var s = document.createElement('script'); s.textContent = 'window.pwned = 1'; document.body.appendChild(s); })()`))
	if got := pageValue[string](t, b, "String(window.pwned)"); got != "undefined" {
		t.Errorf("an injected inline script ran: %s", got)
	}

	// CSRF: a join token's form posted without the page's token, or with
	// another, is refused and makes nothing; the page's own form makes one.
	b.Do("join tokens", chromedp.Navigate(d.origin()+"/web/admin/tokens"), chromedp.WaitVisible(chromedp.CSS(`form[action="/web/admin/tokens"] button`)))
	for _, token := range []string{"", "not-the-token"} {
		status := pageValue[int](t, b, fmt.Sprintf(`fetch('/web/admin/tokens', {method: 'POST', body: new URLSearchParams({csrf: %q, ttl: '1h', uses: '1'})}).then(r => r.status)`, token),
			chromedp.EvalAwaitPromise)
		if status != 403 {
			t.Errorf("a join token posted with CSRF token %q: %d, want 403", token, status)
		}
	}
	b.Do("make a token", chromedp.Click(chromedp.CSS(`form[action="/web/admin/tokens"] button`)))
	waitJS(t, b.Ctx, "the join command", `/edge-agent start .*--token=jt_/.test(document.getElementById('join-command').textContent)`)
	audit := d.f.Ctl("", "audit", "search", "--type=token.create", "--user=alice", "--format=json")
	if n := strings.Count(audit, `"token.create"`); n != 1 {
		t.Errorf("%d join tokens made by alice, want 1 (the refused posts made none): %s", n, audit)
	}

	// A user with an authenticator is asked for the code.
	b2 := d.browser(t)
	d.logIn(t, b2, "carol", harness.Password("carol"), m[1])
}

// TestDashboardLive: the device list shows a device that just joined, and
// marks a device offline when its agent stops, without a reload; the
// filters and counts filter.
func TestDashboardLive(t *testing.T) {
	d := startDashFleet(t, "")
	d.f.StartAgent("gw-1", "site=south")
	b := d.adminIn(t)
	waitJS(t, b.Ctx, "the live stream", `document.querySelector('#fleet').dataset.live === 'open'`)
	b.Do("mark the page", chromedp.Evaluate[chromedp.Void](`window.notReloaded = true`))

	a := d.f.StartAgentWith(harness.AgentConfig{Name: "pi-7", Labels: "site=north", NoWait: true})
	joined, _ := a.Proc.WaitLineAt(regexp.MustCompile(`joined`), 2*time.Minute)
	waitJS(t, b.Ctx, "pi-7 listed", `[...document.querySelectorAll('table.devices a.name')].some(a => a.textContent === 'pi-7')`)
	t.Logf("pi-7 listed %s after its agent said it joined", time.Since(joined.At).Round(time.Millisecond))
	up, _ := a.Proc.WaitLineAt(harness.TunnelUpRE, 2*time.Minute)
	waitJS(t, b.Ctx, "pi-7 online", `[...document.querySelectorAll('tr.is-online a.name')].some(a => a.textContent === 'pi-7')`)
	t.Logf("pi-7 online in the list %s after its tunnel came up", time.Since(up.At).Round(time.Millisecond))

	stopped := time.Now()
	a.Stop()
	waitJS(t, b.Ctx, "pi-7 offline", `[...document.querySelectorAll('tr.is-offline a.name')].some(a => a.textContent === 'pi-7')`)
	t.Logf("pi-7 offline in the list %s after its agent was stopped", time.Since(stopped).Round(time.Millisecond))
	if !pageValue[bool](t, b, "window.notReloaded === true") {
		t.Error("the page reloaded")
	}

	b.Do("search", chromedp.SendKeys(chromedp.ID("q"), "pi-"))
	waitJS(t, b.Ctx, "the search", `document.querySelectorAll('table.devices a.name').length === 1 && location.search.includes('q=pi-')`)
	b.Do("clear", chromedp.Evaluate[chromedp.Void](`(function () { var q = document.getElementById('q'); q.value = ''; q.dispatchEvent(new Event('input', {bubbles: true})); })()`))
	waitJS(t, b.Ctx, "the search cleared", `!location.search.includes('q=pi-') && document.querySelectorAll('table.devices a.name').length === 2`)
	b.Do("count", chromedp.Click(chromedp.CSS("a.count.online")))
	waitJS(t, b.Ctx, "the online filter", `location.search.includes('status=online') && [...document.querySelectorAll('table.devices a.name')].map(a => a.textContent).join() === 'gw-1'`)
}

// TestDashboardAccess: a user whose roles hide a device neither sees it
// nor opens its page or terminal by its address; an admin page is refused
// to a user who is not an admin.
func TestDashboardAccess(t *testing.T) {
	d := startDashFleet(t, "")
	d.f.StartAgent("pi-1", "site=north")
	d.f.StartAgent("gw-1", "site=south")
	d.f.AddUser("bob", "north", "root")
	b := d.browser(t)
	d.logIn(t, b, "bob", harness.Password("bob"), "")
	waitJS(t, b.Ctx, "pi-1", `[...document.querySelectorAll('table.devices a.name')].some(a => a.textContent === 'pi-1')`)
	if body := pageValue[string](t, b, "document.body.innerText"); strings.Contains(body, "gw-1") {
		t.Error("bob sees gw-1")
	}
	for _, path := range []string{"/web/devices/gw-1", "/web/devices/gw-1/terminal?login=root"} {
		resp, err := chromedp.Run(b.Ctx, chromedp.NavigateResponse(d.origin()+path))
		if err != nil {
			t.Fatal(err)
		}
		if resp.Status != 404 || strings.Contains(pageValue[string](t, b, "document.body.innerText"), "south") {
			t.Errorf("bob %s: %d, want 404 telling nothing", path, resp.Status)
		}
	}
	// The terminal's websocket itself, with bob's own token, from the page.
	b.Do("pi-1's terminal page", chromedp.Navigate(d.origin()+"/web/devices/pi-1/terminal?login=root"),
		chromedp.WaitVisible(chromedp.ID("terminal")))
	sock := pageValue[string](t, b, "document.getElementById('terminal').dataset.socket")
	gw := strings.Replace(sock, "/devices/pi-1/", "/devices/gw-1/", 1)
	got := pageValue[string](t, b, fmt.Sprintf(`new Promise(function (done) {
		var ws = new WebSocket('wss://' + location.host + %q + '&cols=80&rows=24');
		ws.onopen = function () { done('open'); }; ws.onerror = function () { done('refused'); };
	})`, gw), chromedp.EvalAwaitPromise)
	if got != "refused" {
		t.Errorf("bob's websocket to gw-1's terminal: %s, want refused", got)
	}
	resp, err := chromedp.Run(b.Ctx, chromedp.NavigateResponse(d.origin()+"/web/admin/users"))
	if err != nil {
		t.Fatal(err)
	}
	if resp.Status != 403 || !strings.Contains(pageValue[string](t, b, "document.body.innerText"), "admin role") {
		t.Errorf("bob on the users page: %d, want 403", resp.Status)
	}
	audit := d.f.Ctl("", "audit", "search", "--type=access.denied", "--user=bob", "--format=json")
	if !strings.Contains(audit, "/web/admin/users") {
		t.Errorf("the refused admin page is not in the audit: %s", audit)
	}
}

// TestDashboardTerminal: Connect opens a shell in the page; echo, paste
// and resize work; a 30 s blackout of the device's link pauses the
// terminal and it resumes with no output lost; the session is recorded and
// plays in the page; the device page draws its link charts.
func TestDashboardTerminal(t *testing.T) {
	d := startDashFleet(t, "")
	a := d.f.StartAgent("pi-1", "site=north")
	link := behindLink(t, d.f, a, linksim.Config{Seed: 1})
	b := d.adminIn(t)

	d.deviceCharts(t, b, "pi-1")
	waitJS(t, b.Ctx, "the Connect button", `!!document.getElementById('connect')`)
	b.Do("connect", chromedp.Click(chromedp.ID("connect")))
	waitJS(t, b.Ctx, "the terminal", `document.getElementById('terminal') && document.getElementById('terminal').dataset.state === 'live'`)
	typeInTerminal(b, "echo hello-$((6*7))\r")
	waitJS(t, b.Ctx, "the echo", termText+`.includes('hello-42')`)

	// Paste, as the browser delivers it, then Enter: the pasted text
	// reaches the shell's line (bracketed when the shell asks for it, as
	// bash does; plain for /bin/sh, the tests' login shell) and runs only
	// on the Enter.
	b.Do("paste", chromedp.Evaluate[chromedp.Void](`(function () {
		var dt = new DataTransfer(); dt.setData('text/plain', 'echo pasted-$((2*3))');
		document.querySelector('textarea.xterm-helper-textarea').dispatchEvent(new ClipboardEvent('paste', {clipboardData: dt, bubbles: true, cancelable: true}));
	})()`))
	waitJS(t, b.Ctx, "the pasted text", termText+`.includes('echo pasted-$((2*3))')`)
	typeInTerminal(b, "\r")
	waitJS(t, b.Ctx, "the pasted command", termText+`.includes('pasted-6')`)

	// A resize reaches the shell.
	b.Do("resize", chromedp.EmulateViewport(900, 500))
	waitJS(t, b.Ctx, "the terminal to fit", `window.dashTerm.cols < 120`)
	cols, rows := pageValue[int](t, b, "window.dashTerm.cols"), pageValue[int](t, b, "window.dashTerm.rows")
	typeInTerminal(b, "echo size-$(stty size | tr ' ' x)\r")
	waitJS(t, b.Ctx, "stty size", termText+fmt.Sprintf(`.includes('size-%dx%d')`, rows, cols))

	// A 30 s blackout: the output pauses and resumes, nothing lost.
	typeInTerminal(b, "for i in $(seq 1 45); do echo line-$i; sleep 1; done\r")
	waitJS(t, b.Ctx, "the first lines", termText+`.includes('line-3')`)
	link.Blackout(30 * time.Second)
	waitJS(t, b.Ctx, "the terminal paused", `document.getElementById('terminal').dataset.state === 'paused'`)
	waitJS(t, b.Ctx, "the link back", `document.getElementById('terminal').dataset.state === 'live'`)
	waitJS(t, b.Ctx, "the last line", termText+`.includes('line-45')`)
	text := pageValue[string](t, b, termText)
	for i := 1; i <= 45; i++ {
		if !regexp.MustCompile(`(?m)^line-` + fmt.Sprint(i) + `$`).MatchString(text) {
			t.Errorf("line-%d was lost in the blackout", i)
		}
	}
	typeInTerminal(b, "exit\r")
	waitJS(t, b.Ctx, "the end", `document.getElementById('terminal').dataset.state === 'ended'`)

	// The session is recorded by the device and plays in the page.
	b.Do("sessions", chromedp.Navigate(d.origin()+"/web/sessions"))
	waitJS(t, b.Ctx, "the recording", `!!document.querySelector('a.play')`)
	b.Do("play", chromedp.Click(chromedp.CSS("a.play")), chromedp.WaitEnabled(chromedp.ID("play")),
		chromedp.SetValue(chromedp.ID("speed"), "16"), chromedp.Click(chromedp.ID("play")))
	waitJS(t, b.Ctx, "the player to finish", `document.getElementById('player').dataset.state === 'finished'`)
	played := pageValue[string](t, b, strings.ReplaceAll(termText, "dashTerm", "dashPlayer"))
	if !strings.Contains(played, "hello-42") || !strings.Contains(played, "line-45") {
		t.Errorf("the recording played %q", played)
	}
	// The session's start and end are in the audit, as the web terminal's.
	audit := d.f.Ctl("", "audit", "search", "--type=session.*", "--user=alice", "--format=json")
	if !strings.Contains(audit, `"client": "web"`) && !strings.Contains(audit, `"client":"web"`) {
		t.Errorf("the web terminal's session is not in the audit: %s", audit)
	}
}

// TestDashboardDeadPage: a terminal whose page goes away without closing
// (the browser is killed) ends its shell on the device.
func TestDashboardDeadPage(t *testing.T) {
	d := startDashFleet(t, "")
	d.f.StartAgent("pi-1", "site=north")
	b := d.adminIn(t)
	// A sleep whose argument no other process has: its command line is
	// the marker.
	marker := fmt.Sprintf("1000.%06d", time.Now().UnixNano()%1_000_000)
	b.Do("terminal", chromedp.Navigate(d.origin()+"/web/devices/pi-1/terminal?login=root"))
	waitJS(t, b.Ctx, "the terminal", `document.getElementById('terminal').dataset.state === 'live'`)
	typeInTerminal(b, "exec sleep "+marker+"\r")
	if !harness.Eventually(90*time.Second, func() bool { return processRunning(marker) }) {
		t.Fatalf("the shell's command did not start; the terminal shows:\n%s", pageValue[string](t, b, termText))
	}
	// Kill the browser: no close frame, no TCP close from a page that is
	// gone for good (its process group dies).
	chromedp.Cancel(b.Ctx)
	if !harness.Eventually(2*time.Minute, func() bool { return !processRunning(marker) }) {
		t.Fatal("the shell outlived the page")
	}
	audit := d.f.Ctl("", "audit", "search", "--type=session.end", "--user=alice", "--format=json")
	if !strings.Contains(audit, "the browser") {
		t.Errorf("the session's end does not say the page went: %s", audit)
	}
}

// processRunning reports whether a process whose command line holds s
// runs on this machine (the device's shell runs here).
func processRunning(s string) bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), "sleep\x00"+s) {
			return true
		}
	}
	return false
}

// TestDashboardScreenshots takes the README's screenshots (make
// screenshots): the devices page with a few devices, a device's page
// with some link history, and a terminal.
func TestDashboardScreenshots(t *testing.T) {
	dir := screenshotDir(t)
	d := startDashFleet(t, "")
	for _, dev := range []struct{ name, labels string }{{"pi-1", "site=north,model=pi4"}, {"pi-2", "site=north,model=pi5"}, {"gw-1", "site=south,model=gateway"}} {
		d.f.StartAgent(dev.name, dev.labels)
	}
	stopped := d.f.StartAgent("pi-3", "site=east,model=pi4")
	stopped.Stop()
	d.f.AddUser("alice", "admin,access", "root")
	b := browsertest.New(t, browsertest.Options{Hosts: map[string]string{dashDomain: "127.0.0.1"}, TrustedSPKI: []string{d.spki},
		Width: 1280, Height: 720, Timeout: 10 * time.Minute})
	d.logIn(t, b, "alice", harness.Password("alice"), "")
	waitJS(t, b.Ctx, "four devices", `document.querySelectorAll('table.devices a.name').length === 4`)
	b.Screenshot(dir, "devices")
	d.deviceCharts(t, b, "pi-1")
	b.Screenshot(dir, "device")
	b.Do("terminal", chromedp.Navigate(d.origin()+"/web/devices/pi-1/terminal?login=root"))
	waitJS(t, b.Ctx, "the terminal", `document.getElementById('terminal').dataset.state === 'live'`)
	// The screen cleared first: what the machine's own login profile
	// printed is not the dashboard's to show.
	typeInTerminal(b, "clear; uname -sm; uptime\r")
	waitJS(t, b.Ctx, "the output", termText+`.includes('load average')`)
	b.Screenshot(dir, "terminal")
	for _, n := range []string{"devices", "device", "terminal"} {
		if _, err := os.Stat(filepath.Join(dir, n+".png")); err != nil {
			t.Errorf("screenshot %s: %v", n, err)
		}
	}
}

// TestDashboardSSO: the login page offers a button per single sign-on
// connector; a login at the provider (tools/oidcprovider, a real OpenID
// provider) gives a dashboard session with the roles its claims map to,
// back on the page the browser asked for; the page's form-action lets
// the browser go to the provider; a user the claims give no role is
// refused and gets no session.
func TestDashboardSSO(t *testing.T) {
	d := startDashFleet(t, "")
	prov, err := oidcprovider.Start(oidcprovider.Config{Users: ssoUsers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prov.Close() })
	prov.AddClient(oidcprovider.Client{ID: "fleet", Secret: "fleet-client-secret", RedirectURIs: []string{d.origin() + api.PathSSOCallback}})
	d.f.Ctl(ssoRole, "create", "-f", "-")
	d.f.Ctl(fmt.Sprintf(ssoConnector, prov.Issuer), "create", "-f", "-")
	d.f.StartAgent("pi-1", "site=north")

	b := d.browser(t)
	resp, err := chromedp.Run(b.Ctx, chromedp.NavigateResponse(d.origin()+"/web/login?next=/web/devices/pi-1"))
	if err != nil {
		t.Fatal(err)
	}
	if csp, _ := resp.Headers["Content-Security-Policy"].(string); !regexp.MustCompile(`form-action [^;]*` + regexp.QuoteMeta(prov.Issuer)).MatchString(csp) {
		t.Errorf("the login page's form-action does not allow the provider %s: %q", prov.Issuer, csp)
	}
	b.Do("the connector's button", chromedp.WaitVisible(chromedp.ID("sso-test")))
	if got := browsertest.Get(b, "the button", chromedp.Text(chromedp.ID("sso-test"))); got != "Log in with Test IdP" {
		t.Errorf("the button says %q", got)
	}
	b.Do("log in with the provider", chromedp.Click(chromedp.ID("sso-test")))
	providerLogin(b, "erin", "erin-pw-1")
	waitJS(t, b.Ctx, "pi-1's page", `location.pathname === '/web/devices/pi-1' && !!document.getElementById('connect')`)
	if body := pageValue[string](t, b, "document.body.innerText"); !strings.Contains(body, "erin@example.com") {
		t.Errorf("the page does not name erin:\n%s", body)
	}
	// One event for the login: the browser's session, and whom the
	// provider vouched for.
	logins := search(t, d.f, "--type=user.login", "--user=erin@example.com")
	if len(logins) != 1 || logins[0].Fields["method"] != "sso:test" || logins[0].Fields["web_session"] == "" || logins[0].Fields["subject"] == "" {
		t.Errorf("erin's browser login in the audit: %+v, want one event with her session and her subject at the provider", logins)
	}

	// dave's claims give him no role: refused, no session.
	b2 := d.browser(t)
	b2.Do("the login page", chromedp.Navigate(d.origin()+"/web/"), chromedp.WaitVisible(chromedp.ID("sso-test")),
		chromedp.Click(chromedp.ID("sso-test")))
	providerLogin(b2, "dave", "dave-pw-1")
	waitJS(t, b2.Ctx, "the refusal", `/Login refused/.test(document.body.innerText) && /no fleet role/.test(document.body.innerText)`)
	b2.Do("the dashboard", chromedp.Navigate(d.origin()+"/web/"))
	waitJS(t, b2.Ctx, "the login page", `location.pathname === '/web/login'`)
}
