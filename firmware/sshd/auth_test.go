package sshd

import (
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/tools/pkitest"
)

func TestCheckCert(t *testing.T) {
	userCA, otherCA := pkitest.SSHSigner(t), pkitest.SSHSigner(t)
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	srv := New(Config{
		UserCAKeys: func() []ssh.PublicKey { return []ssh.PublicKey{otherCA.PublicKey(), userCA.PublicKey()} },
		Now:        func() time.Time { return now },
	})
	id := identity("pi")
	key := pkitest.SSHSigner(t).PublicKey()
	good := certSpec{keyID: "alice", principals: []string{"admin", "pi"}, after: now.Add(-time.Hour), before: now.Add(time.Hour)}
	with := func(change func(*certSpec)) certSpec {
		s := good
		change(&s)
		return s
	}
	tests := []struct {
		name   string
		ca     ssh.Signer
		spec   certSpec
		plain  bool
		login  string
		reason string // "" accepts
	}{
		{name: "valid", spec: good},
		{name: "expired within skew", spec: with(func(s *certSpec) { s.before = now.Add(-4 * time.Minute) })},
		{name: "starts within skew", spec: with(func(s *certSpec) { s.after = now.Add(4 * time.Minute) })},
		{name: "expired", spec: with(func(s *certSpec) { s.before = now.Add(-6 * time.Minute) }), reason: "expired"},
		{name: "not yet valid", spec: with(func(s *certSpec) { s.after, s.before = now.Add(time.Hour), now.Add(2*time.Hour) }), reason: "not valid until"},
		{name: "never valid", spec: with(func(s *certSpec) { s.before = s.after }), reason: "never valid"},
		{name: "unknown CA", ca: pkitest.SSHSigner(t), spec: good, reason: "unknown authority"},
		{name: "host cert", spec: with(func(s *certSpec) { s.certType = ssh.HostCert }), reason: "host certificate"},
		{name: "login not a principal", spec: good, login: "root", reason: `login "root" is not a principal`},
		{name: "no principals", spec: with(func(s *certSpec) { s.principals = nil }), reason: "not a principal"},
		{name: "key id is another user", spec: with(func(s *certSpec) { s.keyID = "mallory" }), reason: `key id "mallory"`},
		{name: "unsupported critical option", spec: with(func(s *certSpec) { s.critical = map[string]string{"force-command": "true"} }), reason: "unsupported critical option"},
		{name: "plain key", plain: true, reason: "plain key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := tt.ca
			if ca == nil {
				ca = userCA
			}
			var k ssh.PublicKey = key
			if !tt.plain {
				k = sign(t, ca, key, tt.spec)
			}
			login := tt.login
			if login == "" {
				login = "pi"
			}
			_, r := srv.checkCert(k, login, id)
			switch {
			case tt.reason == "" && r != nil:
				t.Fatalf("checkCert refused: %s; want accepted", r.reason)
			case tt.reason != "" && r == nil:
				t.Fatalf("checkCert accepted; want refused with %q", tt.reason)
			case r != nil && !strings.Contains(r.reason, tt.reason):
				t.Fatalf("checkCert reason = %q; want it to contain %q", r.reason, tt.reason)
			}
		})
	}
}

// TestCheckCertStreamCAs: a root fleet's user CA counts for the stream
// that names it (trusted clusters), and for no other.
func TestCheckCertStreamCAs(t *testing.T) {
	userCA, rootCA := pkitest.SSHSigner(t), pkitest.SSHSigner(t)
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	srv := New(Config{
		UserCAKeys: func() []ssh.PublicKey { return []ssh.PublicKey{userCA.PublicKey()} },
		Now:        func() time.Time { return now },
	})
	key := pkitest.SSHSigner(t).PublicKey()
	cert := sign(t, rootCA, key, certSpec{keyID: "root/alice", principals: []string{"pi"}, after: now.Add(-time.Hour), before: now.Add(time.Hour)})
	id := identity("pi")
	id.User, id.Cluster = "root/alice", "root"
	if _, r := srv.checkCert(cert, "pi", id); r == nil || !strings.Contains(r.reason, "unknown authority") {
		t.Fatalf("a root's certificate on a stream that names no root CA: %v, want unknown authority", r)
	}
	id.UserCAKeys = [][]byte{{1, 2, 3}, rootCA.PublicKey().Marshal()}
	if _, r := srv.checkCert(cert, "pi", id); r != nil {
		t.Fatalf("a root's certificate on a stream that names its CA: refused: %s", r.reason)
	}
	if _, r := srv.checkCert(cert, "root", id); r == nil {
		t.Fatal("the root's CA let in a login that is not a principal")
	}
	later := identity("pi")
	later.User = "root/alice"
	if _, r := srv.checkCert(cert, "pi", later); r == nil {
		t.Fatal("the root's CA outlived the stream that named it")
	}
}

