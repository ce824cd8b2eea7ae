package sshd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// dial connects to addr for a port forward as the login's user. When the
// agent runs as root and the login is another user, a helper process with
// the user's credentials (Config.DialCommand) dials and hands the
// connected socket back over a socket pair, so the connection is the
// user's (firewall owner rules, the kernel's accounting) and the copy
// costs nothing extra; otherwise the agent already has the login's
// privileges and dials itself.
func (s *Server) dial(ctx context.Context, acct *account, addr string) (net.Conn, error) {
	if !acct.switchUser || acct.uid == 0 {
		d := net.Dialer{Timeout: s.cfg.DialTimeout}
		return d.DialContext(ctx, "tcp", addr)
	}
	argv := s.cfg.DialCommand
	if len(argv) == 0 {
		return nil, fmt.Errorf("sshd: dial %s as %s: no dial helper (Config.DialCommand)", addr, acct.name)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("sshd: dial %s: socket pair: %w", addr, err)
	}
	parent, child := os.NewFile(uintptr(fds[0]), "dial"), os.NewFile(uintptr(fds[1]), "dial-helper")
	defer parent.Close()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout+5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], append(append([]string(nil), argv[1:]...), addr, s.cfg.DialTimeout.String())...)
	cmd.ExtraFiles = []*os.File{child} // fd 3 in the helper
	cmd.Dir, cmd.Env = "/", []string{"PATH=" + userPath, "HOME=" + acct.home, "USER=" + acct.name, "LOGNAME=" + acct.name}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: acct.uid, Gid: acct.gid, Groups: acct.groups}}
	var stderr bytes.Buffer
	cmd.Stderr = &limitedBuffer{b: &stderr, max: 4096}
	err = cmd.Start()
	child.Close()
	if err != nil {
		return nil, fmt.Errorf("sshd: dial %s as %s: start helper: %w", addr, acct.name, err)
	}
	conn, err := receiveConn(parent, time.Now().Add(s.cfg.DialTimeout+5*time.Second))
	werr := cmd.Wait()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" && werr != nil {
			msg = werr.Error()
		}
		return nil, fmt.Errorf("sshd: dial %s as %s: %w (%s)", addr, acct.name, err, msg)
	}
	return conn, nil
}

// receiveConn reads the connected socket a dial helper sends on f.
func receiveConn(f *os.File, deadline time.Time) (net.Conn, error) {
	fc, err := net.FileConn(f)
	if err != nil {
		return nil, err
	}
	defer fc.Close()
	uc, ok := fc.(*net.UnixConn)
	if !ok {
		return nil, errors.New("not a unix socket")
	}
	uc.SetReadDeadline(deadline)
	buf := make([]byte, 1)
	oob := make([]byte, unix.CmsgSpace(4))
	_, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, errors.New("the helper sent no connection")
	}
	msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
	if err != nil || len(msgs) != 1 {
		return nil, errors.New("the helper sent no connection")
	}
	fds, err := unix.ParseUnixRights(&msgs[0])
	if err != nil || len(fds) != 1 {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, errors.New("the helper sent no connection")
	}
	sock := os.NewFile(uintptr(fds[0]), "forward")
	defer sock.Close()
	return net.FileConn(sock)
}

// ServeDialHelper is the body of the agent's dial helper mode, which
// Config.DialCommand names: run with the login's credentials, it dials
// args[0] (HOST:PORT) within args[1] (a Go duration) and sends the
// connected socket to the agent over file descriptor 3. A failure is
// written to standard error, which the agent passes on to its log.
func ServeDialHelper(args []string) error {
	if len(args) != 2 {
		return errors.New("sshd: dial helper: want HOST:PORT TIMEOUT")
	}
	timeout, err := time.ParseDuration(args[1])
	if err != nil {
		return fmt.Errorf("sshd: dial helper: timeout: %w", err)
	}
	back, err := net.FileConn(os.NewFile(3, "dial"))
	if err != nil {
		return fmt.Errorf("sshd: dial helper: descriptor 3: %w", err)
	}
	defer back.Close()
	uc, ok := back.(*net.UnixConn)
	if !ok {
		return errors.New("sshd: dial helper: descriptor 3 is not a unix socket")
	}
	c, err := net.DialTimeout("tcp", args[0], timeout)
	if err != nil {
		return fmt.Errorf("sshd: dial helper: %w", err)
	}
	defer c.Close()
	f, err := c.(*net.TCPConn).File()
	if err != nil {
		return fmt.Errorf("sshd: dial helper: %w", err)
	}
	defer f.Close()
	if _, _, err := uc.WriteMsgUnix([]byte{0}, unix.UnixRights(int(f.Fd())), nil); err != nil {
		return fmt.Errorf("sshd: dial helper: send the connection: %w", err)
	}
	return nil
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	b   *bytes.Buffer
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.b.Len(); room > 0 {
		l.b.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}
