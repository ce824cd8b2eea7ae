// Package etcdcluster runs a real etcd cluster for tests and benchmark
// tools: Debian's etcd binary (package etcd-server, installed by
// tools/setup/setup.sh), one process per member on free loopback ports, in
// a temporary directory, stopped and removed when the test (or the
// harness.Do function of a tool such as devsim replicas) ends. Members can be killed and
// started again, and the current leader found, for fault tests. With
// Options.TLS clients must present a certificate from the cluster's own
// CA (the members verify it), as a production etcd would ask.
//
// Start fails the test, never skips it, when etcd is missing.
//
// Tests and the tools under tools/ import this package; a fleet never
// does.
package etcdcluster

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"remoteler.dev/edge/tools/harness"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Options configure Start. The zero value works.
type Options struct {
	// Members is the number of members; default 3.
	Members int
	// TLS makes the members serve clients over TLS and require a client
	// certificate (CAFile, CertFile and KeyFile; ClientTLS).
	TLS bool
}

// Cluster is a running etcd cluster.
type Cluster struct {
	// Dir holds the members' data and the TLS files.
	Dir string
	// Members are the cluster's members, in start order.
	Members []*Member
	// CAFile is the CA that signed the members' and the client's
	// certificates; CertFile and KeyFile are a client certificate and
	// its key (PEM). Empty without Options.TLS.
	CAFile, CertFile, KeyFile string

	t     harness.TB
	bin   string
	opts  Options
	token string // the cluster's initial token

	logsMu sync.Mutex // guards logs
	logs   bytes.Buffer
}

// Member is one etcd process.
type Member struct {
	// Name is the member's name (m0, m1, ...).
	Name string
	// Addr is its client address, 127.0.0.1:port.
	Addr string

	c       *Cluster
	peerURL string
	mu      sync.Mutex // guards cmd and done
	cmd     *exec.Cmd
	done    chan struct{} // closed when the process has exited
	started bool          // started once: later starts join the existing cluster
}

// Start starts a cluster and waits until it has a leader and every member
// answers. The cluster is stopped when the test ends.
func Start(t harness.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Members <= 0 {
		opts.Members = 3
	}
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Fatalf("etcd not found (%v): run tools/setup/setup.sh (it installs Debian's etcd-server)", err)
	}
	c := &Cluster{Dir: t.TempDir(), t: t, bin: bin, opts: opts}
	if opts.TLS {
		c.makeTLS(t)
	}
	var initial []string
	for i := range opts.Members {
		m := &Member{Name: fmt.Sprintf("m%d", i), Addr: freeAddr(t), peerURL: "http://" + freeAddr(t), c: c}
		c.Members = append(c.Members, m)
		initial = append(initial, m.Name+"="+m.peerURL)
	}
	token := make([]byte, 6)
	rand.Read(token)
	c.token = "etcdcluster-" + hex.EncodeToString(token)
	for _, m := range c.Members {
		m.start(strings.Join(initial, ","))
	}
	t.Cleanup(func() {
		for _, m := range c.Members {
			m.stop()
		}
		if t.Failed() {
			t.Logf("--- etcd output (last 8 KiB):\n%s", tail(c.Logs(), 8<<10))
		}
	})
	c.WaitHealthy(t)
	return c
}

func freeAddr(t harness.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("%v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (m *Member) clientURL() string {
	if m.c.opts.TLS {
		return "https://" + m.Addr
	}
	return "http://" + m.Addr
}

// start runs the member's process. The first start bootstraps the
// cluster; later ones rejoin it from the member's data dir.
func (m *Member) start(initialCluster string) {
	c := m.c
	args := []string{
		"--name=" + m.Name,
		"--data-dir=" + filepath.Join(c.Dir, m.Name),
		"--listen-client-urls=" + m.clientURL(), "--advertise-client-urls=" + m.clientURL(),
		"--listen-peer-urls=" + m.peerURL, "--initial-advertise-peer-urls=" + m.peerURL,
		"--initial-cluster=" + initialCluster,
		"--initial-cluster-token=" + c.token,
		// A busy machine delays heartbeats: twice the default timings
		// keep the leader from changing when nothing failed.
		"--heartbeat-interval=200", "--election-timeout=2000",
		"--logger=zap", "--log-level=warn",
	}
	if m.started {
		args = append(args, "--initial-cluster-state=existing")
	} else {
		args = append(args, "--initial-cluster-state=new")
	}
	if c.opts.TLS {
		args = append(args, "--client-cert-auth", "--trusted-ca-file="+c.CAFile,
			"--cert-file="+filepath.Join(c.Dir, "server.pem"), "--key-file="+filepath.Join(c.Dir, "server-key.pem"))
	}
	cmd := exec.Command(c.bin, args...)
	w := logWriter{c, m.Name}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		c.t.Fatalf("start etcd %s: %v", m.Name, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	m.mu.Lock()
	m.cmd, m.done, m.started = cmd, done, true
	m.mu.Unlock()
}

// stop ends the process: SIGTERM, then SIGKILL after 10 s.
func (m *Member) stop() {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		cmd.Process.Kill()
		<-done
	}
}

// Kill kills the member with SIGKILL and waits until it is gone.
func (m *Member) Kill() {
	m.mu.Lock()
	cmd, done := m.cmd, m.done
	m.mu.Unlock()
	cmd.Process.Kill()
	<-done
}

// Restart starts a killed member again on its data dir. It does not wait:
// a cluster that lost its quorum is only healthy again (WaitHealthy) once
// enough members are back.
func (m *Member) Restart() {
	var initial []string
	for _, o := range m.c.Members {
		initial = append(initial, o.Name+"="+o.peerURL)
	}
	m.start(strings.Join(initial, ","))
}

// Running reports whether the member's process is running.
func (m *Member) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.done:
		return false
	default:
		return true
	}
}

