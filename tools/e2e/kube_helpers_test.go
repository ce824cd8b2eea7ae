package e2e

import (
	"crypto/sha1"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/tools/kube/kubetest"
	"remoteler.dev/edge/tools/linksim"

	"remoteler.dev/edge/tools/harness"
)

// The Kubernetes tests run a real kube-apiserver (tools/kube/kubetest) as
// the stand-in for a device's k3s, and the kubectl built with it, against
// fleetd, edge-agent and tsh as built by TestMain.

var kubectlOnce sync.Once

// linkKubectl puts the kubectl of the test cluster into the binaries
// directory, so run and start find it by name.
func linkKubectl(t *testing.T, kc *kubetest.Cluster) {
	t.Helper()
	kubectlOnce.Do(func() {
		if err := os.Symlink(kc.Kubectl, filepath.Join(string(bin), "kubectl")); err != nil {
			t.Fatal(err)
		}
	})
}

// startKubeAgent joins a device that offers the cluster of kubeconfig
// ("off" for none), dialling the fleet at addr (the fleet's own address,
// or a link simulator's in front of it).
func startKubeAgent(f *harness.Fleet, name, labels, addr, kubeconfig string) *harness.Agent {
	return f.StartAgentWith(harness.AgentConfig{Name: name, Labels: labels, Fleet: addr, Kubeconfig: kubeconfig})
}

// linkTo puts a link simulator in front of the fleet: UDP (tunnels) and
// TCP (joining) on one loopback port, as the agent dials both at one
// address.
func linkTo(t *testing.T, fleetAddr string) (*linksim.Link, string) {
	t.Helper()
	link, err := linksim.New(linksim.Config{Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { link.Close() })
	for range 20 {
		udp, err := link.ListenUDP("127.0.0.1:0", fleetAddr)
		if err != nil {
			t.Fatal(err)
		}
		addr := udp.Addr().String()
		if _, err := link.ListenTCP(addr, fleetAddr); err == nil {
			return link, addr
		}
		udp.Close()
	}
	t.Fatal("no port free for both UDP and TCP")
	return nil, ""
}

// kubectl runs the test cluster's kubectl with the user's environment and
// a kubeconfig.
func kubectlAs(u *harness.User, kubeconfig, stdin string, args ...string) (string, string, error) {
	return run(stdin, kubeEnv(u, kubeconfig), "kubectl", args...)
}

// kubeEnv is the environment of the user's kubectl: their TSH_HOME, the
// kubeconfig, and a discovery cache of their own (not in $HOME).
func kubeEnv(u *harness.User, kubeconfig string) []string {
	return append(u.Env(), "KUBECONFIG="+kubeconfig, "KUBECACHEDIR="+filepath.Join(u.Home, "kubecache"))
}

// mustKubectl is kubectl that fails t when kubectl fails.
func mustKubectl(t *testing.T, u *harness.User, kubeconfig, stdin string, args ...string) string {
	t.Helper()
	out, errOut, err := kubectlAs(u, kubeconfig, stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s as %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), u.Name, err, out, errOut)
	}
	return out
}

// tshKube runs tsh with the kubeconfig in KUBECONFIG and fails t when
// tsh fails.
func tshKube(t *testing.T, u *harness.User, kubeconfig string, args ...string) string {
	t.Helper()
	out, errOut, err := run("", kubeEnv(u, kubeconfig), "tsh", args...)
	if err != nil {
		t.Fatalf("tsh %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// tlsCreds returns the user's fleet client certificate, as the exec
// credential plugin (tsh kube credentials) hands it to kubectl, and a TLS
// config that trusts the fleet.
func tlsCreds(t *testing.T, u *harness.User) *tls.Config {
	t.Helper()
	out := tshKube(t, u, "", "kube", "credentials", "--proxy="+u.Fleet.Addr, "--user="+u.Name)
	var ec struct {
		APIVersion, Kind string
		Status           struct{ ClientCertificateData, ClientKeyData string }
	}
	if err := json.Unmarshal([]byte(out), &ec); err != nil || ec.Kind != "ExecCredential" {
		t.Fatalf("tsh kube credentials: %v\n%s", err, out)
	}
	cert, err := tls.X509KeyPair([]byte(ec.Status.ClientCertificateData), []byte(ec.Status.ClientKeyData))
	if err != nil {
		t.Fatal(err)
	}
	cas, err := os.ReadFile(filepath.Join(u.Home, "keys", u.Fleet.Addr, u.Name, "cas.pem"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(cas)
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, NextProtos: []string{"http/1.1"}}
}

// upgradeServer stands in for an API server whose exec endpoint upgrades
// (as a kubelet's does behind the API server): it answers any Upgrade with
// 101 and then echoes the bytes upper-cased.
type upgradeServer struct {
	srv *httptest.Server
	mu  sync.Mutex // guards seen
	// seen holds the impersonation and authorization headers of each
	// upgrade request.
	seen []http.Header
}

func newUpgradeServer(t *testing.T) *upgradeServer {
	t.Helper()
	u := &upgradeServer{}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		up := r.Header.Get("Upgrade")
		if up == "" {
			http.Error(w, "this test server only upgrades", http.StatusBadRequest)
			return
		}
		u.mu.Lock()
		u.seen = append(u.seen, http.Header{
			"Impersonate-User": r.Header.Values("Impersonate-User"), "Impersonate-Group": r.Header.Values("Impersonate-Group"),
			"Authorization": r.Header.Values("Authorization"), "Path": {r.URL.Path},
		})
		u.mu.Unlock()
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n", up)
		if key := r.Header.Get("Sec-WebSocket-Key"); key != "" {
			sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
			fmt.Fprintf(brw, "Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: %s\r\n", base64.StdEncoding.EncodeToString(sum[:]), r.Header.Get("Sec-WebSocket-Protocol"))
		}
		fmt.Fprint(brw, "\r\n")
		brw.Flush()
		buf := make([]byte, 32<<10)
		for {
			n, err := brw.Read(buf)
			if n > 0 {
				if _, werr := conn.Write([]byte(strings.ToUpper(string(buf[:n])))); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}))
	u.srv.EnableHTTP2 = false
	u.srv.StartTLS()
	t.Cleanup(u.srv.Close)
	return u
}

func (u *upgradeServer) requests() []http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]http.Header(nil), u.seen...)
}

// kubeconfig writes a kubeconfig for the agent that names this server
// with a bearer token.
func (u *upgradeServer) kubeconfig(t *testing.T) string {
	t.Helper()
	ca := base64.StdEncoding.EncodeToString(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: u.srv.Certificate().Raw}))
	path := filepath.Join(t.TempDir(), "upgrade.kubeconfig")
	kc := fmt.Sprintf("clusters: [{name: c, cluster: {server: %q, certificate-authority-data: %s}}]\n"+
		"contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n"+
		"users: [{name: u, user: {token: device-token}}]\n", u.srv.URL, ca)
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// auditLine finds a line of the fleet's log with every key=value of want
// (slog's text format).
func auditLine(out string, want ...string) string {
	for l := range strings.Lines(out) {
		ok := true
		for _, w := range want {
			if !strings.Contains(l, " "+w) {
				ok = false
				break
			}
		}
		if ok {
			return l
		}
	}
	return ""
}

// dialFleet opens a TLS connection to the fleet with cfg.
func dialFleet(t *testing.T, addr string, cfg *tls.Config) *tls.Conn {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
