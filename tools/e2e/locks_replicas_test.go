package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/coder/websocket"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/browsertest"
	"remoteler.dev/edge/tools/demoapp"
	"remoteler.dev/edge/tools/harness"
	"remoteler.dev/edge/tools/kube/kubetest"
)

// lockFleet is startReplicas with device pi-1 (its tunnel on replica A)
// and user alice, logged in through each replica: users[i] is her
// TSH_HOME logged in at replica i, ssh[i] the OpenSSH configuration that
// tsh config wrote there (so its ProxyCommand goes to replica i).
type lockFleet struct {
	*replicaFleet
	password string
	agent    *harness.Agent // pi-1's
	users    [3]*harness.User
	ssh      [3]string
}

// sessionCut bounds the time from a lock's write to the end of a session
// it matches, in the tests that assert it: the fleet aims at well under a
// second; the bound is wide so that a loaded 2-core machine cannot fail it.
const sessionCut = 5 * time.Second

// lockOptions adjust startLockFleetWith; the zero value is
// startLockFleet's fleet.
type lockOptions struct {
	// config is every replica's fleetd YAML config.
	config string
	// device is pi-1's agent (its Name is set here).
	device harness.AgentConfig
	// resources are created (fleetctl create -f -) before alice is
	// added; roles are hers, default "access".
	resources, roles string
}

func startLockFleet(t *testing.T) *lockFleet {
	t.Helper()
	return startLockFleetWith(t, lockOptions{})
}

func startLockFleetWith(t *testing.T, opts lockOptions) *lockFleet {
	t.Helper()
	lf := &lockFleet{replicaFleet: startReplicasWith(t, replicaOptions{config: opts.config})}
	opts.device.Name = "pi-1"
	lf.agent = lf.deviceWith(t, opts.device)
	if opts.resources != "" {
		lf.reps[repA].Ctl(opts.resources, "create", "-f", "-")
	}
	if opts.roles == "" {
		opts.roles = "access"
	}
	lf.password = lf.reps[repA].AddUser("alice", opts.roles, "root")
	for i := range lf.reps {
		u, errOut, err := lf.tshLogin(i)
		if err != nil {
			t.Fatalf("tsh login through replica %c: %v\n%s", 'A'+i, err, errOut)
		}
		lf.users[i] = u
		lf.ssh[i] = openSSHConfig(t, u)
	}
	if got := replicaOf(lf.reps[repC], "pi-1"); got != "r-a" {
		t.Fatalf("pi-1 on %q, want r-a", got)
	}
	return lf
}

// tshLogin logs alice in, with a TSH_HOME of her own, through replica i.
func (lf *lockFleet) tshLogin(i int) (*harness.User, string, error) {
	u := lf.reps[repA].NewUser("alice")
	_, errOut, err := u.TshErr(lf.password+"\n", "login", "--proxy="+lf.reps[i].Addr, "--user=alice", "--ca-pin="+lf.reps[repA].Pin)
	return u, errOut, err
}

// openSSH starts a live OpenSSH session to pi-1 as alice through replica
// i (tsh proxy ssh) and waits until the device runs its command.
func (lf *lockFleet) openSSH(t *testing.T, i int) *harness.Proc {
	t.Helper()
	p := start(t, fmt.Sprintf("ssh via %c", 'A'+i), nil, "ssh", "-F", lf.ssh[i], "-o", "BatchMode=yes", "root@pi-1.fleet", "echo started; exec sleep 600")
	p.WaitLine(regexp.MustCompile(`^started$`), time.Minute)
	return p
}

// tshSSH starts a live tsh ssh session to pi-1 as alice through replica i.
func (lf *lockFleet) tshSSH(t *testing.T, i int) *harness.Proc {
	t.Helper()
	p := start(t, fmt.Sprintf("tsh ssh via %c", 'A'+i), lf.users[i].Env(), "tsh", "ssh", "root@pi-1", "echo started; exec sleep 600")
	p.WaitLine(regexp.MustCompile(`^started$`), time.Minute)
	return p
}

