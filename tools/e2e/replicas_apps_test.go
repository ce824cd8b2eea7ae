package e2e

import (
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"remoteler.dev/edge/tools/browsertest"
	"remoteler.dev/edge/tools/demoapp"
	"remoteler.dev/edge/tools/harness"
)

// webAppsRole lets its holder open every app.
const webAppsRole = `kind: role
version: v1
metadata: {name: web-apps}
spec:
  allow: {app_labels: {"*": "*"}}
`

// TestAppSessionOutlivesItsReplica: three replicas on etcd behind the
// balancer, which is the fleet's public address and sends browsers to C.
// Alice opens pi-1's app "hello" in Chromium (the fleet's login, the
// launch, the app's cookie, all through C), and the page fetches
// /whoami. Her app session is kept in the store, so:
//
//   - replica A, reached directly with her cookie, takes the session up
//     and serves it, without a launch;
//   - C is killed (kill -9); the page's next fetch, with the same cookie,
//     is answered through B, which takes the session up, as alice, with
//     no login and no launch (a fetch cannot follow one);
//   - each take-up is a session.start with resumed=true;
//   - a logout of the app, through B, ends the session on A too: her old
//     cookie gets 401 there.
func TestAppSessionOutlivesItsReplica(t *testing.T) {
	app := httptest.NewServer(demoapp.Handler(nil))
	t.Cleanup(app.Close)
	rf := startReplicasWith(t, replicaOptions{appsDomain: appDomain})
	rf.deviceWith(t, harness.AgentConfig{Name: "pi-1", Args: []string{"--app", "hello=" + app.URL}})
	a := rf.reps[repA]
	a.Ctl(webAppsRole, "create", "-f", "-")
	a.AddUser("alice", "web-apps", "")
	// The fleet's CAs (for Chromium and curl), from A's admin identity.
	cas := &appFleet{f: a}
	cas.loadCAs(t)
	_, lbPort, _ := net.SplitHostPort(rf.lb.Addr())
	hello := "https://hello--pi-1." + appDomain + ":" + lbPort

	b := browsertest.New(t, browsertest.Options{
		Hosts:       map[string]string{"*." + appDomain: "127.0.0.1", appDomain: "127.0.0.1"},
		TrustedSPKI: []string{cas.spki},
		Timeout:     8 * time.Minute,
	})
	whoami := openAppAs(t, b, hello, "alice")
	if !strings.Contains(rf.reps[repC].Proc.Output(), `msg="session started"`) {
		t.Fatalf("replica C started no session for the app:\n%s", rf.reps[repC].Proc.Tail(20))
	}
	cookies, err := chromedp.Call(b.Ctx, network.GetCookies, network.GetCookiesParams{URLs: []string{hello + "/"}})
	if err != nil {
		t.Fatal(err)
	}
	var tok string
	for _, c := range cookies.Cookies {
		if c.Name == "__Host-fleet_app" {
			tok = c.Value
		}
	}
	if tok == "" {
		t.Fatalf("no app cookie in the browser: %+v", cookies.Cookies)
	}
	// atA asks replica A directly for /whoami with alice's app cookie,
	// and returns the status and body.
	atA := func() (string, string) {
		t.Helper()
		_, port, _ := net.SplitHostPort(a.Addr)
		host := "hello--pi-1." + appDomain
		r, err := harness.RunErr(t.Context(), "", harness.Cmd{Path: "curl", Args: []string{"-sS", "--cacert", cas.caPEM,
			"--resolve", host + ":" + port + ":127.0.0.1", "-H", "Cookie: __Host-fleet_app=" + tok,
			"-w", "\n%{http_code}", "https://" + host + ":" + port + "/whoami"}, Timeout: time.Minute})
		if err != nil {
			t.Fatalf("curl replica A: %v\n%s", err, r.Stderr)
		}
		i := strings.LastIndex(r.Stdout, "\n") // -w's status follows the body
		return r.Stdout[i+1:], r.Stdout[:max(i, 0)]
	}
	// A follows the fleet sessions, and takes the app session up once its
	// watch has brought alice's.
	var code, body string
	if !harness.Eventually(time.Minute, func() bool {
		code, body = atA()
		return code == "200"
	}) || !strings.Contains(body, `"user":"alice"`) {
		t.Fatalf("replica A with alice's app cookie: %s %s, want the app as alice", code, body)
	}

	rf.reps[repC].Kill()
	killed := time.Now()
	var got string
	if !harness.Eventually(time.Minute, func() bool {
		got = whoami()
		return got == "200 alice"
	}) {
		t.Fatalf("the page's fetch of /whoami after C was killed: %q, want 200 as alice", got)
	}
	t.Logf("the page's fetch was answered as alice %v after C was killed", time.Since(killed).Round(time.Millisecond))
	if out := rf.reps[repB].Proc.Output(); !strings.Contains(out, "app session taken up from the store") {
		t.Errorf("replica B did not say it took the app session up:\n%s", rf.reps[repB].Proc.Tail(20))
	}
	// A search on any replica covers all: each event says whose it is.
	resumed := map[string]bool{}
	for _, e := range auditSearch(t, rf.reps[repB], "--user=alice", "--type=session.start").Events {
		if e.Fields["app"] == "hello" && e.Fields["resumed"] == "true" && e.Fields["service"] == "app" {
			resumed[e.Replica] = true
		}
	}
	if !resumed["r-a"] || !resumed["r-b"] {
		t.Errorf("session.start of alice's app with resumed=true by replicas %v, want r-a and r-b", resumed)
	}

	// A logout of the app through B ends the session on A too.
	b.Do("the app's logout", chromedp.Navigate(hello+"/_fleet/logout"))
	waitJS(t, b.Ctx, "the logout form", `document.getElementById("submit") != null`)
	b.Do("log out of the app", chromedp.Click("#submit"))
	waitJS(t, b.Ctx, "logged out", `document.getElementById("title") && document.getElementById("title").textContent == "Logged out"`)
	loggedOut := time.Now()
	if !harness.Eventually(30*time.Second, func() bool {
		code, body = atA()
		return code == "401"
	}) {
		t.Fatalf("replica A with alice's old app cookie after the logout: %s %s, want 401", code, body)
	}
	t.Logf("replica A refused the logged-out cookie %v after the logout", time.Since(loggedOut).Round(time.Millisecond))
}

