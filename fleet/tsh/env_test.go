package tsh

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/client/clienttest"
	"remoteler.dev/edge/tools/pkitest"
)

// testEnv is a fake fleet (clienttest.Fleet, an in-process fake of
// fleetd's API, not fleetd) and a TSH_HOME to run tsh against it.
type testEnv struct {
	t     *testing.T
	fleet *clienttest.Fleet
	home  string
	env   map[string]string
}

func newTestEnv(t *testing.T) *testEnv {
	t.Helper()
	e := &testEnv{t: t, fleet: clienttest.NewFleet(t), home: t.TempDir()}
	e.env = map[string]string{"TSH_HOME": e.home, "USER": "tester"}
	e.fleet.AddUser("alice", clienttest.User{Password: "s3cret", Roles: []string{"dev"}, Logins: []string{"pi", "tester"}})
	return e
}

type result struct {
	code          int
	stdout, stder string
}

// run runs tsh with stdin and args.
func (e *testEnv) run(stdin io.Reader, args ...string) result {
	e.t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), args, Stdio{
		In:         stdin,
		Out:        &out,
		Err:        &errb,
		Getenv:     func(k string) string { return e.env[k] },
		Executable: func() (string, error) { return "/opt/remoteler/bin/tsh", nil },
	})
	e.t.Logf("tsh %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out.String(), errb.String())
	return result{code, out.String(), errb.String()}
}

// login logs alice in with the fleet's pin.
func (e *testEnv) login() {
	e.t.Helper()
	r := e.run(strings.NewReader("s3cret\n"), "login", "--proxy="+e.fleet.Addr, "--user=alice", "--ca-pin="+e.fleet.Pin)
	if r.code != 0 {
		e.t.Fatalf("login: exit %d: %s", r.code, r.stder)
	}
}

// sshDevice is an in-test SSH server standing in for a device's agent: it
// trusts the fleet's user CA and presents a host certificate.
type sshDevice struct {
	t      *testing.T
	conf   *ssh.ServerConfig
	exec   func(cmd string, ch ssh.Channel) (status uint32, signal string)
	sftpOK bool

	wg sync.WaitGroup // serving goroutines
}

// newSSHDevice returns a device whose host certificate is signed by hostCA
// for principals (a plain host key when hostCA is nil).
func newSSHDevice(t *testing.T, userCA ssh.PublicKey, hostCA ssh.Signer, principals ...string) *sshDevice {
	t.Helper()
	hostKey := pkitest.SSHSigner(t)
	if hostCA != nil {
		cert := &ssh.Certificate{
			Key:             hostKey.PublicKey(),
			CertType:        ssh.HostCert,
			KeyId:           "device",
			ValidPrincipals: principals,
			ValidAfter:      uint64(time.Now().Add(-time.Hour).Unix()),
			ValidBefore:     ssh.CertTimeInfinity,
		}
		if err := cert.SignCert(rand.Reader, hostCA); err != nil {
			t.Fatal(err)
		}
		var err error
		if hostKey, err = ssh.NewCertSigner(cert, hostKey); err != nil {
			t.Fatal(err)
		}
	}
	checker := &ssh.CertChecker{IsUserAuthority: func(auth ssh.PublicKey) bool {
		return bytes.Equal(auth.Marshal(), userCA.Marshal())
	}}
	d := &sshDevice{t: t, conf: &ssh.ServerConfig{PublicKeyCallback: checker.Authenticate}}
	d.conf.AddHostKey(hostKey)
	t.Cleanup(d.wg.Wait)
	return d
}

// serve serves one SSH connection; it is a clienttest.Fleet connect hook.
func (d *sshDevice) serve(_, _, _ string, conn net.Conn) {
	d.wg.Add(1)
	defer d.wg.Done()
	defer conn.Close()
	sc, chans, reqs, err := ssh.NewServerConn(conn, d.conf)
	if err != nil {
		d.t.Logf("device: handshake: %v", err)
		return
	}
	defer sc.Close()
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			nc.Reject(ssh.UnknownChannelType, "no")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			return
		}
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.session(ch, creqs)
		}()
	}
}

func (d *sshDevice) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	for req := range reqs {
		switch req.Type {
		case "exec":
			var cmd struct{ Command string }
			ssh.Unmarshal(req.Payload, &cmd)
			req.Reply(true, nil)
			status, sig := d.exec(cmd.Command, ch)
			ch.CloseWrite()
			if sig != "" {
				ch.SendRequest("exit-signal", false, ssh.Marshal(struct {
					Signal     string
					CoreDumped bool
					Error      string
					Lang       string
				}{Signal: sig}))
			} else {
				ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{status}))
			}
			return
		case "subsystem":
			var sub struct{ Name string }
			ssh.Unmarshal(req.Payload, &sub)
			if sub.Name != "sftp" || !d.sftpOK {
				req.Reply(false, nil)
				continue
			}
			req.Reply(true, nil)
			srv, err := sftp.NewServer(ch)
			if err != nil {
				return
			}
			srv.Serve()
			ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{0}))
			return
		default:
			req.Reply(false, nil)
		}
	}
}

// echoExec runs "echo WORDS; exit N" style commands: it prints what
// follows "echo " up to ";" and exits with the status after "exit ".
func echoExec(cmd string, ch ssh.Channel) (uint32, string) {
	var status uint32
	for part := range strings.SplitSeq(cmd, ";") {
		part = strings.TrimSpace(part)
		if s, ok := strings.CutPrefix(part, "echo "); ok {
			fmt.Fprintln(ch, s)
		}
		if s, ok := strings.CutPrefix(part, "exit "); ok {
			fmt.Sscan(s, &status)
		}
		if s, ok := strings.CutPrefix(part, "kill -"); ok {
			return 0, s
		}
	}
	return status, ""
}
