package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"remoteler.dev/edge/tools/demoapp"
	"remoteler.dev/edge/tools/harness"
)

// patternFile writes size bytes of the demo app's download pattern to a
// file and returns it with its SHA-256.
func patternFile(t *testing.T, size int64) (string, [32]byte) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pattern.bin")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), &demoapp.Pattern{Size: size}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return p, sum
}

// curlLocal runs curl against a local address (tsh proxy app's).
func curlLocal(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	r, err := harness.RunErr(t.Context(), "", harness.Cmd{Path: "curl", Args: append([]string{"-sS"}, args...), Timeout: 5 * time.Minute})
	return r.Stdout, r.Stderr, err
}

func whoamiVia(t *testing.T, base string, headers ...string) demoapp.Whoami {
	t.Helper()
	return whoamiAt(t, base+"/whoami", headers...)
}

// whoamiAt is whoamiVia for a whole URL.
func whoamiAt(t *testing.T, u string, headers ...string) demoapp.Whoami {
	t.Helper()
	args := []string{u}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	out, errOut, err := curlLocal(t, args...)
	if err != nil {
		t.Fatalf("curl whoami: %v\n%s", err, errOut)
	}
	var w demoapp.Whoami
	if err := json.Unmarshal([]byte(out), &w); err != nil {
		t.Fatalf("whoami: %v\n%s", err, out)
	}
	return w
}