// lock runs fleetctl lock args... against replica i's API and returns
// the lock the fleet wrote (its Created is when the replica wrote it).
func (lf *lockFleet) lock(t *testing.T, i int, args ...string) api.Lock {
	t.Helper()
	out := lf.reps[i].Ctl("", append([]string{"lock", "--format=json"}, args...)...)
	var l api.Lock
	if err := json.Unmarshal([]byte(out), &l); err != nil || l.ID == "" || l.Created.IsZero() {
		t.Fatalf("fleetctl lock --format=json printed %q (%v), want the lock", out, err)
	}
	return l
}

// viewLocks returns the locks in replica i's live view: GET
// /v1/locks?after=0 answers from the view the replica enforces (at once,
// its revision being past 0), where a plain GET reads the store.
func (lf *lockFleet) viewLocks(t *testing.T, i int) []api.Lock {
	t.Helper()
	f := lf.reps[i]
	pemBytes, err := os.ReadFile(filepath.Join(f.DataDir, "admin", "identity.pem"))
	if err != nil {
		t.Fatal(err)
	}
	// The admin identity holds the admin's certificate, the fleet's CAs
	// and the key: X509KeyPair takes the certificates and the key from it.
	id, err := tls.X509KeyPair(pemBytes, pemBytes)
	if err != nil {
		t.Fatalf("admin identity of replica %c: %v", 'A'+i, err)
	}
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{id},
		// What this asks is the replica's view; its certificate is what
		// fleetctl checks, by the fleet's pin, in every other call here.
		InsecureSkipVerify: true,
	}}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("https://" + f.Addr + api.PathLocks + "?after=0&wait=1s")
	if err != nil {
		t.Fatalf("GET %s on replica %c: %v", api.PathLocks, 'A'+i, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var list api.LockList
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &list) != nil {
		t.Fatalf("GET %s on replica %c: %s\n%s", api.PathLocks, 'A'+i, resp.Status, b)
	}
	return list.Items
}

// awaitViews waits until every replica's view holds lock id (in) or no
// longer holds it (!in), and returns how long that took.
func (lf *lockFleet) awaitViews(t *testing.T, id string, in bool) time.Duration {
	t.Helper()
	start := time.Now()
	for i := range lf.reps {
		has := func() bool {
			return slices.ContainsFunc(lf.viewLocks(t, i), func(l api.Lock) bool { return l.ID == id })
		}
		if !harness.Eventually(time.Minute, func() bool { return has() == in }) {
			t.Fatalf("replica %c's view of the locks: holds %s = %v a minute on, want %v", 'A'+i, id, has(), in)
		}
	}
	return time.Since(start)
}

// cutBy waits for session p to end because of lock l, checks that its user
// was shown the lock and its message, and returns the time from the
// lock's write to the session's client exiting.
func cutBy(t *testing.T, p *harness.Proc, l api.Lock) time.Duration {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(time.Minute):
		t.Fatalf("%s outlived lock %s by a minute:\n%s", p.Name(), l.ID, p.Output())
	}
	took := p.ExitedAt().Sub(l.Created)
	// tsh (tsh ssh, or tsh proxy ssh under OpenSSH) prints the reason the
	// fleet gives in-band at the cut; AwaitOutput reads to the end.
	if err := p.AwaitOutput(t.Context(), "tsh: the session to pi-1 ended: ", 10*time.Second); err != nil {
		t.Errorf("%s: %v", p.Name(), err)
	} else if out := p.Output(); !strings.Contains(out, "lock "+l.ID) || !strings.Contains(out, l.Message) {
		t.Errorf("%s's user saw %q, want lock %s and its message %q", p.Name(), out, l.ID, l.Message)
	}
	if p.Err() == nil {
		t.Errorf("%s exited 0 after lock %s cut its session", p.Name(), l.ID)
	}
	return took
}

