package e2e

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/browsertest"
	"remoteler.dev/edge/tools/harness"
	"remoteler.dev/edge/tools/kube/kubetest"
	"remoteler.dev/edge/tools/oidcprovider"
)

// The single sign-on tests run a real OpenID provider on loopback
// (tools/oidcprovider: zitadel/oidc's op library, with users that have
// groups and custom claims), fleetd and tsh as built by TestMain, and
// Debian's headless Chromium, which fills in the provider's login form and
// the fleet's approval page as a person would.

// ssoUsers are the provider's users. Their unix_login claim is the login
// the fleet's role gives them ({{external.logins}}).
var ssoUsers = []oidcprovider.User{
	{Username: "carol", Password: "carol-pw-1", Email: "carol@example.com", EmailVerified: true, Groups: []string{"fleet-admins", "ops"},
		Claims: map[string]any{"unix_login": "root"}},
	{Username: "erin", Password: "erin-pw-1", Email: "erin@example.com", EmailVerified: true, Groups: []string{"ops"},
		Claims: map[string]any{"unix_login": "root"}},
	{Username: "dave", Password: "dave-pw-1", Email: "dave@example.com", EmailVerified: true, Groups: []string{"visitors"}},
}

const ssoRole = `kind: role
version: v1
metadata: {name: sso-ops}
spec:
  allow:
    device_labels: {"*": "*"}
    logins: ["{{external.logins}}", "{{email.local(external.email)}}"]
    kubernetes_groups: ["{{external.groups}}"]
  options:
    max_session_ttl: 2h
`

const ssoConnector = `kind: oidc
version: v1
metadata: {name: test}
spec:
  issuer_url: %s
  client_id: fleet
  client_secret: fleet-client-secret
  scopes: [email, profile, groups]
  claims_to_traits: {logins: unix_login}
  claims_to_roles:
  - {claim: groups, value: fleet-admins, roles: [admin]}
  - {claim: groups, value: ops, roles: [sso-ops]}
  display: Test IdP
`

// ssoFleet is a fleet with a connector to a provider of its own.
type ssoFleet struct {
	*harness.Fleet
	prov *oidcprovider.Provider
}

func startSSOFleet(t *testing.T) *ssoFleet {
	t.Helper()
	prov, err := oidcprovider.Start(oidcprovider.Config{Users: ssoUsers})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prov.Close() })
	f := startFleet(t)
	prov.AddClient(oidcprovider.Client{ID: "fleet", Secret: "fleet-client-secret", RedirectURIs: []string{"https://" + f.Addr + api.PathSSOCallback}})
	f.Ctl(ssoRole, "create", "-f", "-")
	if out := f.Ctl(fmt.Sprintf(ssoConnector, prov.Issuer), "create", "-f", "-"); !strings.Contains(out, `Connector "test" written (client secret stored`) {
		t.Fatalf("fleetctl create -f connector: %q", out)
	}
	return &ssoFleet{Fleet: f, prov: prov}
}

