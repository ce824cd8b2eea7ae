package e2e

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/browsertest"
	"remoteler.dev/edge/tools/harness"
)

// screenshotDir is where the browser tests keep their screenshots: the
// folder SCREENSHOTS names (make screenshots sets docs/images), else a
// temporary one.
func screenshotDir(t *testing.T) string {
	if d := os.Getenv("SCREENSHOTS"); d != "" {
		return d
	}
	return t.TempDir()
}

func (s *appFleet) browser(t *testing.T) *browsertest.Browser {
	t.Helper()
	return browsertest.New(t, browsertest.Options{
		Hosts:       map[string]string{"*." + appDomain: "127.0.0.1", appDomain: "127.0.0.1"},
		TrustedSPKI: []string{s.spki},
		Timeout:     8 * time.Minute,
	})
}

// waitJS waits until expr is true in the page, through navigations (an
// evaluation during one fails, and is tried again).
func waitJS(t *testing.T, ctx context.Context, step, expr string) {
	t.Helper()
	waitJSWithin(t, ctx, 90*time.Second, step, expr)
}

// waitJSWithin is waitJS with a deadline of its own.
func waitJSWithin(t *testing.T, ctx context.Context, within time.Duration, step, expr string) {
	t.Helper()
	var last error
	ok := harness.Eventually(within, func() bool {
		ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		v, err := chromedp.Run(ectx, chromedp.Evaluate[bool]("(() => { try { return !!("+expr+"); } catch (e) { return false; } })()"))
		last = err
		return err == nil && v
	})
	if !ok {
		loc, _ := chromedp.Run(ctx, chromedp.Location())
		text, _ := chromedp.Run(ctx, chromedp.Evaluate[string]("document.body ? document.body.innerText : ''"))
		t.Fatalf("browser: %s: %q never held (at %s; last error %v); the page says:\n%s", step, expr, loc, last, text)
	}
}

// login fills in the fleet's login form, on which the browser must be.
func login(t *testing.T, ctx context.Context, user string) {
	t.Helper()
	waitJS(t, ctx, "the login form", `location.pathname == "/web/login" && document.getElementById("password") != null`)
	if err := chromedp.Do(ctx,
		chromedp.SendKeys("#user", user),
		chromedp.SendKeys("#password", harness.Password(user)),
		chromedp.Click("#login"),
	); err != nil {
		t.Fatalf("browser: log in as %s: %v", user, err)
	}
}

// cookieNames lists the names of the cookies the browser would send to u.
func cookieNames(t *testing.T, ctx context.Context, u string) []string {
	t.Helper()
	res, err := chromedp.Call(ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{u}})
	if err != nil {
		t.Fatalf("cookies of %s: %v", u, err)
	}
	var out []string
	for _, c := range res.Cookies {
		out = append(out, c.Name)
	}
	return out
}