func TestValidAtInfinity(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	cert := &ssh.Certificate{ValidAfter: 0, ValidBefore: ssh.CertTimeInfinity}
	at, r := validAt(cert, now, time.Minute)
	if r != nil {
		t.Fatalf("validAt refused a certificate without end: %s", r.reason)
	}
	if !at.Equal(now) {
		t.Errorf("validAt = %v; want %v", at, now)
	}
	// Near the end of int64, adding the skew must not wrap around.
	cert.ValidBefore = 1<<63 - 2
	if _, r := validAt(cert, now, time.Hour); r != nil {
		t.Fatalf("validAt refused a far-future end: %s", r.reason)
	}
}

// TestLoginRefused drives refusals end to end with a Go client: each must
// fail the handshake and leave a log line with the reason.
func TestLoginRefused(t *testing.T) {
	f := newFixture(t)
	login := f.login
	addr := f.serve(identity(login))
	good := certSpec{keyID: "alice", principals: []string{login}, extensions: allPermits}
	with := func(change func(*certSpec)) certSpec {
		s := good
		change(&s)
		return s
	}
	tests := []struct {
		name   string
		signer ssh.Signer
		login  string
		reason string
	}{
		{name: "unknown CA", signer: certSigner(t, pkitest.SSHSigner(t), good), reason: "unknown authority"},
		{name: "expired", signer: certSigner(t, f.userCA, with(func(s *certSpec) {
			s.after, s.before = time.Now().Add(-3*time.Hour), time.Now().Add(-2*time.Hour)
		})), reason: "expired"},
		{name: "login not in principals", signer: certSigner(t, f.userCA, with(func(s *certSpec) { s.principals = []string{"someone-else"} })), reason: "not a principal"},
		{name: "login is not the fleet's", signer: f.userCert("daemon"), login: "daemon", reason: "not the login the fleet authorised"},
		{name: "key id is not the fleet user", signer: certSigner(t, f.userCA, with(func(s *certSpec) { s.keyID = "bob" })), reason: "key_id=bob"},
		{name: "plain key", signer: pkitest.SSHSigner(t), reason: "plain key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := tt.login
			if l == "" {
				l = login
			}
			before := len(f.log.String())
			if _, err := f.dial(addr, l, tt.signer); err == nil {
				t.Fatal("dial succeeded; want refused")
			}
			logged := f.log.String()[before:]
			if !strings.Contains(logged, "login refused") || !strings.Contains(logged, tt.reason) {
				t.Errorf("log = %q; want a refusal with %q", logged, tt.reason)
			}
			if !strings.Contains(logged, "user=alice") {
				t.Errorf("log = %q; want the fleet user", logged)
			}
		})
	}
}

func TestLoginNoSuchUser(t *testing.T) {
	f := newFixture(t)
	const login = "no-such-user-here"
	addr := f.serve(identity(login))
	if _, err := f.dial(addr, login, f.userCert(login)); err == nil {
		t.Fatal("dial succeeded; want refused")
	}
	if got := f.log.String(); !strings.Contains(got, "no user") {
		t.Errorf("log = %q; want a refusal for the missing user", got)
	}
}

// TestNonRootAgent checks that an agent that does not run as root serves
// only its own user's login.
func TestNonRootAgent(t *testing.T) {
	requireRoot(t) // the test pretends root is uid 65534
	f := newFixture(t)
	f.cfg.geteuid = func() int { return 65534 }
	t.Run("other login", func(t *testing.T) {
		addr := f.serve(identity("root"))
		if _, err := f.dial(addr, "root", f.userCert("root")); err == nil {
			t.Fatal("dial succeeded; want refused")
		}
		if got := f.log.String(); !strings.Contains(got, "runs as uid 65534") {
			t.Errorf("log = %q; want the non-root refusal", got)
		}
	})
	t.Run("own login", func(t *testing.T) {
		addr := f.serve(identity("nobody"))
		c := f.mustDial(addr, "nobody", f.userCert("nobody"))
		c.Close()
	})
}
