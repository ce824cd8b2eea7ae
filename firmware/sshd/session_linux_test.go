package sshd

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
)

func TestExec(t *testing.T) {
	f := newFixture(t)
	addr := f.serve(identity(f.login))
	c := f.mustDial(addr, f.login, f.userCert(f.login))
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		cmd        string
		env        map[string]string // variables the server must accept
		refuseEnv  map[string]string // variables the server must ignore
		stdin      string
		wantOut    string
		wantErr    string
		wantStatus int
	}{
		{name: "echo", cmd: "echo hi", wantOut: "hi\n"},
		{name: "exit status", cmd: "sh -c 'exit 7'", wantStatus: 7},
		{name: "stderr", cmd: "echo oops >&2; exit 3", wantErr: "oops\n", wantStatus: 3},
		{name: "stdin", cmd: "cat", stdin: "from the client", wantOut: "from the client"},
		{
			name:    "login environment",
			cmd:     `echo "$USER $LOGNAME $HOME"; pwd`,
			wantOut: u.Username + " " + u.Username + " " + u.HomeDir + "\n" + u.HomeDir + "\n",
		},
		{
			name:      "client environment",
			cmd:       `echo "$LANG|$LC_TIME|${LD_PRELOAD-unset}|${FOO-unset}"`,
			env:       map[string]string{"LANG": "C.UTF-8", "LC_TIME": "C"},
			refuseEnv: map[string]string{"LD_PRELOAD": "/tmp/evil.so", "FOO": "bar"},
			wantOut:   "C.UTF-8|C|unset|unset\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sess, err := c.NewSession()
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			for k, v := range tt.env {
				if err := sess.Setenv(k, v); err != nil {
					t.Errorf("Setenv(%s): %v; want accepted", k, err)
				}
			}
			for k, v := range tt.refuseEnv {
				if err := sess.Setenv(k, v); err == nil {
					t.Errorf("Setenv(%s) accepted; want refused", k)
				}
			}
			var stdout, stderr bytes.Buffer
			sess.Stdout, sess.Stderr = &stdout, &stderr
			sess.Stdin = strings.NewReader(tt.stdin)
			status := exitStatusOf(t, sess.Run(tt.cmd))
			if status != tt.wantStatus {
				t.Errorf("exit status = %d; want %d", status, tt.wantStatus)
			}
			if got := stdout.String(); got != tt.wantOut {
				t.Errorf("stdout = %q; want %q", got, tt.wantOut)
			}
			if got := stderr.String(); got != tt.wantErr {
				t.Errorf("stderr = %q; want %q", got, tt.wantErr)
			}
		})
	}
}

// reader collects what a session prints, so a test can wait for text.
type reader struct {
	t    *testing.T
	buf  bytes.Buffer
	data chan []byte
}

func newReader(t *testing.T, r io.Reader) *reader {
	rd := &reader{t: t, data: make(chan []byte)}
	go func() {
		defer close(rd.data)
		for {
			b := make([]byte, 4096)
			n, err := r.Read(b)
			if n > 0 {
				rd.data <- b[:n]
			}
			if err != nil {
				return
			}
		}
	}()
	return rd
}

// until reads until the output holds want, and drops the output up to
// the end of want.
func (rd *reader) until(want string) {
	rd.t.Helper()
	timeout := time.After(10 * time.Second)
	for !strings.Contains(rd.buf.String(), want) {
		select {
		case b, ok := <-rd.data:
			if !ok {
				rd.t.Fatalf("output ended before %q; got %q", want, rd.buf.String())
			}
			rd.buf.Write(b)
		case <-timeout:
			rd.t.Fatalf("no %q in output after 10s; got %q", want, rd.buf.String())
		}
	}
	rest := rd.buf.String()
	rest = rest[strings.Index(rest, want)+len(want):]
	rd.buf.Reset()
	rd.buf.WriteString(rest)
}

// drain reads until the output ends, so the reading goroutine ends.
func (rd *reader) drain() {
	for range rd.data {
	}
}