// TestLocksReplicas: three replicas on etcd, pi-1's tunnel on replica A.
// Alice holds an OpenSSH session (tsh proxy ssh) through replica C and a
// tsh ssh session through replica B; a lock on her written through
// replica A's API ends both, each within sessionCut of the lock's write
// (the times are logged), with the lock's message shown. While the lock
// holds, every replica's view has it, and a new tsh login, tsh ssh or
// OpenSSH through any replica is refused with the message. Removing the
// lock through replica B gives her access back through every replica.
func TestLocksReplicas(t *testing.T) {
	lf := startLockFleet(t)
	sshC := lf.openSSH(t, repC)
	tshB := lf.tshSSH(t, repB)

	const msg = "laptop reported stolen; call the help desk"
	l := lf.lock(t, repA, "--user=alice", "--message="+msg)
	for _, p := range []*harness.Proc{sshC, tshB} {
		took := cutBy(t, p, l)
		t.Logf("%s ended %s after the lock's write on replica A", p.Name(), took.Round(time.Millisecond))
		if took > sessionCut {
			t.Errorf("%s ended %s after the lock's write, want within %s", p.Name(), took.Round(time.Millisecond), sessionCut)
		}
	}
	t.Logf("every replica's view held the lock %s after the sessions ended", lf.awaitViews(t, l.ID, true).Round(time.Millisecond))

	// Under the lock, nothing new gets through any replica.
	refused := func(what string, errOut string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(errOut, msg) {
			t.Errorf("%s under the lock: %v %q, want a refusal saying %q", what, err, errOut, msg)
		}
	}
	for i := range lf.reps {
		_, errOut, err := lf.tshLogin(i)
		refused(fmt.Sprintf("tsh login through replica %c", 'A'+i), errOut, err)
		_, errOut, err = lf.users[i].TshErr("", "ssh", "root@pi-1", "echo", "again")
		refused(fmt.Sprintf("tsh ssh through replica %c", 'A'+i), errOut, err)
		_, errOut, err = run("", nil, "ssh", "-F", lf.ssh[i], "-o", "BatchMode=yes", "root@pi-1.fleet", "echo", "again")
		refused(fmt.Sprintf("OpenSSH through replica %c", 'A'+i), errOut, err)
	}

	lf.reps[repB].Ctl("", "locks", "rm", l.ID)
	lf.awaitViews(t, l.ID, false)
	if now := time.Now(); now.Before(l.Expires) {
		t.Fatalf("lock %s left the replicas' views at %s, before its expiry at %s", l.ID, now.Format(time.StampMilli), l.Expires.Format(time.StampMilli))
	}
	for i := range lf.reps {
		if _, errOut, err := lf.tshLogin(i); err != nil {
			t.Errorf("tsh login through replica %c after locks rm: %v\n%s", 'A'+i, err, errOut)
		}
		if out, errOut, err := lf.users[i].TshErr("", "ssh", "root@pi-1", "echo", "again"); err != nil || out != "again\n" {
			t.Errorf("tsh ssh through replica %c after locks rm: %v %q\n%s", 'A'+i, err, out, errOut)
		}
		if out, errOut, err := run("", nil, "ssh", "-F", lf.ssh[i], "-o", "BatchMode=yes", "root@pi-1.fleet", "echo", "again"); err != nil || out != "again\n" {
			t.Errorf("OpenSSH through replica %c after locks rm: %v %q\n%s", 'A'+i, err, out, errOut)
		}
	}
}

// lockAppsRole gives every app, beside lockRoles' lock-ops.
const lockAppsRole = `kind: role
version: v1
metadata: {name: lock-apps}
spec:
  allow: {app_labels: {"*": "*"}}
`

// kubeLogin runs tsh kube login pi-1 for alice at replica i and returns
// the kubeconfig it wrote.
func (lf *lockFleet) kubeLogin(t *testing.T, i int) string {
	t.Helper()
	kcfg := filepath.Join(t.TempDir(), "config")
	tshKube(t, lf.users[i], kcfg, "kube", "login", "pi-1")
	return kcfg
}

// proxyHello logs alice in to the app hello at replica i and starts tsh
// proxy app for it; it returns the local base URL.
func (lf *lockFleet) proxyHello(t *testing.T, i int) string {
	t.Helper()
	lf.users[i].Tsh("apps", "login", "hello")
	return proxyApp(t, lf.users[i], "hello")
}

// echoSocket opens the demo app's websocket echo at base and checks that
// it echoes.
func echoSocket(t *testing.T, base string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, strings.Replace(base, "http://", "ws://", 1)+"/ws", nil)
	if err != nil {
		t.Fatalf("the app's websocket: %v", err)
	}
	t.Cleanup(func() { ws.CloseNow() })
	if err := ws.Write(ctx, websocket.MessageText, []byte("before the lock")); err != nil {
		t.Fatalf("the app's websocket: %v", err)
	}
	if _, got, err := ws.Read(ctx); err != nil || string(got) != "before the lock" {
		t.Fatalf("the app's websocket echoed %q, %v", got, err)
	}
	return ws
}