// browser starts Chromium trusting the fleet's certificate.
func (f *ssoFleet) browser(t *testing.T) *browsertest.Browser {
	t.Helper()
	conn, err := tls.Dial("tcp", f.Addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var spki []string
	for _, c := range conn.ConnectionState().PeerCertificates {
		sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
		spki = append(spki, base64.StdEncoding.EncodeToString(sum[:]))
	}
	return browsertest.New(t, browsertest.Options{TrustedSPKI: spki})
}

// providerLogin fills in the provider's login form, which b shows.
func providerLogin(b *browsertest.Browser, user, password string) {
	b.Do("the provider's login form",
		chromedp.WaitVisible(chromedp.ID("username")),
		chromedp.SendKeys(chromedp.ID("username"), user),
		chromedp.SendKeys(chromedp.ID("password"), password),
		chromedp.Click(chromedp.ID("submit")))
}

// pageMessage waits for the message of a page (the fleet's, or tsh's
// loopback page) and returns it.
func pageMessage(b *browsertest.Browser, step string) string {
	b.Do(step, chromedp.WaitVisible(chromedp.ID("message")))
	return browsertest.Get(b, step, chromedp.Text(chromedp.ID("message")))
}

var authURLRE = regexp.MustCompile(`^\s+(http://127\.0\.0\.1:\d+/authorize\?\S+)$`)

// ssoLogin runs tsh login --auth=test as u, logs in at the provider in a
// new browser as user, and returns tsh (exited) and what the browser
// showed at the end.
func (f *ssoFleet) ssoLogin(t *testing.T, u *harness.User, user, password string) (*harness.Proc, string) {
	t.Helper()
	tsh := harness.Start(t, harness.Cmd{Name: "tsh login " + user, Path: bin.Path("tsh"), Env: u.Env(),
		Args: []string{"login", "--proxy=" + f.Addr, "--ca-pin=" + f.Pin, "--auth=test", "--browser=none"}})
	m := tsh.WaitLine(authURLRE, time.Minute)
	b := f.browser(t)
	b.Do("open the provider's login page", chromedp.Navigate(m[1]))
	providerLogin(b, user, password)
	msg := pageMessage(b, "tsh's loopback page")
	tsh.Wait(time.Minute)
	return tsh, msg
}

func TestSSOLoginWithBrowser(t *testing.T) {
	f := startSSOFleet(t)
	f.StartAgent("pi-1", "site=north")
	carol := f.NewUser("carol@example.com")

	tsh, msg := f.ssoLogin(t, carol, "carol", "carol-pw-1")
	if err := tsh.Err(); err != nil {
		t.Fatalf("tsh login --auth=test: %v\n%s", err, tsh.Output())
	}
	if !strings.Contains(msg, "You are logged in to the fleet") {
		t.Errorf("the browser showed %q", msg)
	}
	out := tsh.Output()
	for _, want := range []string{"as carol@example.com", "Roles:       admin, sso-ops", "Logins:      carol, root"} {
		if !strings.Contains(out, want) {
			t.Errorf("tsh login printed no %q:\n%s", want, out)
		}
	}
	// The role's max_session_ttl (2h) bounds the certificates.
	if !regexp.MustCompile(`\(for (1h59m|2h)`).MatchString(out) {
		t.Errorf("tsh login's certificates are not for the role's 2h:\n%s", out)
	}

	t.Run("tsh ssh with the certificates", func(t *testing.T) {
		if out := carol.Tsh("ssh", "root@pi-1", "echo", "hi from sso"); out != "hi from sso\n" {
			t.Errorf("tsh ssh: %q", out)
		}
	})
	t.Run("certificates name the user", func(t *testing.T) {
		home := filepath.Join(carol.Home, "keys", f.Addr, "carol@example.com")
		pemBytes, err := os.ReadFile(filepath.Join(home, "tls.crt"))
		if err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(pemBytes)
		if blk == nil {
			t.Fatal("tls.crt holds no PEM")
		}
		leaf, err := x509.ParseCertificate(blk.Bytes)
		if err != nil || leaf.Subject.CommonName != "carol@example.com" || !slices.Equal(leaf.Subject.OrganizationalUnit, []string{"user"}) {
			t.Errorf("X.509 certificate subject %v, %v", leaf.Subject, err)
		}
		line, err := os.ReadFile(filepath.Join(home, "key-cert.pub"))
		if err != nil {
			t.Fatal(err)
		}
		key, _, _, _, err := ssh.ParseAuthorizedKey(line)
		cert, ok := key.(*ssh.Certificate)
		if err != nil || !ok || cert.KeyId != "carol@example.com" || !slices.Equal(cert.ValidPrincipals, []string{"carol", "root"}) {
			t.Errorf("SSH certificate %+v, %v", cert, err)
		}
		var status struct {
			Items []struct {
				User    string    `json:"user"`
				Auth    string    `json:"auth"`
				Expires time.Time `json:"expires"`
			} `json:"items"`
		}
		json.Unmarshal([]byte(carol.Tsh("status", "--format=json")), &status)
		if len(status.Items) != 1 {
			t.Fatalf("tsh status: %+v", status)
		}
		p := status.Items[0]
		if d := time.Until(p.Expires); p.User != "carol@example.com" || p.Auth != "test" || d > 2*time.Hour || d < time.Hour {
			t.Errorf("tsh status: %+v; want carol@example.com by connector test until the role's 2h", p)
		}
	})
	t.Run("listed as an SSO user", func(t *testing.T) {
		out := f.Ctl("", "users", "ls")
		if !regexp.MustCompile(`carol@example.com\s+admin,sso-ops\s+-\s+no\s+test, last login`).MatchString(out) {
			t.Errorf("fleetctl users ls:\n%s", out)
		}
	})
	t.Run("the secret is never shown", func(t *testing.T) {
		for _, format := range []string{"text", "yaml", "json"} {
			out := f.Ctl("", "connectors", "ls", "--format="+format)
			if strings.Contains(out, "fleet-client-secret") || !strings.Contains(out, "test") {
				t.Errorf("connectors ls --format=%s:\n%s", format, out)
			}
		}
		// The listing goes back in without the secret, which stays.
		if out := f.Ctl(f.Ctl("", "connectors", "ls", "--format=yaml"), "create", "-f", "-"); !strings.Contains(out, "its stored client secret kept") {
			t.Errorf("create -f of the listing: %q", out)
		}
		if out := f.Ctl("", "connectors", "ls"); !regexp.MustCompile(`test\s+http://127\.0\.0\.1:\d+\s+fleet\s+stored\s+groups=fleet-admins→admin`).MatchString(out) {
			t.Errorf("connectors ls after the round trip:\n%s", out)
		}
	})
	t.Run("audited", func(t *testing.T) {
		var login, cert bool
		for _, ev := range search(t, f.Fleet, "--user=carol@example.com") {
			login = login || (ev.Type == proto.EventUserLogin && ev.Fields["method"] == "sso" && ev.Fields["connector"] == "test")
			cert = cert || (ev.Type == proto.EventCertIssued && ev.Fields["method"] == "sso")
		}
		if !login || !cert {
			t.Errorf("audit: sso login %v, certificate %v", login, cert)
		}
	})
	t.Run("tsh login again logs in the same way", func(t *testing.T) {
		tsh := harness.Start(t, harness.Cmd{Name: "tsh login again", Path: bin.Path("tsh"), Env: carol.Env(), Args: []string{"login", "--browser=none"}})
		m := tsh.WaitLine(authURLRE, time.Minute)
		tsh.Kill()
		if !strings.Contains(m[1], "client_id=fleet") {
			t.Errorf("login URL %s", m[1])
		}
	})
	t.Run("removing the user ends their session", func(t *testing.T) {
		sess := harness.Start(t, harness.Cmd{Name: "carol's session", Path: bin.Path("tsh"), Env: carol.Env(),
			Args: []string{"ssh", "root@pi-1", "echo started; exec sleep 600"}})
		sess.WaitLine(regexp.MustCompile(`^started$`), time.Minute)
		f.Ctl("", "users", "rm", "carol@example.com")
		if err := sess.Wait(time.Minute); err == nil {
			t.Errorf("the session went on after the user was removed")
		}
		if !strings.Contains(sess.Output(), "was removed") {
			t.Errorf("the session's end gave no reason:\n%s", sess.Output())
		}
	})
}

func TestSSOLoginRefusals(t *testing.T) {
	f := startSSOFleet(t)

	t.Run("unknown connector", func(t *testing.T) {
		u := f.NewUser("x")
		_, errOut, err := u.TshErr("", "login", "--proxy="+f.Addr, "--ca-pin="+f.Pin, "--auth=nope", "--browser=none")
		if err == nil || !strings.Contains(errOut, `no single sign-on connector called "nope"; this fleet has: test`) {
			t.Errorf("tsh login --auth=nope: %v\n%s", err, errOut)
		}
	})

	tests := []struct {
		name  string
		user  string
		fault oidcprovider.Fault
		setup func(t *testing.T)
		want  string
	}{
		{name: "claims map to no role", user: "dave", want: "give you no fleet role (groups: visitors)"},
		{name: "wrong audience", user: "erin", fault: oidcprovider.WrongAudience, want: "the ID token is not for this fleet"},
		{name: "expired ID token", user: "erin", fault: oidcprovider.Expired, want: "ID token expired at"},
		{name: "wrong nonce", user: "erin", fault: oidcprovider.WrongNonce, want: "nonce is not this login's"},
		{name: "a key the provider rotated out", user: "erin", fault: oidcprovider.RetiredKey, setup: func(t *testing.T) {
			if err := f.prov.RotateKey(); err != nil {
				t.Fatal(err)
			}
		}, want: "signature does not verify with any key the identity provider publishes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.setup != nil {
				tt.setup(t)
			}
			f.prov.SetFault(tt.fault)
			defer f.prov.SetFault(oidcprovider.NoFault)
			u := f.NewUser(tt.user)
			tsh, msg := f.ssoLogin(t, u, tt.user, ssoPassword(tt.user))
			if tsh.Err() == nil {
				t.Fatalf("tsh login succeeded:\n%s", tsh.Output())
			}
			if !strings.Contains(tsh.Output(), "the fleet refused the login: ") || !strings.Contains(tsh.Output(), tt.want) {
				t.Errorf("tsh printed no %q:\n%s", tt.want, tsh.Output())
			}
			if !strings.Contains(msg, tt.want) {
				t.Errorf("the browser showed %q, want %q", msg, tt.want)
			}
			if _, err := os.Stat(filepath.Join(u.Home, "current")); err == nil {
				t.Errorf("tsh saved a login")
			}
		})
	}
	var reasons []string
	for _, ev := range search(t, f.Fleet, "--type=user.login.failed") {
		if ev.Fields["method"] == "sso" {
			reasons = append(reasons, ev.Fields["reason"])
		}
	}
	for _, want := range []string{"connector", "no_role", "audience", "expired", "nonce", "signature"} {
		if !slices.Contains(reasons, want) {
			t.Errorf("no refusal for %q in the audit log: %q", want, reasons)
		}
	}
}

