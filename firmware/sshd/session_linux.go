package sshd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// signals maps the SSH signal names of RFC 4254 section 6.10 to Linux
// signals.
var signals = map[string]syscall.Signal{
	"ABRT": syscall.SIGABRT,
	"ALRM": syscall.SIGALRM,
	"FPE":  syscall.SIGFPE,
	"HUP":  syscall.SIGHUP,
	"ILL":  syscall.SIGILL,
	"INT":  syscall.SIGINT,
	"KILL": syscall.SIGKILL,
	"PIPE": syscall.SIGPIPE,
	"QUIT": syscall.SIGQUIT,
	"SEGV": syscall.SIGSEGV,
	"TERM": syscall.SIGTERM,
	"USR1": syscall.SIGUSR1,
	"USR2": syscall.SIGUSR2,
}

// signalName returns the SSH name of sig, or "" when SSH has none.
func signalName(sig syscall.Signal) string {
	for name, s := range signals {
		if s == sig {
			return name
		}
	}
	return ""
}

const (
	// waitDelay is how long, after a piped command exits (or is hung up),
	// its output pipes stay open for processes it left behind, and how
	// long a hung-up command has before it is killed.
	waitDelay = time.Second
	// drainDelay is how long, after a terminal's command exits, its
	// output is still copied while processes it left behind hold the
	// terminal open.
	drainDelay = time.Second
)

// unixProc is a session command on Linux. It leads its own process group
// (a new session when it has a terminal), which signals go to.
type unixProc struct {
	cmd    *exec.Cmd
	master *os.File      // the terminal's master side; nil for pipes
	out    chan struct{} // closed when the terminal's output copy ends
	in     chan struct{} // closed when the input copy ends

	mu     sync.Mutex // guards exited
	exited bool       // the process was reaped, so its pid means nothing
}

// startProc starts c with its input and output on ch, as c.acct's user
// when the agent runs as root. Cancelling ctx hangs the command up.
func startProc(ctx context.Context, c *command, ch ssh.Channel) (proc, error) {
	cmd := exec.CommandContext(ctx, c.path)
	cmd.Args = c.args
	cmd.Env = c.env
	cmd.Dir = c.dir
	cmd.WaitDelay = waitDelay
	attr := &syscall.SysProcAttr{}
	if c.acct.switchUser {
		attr.Credential = &syscall.Credential{Uid: c.acct.uid, Gid: c.acct.gid, Groups: c.acct.groups}
	}
	p := &unixProc{cmd: cmd, in: make(chan struct{})}
	cmd.Cancel = func() error { return p.kill(syscall.SIGHUP) }
	if c.pty == nil {
		return p.startPipes(attr, c, ch)
	}
	return p.startPTY(attr, c, ch)
}

func (p *unixProc) startPipes(attr *syscall.SysProcAttr, c *command, ch ssh.Channel) (proc, error) {
	attr.Setpgid = true
	p.cmd.SysProcAttr = attr
	p.cmd.Stdout = c.outputTo(ch)
	p.cmd.Stderr = c.outputTo(ch.Stderr())
	stdin, err := p.cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("sshd: start %s: %w", p.cmd.Path, err)
	}
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("sshd: start %s: %w", p.cmd.Path, err)
	}
	go func() {
		defer close(p.in)
		io.Copy(stdin, inputFrom(ch, c.rec))
		stdin.Close()
	}()
	return p, nil
}

