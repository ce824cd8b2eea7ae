package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"

	"remoteler.dev/edge/tools/demoapp"
	"remoteler.dev/edge/tools/harness"
)

// Web apps of a leaf cluster reached through the root: a root fleetd with
// an apps domain, a leaf fleetd whose device pi-1 offers the demo app
// "hello" (team=ops), the root's users with tsh, curl and Chromium.

// leafAppRoles are the leaf's roles for these tests: operator-north opens
// apps labelled team=ops; no-apps reaches the devices but no app.
const leafAppRoles = `kind: role
version: v1
metadata: {name: operator-north}
spec:
  allow:
    device_labels: {site: north}
    logins: ["{{internal.logins}}"]
    app_labels: {team: ops}
---
kind: role
version: v1
metadata: {name: no-apps}
spec:
  allow:
    device_labels: {site: north}
    logins: ["{{internal.logins}}"]
`

// leafAppTrust maps ops-* to operator-*, contractor to no-apps, and
// nothing else.
func leafAppTrust(root *harness.Fleet, token, pin string) string {
	return fmt.Sprintf(`kind: trusted_cluster
version: v1
metadata: {name: root}
spec:
  root_addr: %s
  token: %s
  ca_pin: %s
  role_map:
  - {remote: "^ops-(.*)$", local: ["operator-$1"]}
  - {remote: contractor, local: [no-apps]}
`, root.Addr, token, pin)
}

// leafAppPair starts the root (an appFleet without devices of its own)
// and the leaf with the demo app on pi-1, and joins them.
func leafAppPair(t *testing.T) (root *appFleet, leaf *harness.Fleet) {
	t.Helper()
	root = &appFleet{app: httptest.NewServer(demoapp.Handler(nil))}
	t.Cleanup(root.app.Close)
	cfg := filepath.Join(t.TempDir(), "fleetd.yaml")
	if err := os.WriteFile(cfg, []byte("apps_domain: "+appDomain+"\npublic_addrs: ["+appDomain+", 127.0.0.1, localhost]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	root.f = harness.StartFleet(t, harness.FleetConfig{Bin: bin, Args: []string{"--config", cfg, "--cluster", "root"}})
	_, root.port, _ = net.SplitHostPort(root.f.Addr)
	root.loadCAs(t)
	root.f.Ctl(rootRoles, "create", "-f", "-")
	leaf = startFleetArgs(t, nil, "--cluster", "leaf")
	leaf.Ctl(leafAppRoles, "create", "-f", "-")
	tok := clusterToken(t, root.f, "--ttl=5m")
	leaf.Ctl("", "create", "-f", createFile(t, leafAppTrust(root.f, tok.Token, root.f.Pin)))
	waitCluster(t, root.f, "leaf", true)
	waitCluster(t, leaf, "root", true)
	leaf.StartAgentWith(harness.AgentConfig{Name: "pi-1", Labels: "site=north", Args: []string{"--app", "hello=" + root.app.URL + ",label:team=ops"}})
	return root, leaf
}

// leafHello is the root's address of the leaf's app hello on pi-1.
func leafHello(root *appFleet) string {
	return "https://hello---leaf--pi-1." + appDomain + ":" + root.port
}

// leafAppEvents returns f's audit events of type typ about apps for user.
func leafAppEvents(t *testing.T, f *harness.Fleet, typ, user string) []string {
	t.Helper()
	var out []string
	for _, e := range search(t, f, "--type="+typ) {
		if e.User == user && (e.Fields["service"] == "app" || e.Fields["app"] != "") {
			out = append(out, e.Fields["app"]+" "+e.Fields["path"]+" "+e.Message)
		}
	}
	return out
}

// TestTrustedClusterApps reaches a leaf's web app through the root:
// tsh apps ls --cluster, tsh apps login --cluster and tsh proxy app with
// curl, a websocket echo, refusals (a user no role maps, a leaf role
// without the app's labels) with their messages and the leaf's records,
// the events in the leaf's trail and not the root's, and the app session
// ended when the root removes the user.
func TestTrustedClusterApps(t *testing.T) {
	root, leaf := leafAppPair(t)
	alice := root.f.Login("alice", root.f.AddUser("alice", "ops-north", "pi"))
	bob := root.f.Login("bob", root.f.AddUser("bob", "contractor", "pi"))
	carol := root.f.Login("carol", root.f.AddUser("carol", "access", "pi"))
	outer := t
	hello := leafHello(root)

	t.Run("tsh apps ls --cluster lists the leaf's apps at the root's address", func(t *testing.T) {
		var out string
		harness.Eventually(time.Minute, func() bool {
			out = alice.Tsh("apps", "ls", "--cluster=leaf")
			return strings.Contains(out, hello)
		})
		if !strings.Contains(out, "hello---leaf--pi-1") || !strings.Contains(out, hello) || !strings.Contains(out, "team=ops") {
			t.Errorf("tsh apps ls --cluster=leaf:\n%s", out)
		}
		// The leaf's no-apps role lists nothing; the root's own list has
		// no leaf app.
		if out, errOut, _ := bob.TshErr("", "apps", "ls", "--cluster=leaf"); strings.Contains(out, "hello") || !strings.Contains(errOut, "No web app") {
			t.Errorf("bob's tsh apps ls --cluster=leaf:\n%s\n%s", out, errOut)
		}
		if out := alice.Tsh("apps", "ls"); strings.Contains(out, "hello") {
			t.Errorf("the root lists the leaf's app as its own:\n%s", out)
		}
	})

	var base string
	t.Run("tsh proxy app and curl reach the leaf's app", func(t *testing.T) {
		if out := alice.Tsh("apps", "login", "--cluster=leaf", "hello"); !strings.Contains(out, "hello---leaf--pi-1") {
			t.Fatalf("tsh apps login --cluster=leaf hello:\n%s", out)
		}
		base = proxyApp(outer, alice, "hello---leaf--pi-1")
		w := whoamiVia(t, base)
		// The leaf signed the app's identity for the name it knows the
		// user by; the app sees the root's public host.
		if w.User != "root/alice" {
			t.Errorf("the app got user %q, want root/alice", w.User)
		}
		if got := w.Forwarded["X-Forwarded-Host"]; got != "hello---leaf--pi-1."+appDomain+":"+root.port {
			t.Errorf("X-Forwarded-Host = %q, want the root's address of the app", got)
		}
		if _, ok := w.Headers["X-Remoteler-App-Session"]; ok {
			t.Error("the app received the root's app session header")
		}
	})

	t.Run("a websocket echoes through the root", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		ws, _, err := websocket.Dial(ctx, strings.Replace(base, "http://", "ws://", 1)+"/ws", nil)
		if err != nil {
			t.Fatalf("websocket: %v", err)
		}
		defer ws.CloseNow()
		if err := ws.Write(ctx, websocket.MessageText, []byte("through root and leaf")); err != nil {
			t.Fatal(err)
		}
		_, got, err := ws.Read(ctx)
		if err != nil || string(got) != "through root and leaf" {
			t.Fatalf("echo = %q, %v", got, err)
		}
	})

	t.Run("refusals say why and the leaf records them", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			u    *harness.User
			want string
		}{
			{"no role maps", carol, "maps to a role of this cluster"},
			{"the leaf role lacks the app's labels", bob, "no app"},
		} {
			_, errOut, err := tc.u.TshErr("", "apps", "login", "--cluster=leaf", "hello")
			if err == nil || !strings.Contains(errOut, tc.want) {
				t.Errorf("%s: tsh apps login: %v\n%s", tc.name, err, errOut)
			}
		}
		// The leaf recorded carol's refusal (its role_map gave nothing);
		// a refusal at an app session's start is in the browser test.
		found := false
		for _, e := range search(t, leaf, "--type=access.denied") {
			found = found || (e.Fields["user_cluster"] == "root" && strings.HasSuffix(e.User, "carol"))
		}
		if !found {
			t.Error("the leaf recorded no refusal of root's carol")
		}
	})

	t.Run("the events are in the leaf's trail, not the root's", func(t *testing.T) {
		if !harness.Eventually(time.Minute, func() bool {
			return len(leafAppEvents(t, leaf, "app.request", "root/alice")) > 0 && len(leafAppEvents(t, leaf, "session.start", "root/alice")) > 0
		}) {
			t.Fatal("no app.request and session.start of root/alice in the leaf's trail")
		}
		for _, typ := range []string{"app.request", "session.start"} {
			for _, u := range []string{"alice", "root/alice"} {
				if evs := leafAppEvents(t, root.f, typ, u); len(evs) > 0 {
					t.Errorf("the root recorded %s of %s: %v", typ, u, evs)
				}
			}
		}
	})

	t.Run("removing the root user ends the leaf's app session", func(t *testing.T) {
		root.f.Ctl("", "users", "rm", "alice")
		if !harness.Eventually(time.Minute, func() bool {
			for _, e := range search(t, leaf, "--type=session.end") {
				if e.User == "root/alice" && e.Fields["service"] == "app" && e.Fields["reason"] != "" {
					return true
				}
			}
			return false
		}) {
			t.Fatal("the leaf did not record the end of root/alice's app session")
		}
		out, _, _ := curlLocal(t, "-w", "\n%{http_code}", base+"/whoami")
		if !strings.HasSuffix(out, "\n401") {
			t.Errorf("after the user's removal: %q, want 401", out)
		}
	})
}

