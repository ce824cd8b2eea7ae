package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/boltstore"
	"remoteler.dev/edge/proto/pin"
)

// clock is a settable clock for the Authority. It starts at the real time
// so that crypto/tls, which checks certificates at time.Now, agrees.
type clock struct {
	mu sync.Mutex
	t  time.Time // guarded by mu
}

func newClock() *clock { return &clock{t: time.Now().Truncate(time.Second)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// openStore opens a boltstore in a temp dir, closed at cleanup.
func openStore(t testing.TB) store.Store {
	t.Helper()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "fleet.db"), boltstore.Options{})
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// newAuthority makes an Authority on a fresh store.
func newAuthority(t *testing.T) (*Authority, *clock, store.Store) {
	t.Helper()
	st := openStore(t)
	clk := newClock()
	a, err := LoadOrCreate(t.Context(), st, "test-cluster", clk.Now)
	if err != nil {
		t.Fatalf("LoadOrCreate: %v", err)
	}
	return a, clk, st
}

func newECKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// makeCSR returns a DER CSR signed by key.
func makeCSR(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "ignored", OrganizationalUnit: []string{"admin"}},
	}, key)
	if err != nil {
		t.Fatalf("create csr: %v", err)
	}
	return der
}

func newSSHKey(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

func marshalKeys(keys []ssh.PublicKey) []string {
	var out []string
	for _, k := range keys {
		out = append(out, string(ssh.MarshalAuthorizedKey(k)))
	}
	return out
}

func TestLoadOrCreateTwice(t *testing.T) {
	a1, clk, st := newAuthority(t)
	a2, err := LoadOrCreate(t.Context(), st, "test-cluster", clk.Now)
	if err != nil {
		t.Fatalf("second LoadOrCreate: %v", err)
	}
	if got, want := a2.Pin(), a1.Pin(); got != want {
		t.Errorf("second Pin = %s, want %s", got, want)
	}
	tests := []struct {
		name      string
		got, want []string
	}{
		{"user CA", marshalKeys(a2.UserCAKeys()), marshalKeys(a1.UserCAKeys())},
		{"host CA", marshalKeys(a2.HostCAKeys()), marshalKeys(a1.HostCAKeys())},
	}
	for _, tt := range tests {
		if len(tt.got) != 1 || !slices.Equal(tt.got, tt.want) {
			t.Errorf("%s keys = %q, want %q", tt.name, tt.got, tt.want)
		}
	}
	if slices.Equal(marshalKeys(a1.UserCAKeys()), marshalKeys(a1.HostCAKeys())) {
		t.Error("user and host CAs share a key")
	}
	for _, typ := range types {
		if _, err := st.Get(t.Context(), typ.StoreKey()); err != nil {
			t.Errorf("store key %q: %v", typ.StoreKey(), err)
		}
	}
	ca := a1.CACerts()[0]
	if _, ok := ca.PublicKey.(*ecdsa.PublicKey); !ok || !ca.IsCA {
		t.Errorf("X.509 CA: key %T, IsCA %v; want ECDSA CA", ca.PublicKey, ca.IsCA)
	}
	if got := a1.UserCAKeys()[0].Type(); got != ssh.KeyAlgoED25519 {
		t.Errorf("user CA key type = %s, want %s", got, ssh.KeyAlgoED25519)
	}
}

func TestLoadOrCreateRace(t *testing.T) {
	st := openStore(t)
	const n = 4
	pins := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			a, err := LoadOrCreate(t.Context(), st, "c", nil)
			errs[i] = err
			if err == nil {
				pins[i] = a.Pin()
			}
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("LoadOrCreate %d: %v", i, errs[i])
		}
		if pins[i] != pins[0] {
			t.Errorf("replica %d pin %s, want %s (all the same)", i, pins[i], pins[0])
		}
	}
}

