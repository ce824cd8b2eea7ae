package e2e

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/demoapp"
	"remoteler.dev/edge/tools/harness"
)

// appDomain is the fleet's apps domain in these tests: browsers map it and
// every name under it to 127.0.0.1 (host-resolver rules), curl with
// --resolve.
const appDomain = "fleet.test"

// appFleet is a fleet whose device pi-1 offers the demo app twice: as
// "hello" (label team=ops) and as "other".
type appFleet struct {
	f     *harness.Fleet
	agent *harness.Agent
	app   *httptest.Server // the demo app, on loopback
	port  string           // the fleet's port: apps' public port too
	cas   *x509.CertPool   // the fleet's CA certificates
	caPEM string           // a file holding them, for curl --cacert
	spki  string           // base64 SHA-256 of the CA's key, for Chromium
}

// appRoles: "no-apps" reaches devices but no app; "no-ops-apps" reaches
// every app but those labelled team=ops.
const appRoles = `kind: role
version: v1
metadata: {name: no-apps}
spec:
  allow: {device_labels: {"*": "*"}, logins: [root]}
---
kind: role
version: v1
metadata: {name: no-ops-apps}
spec:
  allow: {app_labels: {"*": "*"}}
  deny: {app_labels: {team: ops}}
`

// startAppFleet starts fleetd with the apps domain, a device with the demo
// app, and the roles of appRoles. config adds to fleetd's YAML config.
func startAppFleet(t *testing.T, config string, agentArgs ...string) *appFleet {
	t.Helper()
	s := &appFleet{app: httptest.NewServer(demoapp.Handler(nil))}
	t.Cleanup(s.app.Close)
	cfg := filepath.Join(t.TempDir(), "fleetd.yaml")
	if err := os.WriteFile(cfg, []byte("apps_domain: "+appDomain+"\npublic_addrs: ["+appDomain+", 127.0.0.1, localhost]\n"+config), 0o600); err != nil {
		t.Fatal(err)
	}
	s.f = harness.StartFleet(t, harness.FleetConfig{Bin: bin, Args: []string{"--config", cfg}})
	_, s.port, _ = net.SplitHostPort(s.f.Addr)
	args := append([]string{"--app", "hello=" + s.app.URL + ",label:team=ops", "--app", "other=" + s.app.URL}, agentArgs...)
	s.agent = s.f.StartAgentWith(harness.AgentConfig{Name: "pi-1", Labels: "site=north", Args: args})
	s.f.Ctl(appRoles, "create", "-f", "-")
	s.loadCAs(t)
	return s
}

// loadCAs reads the fleet's CA certificates from the admin identity.
func (s *appFleet) loadCAs(t *testing.T) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(s.f.DataDir, "admin", "identity.pem"))
	if err != nil {
		t.Fatal(err)
	}
	s.cas = x509.NewCertPool()
	var cas []byte
	first := true
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		if first { // the admin's own certificate
			first = false
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		s.cas.AddCert(c)
		cas = append(cas, pem.EncodeToMemory(blk)...)
		if s.spki == "" {
			sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
			s.spki = base64.StdEncoding.EncodeToString(sum[:])
		}
	}
	s.caPEM = filepath.Join(t.TempDir(), "fleet-ca.pem")
	os.WriteFile(s.caPEM, cas, 0o644)
}

// origin is the public origin of app on pi-1; fleetOrigin the fleet's.
func (s *appFleet) origin(app string) string {
	return "https://" + app + "--pi-1." + appDomain + ":" + s.port
}

func (s *appFleet) fleetOrigin() string { return "https://" + appDomain + ":" + s.port }

// user adds a user with roles and logs them in with tsh.
func (s *appFleet) user(t *testing.T, name, roles string) *harness.User {
	t.Helper()
	return s.f.Login(name, s.f.AddUser(name, roles, "root"))
}

// curl runs curl with the fleet's names resolved to loopback and its CA
// trusted, and returns stdout; -w output goes to stdout too.
func (s *appFleet) curl(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	base := []string{"-sS", "--cacert", s.caPEM}
	for _, h := range []string{appDomain, "hello--pi-1." + appDomain, "other--pi-1." + appDomain} {
		base = append(base, "--resolve", h+":"+s.port+":127.0.0.1")
	}
	r, err := harness.RunErr(t.Context(), "", harness.Cmd{Path: "curl", Args: append(base, args...), Timeout: 5 * time.Minute})
	return r.Stdout, r.Stderr, err
}

// jwks fetches the fleet's published keys with curl.
func (s *appFleet) jwks(t *testing.T) jose.JSONWebKeySet {
	t.Helper()
	out, errOut, err := s.curl(t, s.fleetOrigin()+api.PathJWKS)
	if err != nil {
		t.Fatalf("curl the JWKS: %v\n%s", err, errOut)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal([]byte(out), &set); err != nil {
		t.Fatalf("JWKS: %v\n%s", err, out)
	}
	return set
}

// verifyJWT verifies an app's token against the key set as an app would,
// with go-jose: signature, issuer, audience and times. It returns the
// claims and the signing key's ID.
func verifyJWT(t *testing.T, set jose.JSONWebKeySet, token, issuer, audience string) (map[string]any, string, error) {
	t.Helper()
	tok, err := jwt.ParseSigned(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return nil, "", err
	}
	var std jwt.Claims
	var all map[string]any
	if err := tok.Claims(set, &std, &all); err != nil {
		return nil, "", err
	}
	kid := ""
	if len(tok.Headers) > 0 {
		kid = tok.Headers[0].KeyID
	}
	return all, kid, std.Validate(jwt.Expected{Issuer: issuer, AnyAudience: jwt.Audience{audience}, Time: time.Now()})
}

// proxyApp starts tsh proxy app for u on a free port and returns its
// local base URL.
func proxyApp(t *testing.T, u *harness.User, app string) string {
	t.Helper()
	p := start(t, "tsh proxy app "+app, u.Env(), "tsh", "proxy", "app", app)
	_, m, err := p.AwaitLine(t.Context(), 0, regexp.MustCompile(`^Proxying (http://127\.0\.0\.1:\d+) `), time.Minute)
	if err != nil {
		t.Fatalf("tsh proxy app: %v\n%s", err, p.Output())
	}
	return m[1]
}

// rssOf reads a process's resident memory, in bytes.
func rssOf(pid int) (int64, error) {
	st, err := harness.ReadStat(pid)
	return st.RSS, err
}

// peakRSS samples a process's memory until stop is closed and returns the
// highest it saw.
func peakRSS(pid int, stop <-chan struct{}) <-chan int64 {
	out := make(chan int64, 1)
	go func() {
		var peak int64
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			if n, err := rssOf(pid); err == nil && n > peak {
				peak = n
			}
			select {
			case <-stop:
				out <- peak
				return
			case <-t.C:
			}
		}
	}()
	return out
}

// appAudit returns the fleet's audit events of one type about apps.
func appAudit(t *testing.T, f *harness.Fleet, typ, user string) []api.AuditEvent {
	t.Helper()
	var out []api.AuditEvent
	for _, e := range search(t, f, "--type="+typ, "--user="+user) {
		if e.Fields["service"] == "app" {
			out = append(out, e)
		}
	}
	return out
}
