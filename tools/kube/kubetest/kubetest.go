// Package kubetest runs a real Kubernetes API server for tests and
// benchmarks: Debian's etcd and a kube-apiserver built from the
// k8s.io/kubernetes module (tools/kube/build-apiserver.sh, cached by
// version under .cache/kube-apiserver), on free loopback ports in a
// temporary directory, with RBAC authorization, a static token file and
// x509 client certificates. It stands in for a device's k3s. Start builds
// the binaries when they are not cached yet (about 10-15 minutes on 2
// cores, once), and fails, never skips, when etcd is missing: run
// tools/kube/setup.sh.
//
// Only tests import this package.
package kubetest

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/tools/harness"
	"remoteler.dev/edge/tools/pkitest"
)

// Token is a static bearer token of the API server's token file.
type Token struct {
	Token, User string
	Groups      []string
}

// Options configure Start; the zero value works.
type Options struct {
	// Tokens are added to the token file next to the admin's.
	Tokens []Token
}

// Cluster is a running etcd and kube-apiserver.
type Cluster struct {
	// URL is the API server's https URL.
	URL string
	// CAPEM is the CA the server certificate (and the client certificates
	// it accepts) chain to.
	CAPEM []byte
	// AdminToken is a token of user "admin" in group system:masters.
	AdminToken string
	// AdminKubeconfig is a kubeconfig file for user "admin" (group
	// system:masters) with a client certificate, like k3s writes.
	AdminKubeconfig string
	// Kubectl and APIServer are the built binaries.
	Kubectl, APIServer string
	// Dir is the cluster's temporary directory.
	Dir string

	ca    *pkitest.CA
	procs []*harness.Proc // etcd, kube-apiserver
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries builds (or finds cached) kube-apiserver and kubectl and returns
// the directory holding them.
func Binaries(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		cmd := exec.Command("bash", filepath.Join(root, "tools", "kube", "build-apiserver.sh"))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			buildErr = fmt.Errorf("build kube-apiserver: %v\n%s", err, stderr.String())
			return
		}
		binDir = strings.TrimSpace(string(out))
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside the module")
	}
	return filepath.Dir(gomod), nil
}

// ModuleRoot returns the repository root.
func ModuleRoot(t testing.TB) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// Start runs etcd and kube-apiserver until the test ends and waits until
// the API server is ready (RBAC's bootstrap roles included).
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	bin := Binaries(t)
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		t.Fatalf("etcd not found (%v): run tools/kube/setup.sh (Debian's etcd-server)", err)
	}
	c := &Cluster{Dir: t.TempDir(), Kubectl: filepath.Join(bin, "kubectl"), APIServer: filepath.Join(bin, "kube-apiserver")}
	c.ca = pkitest.NewCA(t)
	c.CAPEM = c.ca.CertPEM()

	etcdPort, peerPort := freePort(t), freePort(t)
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdPort)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", peerPort)
	c.run(t, "etcd", etcd, "--name=kubetest", "--data-dir="+filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls="+etcdURL, "--advertise-client-urls="+etcdURL,
		"--listen-peer-urls="+peerURL, "--initial-advertise-peer-urls="+peerURL,
		"--initial-cluster=kubetest="+peerURL, "--log-level=warn")
	c.waitFor(t, "etcd", 30*time.Second, func() bool {
		resp, err := http.Get(etcdURL + "/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	port := freePort(t)
	c.URL = fmt.Sprintf("https://127.0.0.1:%d", port)
	serverCert, serverKey := c.issue(t, pkix.Name{CommonName: "kube-apiserver"}, []string{"localhost", "kubernetes", "kubernetes.default.svc"}, []net.IP{net.IPv4(127, 0, 0, 1)}, x509.ExtKeyUsageServerAuth)
	writeFile(t, filepath.Join(c.Dir, "server.crt"), serverCert)
	writeFile(t, filepath.Join(c.Dir, "server.key"), serverKey)
	writeFile(t, filepath.Join(c.Dir, "ca.crt"), c.CAPEM)
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	saDER, _ := x509.MarshalPKCS8PrivateKey(saKey)
	saPub, _ := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	writeFile(t, filepath.Join(c.Dir, "sa.key"), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: saDER}))
	writeFile(t, filepath.Join(c.Dir, "sa.pub"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPub}))

	c.AdminToken = randomToken()
	var tokens strings.Builder
	fmt.Fprintf(&tokens, "%s,admin,admin-uid,\"system:masters\"\n", c.AdminToken)
	for i, tk := range opts.Tokens {
		fmt.Fprintf(&tokens, "%s,%s,uid-%d,\"%s\"\n", tk.Token, tk.User, i, strings.Join(tk.Groups, ","))
	}
	writeFile(t, filepath.Join(c.Dir, "tokens.csv"), []byte(tokens.String()))

	c.run(t, "kube-apiserver", c.APIServer,
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--secure-port="+strconv.Itoa(port),
		"--tls-cert-file="+filepath.Join(c.Dir, "server.crt"), "--tls-private-key-file="+filepath.Join(c.Dir, "server.key"),
		"--client-ca-file="+filepath.Join(c.Dir, "ca.crt"),
		"--token-auth-file="+filepath.Join(c.Dir, "tokens.csv"),
		"--authorization-mode=RBAC",
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file="+filepath.Join(c.Dir, "sa.pub"),
		"--service-account-signing-key-file="+filepath.Join(c.Dir, "sa.key"),
		"--service-cluster-ip-range=10.96.0.0/16",
		"--cert-dir="+filepath.Join(c.Dir, "certs"),
		"--enable-priority-and-fairness=false",
		"--profiling=false",
		"--endpoint-reconciler-type=none",
	)
	client := c.AdminClient()
	c.waitFor(t, "kube-apiserver", 3*time.Minute, func() bool {
		req, _ := http.NewRequest("GET", c.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+c.AdminToken)
		resp, err := client.Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	client.CloseIdleConnections()

	certPEM, keyPEM := c.issue(t, pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}}, nil, nil, x509.ExtKeyUsageClientAuth)
	c.AdminKubeconfig = filepath.Join(c.Dir, "admin.kubeconfig")
	writeFile(t, c.AdminKubeconfig, []byte(c.Kubeconfig(certPEM, keyPEM)))
	return c
}