func TestPTYShell(t *testing.T) {
	f := newFixture(t)
	addr := f.serve(identity(f.login))
	c := f.mustDial(addr, f.login, f.userCert(f.login))
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := sess.RequestPty("xterm-256color", 24, 80, ssh.TerminalModes{ssh.ECHO: 1}); err != nil {
		t.Fatalf("RequestPty: %v", err)
	}
	stdin, err := sess.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	out := newReader(t, stdout)
	defer func() {
		sess.Close()
		out.drain()
	}()
	if err := sess.Shell(); err != nil {
		t.Fatalf("Shell: %v", err)
	}
	io.WriteString(stdin, "echo $((6*7))\n")
	out.until("42")

	io.WriteString(stdin, "echo T=$TERM; stty size\n")
	out.until("T=xterm-256color")
	out.until("24 80")

	// window-change with a reply, so the next command sees the new size.
	ok, err := sess.SendRequest("window-change", true, ssh.Marshal(windowChange{Cols: 132, Rows: 50}))
	if err != nil || !ok {
		t.Fatalf("window-change = %v, %v; want accepted", ok, err)
	}
	io.WriteString(stdin, "stty size\n")
	out.until("50 132")

	io.WriteString(stdin, "exit 5\n")
	if got := exitStatusOf(t, sess.Wait()); got != 5 {
		t.Errorf("exit status = %d; want 5", got)
	}
}

func TestPTYRefusedWithoutPermit(t *testing.T) {
	f := newFixture(t)
	addr := f.serve(identity(f.login))
	signer := certSigner(t, f.userCA, certSpec{keyID: "alice", principals: []string{f.login}})
	c := f.mustDial(addr, f.login, signer)
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	if err := sess.RequestPty("xterm", 24, 80, nil); err == nil {
		t.Error("RequestPty succeeded without permit-pty; want refused")
	}
}

func TestSignal(t *testing.T) {
	f := newFixture(t)
	addr := f.serve(identity(f.login))
	c := f.mustDial(addr, f.login, f.userCert(f.login))
	tests := []struct {
		name string
		sig  ssh.Signal
		pty  bool
	}{
		{name: "TERM", sig: ssh.SIGTERM},
		{name: "KILL", sig: ssh.SIGKILL},
		{name: "INT with pty", sig: ssh.SIGINT, pty: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sess, err := c.NewSession()
			if err != nil {
				t.Fatal(err)
			}
			defer sess.Close()
			if tt.pty {
				if err := sess.RequestPty("xterm", 24, 80, nil); err != nil {
					t.Fatal(err)
				}
			}
			if err := sess.Start("sleep 30"); err != nil {
				t.Fatal(err)
			}
			// Signal has no reply; a request after it does, and requests
			// are handled in order.
			if err := sess.Signal(tt.sig); err != nil {
				t.Fatal(err)
			}
			sess.SendRequest("keepalive@openssh.com", true, nil)
			err = sess.Wait()
			ee, ok := err.(*ssh.ExitError)
			if !ok {
				t.Fatalf("Wait = %v; want an exit error", err)
			}
			if got := ee.Signal(); got != string(tt.sig) {
				t.Errorf("exit signal = %q; want %q", got, tt.sig)
			}
		})
	}
}

func TestSFTP(t *testing.T) {
	f := newFixture(t)
	addr := f.serve(identity(f.login))
	c := f.mustDial(addr, f.login, f.userCert(f.login))
	sc, err := sftp.NewClient(c)
	if err != nil {
		t.Fatalf("sftp: %v", err)
	}
	defer sc.Close()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	if wd, err := sc.Getwd(); err != nil || wd != u.HomeDir {
		t.Errorf("Getwd = %q, %v; want %q", wd, err, u.HomeDir)
	}
	path := filepath.Join(t.TempDir(), "blob")
	roundTrip(t, sc, path, 1<<20+123)
}