// Endpoints returns the members' client addresses.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.Addr)
	}
	return eps
}

// StoreURL returns the cluster as fleetd's --store flag names it,
// etcd://HOST:PORT,.../prefix.
func (c *Cluster) StoreURL(prefix string) string {
	return "etcd://" + strings.Join(c.Endpoints(), ",") + "/" + strings.TrimPrefix(prefix, "/")
}

// ClientTLS returns the TLS configuration of a client of the cluster (nil
// without Options.TLS).
func (c *Cluster) ClientTLS(t harness.TB) *tls.Config {
	t.Helper()
	if !c.opts.TLS {
		return nil
	}
	cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		t.Fatalf("%v", err)
	}
	caPEM, err := os.ReadFile(c.CAFile)
	if err != nil {
		t.Fatalf("%v", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}
}

// Client returns a raw etcd client of the running members, closed when the
// test ends, for what tests do behind a store's back (compaction, status).
func (c *Cluster) Client(t harness.TB) *clientv3.Client {
	t.Helper()
	var eps []string
	for _, m := range c.Members {
		if m.Running() {
			eps = append(eps, m.Addr)
		}
	}
	cl, err := clientv3.New(clientv3.Config{Endpoints: eps, TLS: c.ClientTLS(t), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// WaitHealthy waits (up to 2 minutes) until every running member answers
// and agrees on a leader.
func (c *Cluster) WaitHealthy(t harness.TB) {
	t.Helper()
	cl := c.Client(t)
	deadline := time.Now().Add(2 * time.Minute)
	var last error
	for time.Now().Before(deadline) {
		if last = c.healthy(cl); last == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("etcd cluster not healthy after 2m: %v\n%s", last, tail(c.Logs(), 8<<10))
}

func (c *Cluster) healthy(cl *clientv3.Client) error {
	var leader uint64
	for _, m := range c.Members {
		if !m.Running() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		st, err := cl.Status(ctx, m.Addr)
		cancel()
		if err != nil {
			return fmt.Errorf("member %s: %w", m.Name, err)
		}
		if st.Leader == 0 || (leader != 0 && st.Leader != leader) {
			return fmt.Errorf("member %s sees leader %x (others %x)", m.Name, st.Leader, leader)
		}
		leader = st.Leader
	}
	// A write proves the cluster commits.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := cl.Put(ctx, "/etcdcluster/health", time.Now().String())
	return err
}

// Leader returns the member that leads the cluster now, waiting for an
// election to end if need be.
func (c *Cluster) Leader(t harness.TB) *Member {
	t.Helper()
	c.WaitHealthy(t)
	cl := c.Client(t)
	for _, m := range c.Members {
		if !m.Running() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := cl.Status(ctx, m.Addr)
		cancel()
		if err == nil && st.Leader == st.Header.MemberId {
			return m
		}
	}
	t.Fatalf("etcdcluster: no member says it leads")
	return nil
}

// Logs returns what the members wrote.
func (c *Cluster) Logs() string {
	c.logsMu.Lock()
	defer c.logsMu.Unlock()
	return c.logs.String()
}

type logWriter struct {
	c    *Cluster
	name string
}

func (w logWriter) Write(p []byte) (int, error) {
	w.c.logsMu.Lock()
	defer w.c.logsMu.Unlock()
	if w.c.logs.Len() < 4<<20 {
		for _, l := range strings.SplitAfter(string(p), "\n") {
			if l != "" {
				w.c.logs.WriteString(w.name + ": " + l)
			}
		}
	}
	return len(p), nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// makeTLS writes a CA, a server certificate for 127.0.0.1 and localhost,
// and a client certificate, into Dir.
func (c *Cluster) makeTLS(t harness.TB) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("%v", err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "etcdcluster-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatalf("%v", err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	c.CAFile = filepath.Join(c.Dir, "ca.pem")
	writePEM(t, c.CAFile, "CERTIFICATE", caDER)
	issue := func(serial int64, name string, usage []x509.ExtKeyUsage, certFile, keyFile string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatalf("%v", err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
			DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usage,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			t.Fatalf("%v", err)
		}
		kb, _ := x509.MarshalPKCS8PrivateKey(key)
		writePEM(t, certFile, "CERTIFICATE", der)
		writePEM(t, keyFile, "PRIVATE KEY", kb)
	}
	// The members' certificate also authenticates them to each other's
	// client port (the gateway), hence both usages.
	issue(2, "etcd", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		filepath.Join(c.Dir, "server.pem"), filepath.Join(c.Dir, "server-key.pem"))
	c.CertFile, c.KeyFile = filepath.Join(c.Dir, "client.pem"), filepath.Join(c.Dir, "client-key.pem")
	issue(3, "fleetd", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, c.CertFile, c.KeyFile)
}

func writePEM(t harness.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatalf("%v", err)
	}
}