// Kubeconfig returns a kubeconfig for the cluster with a client
// certificate, in the shape k3s writes /etc/rancher/k3s/k3s.yaml.
func (c *Cluster) Kubeconfig(certPEM, keyPEM []byte) string {
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: %s
    server: %s
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
preferences: {}
users:
- name: default
  user:
    client-certificate-data: %s
    client-key-data: %s
`, b64(c.CAPEM), c.URL, b64(certPEM), b64(keyPEM))
}

// AdminClient returns an HTTP client that trusts the cluster's CA; callers
// add the admin token.
func (c *Cluster) AdminClient() *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(c.CAPEM)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, Timeout: 30 * time.Second}
}

// KubectlAdmin runs kubectl as the admin and returns its output; it fails
// the test when kubectl fails.
func (c *Cluster) KubectlAdmin(t testing.TB, stdin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Kubectl, append([]string{"--kubeconfig=" + c.AdminKubeconfig, "--cache-dir=" + filepath.Join(c.Dir, "kubecache")}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl (admin) %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// KubectlAdminErr runs kubectl as the admin and returns its combined
// output and error (kubectl auth can-i exits 1 for "no").
func (c *Cluster) KubectlAdminErr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.Kubectl, append([]string{"--kubeconfig=" + c.AdminKubeconfig, "--cache-dir=" + filepath.Join(c.Dir, "kubecache")}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Logs returns what etcd and kube-apiserver wrote.
func (c *Cluster) Logs() string {
	var b strings.Builder
	for _, p := range c.procs {
		for _, l := range p.Lines() {
			b.WriteString(p.Name() + ": " + l.Text + "\n")
		}
	}
	return b.String()
}

// run starts a process that the test's clean-up stops (SIGTERM, then
// SIGKILL after 10 s); its last lines show when the test fails.
func (c *Cluster) run(t testing.TB, name, path string, args ...string) {
	t.Helper()
	c.procs = append(c.procs, harness.Start(t, harness.Cmd{Name: name, Path: path, Args: args, LogDir: c.Dir}))
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	port, err := harness.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// waitFor polls cond every 100 ms until it holds, failing after timeout.
func (c *Cluster) waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %s:\n%s", what, timeout, tail(c.Logs(), 8<<10))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// issue signs a certificate with the cluster's CA and returns it and its
// key in PEM.
func (c *Cluster) issue(t testing.TB, subject pkix.Name, dns []string, ips []net.IP, usage x509.ExtKeyUsage) (certPEM, keyPEM []byte) {
	t.Helper()
	return pkitest.PEM(t, c.ca.Issue(t, &x509.Certificate{Subject: subject, DNSNames: dns, IPAddresses: ips, ExtKeyUsage: []x509.ExtKeyUsage{usage}}))
}

// ClientCert issues a client certificate for user in groups (the API
// server reads CN as the user and O as groups).
func (c *Cluster) ClientCert(t testing.TB, user string, groups ...string) (certPEM, keyPEM []byte) {
	t.Helper()
	return c.issue(t, pkix.Name{CommonName: user, Organization: groups}, nil, nil, x509.ExtKeyUsageClientAuth)
}

func randomToken() string {
	var b [18]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// RandomToken returns a fresh bearer token for Options.Tokens.
func RandomToken() string { return randomToken() }

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}