// TestAppsWithCurl reaches an app with curl through tsh proxy app: Range
// resumes a download, an upload over the cap gets 413, the JWT verifies
// against the fleet's JWKS (go-jose) before and after a key rotation, and
// what a client forges (the identity header, the fleet's cookies,
// forwarding headers) never reaches the app.
func TestAppsWithCurl(t *testing.T) {
	s := startAppFleet(t, "app_upload_limit: 8388608\n")
	alice := s.user(t, "alice", "access")
	hello := s.origin("hello")
	outer := t // proxies outlive the subtest that starts them

	t.Run("listed", func(t *testing.T) {
		if out := alice.Tsh("apps", "ls"); !strings.Contains(out, "hello") || !strings.Contains(out, hello) || !strings.Contains(out, "team=ops") {
			t.Errorf("tsh apps ls:\n%s", out)
		}
		if out := s.f.Ctl("", "apps", "ls"); !strings.Contains(out, hello) || !strings.Contains(out, s.app.URL) {
			t.Errorf("fleetctl apps ls:\n%s", out)
		}
	})
	alice.Tsh("apps", "login", "hello")
	base := proxyApp(t, alice, "hello")

	t.Run("Range resumes a large download", func(t *testing.T) {
		const size = 48 << 20
		_, sum := patternFile(t, size)
		got := filepath.Join(t.TempDir(), "download.bin")
		u := fmt.Sprintf("%s/download?size=%d", base, size)
		if _, errOut, err := curlLocal(t, "-r", "0-16777215", "-o", got, u); err != nil {
			t.Fatalf("first part: %v\n%s", err, errOut)
		}
		if fi, _ := os.Stat(got); fi == nil || fi.Size() != 16<<20 {
			t.Fatalf("first part: %v", fi)
		}
		code, errOut, err := curlLocal(t, "-C", "-", "-o", got, "-w", "%{http_code}", u)
		if err != nil || code != "206" {
			t.Fatalf("resume: %q, %v\n%s", code, err, errOut)
		}
		if fileSum(t, got) != sum {
			t.Error("the resumed download does not match the app's bytes")
		}
	})

	t.Run("an upload over the cap gets 413", func(t *testing.T) {
		big := filepath.Join(t.TempDir(), "big.bin")
		os.WriteFile(big, make([]byte, 9<<20), 0o644)
		small := filepath.Join(t.TempDir(), "small.bin")
		os.WriteFile(small, make([]byte, 7<<20), 0o644)
		for _, tc := range []struct {
			name string
			args []string
			want string
		}{
			{"with a length", []string{"-T", big}, "413"},
			{"chunked", []string{"-T", big, "-H", "Transfer-Encoding: chunked"}, "413"},
			{"under the cap", []string{"-T", small}, "200"},
		} {
			code, errOut, err := curlLocal(t, append(tc.args, "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", base+"/upload")...)
			if code != tc.want {
				t.Errorf("%s: got %q (%v, %s), want %s", tc.name, code, err, errOut, tc.want)
			}
		}
	})

	t.Run("the JWT verifies against the JWKS before and after a key rotation", func(t *testing.T) {
		before := whoamiVia(t, base).JWT
		claims, kid1, err := verifyJWT(t, s.jwks(t), before, s.fleetOrigin(), hello)
		if err != nil {
			t.Fatalf("the app's JWT does not verify: %v", err)
		}
		if claims["sub"] != "alice" || claims["username"] != "alice" || fmt.Sprint(claims["roles"]) != "[access]" {
			t.Errorf("claims %v, want alice with role access", claims)
		}
		if _, _, err := verifyJWT(t, s.jwks(t), before, s.fleetOrigin(), s.origin("other")); err == nil {
			t.Error("hello's JWT verifies for another app's audience")
		}
		if out := s.f.Ctl("", "apps", "rotate-key"); !strings.Contains(out, kid1) {
			t.Errorf("rotate-key: %s (want the previous key %s still published)", out, kid1)
		}
		if _, _, err := verifyJWT(t, s.jwks(t), before, s.fleetOrigin(), hello); err != nil {
			t.Errorf("a JWT from before the rotation no longer verifies: %v", err)
		}
		// A new app session gets a JWT signed with the new key.
		alice.Tsh("apps", "logout", "hello")
		alice.Tsh("apps", "login", "hello")
		fresh := proxyApp(outer, alice, "hello")
		after := whoamiVia(t, fresh).JWT
		_, kid2, err := verifyJWT(t, s.jwks(t), after, s.fleetOrigin(), hello)
		if err != nil || kid2 == kid1 {
			t.Errorf("after the rotation: key %q (before %q), %v", kid2, kid1, err)
		}
		base = fresh
	})

	t.Run("a forged identity never reaches the app", func(t *testing.T) {
		w := whoamiVia(t, base,
			"Remoteler-Jwt-Assertion: eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.",
			"Cookie: __Host-fleet_app=stolen; __Host-fleet_session=stolen; theirs=1",
			"X-Forwarded-Host: evil.example", "X-Forwarded-For: 203.0.113.66")
		if strings.HasPrefix(w.JWT, "eyJhbGciOiJub25lIn0") {
			t.Fatal("the app got the client's forged identity header")
		}
		if _, _, err := verifyJWT(t, s.jwks(t), w.JWT, s.fleetOrigin(), hello); err != nil || w.User != "alice" {
			t.Errorf("the app's identity: %q, %v", w.User, err)
		}
		if strings.Join(w.Cookies, ",") != "theirs" {
			t.Errorf("the app got cookies %v, want only the client's own", w.Cookies)
		}
		if fh := w.Forwarded["X-Forwarded-Host"]; fh != "hello--pi-1."+appDomain+":"+s.port {
			t.Errorf("X-Forwarded-Host %q, want the app's public host", fh)
		}
		if ff := w.Forwarded["X-Forwarded-For"]; strings.Contains(ff, "203.0.113.66") {
			t.Errorf("X-Forwarded-For %q carries the client's forged address", ff)
		}
		if _, port, _ := net.SplitHostPort(s.app.Listener.Addr().String()); w.Host != "127.0.0.1:"+port {
			t.Errorf("the app saw Host %q, want its own address", w.Host)
		}
	})

	t.Run("cookies and redirects naming the app are rewritten", func(t *testing.T) {
		// Straight to the fleet with the app certificate tsh keeps.
		dir := filepath.Join(alice.Home, "keys", s.f.Addr, "alice", "apps")
		// curl reads a colon in --cert as the start of a password.
		cert := []string{"--cert", strings.ReplaceAll(filepath.Join(dir, "hello--pi-1.crt"), ":", `\:`), "--key", filepath.Join(dir, "hello--pi-1.key")}
		out, errOut, err := s.curl(t, append(cert, "-D", "-", "-o", "/dev/null", hello+"/redirect")...)
		if err != nil || !strings.Contains(out, "location: "+hello+"/landed") {
			t.Errorf("redirect: %v\n%s%s", err, out, errOut)
		}
		out, _, _ = s.curl(t, append(cert, "-D", "-", "-o", "/dev/null", hello+"/cookie")...)
		if !strings.Contains(out, "set-cookie: demo=1; Path=/") || strings.Contains(strings.ToLower(out), "domain=") || strings.Contains(out, "__Host-fleet_app") {
			t.Errorf("cookies as the fleet passes them:\n%s", out)
		}
		// Through tsh proxy app, the redirect names the local address.
		out, _, _ = curlLocal(t, "-D", "-", "-o", "/dev/null", base+"/redirect")
		if !strings.Contains(out, "Location: "+base+"/landed") {
			t.Errorf("redirect through tsh proxy app:\n%s", out)
		}
	})

	t.Run("access that ends ends the app session", func(t *testing.T) {
		dave := s.user(t, "dave", "no-ops-apps")
		dave.Tsh("apps", "login", "other")
		daveBase := proxyApp(outer, dave, "other")
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
		defer cancel()
		ws, _, err := websocket.Dial(ctx, strings.Replace(daveBase, "http://", "ws://", 1)+"/ws", nil)
		if err != nil {
			t.Fatalf("websocket: %v", err)
		}
		defer ws.CloseNow()
		if whoamiVia(t, daveBase).User != "dave" {
			t.Fatal("dave cannot reach other")
		}
		// A role change takes every app away: the open websocket is cut
		// and the next request is refused, with the reason.
		s.f.Ctl("kind: role\nversion: v1\nmetadata: {name: no-ops-apps}\nspec:\n  allow: {app_labels: {team: nobody}}\n", "create", "-f", "-")
		if _, _, err := ws.Read(ctx); err == nil {
			t.Error("the websocket outlived the access")
		}
		out, _, _ := curlLocal(t, "-w", "\n%{http_code}", daveBase+"/whoami")
		if !strings.HasSuffix(out, "\n401") || !strings.Contains(out, "your access to other--pi-1 ended: access changed") {
			t.Errorf("after the role change: %q", out)
		}
		ended := false
		for _, e := range appAudit(t, s.f, "session.end", "dave") {
			ended = ended || strings.Contains(e.Fields["reason"], "access changed")
		}
		if !ended {
			t.Error("the app session's end and its reason are not in the audit trail")
		}
	})

	t.Run("audit", func(t *testing.T) {
		// Requests are recorded once answered: wait for the last ones.
		wants := []string{"GET /download 206", "POST /upload 413", "POST /upload 200", "GET /whoami 200"}
		var all string
		ok := harness.Eventually(time.Minute, func() bool {
			var paths []string
			for _, e := range appAudit(t, s.f, "app.request", "alice") {
				paths = append(paths, e.Fields["method"]+" "+e.Fields["path"]+" "+e.Fields["status"])
			}
			all = strings.Join(paths, "\n")
			for _, want := range wants {
				if !strings.Contains(all, want) {
					return false
				}
			}
			return true
		})
		if !ok {
			t.Errorf("want %q among the audited requests:\n%s", wants, all)
		}
	})
}