// TestAppsInTheBrowser drives Debian's Chromium through web-app access: the
// login redirect chain, the host-only app cookie, a websocket echo, a
// server-sent event stream that stays open, a 200 MB upload with the
// fleet's memory bounded, a redirect to the app's internal address, a user
// whose roles deny the app, and a fresh private profile.
func TestAppsInTheBrowser(t *testing.T) {
	s := startAppFleet(t, "app_upload_limit: 268435456\n")
	s.f.AddUser("alice", "access", "root")
	s.f.AddUser("carol", "no-ops-apps", "root")
	shots := screenshotDir(t)
	b := s.browser(t)
	ctx := b.Ctx
	hello := s.origin("hello")
	// Each step needs the ones before it: stop at the first that fails.
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}

	step("login redirect chain", func(t *testing.T) {
		b.Do("open the app", chromedp.Navigate(hello+"/"))
		waitJS(t, ctx, "the login form", `location.pathname == "/web/login" && document.getElementById("password") != null`)
		b.Screenshot(shots, "app-login")
		login(t, ctx, "alice")
		waitJS(t, ctx, "back on the app, as alice", `location.origin == "`+hello+`" && document.getElementById("user") != null && document.getElementById("user").textContent == "alice"`)
		if loc := browsertest.Get(b, "location", chromedp.Location()); loc != hello+"/" {
			t.Errorf("landed on %s, want %s/", loc, hello)
		}
		// HTTP/2 to the browser (the app gets HTTP/1.1 from the fleet).
		if p := browsertest.Get(b, "protocol", chromedp.Evaluate[string](`performance.getEntriesByType("navigation")[0].nextHopProtocol`)); p != "h2" {
			t.Errorf("the page came over %q, want h2", p)
		}
	})

	step("the cookie lands on the app's host only", func(t *testing.T) {
		has := func(u string) bool {
			for _, n := range cookieNames(t, ctx, u) {
				if n == "__Host-fleet_app" {
					return true
				}
			}
			return false
		}
		if !has(hello + "/") {
			t.Fatalf("no app cookie for %s: %v", hello, cookieNames(t, ctx, hello+"/"))
		}
		for _, u := range []string{s.origin("other") + "/", s.fleetOrigin() + "/"} {
			if has(u) {
				t.Errorf("the app cookie of hello is also sent to %s", u)
			}
		}
		if js := browsertest.Get(b, "document.cookie", chromedp.Evaluate[string](`document.cookie`)); strings.Contains(js, "fleet") {
			t.Errorf("the app's page can read the fleet's cookies: %q", js)
		}
	})

	step("websocket echoes", func(t *testing.T) {
		waitJS(t, ctx, "the websocket opens", `document.getElementById("ws-status").textContent == "open"`)
		b.Do("send", chromedp.Click("#echo-form button"))
		waitJS(t, ctx, "the echo", `[...document.querySelectorAll("#echo-log li")].some((li) => li.textContent == "hello through the tunnel")`)
	})

	step("server-sent events stream while the response is open", func(t *testing.T) {
		// The stream never ends, so an event that arrives at all was not
		// held back until the response's end; a second one shows the
		// response is still open.
		waitJS(t, ctx, "the first event", `Number(document.getElementById("event-count").textContent) >= 1`)
		// How long it took is logged, not asserted: a busy machine may
		// take longer, and the stream's staying open is what buffering
		// would break.
		ms := browsertest.Get(b, "first event time", chromedp.Evaluate[float64](`window.firstEventMs`))
		t.Logf("the first server-sent event reached the page %.0f ms after the stream opened", ms)
		waitJS(t, ctx, "a later event on the same stream", `Number(document.getElementById("event-count").textContent) >= 3`)
		b.Screenshot(shots, "app")
	})

	step("a 200 MB upload streams", func(t *testing.T) {
		const size = 200 << 20
		file := filepath.Join(t.TempDir(), "upload.bin")
		f, err := os.Create(file)
		if err != nil {
			t.Fatal(err)
		}
		chunk := make([]byte, 1<<20)
		for i := range chunk {
			chunk[i] = byte(i)
		}
		for range size >> 20 {
			f.Write(chunk)
		}
		f.Close()
		before, err := rssOf(s.f.Proc.PID())
		if err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		peak := peakRSS(s.f.Proc.PID(), stop)
		b.Do("upload", chromedp.SetUploadFiles("#upload-file", []string{file}), chromedp.Click("#upload-form button"))
		waitJS(t, ctx, "the app got every byte", `document.getElementById("upload-result").textContent.includes('"bytes":209715200')`)
		close(stop)
		grew := <-peak - before
		t.Logf("fleetd's memory: %d MiB before, at most %d MiB more during the 200 MB upload", before>>20, grew>>20)
		if grew > 96<<20 {
			t.Errorf("fleetd grew by %d MiB during a 200 MiB upload: it buffers", grew>>20)
		}
	})

	step("a redirect to the internal address lands on the public one", func(t *testing.T) {
		b.Do("follow", chromedp.Navigate(hello+"/redirect"))
		waitJS(t, ctx, "landed", `document.getElementById("landed") != null`)
		if loc := browsertest.Get(b, "location", chromedp.Location()); loc != hello+"/landed" {
			t.Errorf("landed on %s, want %s/landed", loc, hello)
		}
	})

	step("the apps page lists the apps", func(t *testing.T) {
		b.Do("open", chromedp.Navigate(s.fleetOrigin()+"/web/apps"))
		waitJS(t, ctx, "the table", `document.querySelectorAll("#apps tr").length == 3`)
		text := browsertest.Get(b, "table", chromedp.Text("#apps"))
		for _, want := range []string{"hello", "other", hello} {
			if !strings.Contains(text, want) {
				t.Errorf("apps page lacks %q:\n%s", want, text)
			}
		}
		b.Screenshot(shots, "apps")
	})

	step("a denied user gets a page, not a loop", func(t *testing.T) {
		// carol may open other but not hello (deny app_labels team=ops),
		// in a second browser.
		c := s.browser(t)
		c.Do("open the app", chromedp.Navigate(hello+"/"))
		login(t, c.Ctx, "carol")
		// An app the roles deny reads as one that does not exist, as
		// devices do; the audit trail names the rule.
		waitJS(t, c.Ctx, "the refusal", `document.getElementById("title") != null && document.getElementById("title").textContent == "No such app"`)
		msg := browsertest.Get(c, "message", chromedp.Text("#message"))
		if !strings.Contains(msg, `no app "hello" on device "pi-1" that you can reach`) {
			t.Errorf("the refusal says %q", msg)
		}
		loc := browsertest.Get(c, "location", chromedp.Location())
		if u, _ := url.Parse(loc); u == nil || u.Host != appDomain+":"+s.port {
			t.Errorf("refused at %s, want a page on the fleet's host", loc)
		}
		c.Screenshot(shots, "app-denied")
		// And the app she may open works.
		c.Do("open other", chromedp.Navigate(s.origin("other")+"/"))
		waitJS(t, c.Ctx, "other opens", `document.getElementById("user") != null && document.getElementById("user").textContent == "carol"`)
		denied := false
		for _, e := range appAudit(t, s.f, "access.denied", "carol") {
			denied = denied || (e.Fields["rule"] == "deny.app_labels" && e.Fields["role"] == "no-ops-apps" && e.Fields["app"] == "hello")
		}
		if !denied {
			t.Error("carol's refusal is not in the audit trail with its rule and role")
		}
	})

	step("a private profile logs in without a loop", func(t *testing.T) {
		ictx, cancel := chromedp.NewContext(ctx, chromedp.WithNewBrowserContext())
		defer cancel()
		if err := chromedp.Do(ictx, chromedp.Navigate(hello+"/")); err != nil {
			t.Fatal(err)
		}
		login(t, ictx, "alice")
		waitJS(t, ictx, "the app in the private profile", `location.origin == "`+hello+`" && document.getElementById("user") != null && document.getElementById("user").textContent == "alice"`)
	})

	step("logout of the app", func(t *testing.T) {
		b.Do("logout page", chromedp.Navigate(hello+"/_fleet/logout"))
		waitJS(t, ctx, "the form", `document.getElementById("submit") != null`)
		b.Screenshot(shots, "app-logout")
		b.Do("log out", chromedp.Click("#submit"))
		waitJS(t, ctx, "logged out", `document.getElementById("title") != null && document.getElementById("title").textContent == "Logged out"`)
		status := browsertest.Get(b, "fetch after logout", chromedp.Evaluate[float64](`fetch("`+hello+`/whoami").then((r) => r.status)`, chromedp.EvalAwaitPromise))
		if status != 401 {
			t.Errorf("a request after the app's logout got %v, want 401", status)
		}
		if len(appAudit(t, s.f, "session.end", "alice")) == 0 {
			t.Error("the app session's end is not in the audit trail")
		}
	})

	step("audit", func(t *testing.T) {
		if n := len(appAudit(t, s.f, "session.start", "alice")); n < 2 {
			t.Errorf("%d app session starts recorded for alice, want her two browsers'", n)
		}
		// Requests are recorded once answered: wait for the last ones.
		var reqs []api.AuditEvent
		upload := false
		harness.Eventually(time.Minute, func() bool {
			reqs = appAudit(t, s.f, "app.request", "alice")
			for _, e := range reqs {
				upload = upload || (e.Fields["path"] == "/upload" && e.Fields["bytes_in"] == "209715200" && e.Fields["status"] == "200")
			}
			return upload && len(reqs) >= 5
		})
		if !upload || len(reqs) < 5 {
			t.Errorf("%d app requests recorded, the upload's with its bytes: %v", len(reqs), upload)
		}
	})
}