func TestLoadOrCreateBadInput(t *testing.T) {
	st := openStore(t)
	if _, err := LoadOrCreate(t.Context(), st, "", nil); err == nil {
		t.Error("LoadOrCreate with empty cluster: err = nil, want an error")
	}
	if err := st.Put(t.Context(), X509.StoreKey(), []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreate(t.Context(), st, "c", nil); err == nil || !strings.Contains(err.Error(), "ca/x509") {
		t.Errorf("LoadOrCreate over a corrupt CA: err = %v, want an error naming ca/x509", err)
	}
}

func TestPin(t *testing.T) {
	a, _, _ := newAuthority(t)
	if got, want := a.Pin(), pin.Of(a.CACerts()[0]); got != want {
		t.Errorf("Pin = %s, want pin.Of(CA) = %s", got, want)
	}
	if _, err := pin.Parse(a.Pin()); err != nil {
		t.Errorf("pin.Parse(Pin()): %v", err)
	}
}

func TestClientCerts(t *testing.T) {
	a, clk, _ := newAuthority(t)
	const ttl = 8 * time.Hour
	tests := []struct {
		name     string
		issue    func() ([]byte, error)
		wantKind Kind
		wantName string
		wantApp  string
	}{
		{"app", func() ([]byte, error) {
			return a.SignAppX509(makeCSR(t, newECKey(t)), "alice", "nodered--pi-1", ttl)
		}, KindApp, "alice", "nodered--pi-1"},
		{"user", func() ([]byte, error) {
			return a.SignUserX509(makeCSR(t, newECKey(t)), "alice", ttl)
		}, KindUser, "alice", ""},
		{"device", func() ([]byte, error) {
			return a.SignDeviceX509(makeCSR(t, newECKey(t)), "dev-0123", ttl)
		}, KindDevice, "dev-0123", ""},
		{"device ed25519", func() ([]byte, error) {
			_, k, _ := ed25519.GenerateKey(rand.Reader)
			return a.SignDeviceX509(makeCSR(t, k), "dev-ed", ttl)
		}, KindDevice, "dev-ed", ""},
		{"admin", func() ([]byte, error) {
			certPEM, keyPEM, err := a.AdminIdentity(ttl)
			if err != nil {
				return nil, err
			}
			pair, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				return nil, err
			}
			return pair.Certificate[0], nil
		}, KindAdmin, AdminName, ""},
		{"replica", func() ([]byte, error) {
			c, err := a.ReplicaCert("r-0a1b2c3d", []string{"127.0.0.1", "fleetd-1.fleetd"}, ttl)
			if err != nil {
				return nil, err
			}
			if len(c.Certificate) != 2 || !bytes.Equal(c.Certificate[1], a.CACerts()[0].Raw) {
				return nil, fmt.Errorf("chain of %d certificates, want [leaf, CA]", len(c.Certificate))
			}
			// A replica serves its peers too.
			if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: a.CertPool(), CurrentTime: clk.Now(), DNSName: "fleetd-1.fleetd",
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
				return nil, fmt.Errorf("verify as a server: %w", err)
			}
			return c.Certificate[0], nil
		}, KindReplica, "r-0a1b2c3d", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			der, err := tt.issue()
			if err != nil {
				t.Fatalf("issue: %v", err)
			}
			cert, err := x509.ParseCertificate(der)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			_, err = cert.Verify(x509.VerifyOptions{
				Roots:       a.CertPool(),
				CurrentTime: clk.Now(),
				KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
			})
			if err != nil {
				t.Errorf("verify against CertPool: %v", err)
			}
			if got, want := cert.NotBefore, clk.Now().Add(-X509Backdate); !got.Equal(want) {
				t.Errorf("NotBefore = %v, want %v (backdated)", got, want)
			}
			id, err := a.Identify(cert)
			if err != nil {
				t.Fatalf("Identify: %v", err)
			}
			want := Identity{Kind: tt.wantKind, Name: tt.wantName, Expires: clk.Now().Add(ttl)}
			want.App = tt.wantApp
			if id.Kind != want.Kind || id.Name != want.Name || !id.Expires.Equal(want.Expires) || id.App != want.App {
				t.Errorf("Identify = %+v, want %+v", id, want)
			}
		})
	}
}