// webDash is replica i as the dashboard's tests see a fleet: reached by
// the name fleet.test at its port.
func (lf *lockFleet) webDash(t *testing.T, i int) *dashFleet {
	t.Helper()
	d := &dashFleet{f: lf.reps[i]}
	_, d.port, _ = net.SplitHostPort(d.f.Addr)
	spki, err := harness.CASPKI(lf.reps[repA].DataDir)
	if err != nil {
		t.Fatal(err)
	}
	d.spki = spki
	return d
}

// openTerminal opens pi-1's web terminal as root in b, at d, logging
// user in if the page asks, and waits until its shell runs.
func openTerminal(t *testing.T, b *browsertest.Browser, d *dashFleet, user string) {
	t.Helper()
	const live = `document.getElementById('terminal') && document.getElementById('terminal').dataset.state === 'live'`
	b.Do("pi-1's terminal", chromedp.Navigate(d.origin()+"/web/devices/pi-1/terminal?login=root"))
	waitJS(t, b.Ctx, "the terminal or the login form", live+` || document.getElementById('password') != null`)
	if pageValue[bool](t, b, `document.getElementById('password') != null`) {
		login(t, b.Ctx, user)
	}
	waitJS(t, b.Ctx, "the terminal", live)
	// The page is live once its websocket opens: a command's output says
	// the shell runs.
	typeInTerminal(b, "echo shell-$((6*7))\r")
	waitJS(t, b.Ctx, "the shell", termText+`.includes('shell-42')`)
}

// clientEnd is when a session's client saw its end, and what it said.
type clientEnd struct {
	at  time.Time
	err error
}

