package sshd

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/firmware/services"
	"remoteler.dev/edge/proto"
)

// lockedBuffer is a bytes.Buffer for one writer and one reader.
type lockedBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestFleetEndsTheConnectionWithAMessage(t *testing.T) {
	for _, pty := range []bool{false, true} {
		t.Run(fmt.Sprintf("pty %v", pty), func(t *testing.T) {
			f := newFixture(t)
			ctx, cancel := context.WithCancelCause(context.Background())
			defer cancel(nil)
			addr := f.serveCtx(ctx, identity(f.login))
			c := f.mustDial(addr, f.login, f.userCert(f.login))
			sess, err := c.NewSession()
			if err != nil {
				t.Fatal(err)
			}
			if pty {
				if err := sess.RequestPty("xterm", 24, 80, nil); err != nil {
					t.Fatal(err)
				}
			}
			var stderr lockedBuffer
			sess.Stderr, sess.Stdout = &stderr, &stderr
			if err := sess.Start("echo started; sleep 60"); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(10 * time.Second); !strings.Contains(stderr.String(), "started"); {
				if time.Now().After(deadline) {
					t.Fatal("the command did not start")
				}
				time.Sleep(5 * time.Millisecond)
			}
			const why = `access changed: role "no-root" denies login "root" on device "pi-1"`
			cancel(&services.Ended{Message: why})
			waited := make(chan error, 1)
			go func() { waited <- sess.Wait() }()
			select {
			case err := <-waited:
				var ee *ssh.ExitError
				if err == nil || errors.As(err, &ee) {
					t.Errorf("session ended with %v, want no exit status", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the session did not end")
			}
			if got := stderr.String(); !strings.Contains(got, "remoteler: "+why) {
				t.Errorf("the user saw %q, want the fleet's reason", got)
			}
		})
	}
}

func TestExpiredConnection(t *testing.T) {
	t.Run("closed at the expiry the fleet gave", func(t *testing.T) {
		f := newFixture(t)
		f.cfg.ClockSkew = -1 // no allowance: the expiry itself
		id := identity(f.login)
		id.Expires = time.Now().Add(1500 * time.Millisecond).UnixMilli()
		addr := f.serveCtx(context.Background(), id)
		c := f.mustDial(addr, f.login, f.userCert(f.login))
		sess, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		var out lockedBuffer
		sess.Stderr = &out
		if err := sess.Start("sleep 60"); err != nil {
			t.Fatal(err)
		}
		waited := make(chan error, 1)
		go func() { waited <- sess.Wait() }()
		select {
		case <-waited:
		case <-time.After(30 * time.Second):
			t.Fatal("the session outlived the expiry in the stream header")
		}
		if time.Now().Before(time.UnixMilli(id.Expires)) {
			t.Errorf("ended before the expiry")
		}
		if !strings.Contains(out.String(), "your certificate expired") {
			t.Errorf("the user saw %q, want that the certificate expired", out.String())
		}
	})
	t.Run("no new channels once expired", func(t *testing.T) {
		f := newFixture(t)
		var skew atomic.Int64
		f.cfg.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
		addr := f.serveCtx(context.Background(), identity(f.login))
		c := f.mustDial(addr, f.login, f.userCert(f.login)) // valid for an hour
		sess, err := c.NewSession()
		if err != nil {
			t.Fatal(err)
		}
		sess.Close()
		// The device's clock moves past the certificate's end (and its
		// skew allowance) before the timer would fire.
		skew.Store(int64(2 * time.Hour))
		if _, err := c.NewSession(); err == nil || !strings.Contains(err.Error(), "certificate has expired") {
			t.Errorf("new session on an expired connection: %v, want refused", err)
		}
		if _, err := c.Dial("tcp", echoServer(t)); err == nil {
			t.Error("port forward on an expired connection was allowed")
		}
	})
}

func TestRolesTurnOffForwardingAndFileCopy(t *testing.T) {
	f := newFixture(t)
	id := identity(f.login)
	id.NoPortForwarding, id.NoFileCopy = true, true
	al := &auditLog{}
	f.cfg.Audit = al.audit
	addr := f.serve(id)
	o := newOpenSSH(t, f, addr, f.login)
	sshArgs := func(args ...string) []string {
		return append(append(append([]string{}, o.opts...), "-p", o.port), args...)
	}
	t.Run("ssh -L", func(t *testing.T) {
		echo := echoServer(t)
		local := freePort(t)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		fwd := exec.CommandContext(ctx, "ssh", sshArgs("-N", "-L", local+":"+echo, o.host)...)
		var said lockedBuffer
		fwd.Stdout, fwd.Stderr = &said, &said
		if err := fwd.Start(); err != nil {
			t.Fatal(err)
		}
		defer fwd.Wait()
		defer cancel()
		// ssh listens at once; the device refuses each forward as it opens.
		for deadline := time.Now().Add(20 * time.Second); !strings.Contains(said.String(), "turned off by your roles"); {
			if time.Now().After(deadline) {
				t.Fatalf("ssh -L: no refusal from the device; ssh said %q", said.String())
			}
			if conn, err := net.DialTimeout("tcp", "127.0.0.1:"+local, time.Second); err == nil {
				io.WriteString(conn, "ping\n")
				conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				if b, _ := io.ReadAll(conn); len(b) > 0 {
					t.Fatalf("the forward carried %q although the roles turn forwarding off", b)
				}
				conn.Close()
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	t.Run("scp", func(t *testing.T) {
		src := filepath.Join(t.TempDir(), "f")
		os.WriteFile(src, []byte("data"), 0o600)
		for _, legacy := range []bool{false, true} {
			args := append([]string{}, o.opts...)
			if legacy {
				args = append(args, "-O")
			}
			dst := filepath.Join(t.TempDir(), "copy")
			out, err := run("scp", append(args, "-P", o.port, src, o.host+":"+dst)...)
			if err == nil {
				t.Errorf("scp (legacy %v) worked: %s", legacy, out)
			}
			if _, err := os.Stat(dst); err == nil {
				t.Errorf("scp (legacy %v) wrote the file", legacy)
			}
		}
	})
	t.Run("sftp", func(t *testing.T) {
		batch := filepath.Join(t.TempDir(), "batch")
		os.WriteFile(batch, []byte("ls /\n"), 0o600)
		if out, err := run("sftp", append(append([]string{}, o.opts...), "-b", batch, "-P", o.port, o.host)...); err == nil {
			t.Errorf("sftp worked: %s", out)
		}
	})
	t.Run("a plain command still runs", func(t *testing.T) {
		if out, err := run("ssh", sshArgs(o.host, "echo still-here")...); err != nil || !strings.Contains(out, "still-here") {
			t.Errorf("ssh echo: %q %v", out, err)
		}
	})
	al.mu.Lock()
	defer al.mu.Unlock()
	denied := 0
	for _, ev := range al.events {
		if ev.Type == proto.EventAccessDenied {
			denied++
		}
	}
	if denied < 4 {
		t.Errorf("%d denials audited, want one per refused forward and copy", denied)
	}
}

// run runs an OpenSSH tool to completion and returns what it printed,
// both streams.
func run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// freePort returns a TCP port free on loopback.
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// socketOwner returns the uid that owns the TCP socket whose local address
// is the port local on loopback, from /proc/net/tcp.
func socketOwner(t *testing.T, local int) int {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("0100007F:%04X", local)
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 7 && f[1] == want {
			uid, _ := strconv.Atoi(f[7])
			return uid
		}
	}
	t.Fatalf("no socket with local address %s in /proc/net/tcp", want)
	return -1
}

// TestForwardDialledAsTheLogin: OpenSSH's ssh -L as nobody reaches a
// listener through a connection that nobody owns, not root.
func TestForwardDialledAsTheLogin(t *testing.T) {
	f := newFixture(t)
	u := nobody(t, f)
	f.cfg.DialCommand = helperCommand(t, sharedDir(t, u), dialHelperArg)
	addr := f.serve(identity("nobody"))
	o := newOpenSSH(t, f, addr, "nobody")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	owners := make(chan int, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		owners <- socketOwner(t, conn.RemoteAddr().(*net.TCPAddr).Port)
		io.WriteString(conn, "hello from the far side\n")
	}()
	local := freePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fwd := exec.CommandContext(ctx, "ssh", append(append(append([]string{}, o.opts...), "-p", o.port, "-N", "-o", "ExitOnForwardFailure=yes",
		"-L", local+":"+ln.Addr().String()), o.host)...)
	var fwdOut lockedBuffer
	fwd.Stdout, fwd.Stderr = &fwdOut, &fwdOut
	if err := fwd.Start(); err != nil {
		t.Fatal(err)
	}
	defer fwd.Wait()
	defer cancel()
	var got string
	for deadline := time.Now().Add(20 * time.Second); got == "" && time.Now().Before(deadline); {
		conn, err := net.DialTimeout("tcp", "127.0.0.1:"+local, time.Second)
		if err != nil {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, _ := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		got = line
	}
	if got != "hello from the far side\n" {
		t.Fatalf("through ssh -L: %q; ssh said %s", got, fwdOut.String())
	}
	want, _ := strconv.Atoi(u.Uid)
	if owner := <-owners; owner != want {
		t.Errorf("the forward's connection belongs to uid %d, want nobody's %d", owner, want)
	}
}

// TestNologinAccount: an account whose shell is nologin gets what OpenSSH
// gives it, the shell's refusal, for commands and for sftp and scp alike;
// an account whose shell does not exist cannot log in.
func TestNologinAccount(t *testing.T) {
	nologin := "/usr/sbin/nologin"
	if _, err := os.Stat(nologin); err != nil {
		t.Fatalf("no %s: %v", nologin, err)
	}
	f := newFixture(t)
	u := nobody(t, f)
	line := "nobody:x:" + u.Uid + ":" + u.Gid + ":nobody:" + u.HomeDir + ":" + nologin + "\n"
	if err := os.WriteFile(f.cfg.PasswdFile, []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
	f.cfg.SFTPCommand = []string{os.Args[0], sftpHelperArg}
	addr := f.serve(identity("nobody"))
	o := newOpenSSH(t, f, addr, "nobody")
	const refusal = "This account is currently not available."
	// sftp (and scp, which speaks sftp) read the refusal as a protocol
	// message whose length is "This": OpenSSH's sshd gives the same.
	const sftpSaw = "Received message too long 1416128883"
	t.Run("ssh command", func(t *testing.T) {
		out, err := run("ssh", append(append([]string{}, o.opts...), "-p", o.port, o.host, "id")...)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(out, refusal) {
			t.Errorf("ssh id as a nologin account: %q %v, want nologin's refusal and status 1", out, err)
		}
	})
	t.Run("sftp", func(t *testing.T) {
		batch := filepath.Join(t.TempDir(), "batch")
		os.WriteFile(batch, []byte("ls /\n"), 0o600)
		out, err := run("sftp", append(append([]string{}, o.opts...), "-b", batch, "-P", o.port, o.host)...)
		if err == nil || !strings.Contains(out, sftpSaw) {
			t.Errorf("sftp as a nologin account: %q %v, want nologin's refusal as sftp reads it", out, err)
		}
	})
	t.Run("scp", func(t *testing.T) {
		src := filepath.Join(t.TempDir(), "f")
		os.WriteFile(src, []byte("data"), 0o600)
		dst := filepath.Join(t.TempDir(), "copy")
		out, err := run("scp", append(append([]string{}, o.opts...), "-P", o.port, src, o.host+":"+dst)...)
		if err == nil || !strings.Contains(out, sftpSaw) {
			t.Errorf("scp as a nologin account: %q %v, want nologin's refusal as sftp reads it", out, err)
		}
		if _, err := os.Stat(dst); err == nil {
			t.Error("scp wrote the file")
		}
	})
	t.Run("missing shell", func(t *testing.T) {
		line := "nobody:x:" + u.Uid + ":" + u.Gid + ":nobody:" + u.HomeDir + ":/nonexistent/shell\n"
		if err := os.WriteFile(f.cfg.PasswdFile, []byte(line), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := run("ssh", append(append([]string{}, o.opts...), "-p", o.port, o.host, "id")...)
		if err == nil || !strings.Contains(out, "does not exist or cannot run") {
			t.Errorf("ssh as an account whose shell is missing: %q %v, want the login refused with why", out, err)
		}
	})
}
