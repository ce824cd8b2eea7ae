package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"
	"golang.org/x/net/websocket"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/asciicast"
	"remoteler.dev/edge/tools/harness"
	"remoteler.dev/edge/tools/kube/kubetest"
)

// execServer stands in for a cluster whose pod "shell" in namespace team
// runs a terminal: there is no kubelet or container runtime here, so this
// server answers, behind an agent, what kubectl exec -it asks of an API
// server: the pod, and its exec over WebSocket with Kubernetes' remote
// command protocol v5.channel.k8s.io. What comes on stdin goes back on
// stdout, as a terminal echoes it, until "exit" ends the command.
func newExecServer(t *testing.T) *httptest.Server {
	t.Helper()
	ws := websocket.Server{
		Handshake: func(c *websocket.Config, r *http.Request) error {
			for _, p := range c.Protocol {
				if p == "v5.channel.k8s.io" {
					c.Protocol = []string{p}
					return nil
				}
			}
			return fmt.Errorf("want subprotocol v5.channel.k8s.io, got %q", c.Protocol)
		},
		Handler: func(conn *websocket.Conn) {
			defer conn.Close()
			conn.PayloadType = websocket.BinaryFrame
			send := func(ch byte, p []byte) error { return websocket.Message.Send(conn, append([]byte{ch}, p...)) }
			send(1, []byte("pod$ "))
			for {
				var msg []byte
				if err := websocket.Message.Receive(conn, &msg); err != nil || len(msg) == 0 {
					return
				}
				if msg[0] != 0 { // resize (4), or a close signal (255)
					continue
				}
				in := msg[1:]
				if bytes.Contains(in, []byte("exit")) {
					send(3, []byte(`{"metadata":{},"status":"Success"}`))
					return
				}
				send(1, bytes.ReplaceAll(in, []byte("\r"), []byte("\r\npod$ ")))
			}
		},
	}
	discovery := map[string]string{
		"/api":  `{"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[]}`,
		"/apis": `{"kind":"APIGroupList","apiVersion":"v1","groups":[]}`,
		"/api/v1": `{"kind":"APIResourceList","groupVersion":"v1","resources":[` +
			`{"name":"pods","singularName":"pod","namespaced":true,"kind":"Pod","verbs":["get","list"]},` +
			`{"name":"pods/exec","singularName":"","namespaced":true,"kind":"PodExecOptions","verbs":["create","get"]}]}`,
	}
	pod := `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"shell","namespace":"team"},` +
		`"spec":{"containers":[{"name":"sh","image":"busybox"}]},"status":{"phase":"Running"}}`
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.HasSuffix(r.URL.Path, "/pods/shell/exec") && r.Header.Get("Upgrade") != "":
			ws.ServeHTTP(w, r)
		case r.URL.Path == "/api/v1/namespaces/team/pods/shell":
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, pod)
		case discovery[r.URL.Path] != "":
			// kubectl's discovery: the core group, with pods and their exec.
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, discovery[r.URL.Path])
		default:
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprintf(w, `{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"not here: %s","reason":"NotFound","code":404}`, r.URL.Path)
		}
	}))
	srv.EnableHTTP2 = false
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// kubeconfigFor writes a kubeconfig for an agent that names srv.
func kubeconfigFor(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	ca := base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
	path := filepath.Join(t.TempDir(), "exec.kubeconfig")
	kc := fmt.Sprintf("clusters: [{name: c, cluster: {server: %q, certificate-authority-data: %s}}]\n"+
		"contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"+
		"users: [{name: u, user: {token: device-token}}]\n", srv.URL, ca)
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

const kubeExecRole = `kind: role
version: v1
metadata: {name: kube-exec}
spec:
  allow:
    device_labels: {k3s: "yes"}
    kubernetes_groups: [developers]
`

// kubeExecRoleDenied is that role changed to keep its users off the
// clusters it selected: the documented way (docs/kubernetes.md).
const kubeExecRoleDenied = kubeExecRole + `  deny:
    device_labels: {k3s: "yes"}
    kubernetes_groups: ["*"]
`

// kubeExec is a real kubectl exec -it into the exec server's pod shell,
// under a terminal, with its prompt seen and a typed command echoed.
type kubeExec struct {
	out    *lockedBuffer // what kubectl printed
	exited chan error    // kubectl's exit, once
	close  func()        // closes the terminal, after the exit
	in     io.Writer     // the terminal: what is typed into the exec
}

// exit types exit into the exec, waits for kubectl to end with success,
// and closes the terminal.
func (kx *kubeExec) exit(t *testing.T) {
	t.Helper()
	io.WriteString(kx.in, "exit\r")
	select {
	case err := <-kx.exited:
		if err != nil {
			t.Errorf("kubectl exec exited with %v after exit, want success", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("kubectl exec did not end after exit: %q", kx.out.String())
	}
	kx.close()
}

// startKubeExec starts kubectl exec -it as u (with kubeconfig) and waits
// for the pod's prompt and the echo of a typed command.
func startKubeExec(t *testing.T, u *harness.User, kubeconfig string) *kubeExec {
	t.Helper()
	cmd := exec.Command(bin.Path("kubectl"), "-n", "team", "exec", "-it", "shell", "--", "sh")
	cmd.Env = append(os.Environ(), kubeEnv(u, kubeconfig)...)
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 30, Cols: 100})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tty.Close() })
	kx := &kubeExec{out: &lockedBuffer{}, exited: make(chan error, 1), in: tty}
	copied := make(chan struct{})
	go func() {
		io.Copy(kx.out, tty)
		close(copied)
	}()
	go func() { kx.exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill() })
	kx.close = func() {
		tty.Close()
		<-copied
	}
	if !harness.Eventually(60*time.Second, func() bool { return strings.Contains(kx.out.String(), "pod$ ") }) {
		t.Fatalf("no prompt from the exec: %q", kx.out.String())
	}
	io.WriteString(tty, "echo typed-in-the-pod\r")
	if !harness.Eventually(30*time.Second, func() bool { return strings.Contains(kx.out.String(), "typed-in-the-pod") }) {
		t.Fatalf("no echo from the exec: %q", kx.out.String())
	}
	return kx
}