func ssoPassword(user string) string {
	for _, u := range ssoUsers {
		if u.Username == user {
			return u.Password
		}
	}
	return ""
}

var deviceURLRE = regexp.MustCompile(`^\s+(https://\S+/web/device\?user_code=\S+)$`)
var deviceCodeRE = regexp.MustCompile(`shows the code ([A-Z]{4}-[A-Z]{4})`)

func TestSSOHeadlessLogin(t *testing.T) {
	f := startSSOFleet(t)
	f.StartAgent("pi-1", "site=north")
	erin := f.NewUser("erin@example.com")
	tsh := harness.Start(t, harness.Cmd{Name: "tsh login --headless", Path: bin.Path("tsh"), Env: erin.Env(),
		Args: []string{"login", "--proxy=" + f.Addr, "--ca-pin=" + f.Pin, "--headless"}})
	link := tsh.WaitLine(deviceURLRE, time.Minute)[1]
	code := tsh.WaitLine(deviceCodeRE, time.Minute)[1]

	// The approval, in a browser elsewhere.
	b := f.browser(t)
	b.Do("the approval page", chromedp.Navigate(link), chromedp.WaitVisible(chromedp.ID("sso-test")))
	if got := browsertest.Get(b, "the code", chromedp.Value(chromedp.ID("user_code"))); got != code {
		t.Errorf("the page has code %q, tsh showed %q", got, code)
	}
	b.Do("log in with the provider", chromedp.Click(chromedp.ID("sso-test")))
	providerLogin(b, "erin", "erin-pw-1")
	b.Do("the confirmation", chromedp.WaitVisible(chromedp.ID("approve")))
	if got := browsertest.Get(b, "the code shown", chromedp.Text(chromedp.ID("code"))); got != code {
		t.Errorf("the confirmation shows code %q, tsh showed %q", got, code)
	}
	if who := browsertest.Get(b, "who", chromedp.Text(chromedp.ID("user"))); !strings.Contains(who, "erin@example.com (roles: sso-ops)") {
		t.Errorf("the confirmation says the certificates are for %q", who)
	}
	callback := browsertest.Get(b, "the callback address", chromedp.Location())
	b.Do("approve", chromedp.Click(chromedp.ID("approve")))
	if msg := pageMessage(b, "approved"); !strings.Contains(msg, "Approved") {
		t.Errorf("after approving: %q", msg)
	}
	if err := tsh.Wait(time.Minute); err != nil {
		t.Fatalf("tsh login --headless: %v\n%s", err, tsh.Output())
	}
	if !strings.Contains(tsh.Output(), "as erin@example.com") {
		t.Errorf("tsh login --headless:\n%s", tsh.Output())
	}
	if out := erin.Tsh("ssh", "root@pi-1", "echo", "headless"); out != "headless\n" {
		t.Errorf("tsh ssh after a headless login: %q", out)
	}

	t.Run("a replayed state is refused", func(t *testing.T) {
		if !strings.Contains(callback, api.PathSSOCallback+"?") || !strings.Contains(callback, "state=") {
			t.Fatalf("the callback address %q", callback)
		}
		b.Do("replay the provider's answer", chromedp.Navigate(callback))
		if msg := pageMessage(b, "the replay"); !strings.Contains(msg, "already used") {
			t.Errorf("a replayed state: %q", msg)
		}
	})
	t.Run("audited", func(t *testing.T) {
		var approved bool
		for _, ev := range search(t, f.Fleet, "--type=login.headless.approved") {
			approved = approved || (ev.User == "erin@example.com" && ev.Fields["user_code"] == code && ev.Fields["method"] == "sso:test")
		}
		if !approved {
			t.Errorf("no approval event for %s", code)
		}
		var cert bool
		for _, ev := range search(t, f.Fleet, "--type=cert.issued", "--user=erin@example.com") {
			cert = cert || ev.Fields["method"] == "headless"
		}
		if !cert {
			t.Error("no certificate event for the headless login")
		}
	})
}

