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

	"remoteler.dev/edge/proto"
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

// echoWS opens a websocket to the demo app's echo through tsh proxy app
// at base, checks that msg comes back, and returns it open.
func echoWS(t *testing.T, ctx context.Context, base, msg string) *websocket.Conn {
	t.Helper()
	ws, _, err := websocket.Dial(ctx, strings.Replace(base, "http://", "ws://", 1)+"/ws", nil)
	if err != nil {
		t.Fatalf("websocket: %v", err)
	}
	if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		ws.CloseNow()
		t.Fatal(err)
	}
	if _, got, err := ws.Read(ctx); err != nil || string(got) != msg {
		ws.CloseNow()
		t.Fatalf("echo = %q, %v", got, err)
	}
	return ws
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
		echoWS(t, ctx, base, "through root and leaf").CloseNow()
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

// TestTrustedClusterAppsEnd opens a root user's app session at the leaf's
// app through the root (a request through tsh proxy app, then a websocket
// left open) and ends the user's access in one of the ways that must end
// it: the trust removed on either side, or the user locked at the root.
// Each time the websocket is cut, the next request is refused with the
// reason, and the leaf records the session's end with that reason in its
// own trail. The product ends sessions within about a second; the waits
// allow 10 s for a busy machine and log what they saw.
func TestTrustedClusterAppsEnd(t *testing.T) {
	const lockMsg = "alice's laptop was reported stolen; call the help desk"
	for _, tc := range []struct {
		name string
		end  func(t *testing.T, root *appFleet, leaf *harness.Fleet)
		// refusal is in the root's answer to the next request; reason
		// is in the end the leaf records.
		refusal, reason string
		// untrusted: the root no longer lists the leaf afterwards.
		untrusted bool
	}{
		{
			name:      "the root removes the leaf",
			end:       func(t *testing.T, root *appFleet, _ *harness.Fleet) { root.f.Ctl("", "clusters", "rm", "leaf") },
			refusal:   "the trust between root and the cluster leaf was removed",
			reason:    "the trust between root and the cluster leaf was removed",
			untrusted: true,
		},
		{
			// The leaf ends its sessions, then tells the root, which
			// ends its own and forgets the leaf.
			name:      "the leaf removes the trust",
			end:       func(t *testing.T, _ *appFleet, leaf *harness.Fleet) { leaf.Ctl("", "clusters", "rm", "root") },
			refusal:   `the leaf cluster "leaf" no longer trusts root: its admin removed the trust`,
			reason:    `this fleet no longer trusts the cluster "root": its admin removed the trust`,
			untrusted: true,
		},
		{
			name: "the root locks the user",
			end: func(t *testing.T, root *appFleet, _ *harness.Fleet) {
				root.f.Ctl("", "lock", "--user=alice", "--message="+lockMsg)
			},
			refusal: lockMsg,
			reason:  lockMsg,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root, leaf := leafAppPair(t)
			alice := root.f.Login("alice", root.f.AddUser("alice", "ops-north", "pi"))
			alice.Tsh("apps", "login", "--cluster=leaf", "hello")
			base := proxyApp(t, alice, "hello---leaf--pi-1")
			if w := whoamiVia(t, base); w.User != "root/alice" {
				t.Fatalf("the app got user %q, want root/alice", w.User)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			ws := echoWS(t, ctx, base, "before")
			defer ws.CloseNow()
			// The websocket's reader says when it is cut.
			cut := make(chan time.Time, 1)
			go func() {
				for {
					if _, _, err := ws.Read(ctx); err != nil {
						cut <- time.Now()
						return
					}
				}
			}()

			began := time.Now()
			tc.end(t, root, leaf)
			done := time.Now()
			select {
			case at := <-cut:
				t.Logf("the websocket was cut %v after the command began (%v after it returned)",
					at.Sub(began).Round(time.Millisecond), at.Sub(done).Round(time.Millisecond))
			case <-time.After(10 * time.Second):
				t.Fatal("the websocket outlived the access by 10 s")
			}

			out, _, _ := curlLocal(t, "--max-time", "60", "-w", "\n%{http_code}", base+"/whoami")
			if strings.HasSuffix(out, "\n200") || !strings.Contains(out, tc.refusal) {
				t.Errorf("the next request: %q, want a refusal saying %q", out, tc.refusal)
			}

			var reason string
			var at time.Time
			if !harness.Eventually(10*time.Second, func() bool {
				for _, e := range search(t, leaf, "--type=session.end") {
					// The app session's end, as the leaf recorded it;
					// the ends of its streams (kind stream, and the
					// device's own events) carry no reason.
					if e.User == "root/alice" && e.AssertedBy == "fleet" && e.Fields["service"] == proto.ServiceApp && e.Fields["kind"] != "stream" {
						reason, at = e.Fields["reason"], e.Time
						return true
					}
				}
				return false
			}) {
				t.Fatal("the leaf recorded no end of root/alice's app session within 10 s")
			}
			t.Logf("the leaf recorded the end %v after the command began", at.Sub(began).Round(time.Millisecond))
			if !strings.Contains(reason, tc.reason) {
				t.Errorf("the leaf recorded the end with reason %q, want %q", reason, tc.reason)
			}
			if evs := leafAppEvents(t, root.f, "session.end", "root/alice"); len(evs) > 0 {
				t.Errorf("the root recorded the leaf's session end: %v", evs)
			}
			if found, _ := clusterState(root.f, "leaf"); found == tc.untrusted {
				t.Errorf("the root lists the leaf: %v, want %v", found, !tc.untrusted)
			}
		})
	}
}