func (p *unixProc) startPTY(attr *syscall.SysProcAttr, c *command, ch ssh.Channel) (proc, error) {
	ptmx, tty, err := pty.Open()
	if err != nil {
		return nil, fmt.Errorf("sshd: open pty: %w", err)
	}
	defer tty.Close()
	master, err := pollable(ptmx)
	if err != nil {
		return nil, fmt.Errorf("sshd: open pty: %w", err)
	}
	p.master = master
	ws := winsize{clamp16(c.pty.Cols), clamp16(c.pty.Rows), clamp16(c.pty.Width), clamp16(c.pty.Height)}
	if err := p.resize(ws); err != nil {
		master.Close()
		return nil, fmt.Errorf("sshd: set pty size: %w", err)
	}
	if c.acct.switchUser {
		if err := giveTTY(tty.Name(), c.acct); err != nil {
			master.Close()
			return nil, fmt.Errorf("sshd: pty: %w", err)
		}
	}
	p.cmd.Env = append(p.cmd.Env, "SSH_TTY="+tty.Name())
	p.cmd.Stdin, p.cmd.Stdout, p.cmd.Stderr = tty, tty, tty
	attr.Setsid, attr.Setctty, attr.Ctty = true, true, 0
	p.cmd.SysProcAttr = attr
	if err := p.cmd.Start(); err != nil {
		master.Close()
		return nil, fmt.Errorf("sshd: start %s: %w", p.cmd.Path, err)
	}
	p.out = make(chan struct{})
	out := c.outputTo(ch)
	go func() {
		defer close(p.out)
		io.Copy(out, master)
	}()
	go func() {
		defer close(p.in)
		io.Copy(master, inputFrom(ch, c.rec))
	}()
	return p, nil
}

// pollable returns f's descriptor as a non-blocking file, so that reads
// honour deadlines and end when it is closed, and closes f. (pty.Open's
// files have been put in blocking mode.)
func pollable(f *os.File) (*os.File, error) {
	defer f.Close()
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// giveTTY hands the terminal at name to acct, as login(1) does, so that
// programs that reopen it (tty, ssh, sudo) can.
func giveTTY(name string, acct *account) error {
	gid, mode := int(acct.gid), os.FileMode(0o600)
	if g, err := user.LookupGroup("tty"); err == nil {
		if id, err := strconv.Atoi(g.Gid); err == nil {
			gid, mode = id, 0o620
		}
	}
	if err := os.Chown(name, int(acct.uid), gid); err != nil {
		return err
	}
	return os.Chmod(name, mode)
}

func (p *unixProc) resize(ws winsize) error {
	if p.master == nil {
		return errNoTerminal
	}
	rc, err := p.master.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	err = rc.Control(func(fd uintptr) {
		ioErr = unix.IoctlSetWinsize(int(fd), unix.TIOCSWINSZ, &unix.Winsize{
			Row: ws.rows, Col: ws.cols, Xpixel: ws.width, Ypixel: ws.height,
		})
	})
	return errors.Join(err, ioErr)
}

func (p *unixProc) signal(name string) error {
	sig, ok := signals[name]
	if !ok {
		return fmt.Errorf("sshd: signal: unknown signal %q", name)
	}
	return p.kill(sig)
}

// kill sends sig to the command's process group.
func (p *unixProc) kill(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited || p.cmd.Process == nil {
		return os.ErrProcessDone
	}
	if err := syscall.Kill(-p.cmd.Process.Pid, sig); err != nil {
		return fmt.Errorf("sshd: signal %v: %w", sig, err)
	}
	return nil
}

func (p *unixProc) wait() exitInfo {
	err := p.cmd.Wait()
	p.mu.Lock()
	p.exited = true
	p.mu.Unlock()
	if p.master != nil {
		t := time.NewTimer(drainDelay)
		select {
		case <-p.out:
		case <-t.C:
			p.master.SetReadDeadline(time.Now())
			<-p.out
		}
		t.Stop()
		p.master.Close()
	}
	return exitFrom(p.cmd.ProcessState, err)
}

func (p *unixProc) release() { <-p.in }

// exitFrom turns how a process ended into what SSH reports.
func exitFrom(st *os.ProcessState, err error) exitInfo {
	if st == nil {
		return exitInfo{err: err}
	}
	ws, ok := st.Sys().(syscall.WaitStatus)
	if ok && ws.Signaled() {
		if name := signalName(ws.Signal()); name != "" {
			return exitInfo{signal: name, coreDumped: ws.CoreDump()}
		}
		return exitInfo{status: 128 + int(ws.Signal())}
	}
	return exitInfo{status: st.ExitCode()}
}