// TestLocksReplicasEverySession: three replicas on etcd, pi-1 (with a
// Kubernetes cluster and the demo app) on replica A. Alice holds at once,
// none of them through A: an OpenSSH session through C, a kubectl exec
// -it through B, the demo app's websocket echo through tsh proxy app at
// B, and a web terminal in Chromium logged in at C. One lock on her,
// with a TTL, written through A's API ends all four, each within
// sessionCut of the lock's write (the times are logged), and each
// client shows the lock's message: ssh's stderr (tsh), kubectl's Status,
// the websocket's close reason, the terminal page's text. When the TTL
// runs out, nobody removing the lock, a new OpenSSH session, kubectl
// get, app request and web terminal work through every replica again.
// (The cluster behind pi-1 is the exec server that TestLocks uses: a
// kube-apiserver without a kubelet cannot exec.)
func TestLocksReplicasEverySession(t *testing.T) {
	linkKubectl(t, &kubetest.Cluster{Kubectl: filepath.Join(kubetest.Binaries(t), "kubectl")})
	app := httptest.NewServer(demoapp.Handler(nil))
	t.Cleanup(app.Close)
	lf := startLockFleetWith(t, lockOptions{
		config: "apps_domain: " + appDomain + "\npublic_addrs: [" + appDomain + ", 127.0.0.1, localhost]\n",
		device: harness.AgentConfig{Labels: "k3s=yes", Kubeconfig: kubeconfigFor(t, newExecServer(t)),
			Args: []string{"--app", "hello=" + app.URL}},
		resources: lockRoles + "---\n" + lockAppsRole,
		roles:     "lock-ops,lock-apps",
	})

	sshC := lf.openSSH(t, repC)
	kcfgB := lf.kubeLogin(t, repB)
	kx := startKubeExec(t, lf.users[repB], kcfgB)
	ws := echoSocket(t, lf.proxyHello(t, repB))
	dashC := lf.webDash(t, repC)
	b := dashC.browser(t)
	dashC.logIn(t, b, "alice", lf.password, "")
	openTerminal(t, b, dashC, "alice")
	// The page notes when its terminal ended, by its own clock (this
	// machine's).
	b.Do("watch the terminal", chromedp.Evaluate[chromedp.Void](`(function () {
		var el = document.getElementById('terminal');
		window.termEndedAt = 0;
		new MutationObserver(function () {
			if (el.dataset.state === 'ended' && !window.termEndedAt) window.termEndedAt = Date.now();
		}).observe(el, {attributes: true});
	})()`))

	// Each client's end, as it saw it.
	kxEnd, wsEnd := make(chan clientEnd, 1), make(chan clientEnd, 1)
	go func() {
		err := <-kx.exited
		kxEnd <- clientEnd{time.Now(), err}
	}()
	go func() {
		_, _, err := ws.Read(context.Background())
		wsEnd <- clientEnd{time.Now(), err}
	}()

	const msg = "laptop reported stolen; call the help desk"
	l := lf.lock(t, repA, "--user=alice", "--message="+msg, "--ttl=30s")
	cut := func(what string, took time.Duration) {
		t.Helper()
		t.Logf("%s ended %s after the lock's write on replica A", what, took.Round(time.Millisecond))
		if took > sessionCut {
			t.Errorf("%s ended %s after the lock's write, want within %s", what, took.Round(time.Millisecond), sessionCut)
		}
	}

	// OpenSSH through C: tsh proxy ssh says why on stderr.
	cut(sshC.Name(), cutBy(t, sshC, l))

	// kubectl exec through B: kubectl prints the fleet's Status.
	select {
	case e := <-kxEnd:
		cut("kubectl exec via B", e.at.Sub(l.Created))
		if e.err == nil {
			t.Errorf("kubectl exec exited 0 after lock %s cut its session", l.ID)
		}
	case <-time.After(time.Minute):
		t.Fatalf("kubectl exec outlived lock %s by a minute: %q", l.ID, kx.out.String())
	}
	kx.close()
	if got := kx.out.String(); !strings.Contains(got, msg) {
		t.Errorf("kubectl printed %q, want the lock's message %q", got, msg)
	}

	// The app's websocket through B: closed by the fleet, the reason in
	// the close frame.
	select {
	case e := <-wsEnd:
		cut("the app's websocket via B", e.at.Sub(l.Created))
		var ce websocket.CloseError
		if !errors.As(e.err, &ce) || ce.Code != websocket.StatusPolicyViolation || !strings.Contains(ce.Reason, msg) {
			t.Errorf("the app's websocket ended with %v, want a close with status %d and the lock's message %q", e.err, websocket.StatusPolicyViolation, msg)
		}
	case <-time.After(time.Minute):
		t.Fatalf("the app's websocket outlived lock %s by a minute", l.ID)
	}

	// The web terminal at C: the page says why.
	waitJS(t, b.Ctx, "the terminal ended", `window.termEndedAt > 0`)
	cut("the web terminal via C", time.UnixMilli(pageValue[int64](t, b, "window.termEndedAt")).Sub(l.Created))
	if status := pageValue[string](t, b, "document.getElementById('term-status').textContent"); !strings.Contains(status, msg) {
		t.Errorf("the web terminal's page says %q, want the lock's message %q", status, msg)
	}

	// The TTL runs out: access comes back through every replica, the lock
	// untouched.
	lf.awaitViews(t, l.ID, false)
	if now := time.Now(); now.Before(l.Expires) {
		t.Fatalf("lock %s left the replicas' views at %s, before its expiry at %s", l.ID, now.Format(time.StampMilli), l.Expires.Format(time.StampMilli))
	}
	for i := range lf.reps {
		via := fmt.Sprintf("through replica %c after the lock's expiry", 'A'+i)
		var out, errOut string
		if !harness.Eventually(time.Minute, func() bool {
			var err error
			out, errOut, err = run("", nil, "ssh", "-F", lf.ssh[i], "-o", "BatchMode=yes", "root@pi-1.fleet", "echo", "again")
			return err == nil && out == "again\n"
		}) {
			t.Errorf("OpenSSH %s: %q\n%s", via, out, errOut)
		}
		if out := mustKubectl(t, lf.users[i], lf.kubeLogin(t, i), "", "-n", "team", "get", "pod", "shell"); !strings.Contains(out, "shell") {
			t.Errorf("kubectl get %s: %q", via, out)
		}
		if w := whoamiVia(t, lf.proxyHello(t, i)); w.User != "alice" {
			t.Errorf("the app %s answered as %q, want alice", via, w.User)
		}
		openTerminal(t, b, lf.webDash(t, i), "alice")
	}
	t.Logf("access was back through every replica %s after the lock's expiry", time.Since(l.Expires).Round(time.Millisecond))
}
