package sshd

import (
	"context"
	"crypto/rand"
	"errors"
	"net"
	"os"
	"os/user"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/tools/logtest"
	"remoteler.dev/edge/tools/pkitest"
	"remoteler.dev/edge/tools/plainshell"
)

// sftpHelperArg and dialHelperArg make the test binary act as an sftp
// helper or a dial helper (see TestMain).
const (
	sftpHelperArg = "sshd-test-sftp-helper"
	dialHelperArg = "sshd-test-dial-helper"
)

func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == dialHelperArg {
		if err := ServeDialHelper(os.Args[2:]); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	if len(os.Args) > 1 && os.Args[1] == sftpHelperArg {
		if err := ServeSFTPStdio(); err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// allPermits are the extensions ssh-keygen puts in user certificates.
var allPermits = map[string]string{
	"permit-pty":              "",
	"permit-port-forwarding":  "",
	"permit-agent-forwarding": "",
	"permit-X11-forwarding":   "",
	"permit-user-rc":          "",
}

// certSpec describes a user certificate to issue.
type certSpec struct {
	keyID      string
	principals []string
	after      time.Time // zero: an hour ago
	before     time.Time // zero: in an hour
	extensions map[string]string
	critical   map[string]string
	certType   uint32 // zero: ssh.UserCert
}

// sign issues a certificate for key from ca.
func sign(t testing.TB, ca ssh.Signer, key ssh.PublicKey, spec certSpec) *ssh.Certificate {
	t.Helper()
	now := time.Now()
	if spec.after.IsZero() {
		spec.after = now.Add(-time.Hour)
	}
	if spec.before.IsZero() {
		spec.before = now.Add(time.Hour)
	}
	if spec.certType == 0 {
		spec.certType = ssh.UserCert
	}
	cert := &ssh.Certificate{
		Key:             key,
		Serial:          42,
		CertType:        spec.certType,
		KeyId:           spec.keyID,
		ValidPrincipals: spec.principals,
		ValidAfter:      uint64(spec.after.Unix()),
		ValidBefore:     uint64(spec.before.Unix()),
		Permissions: ssh.Permissions{
			CriticalOptions: spec.critical,
			Extensions:      spec.extensions,
		},
	}
	if err := cert.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	return cert
}

// certSigner issues a certificate from ca for a fresh key and returns a
// signer that presents it.
func certSigner(t testing.TB, ca ssh.Signer, spec certSpec) ssh.Signer {
	t.Helper()
	key := pkitest.SSHSigner(t)
	s, err := ssh.NewCertSigner(sign(t, ca, key.PublicKey(), spec), key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// fixture is a fleet (user CA and host CA) and a device (host certificate
// and Server) for one test.
type fixture struct {
	t        *testing.T
	userCA   ssh.Signer
	hostCA   ssh.Signer
	hostCert ssh.Signer
	log      *logtest.Recorder
	cfg      Config
	login    string // the user the tests run as
}

// newFixture makes a fleet and a device. The Server's config can be
// changed through f.cfg before f.serve.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{t: t, userCA: pkitest.SSHSigner(t), hostCA: pkitest.SSHSigner(t), log: logtest.NewRecorder(t)}
	hostKey := pkitest.SSHSigner(t)
	hc := sign(t, f.hostCA, hostKey.PublicKey(), certSpec{
		keyID:      "device-1",
		principals: []string{"127.0.0.1", "device-1"},
		certType:   ssh.HostCert,
	})
	hs, err := ssh.NewCertSigner(hc, hostKey)
	if err != nil {
		t.Fatal(err)
	}
	f.hostCert = hs
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	f.login = u.Username
	f.cfg = Config{
		HostSigner: func() ssh.Signer { return f.hostCert },
		UserCAKeys: func() []ssh.PublicKey { return []ssh.PublicKey{f.userCA.PublicKey()} },
		Logger:     f.log.Logger(),
		PasswdFile: plainFile(t),
	}
	return f
}

// identity is the fleet identity of user "alice" with login.
func identity(login string) proto.Identity {
	return proto.Identity{User: "alice", Roles: []string{"dev"}, Login: login, Cluster: "test"}
}

// userCert returns a signer with a good certificate for alice and login.
func (f *fixture) userCert(login string) ssh.Signer {
	return certSigner(f.t, f.userCA, certSpec{keyID: "alice", principals: []string{login}, extensions: allPermits})
}

// serve starts a Server on a loopback listener whose connections all get
// identity id, and returns the listener's address. Everything stops at
// cleanup.
func (f *fixture) serve(id proto.Identity) string {
	f.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	f.t.Cleanup(cancel)
	return f.serveCtx(ctx, id)
}

// serveCtx is serve with connections served under ctx, which the test may
// cancel (with a cause) itself.
func (f *fixture) serveCtx(ctx context.Context, id proto.Identity) string {
	f.t.Helper()
	srv := New(f.cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.t.Fatal(err)
	}
	var wg sync.WaitGroup
	f.t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				if err := srv.ServeConn(ctx, conn, id); err != nil {
					f.t.Logf("ServeConn: %v", err)
				}
			})
		}
	})
	return ln.Addr().String()
}

// hostKeyCallback accepts host certificates from the fixture's host CA.
func (f *fixture) hostKeyCallback() ssh.HostKeyCallback {
	c := &ssh.CertChecker{
		IsHostAuthority: func(auth ssh.PublicKey, _ string) bool { return sameKey(auth, f.hostCA.PublicKey()) },
	}
	return c.CheckHostKey
}

// dial connects to addr as login with signer.
func (f *fixture) dial(addr, login string, signer ssh.Signer) (*ssh.Client, error) {
	f.t.Helper()
	client, err := ssh.Dial("tcp", addr, &ssh.ClientConfig{
		User:            login,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: f.hostKeyCallback(),
		Timeout:         5 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	f.t.Cleanup(func() { client.Close() })
	return client, nil
}

// mustDial is dial that fails the test on error.
func (f *fixture) mustDial(addr, login string, signer ssh.Signer) *ssh.Client {
	f.t.Helper()
	c, err := f.dial(addr, login, signer)
	if err != nil {
		f.t.Fatalf("dial as %s: %v", login, err)
	}
	return c
}

// requireRoot skips tests that need to switch users.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// exitStatus returns the exit status in err from ssh.Session.Wait/Run.
func exitStatusOf(t *testing.T, err error) int {
	t.Helper()
	var ee *ssh.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitStatus()
	default:
		t.Fatalf("session: %v", err)
		return -1
	}
}

// plainFile is a passwd file that gives the test's user a plain shell,
// so that the host's dotfiles do not run in these tests (see plainshell).
func plainFile(t *testing.T) string {
	t.Helper()
	path, err := plainshell.File()
	if err != nil {
		t.Fatal(err)
	}
	return path
}