// TestSSOKube uses the certificates of a single sign-on login with the real
// kubectl against a real kube-apiserver (tools/kube/kubetest) behind an
// agent: the user's Kubernetes groups are their provider's groups
// ({{external.groups}}).
func TestSSOKube(t *testing.T) {
	kc := kubetest.Start(t, kubetest.Options{})
	linkKubectl(t, kc)
	kc.KubectlAdmin(t, strings.ReplaceAll(teamRBAC, "name: developers", "name: ops"), "apply", "-f", "-")
	f := startSSOFleet(t)
	startKubeAgent(f.Fleet, "pi-k", "k3s=yes", f.Addr, kc.AdminKubeconfig)
	erin := f.NewUser("erin@example.com")
	if tsh, _ := f.ssoLogin(t, erin, "erin", "erin-pw-1"); tsh.Err() != nil {
		t.Fatalf("tsh login: %v\n%s", tsh.Err(), tsh.Output())
	}
	kcfg := filepath.Join(t.TempDir(), "kubeconfig")
	if out := tshKube(t, erin, kcfg, "kube", "login", "pi-k"); !strings.Contains(out, "as erin@example.com") {
		t.Errorf("tsh kube login: %q", out)
	}
	out := mustKubectl(t, erin, kcfg, "", "auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}")
	if !strings.HasPrefix(out, "erin@example.com ") || !strings.Contains(out, `"ops"`) {
		t.Errorf("kubectl auth whoami: %q, want erin@example.com in group ops", out)
	}
	mustKubectl(t, erin, kcfg, "", "-n", "team", "create", "configmap", "from-sso", "--from-literal=k=v")
	if got := mustKubectl(t, erin, kcfg, "", "-n", "team", "get", "configmap", "from-sso", "-o", "jsonpath={.data.k}"); got != "v" {
		t.Errorf("kubectl get: %q", got)
	}
	if _, errOut, err := kubectlAs(erin, kcfg, "", "-n", "default", "get", "configmaps"); err == nil || !strings.Contains(errOut, "forbidden") {
		t.Errorf("kubectl outside the group's namespace: %v %s", err, errOut)
	}
}