// TestKubeExecRecordedAndEndedByARoleChange runs the real kubectl exec -it
// (under a terminal) through the fleet and an agent to the exec server
// above (no kubelet here), and checks that the session is recorded and
// plays back with tsh play, that a role change ends it with the fleet's
// reason, which kubectl prints, and that the requests, the session and
// the refusals that follow are in the audit trail and fleetctl audit
// search.
func TestKubeExecRecordedAndEndedByARoleChange(t *testing.T) {
	f, alice := startExecFleet(t)
	kcfg := filepath.Join(t.TempDir(), "config")
	tshKube(t, alice, kcfg, "kube", "login", "pi-exec")

	kx := startKubeExec(t, alice, kcfg)
	out, exited := kx.out, kx.exited
	acted := time.Now()
	f.Ctl(kubeExecRoleDenied, "create", "-f", "-")
	select {
	case err := <-exited:
		t.Logf("kubectl exec ended %s after the role change: %v", time.Since(acted).Round(time.Millisecond), err)
		if err == nil {
			t.Errorf("kubectl exec exited 0 after its session was cut")
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("kubectl exec outlived the role change: %q", out.String())
	}
	kx.close()
	const why = `access changed: role "kube-exec" denies Kubernetes access on device "pi-exec"`
	if !strings.Contains(out.String(), why) {
		t.Errorf("kubectl printed %q, want the fleet's reason %q", out.String(), why)
	}
	// A new request is refused with a Status saying why.
	if _, errOut, err := kubectlAs(alice, kcfg, "", "-n", "team", "get", "pod", "shell"); err == nil || !strings.Contains(errOut, "denies Kubernetes access") {
		t.Errorf("kubectl get after the role change: %v %q, want the fleet's refusal", err, errOut)
	}

	t.Run("recorded and played back", func(t *testing.T) {
		rec := kubeExecRecording(t, alice, 30*time.Second)
		if rec.User != "alice" || rec.DeviceName != "pi-exec" || rec.Command != "sh" {
			t.Errorf("recording %+v, want alice's sh on pi-exec", rec)
		}
		played := alice.Tsh("play", "--speed=0", rec.ID)
		if !strings.Contains(played, "pod$ ") || !strings.Contains(played, "typed-in-the-pod") {
			t.Errorf("tsh play: %q, want the session's output", played)
		}
		sum, err := asciicast.ReadAll(strings.NewReader(alice.Tsh("play", "--format=json", rec.ID)))
		if err != nil || sum.Header.Version != 2 {
			t.Fatalf("the recording is not asciicast v2: %v %+v", err, sum)
		}
		if cast := alice.Tsh("play", "--format=json", rec.ID); !strings.Contains(cast, `"r", "100x30"`) {
			t.Errorf("the recording lacks the terminal's size:\n%s", cast)
		}
	})

	t.Run("audited", func(t *testing.T) {
		evs := search(t, f, "--user=alice", "--type=kube.*")
		var get, start, end bool
		for _, e := range evs {
			switch {
			case e.Type == "kube.request" && e.Fields["verb"] == "get" && e.Fields["resource"] == "pods" && e.Fields["name"] == "shell" && e.Fields["code"] == "200":
				get = true
			case e.Type == "kube.session.start" && e.Fields["subresource"] == "exec" && e.DeviceName == "pi-exec":
				start = true
			case e.Type == "kube.session.end" && e.Fields["recorded"] == "true" && strings.Contains(e.Message, "denies Kubernetes access"):
				end = true
			}
		}
		if !get || !start || !end {
			t.Errorf("kube events (get %v, session start %v, end %v): %+v", get, start, end, evs)
		}
		denied := search(t, f, "--user=alice", "--type=access.denied")
		found := false
		for _, e := range denied {
			if e.Fields["service"] == "kube" && e.Fields["rule"] == "deny.kubernetes_groups" && e.Fields["role"] == "kube-exec" {
				found = true
			}
		}
		if !found {
			t.Errorf("access.denied %+v, want the kube refusal naming role kube-exec's rule", denied)
		}
		text := f.Ctl("", "audit", "search", "--since=1h", "--type=kube.*")
		if !strings.Contains(text, "kube.session.start") || !strings.Contains(text, "kube.request") {
			t.Errorf("fleetctl audit search:\n%s", text)
		}
	})
}

// kubeExecRecording waits up to timeout for u's complete kube.exec
// recording in tsh recordings ls, and returns it, or fails t.
func kubeExecRecording(t *testing.T, u *harness.User, timeout time.Duration) api.Recording {
	t.Helper()
	return recordingOf(t, u, timeout, "kube.exec", func(r api.Recording) bool { return r.Kind == "kube.exec" })
}

// recordingOf waits up to timeout for a complete recording of u's (tsh
// recordings ls) that match accepts, and returns it, or fails t saying it
// found no what.
func recordingOf(t *testing.T, u *harness.User, timeout time.Duration, what string, match func(api.Recording) bool) api.Recording {
	t.Helper()
	var rec api.Recording
	if !harness.Eventually(timeout, func() bool {
		var list api.List[api.Recording]
		json.Unmarshal([]byte(u.Tsh("recordings", "ls", "--format=json")), &list)
		for _, r := range list.Items {
			if r.Complete && match(r) {
				rec = r
				return true
			}
		}
		return false
	}) {
		t.Fatalf("no complete %s recording: %s", what, u.Tsh("recordings", "ls"))
	}
	return rec
}

// startProxyKube starts tsh proxy kube as u for device, with more flags
// args, and returns it with the kubeconfig path it printed.
func startProxyKube(t *testing.T, u *harness.User, device string, args ...string) (*harness.Proc, string) {
	t.Helper()
	argv := append([]string{"tsh", "proxy", "kube", device}, args...)
	p := start(t, strings.Join(argv, " "), u.Env(), argv...)
	return p, p.WaitLine(regexp.MustCompile(`export KUBECONFIG=(\S+)`), time.Minute)[1]
}

// startExecFleet starts one fleetd with device pi-exec, whose cluster is
// the exec server above, and alice logged in with role kube-exec.
func startExecFleet(t *testing.T) (*harness.Fleet, *harness.User) {
	t.Helper()
	linkKubectl(t, &kubetest.Cluster{Kubectl: filepath.Join(kubetest.Binaries(t), "kubectl")})
	f := startFleet(t)
	startKubeAgent(f, "pi-exec", "k3s=yes", f.Addr, kubeconfigFor(t, newExecServer(t)))
	f.Ctl(kubeExecRole, "create", "-f", "-")
	return f, f.Login("alice", f.AddUser("alice", "kube-exec", ""))
}

// TestTshProxyKubeOnOneFleetd: tsh proxy kube on one fleetd (no
// replicas), which carries kubectl's own connections in sessions tsh
// holds, as on a fleet of replicas. kubectl get and exec go through it,
// the device audits them, and an exec goes on where it was after fleetd
// is killed (kill -9) and started again: tsh holds the session's fleet
// end, and the device its own.
func TestTshProxyKubeOnOneFleetd(t *testing.T) {
	f, alice := startExecFleet(t)
	proxy, kubeconfig := startProxyKube(t, alice, "pi-exec")
	if out, errOut, err := kubectlAs(alice, kubeconfig, "", "-n", "team", "get", "pod", "shell", "-o", "name"); err != nil || out != "pod/shell\n" {
		t.Fatalf("kubectl get through tsh proxy kube on one fleetd: %q %v\n%s", out, err, errOut)
	}
	kx := startKubeExec(t, alice, kubeconfig)
	f.Proc.Kill()
	killed := time.Now()
	f.Restart()
	line, _ := proxy.WaitLineAt(regexp.MustCompile(`session resumed`), 2*time.Minute)
	t.Logf("tsh resumed kubectl's session %v after fleetd was killed (restarted in %v)", line.At.Sub(killed).Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
	io.WriteString(kx.in, "echo typed-after-the-restart\r")
	if !harness.Eventually(30*time.Second, func() bool { return strings.Contains(kx.out.String(), "typed-after-the-restart\r\npod$ ") }) {
		t.Fatalf("the kubectl exec did not go on after fleetd restarted: %q", kx.out.String())
	}
	if n := strings.Count(kx.out.String(), "typed-in-the-pod\r\n"); n != 1 {
		t.Errorf("the exec's output before the restart came %d times, want once: %q", n, kx.out.String())
	}
	kx.exit(t)

	heldKubeAudited(t, func() []api.AuditEvent { return search(t, f, "--user=alice") })
	rec := kubeExecRecording(t, alice, time.Minute)
	if played := alice.Tsh("play", "--speed=0", rec.ID); !strings.Contains(played, "typed-in-the-pod") || !strings.Contains(played, "typed-after-the-restart") {
		t.Errorf("tsh play: %q, want the exec's output before and after the restart", played)
	}
}