// roundTrip writes n random bytes to path over sftp, reads them back and
// compares checksums, and checks the file on disk too.
func roundTrip(t *testing.T, sc *sftp.Client, path string, n int) {
	t.Helper()
	data := make([]byte, n)
	rand.Read(data)
	want := sha256.Sum256(data)
	w, err := sc.Create(path)
	if err != nil {
		t.Fatalf("sftp create: %v", err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatalf("sftp write: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("sftp close: %v", err)
	}
	r, err := sc.Open(path)
	if err != nil {
		t.Fatalf("sftp open: %v", err)
	}
	defer r.Close()
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		t.Fatalf("sftp read: %v", err)
	}
	if got := [32]byte(h.Sum(nil)); got != want {
		t.Errorf("sftp read back sha256 %x; want %x", got, want)
	}
	disk, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := sha256.Sum256(disk); got != want {
		t.Errorf("file on disk sha256 %x; want %x", got, want)
	}
}

func TestDirectTCPIP(t *testing.T) {
	f := newFixture(t)
	addr := f.serve(identity(f.login))
	echo := echoServer(t)

	t.Run("forwarded", func(t *testing.T) {
		c := f.mustDial(addr, f.login, f.userCert(f.login))
		conn, err := c.Dial("tcp", echo)
		if err != nil {
			t.Fatalf("Dial through the device: %v", err)
		}
		defer conn.Close()
		msg := []byte("ping through the tunnel")
		if _, err := conn.Write(msg); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(conn, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, msg) {
			t.Errorf("echo = %q; want %q", got, msg)
		}
	})
	t.Run("closed port", func(t *testing.T) {
		c := f.mustDial(addr, f.login, f.userCert(f.login))
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := ln.Addr().String()
		ln.Close()
		if conn, err := c.Dial("tcp", closed); err == nil {
			conn.Close()
			t.Error("Dial to a closed port succeeded; want an error")
		}
	})
	t.Run("not permitted", func(t *testing.T) {
		signer := certSigner(t, f.userCA, certSpec{keyID: "alice", principals: []string{f.login}, extensions: map[string]string{"permit-pty": ""}})
		c := f.mustDial(addr, f.login, signer)
		if conn, err := c.Dial("tcp", echo); err == nil {
			conn.Close()
			t.Error("Dial succeeded without permit-port-forwarding; want refused")
		}
	})
}

// echoServer serves TCP echo on loopback until cleanup.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			// Each echo ends when its client closes, which the tests do.
			go func() {
				defer conn.Close()
				io.Copy(conn, conn)
			}()
		}
	}()
	return ln.Addr().String()
}

func TestForwardingRefused(t *testing.T) {
	f := newFixture(t)
	addr := f.serve(identity(f.login))
	c := f.mustDial(addr, f.login, f.userCert(f.login))
	if ln, err := c.Listen("tcp", "127.0.0.1:0"); err == nil {
		ln.Close()
		t.Error("remote forwarding accepted; want refused")
	}
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	defer sess.Close()
	for _, req := range []string{"auth-agent-req@openssh.com", "x11-req"} {
		ok, err := sess.SendRequest(req, true, nil)
		if err != nil || ok {
			t.Errorf("%s = %v, %v; want refused", req, ok, err)
		}
	}
	if _, _, err := c.OpenChannel("x11", nil); err == nil {
		t.Error("x11 channel accepted; want refused")
	}
}

func TestContextEndsConnection(t *testing.T) {
	f := newFixture(t)
	srv := New(f.cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		served <- srv.ServeConn(ctx, conn, identity(f.login))
	}()
	c := f.mustDial(ln.Addr().String(), f.login, f.userCert(f.login))
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Start("sleep 30"); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := sess.Wait(); err == nil {
		t.Error("session ended cleanly; want it cut off")
	}
	select {
	case err := <-served:
		t.Logf("ServeConn returned %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("ServeConn still running 10s after its context ended")
	}
}

func TestHandshakeTimeout(t *testing.T) {
	f := newFixture(t)
	f.cfg.HandshakeTimeout = 50 * time.Millisecond
	srv := New(f.cfg)
	server, client := net.Pipe()
	defer client.Close()
	// Nobody reads the client side, so the handshake cannot progress.
	err := srv.ServeConn(context.Background(), server, identity(f.login))
	if err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Errorf("ServeConn = %v; want a handshake timeout", err)
	}
}