// TestTrustedClusterAppsInTheBrowser logs in to the root in Chromium and
// opens the leaf's app at the root's address for it: the root's login, the
// page served by the leaf's device, a websocket echo; a root user whose
// leaf role lacks the app's labels sees the leaf's refusal.
func TestTrustedClusterAppsInTheBrowser(t *testing.T) {
	root, leaf := leafAppPair(t)
	root.f.AddUser("alice", "ops-north", "pi")
	root.f.AddUser("bob", "contractor", "pi")
	hello := leafHello(root)
	b := root.browser(t)
	ctx := b.Ctx
	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}
	step("the root's login, then the leaf's app", func(t *testing.T) {
		b.Do("open the app", chromedp.Navigate(hello+"/"))
		login(t, ctx, "alice")
		waitJS(t, ctx, "on the leaf's app, as root/alice", `location.origin == "`+hello+`" && document.getElementById("user") != null && document.getElementById("user").textContent == "root/alice"`)
	})
	step("websocket echoes", func(t *testing.T) {
		waitJS(t, ctx, "the websocket opens", `document.getElementById("ws-status").textContent == "open"`)
		b.Do("send", chromedp.Click("#echo-form button"))
		waitJS(t, ctx, "the echo", `[...document.querySelectorAll("#echo-log li")].some((li) => li.textContent == "hello through the tunnel")`)
	})
	step("a leaf role without the app's labels is refused with the leaf's message", func(t *testing.T) {
		if _, err := chromedp.Call(ctx, network.ClearBrowserCookies, cdp.Empty{}); err != nil {
			t.Fatalf("forget the sessions: %v", err)
		}
		b.Do("open the app", chromedp.Navigate(hello+"/"))
		login(t, ctx, "bob")
		waitJS(t, ctx, "the refusal", `document.body.innerText.includes("no app \"hello\" on device \"pi-1\"")`)
		if evs := leafAppEvents(t, leaf, "access.denied", "root/bob"); len(evs) == 0 {
			t.Error("the leaf recorded no refusal of root/bob")
		}
	})
}