// openAppAs opens the app at origin in b, logging user in on the way,
// and checks that a fetch from its page is answered as user. It returns
// that fetch: "200 USER", or the status.
func openAppAs(t *testing.T, b *browsertest.Browser, origin, user string) func() string {
	t.Helper()
	b.Do("open the app", chromedp.Navigate(origin+"/"))
	login(t, b.Ctx, user)
	waitJS(t, b.Ctx, "the app's page", `location.origin == "`+origin+`" && document.readyState == "complete"`)
	whoami := func() string {
		return browsertest.Get(b, "fetch /whoami", chromedp.Evaluate[string](
			`fetch("/whoami").then((r) => r.ok ? r.json().then((j) => r.status + " " + j.user) : String(r.status), (e) => "failed: " + e)`,
			chromedp.EvalAwaitPromise))
	}
	if got := whoami(); got != "200 "+user {
		t.Fatalf("the page's fetch of /whoami: %q, want 200 as %s", got, user)
	}
	return whoami
}

// TestAppSessionOutlivesAFleetdRestart: one fleetd on its embedded store.
// Alice opens the app "hello" in Chromium; fleetd is killed (kill -9) and
// started again; the page's next fetch, with the same cookie, is answered
// as alice, with no login and no launch: the new process took the session
// up from the store.
func TestAppSessionOutlivesAFleetdRestart(t *testing.T) {
	s := startAppFleet(t, "")
	s.f.Ctl(webAppsRole, "create", "-f", "-")
	s.f.AddUser("alice", "web-apps", "")
	b := s.browser(t)
	whoami := openAppAs(t, b, s.origin("hello"), "alice")
	s.f.Proc.Kill()
	s.f.Restart()
	var got string
	if !harness.Eventually(time.Minute, func() bool {
		got = whoami()
		return got == "200 alice"
	}) {
		t.Fatalf("the page's fetch of /whoami after fleetd's restart: %q, want 200 as alice", got)
	}
	if !strings.Contains(s.f.Proc.Output(), "app session taken up from the store") {
		t.Errorf("the restarted fleetd did not say it took the app session up:\n%s", s.f.Proc.Tail(20))
	}
}