// nobody returns the nobody account, skipping when the test cannot switch
// to it, and points f's passwd at a copy in which nobody has /bin/sh.
func nobody(t *testing.T, f *fixture) *user.User {
	t.Helper()
	requireRoot(t)
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no nobody user")
	}
	passwd := filepath.Join(t.TempDir(), "passwd")
	line := "nobody:x:" + u.Uid + ":" + u.Gid + ":nobody:" + u.HomeDir + ":/bin/sh\n"
	if err := os.WriteFile(passwd, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	f.cfg.PasswdFile = passwd
	return u
}

// sharedDir makes a directory that u owns, in a place u can reach.
func sharedDir(t *testing.T, u *user.User) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sshd-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm()&0o001 == 0 {
			t.Skipf("%s is not reachable by other users", d)
		}
		if d == "/" {
			break
		}
	}
	return dir
}

func TestSessionAsNobody(t *testing.T) {
	f := newFixture(t)
	u := nobody(t, f)
	addr := f.serve(identity("nobody"))
	c := f.mustDial(addr, "nobody", f.userCert("nobody"))

	t.Run("exec", func(t *testing.T) {
		sess, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		out, err := sess.Output("id -u; id -g; echo $USER")
		if err != nil {
			t.Fatal(err)
		}
		want := u.Uid + "\n" + u.Gid + "\nnobody\n"
		if string(out) != want {
			t.Errorf("output = %q; want %q", out, want)
		}
	})
	t.Run("pty owned by the user", func(t *testing.T) {
		sess, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		defer sess.Close()
		if err := sess.RequestPty("xterm", 24, 80, nil); err != nil {
			t.Fatal(err)
		}
		out, err := sess.Output(`test -O "$(tty)" && echo owned`)
		if err != nil {
			t.Fatalf("%v; output %q", err, out)
		}
		if !strings.Contains(string(out), "owned") {
			t.Errorf("output = %q; want the terminal owned by nobody", out)
		}
	})
}

// TestSFTPAsNobody checks the sftp helper path: a root agent serves sftp
// for another login by running a helper as that user, here the test
// binary in ServeSFTPStdio mode.
// helperCommand copies this test binary into dir, which other users can
// reach, and returns the command that runs it in helper mode arg.
func helperCommand(t *testing.T, dir, arg string) []string {
	t.Helper()
	// os.Args[0] is this test binary, also under qemu (where
	// os.Executable is the emulator).
	bin, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	helper := filepath.Join(dir, "helper-"+arg)
	if err := os.WriteFile(helper, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := []string{helper, arg}
	if target := os.Getenv("EDGE_QEMU_TARGET"); target != "" {
		// The ARM test runs: start the copy through the same emulator.
		wrapper, err := filepath.Abs("../../cross/qemu-exec.sh")
		if err != nil {
			t.Fatal(err)
		}
		cmd = append([]string{"bash", wrapper, target}, cmd...)
	}
	if arg == sftpHelperArg {
		if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("the sftp helper does not start: %v %s", err, out)
		}
	}
	return cmd
}

func TestSFTPAsNobody(t *testing.T) {
	f := newFixture(t)
	u := nobody(t, f)
	dir := sharedDir(t, u)
	f.cfg.SFTPCommand = helperCommand(t, dir, sftpHelperArg)
	addr := f.serve(identity("nobody"))
	c := f.mustDial(addr, "nobody", f.userCert("nobody"))
	sc, err := sftp.NewClient(c)
	if err != nil {
		t.Fatalf("sftp: %v", err)
	}
	defer sc.Close()

	path := filepath.Join(dir, "upload")
	roundTrip(t, sc, path, 200_000)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := strconv.Itoa(int(fi.Sys().(*syscall.Stat_t).Uid)); got != u.Uid {
		t.Errorf("uploaded file owner = %s; want nobody (%s)", got, u.Uid)
	}
	// The helper has nobody's rights, not root's.
	if w, err := sc.Create(filepath.Join(t.TempDir(), "denied")); err == nil {
		w.Close()
		t.Error("sftp wrote into a root-only directory; want permission denied")
	}
}