func TestSignCSRRefused(t *testing.T) {
	a, _, _ := newAuthority(t)
	good := makeCSR(t, newECKey(t))
	badSig := bytes.Clone(good)
	badSig[len(badSig)-1] ^= 0xff
	rsaKey, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		csr     []byte
		user    string
		ttl     time.Duration
		wantErr string
	}{
		{"bad signature", badSig, "alice", time.Hour, "csr signature"},
		{"garbage", []byte("not a csr"), "alice", time.Hour, "parse csr"},
		{"empty", nil, "alice", time.Hour, "parse csr"},
		{"rsa key", makeCSR(t, rsaKey), "alice", time.Hour, "unsupported key type"},
		{"empty name", good, "", time.Hour, "empty name"},
		{"control char in name", good, "al\nice", time.Hour, "control"},
		{"long name", good, strings.Repeat("a", 256), time.Hour, "longer"},
		{"zero ttl", good, "alice", 0, "ttl"},
		{"negative ttl", good, "alice", -time.Hour, "ttl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.SignUserX509(tt.csr, tt.user, tt.ttl)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("SignUserX509: err = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestIdentifyRefuses(t *testing.T) {
	a, clk, _ := newAuthority(t)
	other, _, _ := newAuthority(t)
	issue := func(a *Authority, subject pkix.Name, usage x509.ExtKeyUsage, ttl time.Duration) *x509.Certificate {
		t.Helper()
		c, err := a.issue(newECKey(t).Public(), subject, []x509.ExtKeyUsage{usage}, nil, nil, ttl)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	serverCert, err := a.ServerCert([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	short := issue(a, clientSubject(KindUser, "bob"), x509.ExtKeyUsageClientAuth, time.Minute)
	tests := []struct {
		name    string
		cert    *x509.Certificate
		advance time.Duration
		wantErr string
	}{
		{"other CA", issue(other, clientSubject(KindUser, "alice"), x509.ExtKeyUsageClientAuth, time.Hour), 0, "unknown authority"},
		{"expired", short, 2 * time.Minute, "expired"},
		{"unknown OU", issue(a, clientSubject("robot", "r2"), x509.ExtKeyUsageClientAuth, time.Hour), 0, "unknown kind"},
		{"no OU", issue(a, pkix.Name{CommonName: "x"}, x509.ExtKeyUsageClientAuth, time.Hour), 0, "0 OUs"},
		{"two OUs", issue(a, pkix.Name{CommonName: "x", OrganizationalUnit: []string{"user", "admin"}}, x509.ExtKeyUsageClientAuth, time.Hour), 0, "2 OUs"},
		{"empty CN", issue(a, clientSubject(KindUser, ""), x509.ExtKeyUsageClientAuth, time.Hour), 0, "empty name"},
		{"server cert", serverCert.Leaf, 0, "usage"},
		{"nil", nil, 0, "no certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk.Add(tt.advance)
			t.Cleanup(func() { clk.Add(-tt.advance) })
			id, err := a.Identify(tt.cert)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Identify = %+v, %v; want an error containing %q", id, err, tt.wantErr)
			}
		})
	}
}

func TestLeafCappedByCA(t *testing.T) {
	a, _, _ := newAuthority(t)
	der, err := a.SignUserX509(makeCSR(t, newECKey(t)), "alice", 2*CALifetime)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cert.NotAfter, a.CACerts()[0].NotAfter; !got.Equal(want) {
		t.Errorf("NotAfter = %v, want the CA's %v", got, want)
	}
}

// connMeta is the ssh.ConnMetadata of a login as user.
type connMeta struct{ user string }

func (c connMeta) User() string        { return c.user }
func (connMeta) SessionID() []byte     { return []byte("session") }
func (connMeta) ClientVersion() []byte { return []byte("SSH-2.0-test") }
func (connMeta) ServerVersion() []byte { return []byte("SSH-2.0-test") }
func (connMeta) RemoteAddr() net.Addr  { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1} }
func (connMeta) LocalAddr() net.Addr   { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 22} }
func trusts(keys ...ssh.PublicKey) func(ssh.PublicKey) bool {
	return func(k ssh.PublicKey) bool {
		return slices.ContainsFunc(keys, func(t ssh.PublicKey) bool {
			return bytes.Equal(t.Marshal(), k.Marshal())
		})
	}
}

func TestSSHUserCert(t *testing.T) {
	a, clk, _ := newAuthority(t)
	other, _, _ := newAuthority(t)
	pub := newSSHKey(t)
	const ttl = 8 * time.Hour
	cert, err := a.SignUserSSH(pub, "alice", []string{"pi", "ops"}, ttl)
	if err != nil {
		t.Fatalf("SignUserSSH: %v", err)
	}
	if cert.CertType != ssh.UserCert || cert.KeyId != "alice" || !slices.Equal(cert.ValidPrincipals, []string{"pi", "ops"}) {
		t.Errorf("cert type %d, KeyId %q, principals %q; want user cert, alice, [pi ops]", cert.CertType, cert.KeyId, cert.ValidPrincipals)
	}
	wantExt := map[string]string{"permit-pty": "", "permit-port-forwarding": ""}
	if !mapsEqual(cert.Extensions, wantExt) {
		t.Errorf("extensions = %v, want %v", cert.Extensions, wantExt)
	}
	if got, want := cert.ValidAfter, uint64(clk.Now().Add(-time.Minute).Unix()); got != want {
		t.Errorf("ValidAfter = %d, want %d (backdated 1 minute)", got, want)
	}
	if got, want := cert.ValidBefore, uint64(clk.Now().Add(ttl).Unix()); got != want {
		t.Errorf("ValidBefore = %d, want %d", got, want)
	}
	tests := []struct {
		name    string
		trust   []ssh.PublicKey
		login   string
		advance time.Duration
		wantOK  bool
	}{
		{"user CA", a.UserCAKeys(), "pi", 0, true},
		{"second login", a.UserCAKeys(), "ops", 0, true},
		{"other fleet's user CA", other.UserCAKeys(), "pi", 0, false},
		{"host CA", a.HostCAKeys(), "pi", 0, false},
		{"login not granted", a.UserCAKeys(), "root", 0, false},
		{"device clock 50s behind", a.UserCAKeys(), "pi", -50 * time.Second, true},
		{"expired", a.UserCAKeys(), "pi", ttl + time.Second, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checker := &ssh.CertChecker{
				IsUserAuthority: trusts(tt.trust...),
				Clock:           func() time.Time { return clk.Now().Add(tt.advance) },
			}
			perms, err := checker.Authenticate(connMeta{tt.login}, cert)
			if gotOK := err == nil; gotOK != tt.wantOK {
				t.Fatalf("Authenticate(%s): err = %v, want ok %v", tt.login, err, tt.wantOK)
			}
			if err == nil && !mapsEqual(perms.Extensions, wantExt) {
				t.Errorf("permissions extensions = %v, want %v", perms.Extensions, wantExt)
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestSSHHostCert(t *testing.T) {
	a, clk, _ := newAuthority(t)
	pub := newSSHKey(t)
	principals := []string{"dev-0123", "gateway-north"}
	cert, err := a.SignHostSSH(pub, "dev-0123", principals, 30*24*time.Hour)
	if err != nil {
		t.Fatalf("SignHostSSH: %v", err)
	}
	if cert.CertType != ssh.HostCert {
		t.Errorf("CertType = %d, want HostCert (%d)", cert.CertType, ssh.HostCert)
	}
	if cert.KeyId != "dev-0123" || !slices.Equal(cert.ValidPrincipals, principals) {
		t.Errorf("KeyId %q, principals %q; want dev-0123, %q", cert.KeyId, cert.ValidPrincipals, principals)
	}
	if len(cert.Extensions) != 0 {
		t.Errorf("host cert extensions = %v, want none", cert.Extensions)
	}
	tests := []struct {
		name   string
		trust  []ssh.PublicKey
		host   string
		wantOK bool
	}{
		{"host CA", a.HostCAKeys(), "gateway-north:22", true},
		{"user CA", a.UserCAKeys(), "gateway-north:22", false},
		{"other name", a.HostCAKeys(), "elsewhere:22", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checker := &ssh.CertChecker{IsHostAuthority: func(k ssh.PublicKey, _ string) bool { return trusts(tt.trust...)(k) }, Clock: clk.Now}
			err := checker.CheckHostKey(tt.host, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 22}, cert)
			if gotOK := err == nil; gotOK != tt.wantOK {
				t.Errorf("CheckHostKey(%s): err = %v, want ok %v", tt.host, err, tt.wantOK)
			}
		})
	}
}

func TestSSHRefused(t *testing.T) {
	a, _, _ := newAuthority(t)
	pub := newSSHKey(t)
	asCert, err := a.SignUserSSH(pub, "alice", []string{"pi"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		pub     ssh.PublicKey
		user    string
		logins  []string
		ttl     time.Duration
		wantErr string
	}{
		{"no logins", pub, "alice", nil, time.Hour, "no principals"},
		{"empty login", pub, "alice", []string{""}, time.Hour, "empty name"},
		{"no user", pub, "", []string{"pi"}, time.Hour, "empty name"},
		{"nil key", nil, "alice", []string{"pi"}, time.Hour, "no public key"},
		{"certificate as key", asCert, "alice", []string{"pi"}, time.Hour, "is a certificate"},
		{"zero ttl", pub, "alice", []string{"pi"}, 0, "ttl"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := a.SignUserSSH(tt.pub, tt.user, tt.logins, tt.ttl)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("SignUserSSH: err = %v, want one containing %q", err, tt.wantErr)
			}
			_, err = a.SignHostSSH(tt.pub, tt.user, tt.logins, tt.ttl)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("SignHostSSH: err = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

// handshake runs a TLS handshake over net.Pipe and returns the server's
// connection state and both sides' errors.
func handshake(t *testing.T, serverCfg, clientCfg *tls.Config) (tls.ConnectionState, error, error) {
	t.Helper()
	c1, c2 := net.Pipe()
	deadline := time.Now().Add(10 * time.Second)
	c1.SetDeadline(deadline)
	c2.SetDeadline(deadline)
	srv, cli := tls.Server(c1, serverCfg), tls.Client(c2, clientCfg)
	// Close the pipes, not the TLS conns: a TLS close_notify would wait
	// for a reader that is gone.
	t.Cleanup(func() { c1.Close(); c2.Close() })
	errc := make(chan error, 1)
	go func() {
		err := srv.HandshakeContext(t.Context())
		if err != nil {
			c1.Close() // unblocks the client
		}
		errc <- err
	}()
	cerr := cli.HandshakeContext(t.Context())
	if cerr != nil {
		c2.Close() // unblocks the server
	}
	serr := <-errc
	return srv.ConnectionState(), cerr, serr
}

func TestTLSHandshake(t *testing.T) {
	a, _, _ := newAuthority(t)
	other, _, _ := newAuthority(t)
	sc, err := a.ServerCert([]string{"127.0.0.1", "fleet.example"}, 30*24*time.Hour)
	if err != nil {
		t.Fatalf("ServerCert: %v", err)
	}
	if len(sc.Certificate) != 2 || !bytes.Equal(sc.Certificate[1], a.CACerts()[0].Raw) {
		t.Errorf("ServerCert chain has %d certificates, want [leaf, CA]", len(sc.Certificate))
	}
	userKey := newECKey(t)
	userDER, err := a.SignUserX509(makeCSR(t, userKey), "alice", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	userCert := tls.Certificate{Certificate: [][]byte{userDER}, PrivateKey: userKey}

	tests := []struct {
		name       string
		pin        string
		serverName string
		wantErr    error // nil: any error will do when wantOK is false
		wantOK     bool
	}{
		{"pinned IP", a.Pin(), "127.0.0.1", nil, true},
		{"pinned DNS name", a.Pin(), "fleet.example", nil, true},
		{"wrong pin", other.Pin(), "127.0.0.1", pin.ErrMismatch, false},
		{"wrong IP", a.Pin(), "10.0.0.1", nil, false},
		{"wrong name", a.Pin(), "other.example", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			serverCfg := &tls.Config{
				Certificates: []tls.Certificate{sc},
				ClientAuth:   tls.VerifyClientCertIfGiven,
				ClientCAs:    a.CertPool(),
				MinVersion:   tls.VersionTLS13,
			}
			clientCfg := pin.ClientConfig(tt.pin, tt.serverName)
			clientCfg.Certificates = []tls.Certificate{userCert}
			state, cerr, serr := handshake(t, serverCfg, clientCfg)
			if !tt.wantOK {
				if cerr == nil {
					t.Fatal("client handshake succeeded, want an error")
				}
				if tt.wantErr != nil && !errors.Is(cerr, tt.wantErr) {
					t.Errorf("client handshake: err = %v, want %v", cerr, tt.wantErr)
				}
				return
			}
			if cerr != nil || serr != nil {
				t.Fatalf("handshake: client err %v, server err %v; want success", cerr, serr)
			}
			if len(state.VerifiedChains) == 0 {
				t.Fatal("server has no verified client chain")
			}
			id, err := a.Identify(state.VerifiedChains[0][0])
			if err != nil {
				t.Fatalf("Identify: %v", err)
			}
			if id.Kind != KindUser || id.Name != "alice" {
				t.Errorf("Identify = %+v, want user alice", id)
			}
		})
	}
}

func TestServerCertRefused(t *testing.T) {
	a, _, _ := newAuthority(t)
	tests := []struct {
		name  string
		hosts []string
		ttl   time.Duration
	}{
		{"no hosts", nil, time.Hour},
		{"empty host", []string{""}, time.Hour},
		{"url", []string{"https://fleet.example/"}, time.Hour},
		{"zero ttl", []string{"fleet.example"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := a.ServerCert(tt.hosts, tt.ttl); err == nil {
				t.Errorf("ServerCert(%q, %v): err = nil, want an error", tt.hosts, tt.ttl)
			}
			if tt.hosts != nil {
				if _, err := a.ReplicaCert("r-1", tt.hosts, tt.ttl); err == nil {
					t.Errorf("ReplicaCert(%q, %v): err = nil, want an error", tt.hosts, tt.ttl)
				}
			}
		})
	}
	if _, err := a.ReplicaCert("r\n1", []string{"127.0.0.1"}, time.Hour); err == nil {
		t.Error("ReplicaCert with a control character in the ID: err = nil, want an error")
	}
}

func TestAdminIdentityPEM(t *testing.T) {
	a, _, _ := newAuthority(t)
	certPEM, keyPEM, err := a.AdminIdentity(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, data, wantType string
	}{
		{"cert", string(certPEM), "CERTIFICATE"},
		{"key", string(keyPEM), "PRIVATE KEY"},
	}
	for _, tt := range tests {
		b, rest := pem.Decode([]byte(tt.data))
		if b == nil || b.Type != tt.wantType || len(bytes.TrimSpace(rest)) != 0 {
			t.Errorf("%s PEM: want exactly one %q block, got %q", tt.name, tt.wantType, tt.data)
		}
	}
}

func TestRotation(t *testing.T) {
	a, clk, st := newAuthority(t)
	ctx := t.Context()
	replica, err := LoadOrCreate(ctx, st, "test-cluster", clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	oldPin := a.Pin()
	userCert := func() *x509.Certificate {
		t.Helper()
		der, err := a.SignUserX509(makeCSR(t, newECKey(t)), "alice", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	byOld := userCert()

	// Step 1: a new key is trusted but does not sign.
	newID, err := a.AddKey(ctx, X509)
	if err != nil {
		t.Fatalf("AddKey: %v", err)
	}
	if got := len(a.CACerts()); got != 2 {
		t.Fatalf("after AddKey %d CA certs, want 2", got)
	}
	if a.Pin() != oldPin {
		t.Errorf("AddKey changed the pin")
	}
	if !bytes.Equal(userCert().RawIssuer, a.CACerts()[0].RawSubject) || a.CACerts()[0].Equal(a.CACerts()[1]) {
		t.Errorf("after AddKey, certificates are not signed by the old key")
	}

	// Step 2: the new key signs; old certificates still identify.
	if err := a.Activate(ctx, X509, newID); err != nil {
		t.Fatalf("Activate: %v", err)
	}
	if got := a.Pin(); got != newID || got == oldPin {
		t.Errorf("after Activate Pin = %s, want the new key %s", got, newID)
	}
	byNew := userCert()
	if err := byNew.CheckSignatureFrom(a.CACerts()[0]); err != nil {
		t.Errorf("new certificate not signed by the new active CA: %v", err)
	}
	for _, c := range []*x509.Certificate{byOld, byNew} {
		if _, err := a.Identify(c); err != nil {
			t.Errorf("Identify during rotation: %v", err)
		}
	}

	// A replica sees the change after Reload, and so does a restart.
	if replica.Pin() != oldPin {
		t.Errorf("replica changed before Reload")
	}
	if err := replica.Reload(ctx); err != nil {
		t.Fatalf("Reload: %v", err)
	}
	if replica.Pin() != newID {
		t.Errorf("replica after Reload Pin = %s, want %s", replica.Pin(), newID)
	}
	if _, err := replica.Identify(byNew); err != nil {
		t.Errorf("replica Identify new cert: %v", err)
	}

	// Step 3: the old key is gone and its certificates are refused.
	refusals := []struct {
		name string
		err  error
	}{
		{"retire active", a.Retire(ctx, X509, newID)},
		{"retire unknown", a.Retire(ctx, X509, "sha256:00")},
		{"activate unknown", a.Activate(ctx, X509, "sha256:00")},
		{"unknown CA", a.Activate(ctx, "tls", newID)},
	}
	for _, r := range refusals {
		if r.err == nil {
			t.Errorf("%s: err = nil, want an error", r.name)
		}
	}
	if err := a.Retire(ctx, X509, oldPin); err != nil {
		t.Fatalf("Retire: %v", err)
	}
	if _, err := a.Identify(byOld); err == nil {
		t.Error("Identify accepted a certificate of a retired key")
	}
	restarted, err := LoadOrCreate(ctx, st, "test-cluster", clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	if got := restarted.Keys(X509); len(got) != 1 || got[0].ID != newID || !got[0].Active {
		t.Errorf("after restart Keys = %+v, want only the new active key", got)
	}
}

func TestRotateSSH(t *testing.T) {
	a, _, _ := newAuthority(t)
	ctx := t.Context()
	for _, typ := range []Type{SSHUser, SSHHost} {
		t.Run(string(typ), func(t *testing.T) {
			keys := a.UserCAKeys
			sign := func() (*ssh.Certificate, error) {
				return a.SignUserSSH(newSSHKey(t), "alice", []string{"pi"}, time.Hour)
			}
			if typ == SSHHost {
				keys = a.HostCAKeys
				sign = func() (*ssh.Certificate, error) {
					return a.SignHostSSH(newSSHKey(t), "dev", []string{"dev"}, time.Hour)
				}
			}
			old := keys()[0]
			id, err := a.AddKey(ctx, typ)
			if err != nil {
				t.Fatal(err)
			}
			if got := len(keys()); got != 2 {
				t.Fatalf("after AddKey %d keys, want 2", got)
			}
			if id != ssh.FingerprintSHA256(keys()[1]) {
				t.Errorf("AddKey id %s is not the new key's fingerprint", id)
			}
			if err := a.Activate(ctx, typ, id); err != nil {
				t.Fatal(err)
			}
			c, err := sign()
			if err != nil {
				t.Fatal(err)
			}
			if got := ssh.FingerprintSHA256(c.SignatureKey); got != id {
				t.Errorf("signed by %s, want the new key %s", got, id)
			}
			if err := a.Retire(ctx, typ, ssh.FingerprintSHA256(old)); err != nil {
				t.Fatal(err)
			}
			if got := marshalKeys(keys()); len(got) != 1 {
				t.Errorf("after Retire keys = %q, want one", got)
			}
		})
	}
}

func TestDecodeRefuses(t *testing.T) {
	x509Rec, err := newKey(X509, "c", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sshRec, err := newKey(SSHUser, "c", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	enc := func(r record) []byte {
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	wrongID := x509Rec
	wrongID.ID = "sha256:" + strings.Repeat("0", 64)
	noCert := x509Rec
	noCert.Cert = nil
	mismatched := x509Rec
	other, _ := newKey(X509, "c", time.Now())
	mismatched.Cert = other.Cert
	tests := []struct {
		name string
		typ  Type
		data []byte
	}{
		{"not json", X509, []byte("{")},
		{"future version", X509, enc(record{Version: 2, Active: x509Rec.ID, Keys: []keyRecord{x509Rec}})},
		{"no keys", X509, enc(record{Version: 1})},
		{"active not listed", X509, enc(record{Version: 1, Active: "x", Keys: []keyRecord{x509Rec}})},
		{"listed twice", X509, enc(record{Version: 1, Active: x509Rec.ID, Keys: []keyRecord{x509Rec, x509Rec}})},
		{"ssh key as x509", X509, enc(record{Version: 1, Active: sshRec.ID, Keys: []keyRecord{sshRec}})},
		{"x509 key as ssh", SSHUser, enc(record{Version: 1, Active: x509Rec.ID, Keys: []keyRecord{x509Rec}})},
		{"wrong id", X509, enc(record{Version: 1, Active: wrongID.ID, Keys: []keyRecord{wrongID}})},
		{"no cert", X509, enc(record{Version: 1, Active: noCert.ID, Keys: []keyRecord{noCert}})},
		{"cert of another key", X509, enc(record{Version: 1, Active: mismatched.ID, Keys: []keyRecord{mismatched}})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := decode(tt.typ, tt.data); err == nil {
				t.Errorf("decode: err = nil, want an error")
			}
		})
	}
	// And the good ones decode.
	for _, good := range []struct {
		typ Type
		kr  keyRecord
	}{{X509, x509Rec}, {SSHUser, sshRec}} {
		if _, _, err := decode(good.typ, enc(record{Version: 1, Active: good.kr.ID, Keys: []keyRecord{good.kr}})); err != nil {
			t.Errorf("decode good %s: %v", good.typ, err)
		}
	}
}

func TestContextCanceled(t *testing.T) {
	st := openStore(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := LoadOrCreate(ctx, st, "c", nil); !errors.Is(err, context.Canceled) {
		t.Errorf("LoadOrCreate(canceled): err = %v, want %v", err, context.Canceled)
	}
}
