package sshd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"remoteler.dev/edge/firmware/services"
)

// Request payloads (RFC 4254 section 6), decoded with ssh.Unmarshal.
type (
	ptyRequest struct {
		Term   string
		Cols   uint32
		Rows   uint32
		Width  uint32
		Height uint32
		Modes  string
	}
	windowChange struct {
		Cols   uint32
		Rows   uint32
		Width  uint32
		Height uint32
	}
	envRequest struct {
		Name  string
		Value string
	}
	execRequest struct {
		Command string
	}
	subsystemRequest struct {
		Name string
	}
	signalRequest struct {
		Signal string
	}
	exitStatus struct {
		Status uint32
	}
	exitSignal struct {
		Signal     string
		CoreDumped bool
		Message    string
		Lang       string
	}
)

// winsize is a terminal size in cells and pixels.
type winsize struct {
	cols, rows, width, height uint16
}

// clamp16 narrows a size from the wire to the range a terminal takes.
func clamp16(v uint32) uint16 { return uint16(min(v, 0xffff)) }

// exitInfo is how a session's command ended.
type exitInfo struct {
	status     int    // exit status, when signal is ""
	signal     string // SSH signal name ("TERM") when killed by a signal
	coreDumped bool
	err        error // the command could not be waited for
}

// proc is a started session command. Its methods are safe to call from
// any goroutine.
type proc interface {
	// resize sets the terminal size; it fails without a terminal.
	resize(ws winsize) error
	// signal delivers the SSH signal name ("TERM") to the command's
	// process group.
	signal(name string) error
	// wait waits for the command to exit and for its output to reach
	// the channel.
	wait() exitInfo
	// release waits for the goroutines that feed the command's input,
	// which end when the channel has closed; call it after that.
	release()
}

// command is what a session starts.
type command struct {
	path string
	args []string // argv, argv[0] included
	env  []string
	dir  string
	acct *account
	pty  *ptyRequest       // nil: stdin, stdout and stderr are pipes
	out  *atomic.Int64     // counts the output bytes; may be nil
	rec  services.Recorder // records a terminal's output; may be nil
}

// Limits on what a client may set in a session's environment.
const (
	maxEnvVars  = 64
	maxEnvValue = 4096
)

// session is one session channel.
type session struct {
	c   *connState
	ch  ssh.Channel
	ctx context.Context // cancelled when the channel or connection ends
	log *slog.Logger

	// Set by requests before the command starts; only the request loop
	// touches them.
	env     []string
	pty     *ptyRequest
	started bool
	proc    proc          // nil for in-process sftp
	done    chan struct{} // closed when the command ended and the exit status went out

	// Set by begin, for the audit and the recording.
	kind, command string
	began         time.Time
	out           atomic.Int64
	rec           services.Recorder
}

// session serves one session channel until the client closes it or the
// connection ends.
func (c *connState) session(nc ssh.NewChannel) {
	ch, reqs, err := nc.Accept()
	if err != nil {
		return
	}
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	s := &session{c: c, ch: ch, ctx: ctx, log: c.log}
	c.mu.Lock()
	c.open[s] = struct{}{}
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.open, s)
		c.mu.Unlock()
	}()
	for req := range reqs {
		ok, then := s.request(req)
		if req.WantReply {
			req.Reply(ok, nil)
		}
		if then != nil {
			then()
		}
	}
	// The client closed the channel or the connection ended: hang up
	// the command, if it still runs, and wait until it is gone.
	cancel()
	if s.done != nil {
		<-s.done
	}
	ch.Close()
	if s.proc != nil {
		s.proc.release()
	}
}

// request answers one channel request. When it returns a function, that
// runs after the reply is sent.
func (s *session) request(req *ssh.Request) (ok bool, then func()) {
	switch req.Type {
	case "pty-req":
		if s.started {
			return false, nil
		}
		if !s.c.permits("permit-pty") {
			s.log.Info("sshd: refused pty: the certificate lacks permit-pty")
			s.c.s.deny(s.ctx, "pty", "the certificate lacks permit-pty")
			return false, nil
		}
		p, err := parsePtyRequest(req.Payload)
		if err != nil {
			return false, nil
		}
		s.pty = p
		return true, nil
	case "env":
		if s.started {
			return false, nil
		}
		e, err := parseEnv(req.Payload)
		if err != nil || !envAllowed(e.Name, e.Value) || len(s.env) >= maxEnvVars {
			s.log.Debug("sshd: ignored environment variable", "name", e.Name)
			return false, nil
		}
		s.env = append(s.env, e.Name+"="+e.Value)
		return true, nil
	case "shell", "exec", "subsystem":
		if s.started {
			return false, nil
		}
		return s.start(req)
	case "window-change":
		w, err := parseWindowChange(req.Payload)
		if err != nil || s.proc == nil {
			return false, nil
		}
		if s.proc.resize(w) != nil {
			return false, nil
		}
		if s.rec != nil {
			s.rec.Resize(int(w.cols), int(w.rows))
		}
		return true, nil
	case "signal":
		sig, err := parseSignal(req.Payload)
		if err != nil || s.proc == nil {
			return false, nil
		}
		if err := s.proc.signal(sig); err != nil {
			s.log.Info("sshd: signal not delivered", "signal", sig, "err", err)
			return false, nil
		}
		s.log.Info("sshd: signal delivered", "signal", sig)
		return true, nil
	case "auth-agent-req@openssh.com", "x11-req":
		s.log.Info("sshd: refused forwarding request", "request", req.Type)
		return false, nil
	default:
		return false, nil
	}
}

// start answers shell, exec and subsystem requests.
func (s *session) start(req *ssh.Request) (bool, func()) {
	acct := s.c.acct
	cmd := &command{env: s.environ(acct), dir: acct.home, acct: acct, pty: s.pty, out: &s.out}
	shell := filepath.Base(acct.shell)
	switch req.Type {
	case "shell":
		cmd.path, cmd.args = acct.shell, []string{"-" + shell}
		if s.begin(services.SessionInfo{Kind: "shell"}) != nil {
			return false, nil
		}
		s.log.Info("sshd: session started", "kind", "shell", "pty", s.pty != nil)
	case "exec":
		e, err := parseExec(req.Payload)
		if err != nil || e.Command == "" {
			return false, nil
		}
		kind := "exec"
		if isFileCopy(e.Command) {
			kind = "scp"
			if !s.c.fileCopy() {
				return false, nil
			}
		}
		cmd.path, cmd.args = acct.shell, []string{shell, "-c", e.Command}
		if s.begin(services.SessionInfo{Kind: kind, Command: e.Command}) != nil {
			return false, nil
		}
		s.log.Info("sshd: session started", "kind", kind, "command", e.Command, "pty", s.pty != nil)
	case "subsystem":
		sub, err := parseSubsystem(req.Payload)
		if err != nil || sub.Name != "sftp" {
			s.log.Info("sshd: refused subsystem", "subsystem", sub.Name)
			return false, nil
		}
		if !s.c.fileCopy() {
			return false, nil
		}
		if s.begin(services.SessionInfo{Kind: "sftp"}) != nil {
			return false, nil
		}
		s.log.Info("sshd: session started", "kind", "sftp")
		argv := s.c.s.sftpCommand()
		switch {
		case refusesLogins(acct.shell):
			// OpenSSH runs subsystems through the login shell, so a
			// nologin account gets its shell's refusal: so does it here.
			if argv == nil {
				argv = []string{"sftp-server"}
			}
			cmd.path, cmd.args, cmd.pty = acct.shell, []string{shell, "-c", strings.Join(argv, " ")}, nil
		case !acct.switchUser || acct.uid == 0:
			return s.startSFTP(acct)
		case argv == nil:
			s.log.Warn("sshd: refused sftp: no sftp helper for non-root logins (set Config.SFTPCommand or install sftp-server)")
			return false, nil
		default:
			cmd.path, cmd.args, cmd.pty = argv[0], argv, nil
		}
	}
	cmd.rec = s.rec
	p, err := startProc(s.ctx, cmd, s.ch)
	if err != nil {
		s.log.Warn("sshd: session failed to start", "err", err)
		s.end(exitInfo{err: err})
		return false, nil
	}
	s.started, s.proc, s.done = true, p, make(chan struct{})
	return true, func() {
		go func() {
			defer close(s.done)
			info := p.wait()
			s.end(info)
			s.exit(info)
		}()
	}
}

// fileCopy reports whether the user's roles allow copying files (scp,
// sftp); a refusal is logged and audited.
func (c *connState) fileCopy() bool {
	if !c.id.NoFileCopy {
		return true
	}
	c.log.Info("sshd: refused a file copy: the user's roles turn ssh_file_copy off")
	c.s.deny(c.ctx, "file copy", "the user's roles turn file copies off (ssh_file_copy)")
	return false
}

// isFileCopy reports whether an exec command is a file copy: legacy scp
// (scp -t, scp -f, run by scp -O) or an sftp server.
func isFileCopy(command string) bool {
	f := strings.Fields(command)
	if len(f) == 0 {
		return false
	}
	switch filepath.Base(f[0]) {
	case "scp", "sftp-server", "internal-sftp":
		return true
	}
	return false
}

// refusesLogins reports whether a login shell is one that refuses logins
// (nologin, false), whose refusal OpenSSH passes on for every command.
func refusesLogins(shell string) bool {
	switch filepath.Base(shell) {
	case "nologin", "false":
		return true
	}
	return false
}

// startSFTP serves the sftp subsystem in-process, with the agent's own
// privileges, which are the login's.
func (s *session) startSFTP(acct *account) (bool, func()) {
	srv, err := sftp.NewServer(&tapRW{ReadWriteCloser: s.ch, n: &s.out}, sftp.WithServerWorkingDirectory(acct.home))
	if err != nil {
		s.log.Warn("sshd: sftp failed to start", "err", err)
		s.end(exitInfo{err: err})
		return false, nil
	}
	s.started, s.done = true, make(chan struct{})
	return true, func() {
		go func() {
			defer close(s.done)
			err := srv.Serve()
			info := exitInfo{}
			if err != nil && s.ctx.Err() == nil {
				s.log.Info("sshd: sftp ended", "err", err)
				info.status = 1
			}
			s.end(info)
			s.exit(info)
		}()
	}
}

// exit tells the client how the command ended and closes the channel.
func (s *session) exit(info exitInfo) {
	// The status goes before the EOF: a client that has sent its own EOF
	// may close the channel as soon as ours arrives, and a status after
	// that is lost (the client then reports 255).
	switch {
	case info.err != nil:
		s.log.Warn("sshd: session ended", "err", info.err)
	case info.signal != "":
		s.log.Info("sshd: session ended", "signal", info.signal)
		s.ch.SendRequest("exit-signal", false, ssh.Marshal(exitSignal{Signal: info.signal, CoreDumped: info.coreDumped}))
	default:
		s.log.Info("sshd: session ended", "status", info.status)
		s.ch.SendRequest("exit-status", false, ssh.Marshal(exitStatus{Status: uint32(info.status)}))
	}
	s.ch.CloseWrite()
	s.ch.Close()
}

// Default PATHs for sessions.
const (
	rootPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	userPath = "/usr/local/bin:/usr/bin:/bin"
)

// environ is the environment a session's command starts with: the
// login's, then the terminal's, then what the client set.
func (s *session) environ(acct *account) []string {
	path := userPath
	if acct.uid == 0 {
		path = rootPath
	}
	env := []string{
		"HOME=" + acct.home,
		"USER=" + acct.name,
		"LOGNAME=" + acct.name,
		"SHELL=" + acct.shell,
		"PATH=" + path,
	}
	for _, kv := range s.env {
		if s.pty != nil && strings.HasPrefix(kv, "TERM=") {
			continue // the pty request's TERM wins
		}
		env = append(env, kv)
	}
	if s.pty != nil && s.pty.Term != "" {
		env = append(env, "TERM="+s.pty.Term)
	}
	return env
}

// envAllowed reports whether a client may set the variable name to value:
// only locale, terminal and time zone variables, which cannot change what
// a program does in ways that matter to security (unlike LD_PRELOAD, PATH
// or IFS).
func envAllowed(name, value string) bool {
	if len(value) > maxEnvValue || strings.ContainsRune(value, 0) {
		return false
	}
	switch name {
	case "LANG", "LANGUAGE", "TERM", "COLORTERM", "TZ":
		return true
	}
	rest, ok := strings.CutPrefix(name, "LC_")
	if !ok || rest == "" {
		return false
	}
	for _, r := range rest {
		if (r < 'A' || r > 'Z') && r != '_' {
			return false
		}
	}
	return true
}

// sftpServerPaths are where OpenSSH's sftp-server is usually installed.
var sftpServerPaths = []string{
	"/usr/lib/openssh/sftp-server",
	"/usr/libexec/openssh/sftp-server",
	"/usr/lib/ssh/sftp-server",
	"/usr/libexec/sftp-server",
	"/usr/lib/sftp-server",
}

// sftpCommand returns the argv that serves SFTP as another user, or nil.
func (s *Server) sftpCommand() []string {
	if len(s.cfg.SFTPCommand) > 0 {
		return s.cfg.SFTPCommand
	}
	for _, p := range sftpServerPaths {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return []string{p}
		}
	}
	return nil
}

// errNoTerminal is returned when resizing a session that has no PTY.
var errNoTerminal = errors.New("sshd: resize: the session has no terminal")

// Payload parsers. Each rejects what does not decode.

func parsePtyRequest(b []byte) (*ptyRequest, error) {
	var p ptyRequest
	if err := ssh.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("sshd: pty-req: %w", err)
	}
	if strings.ContainsRune(p.Term, 0) || len(p.Term) > 256 {
		return nil, errors.New("sshd: pty-req: bad TERM")
	}
	return &p, nil
}

func parseWindowChange(b []byte) (winsize, error) {
	var w windowChange
	if err := ssh.Unmarshal(b, &w); err != nil {
		return winsize{}, fmt.Errorf("sshd: window-change: %w", err)
	}
	return winsize{clamp16(w.Cols), clamp16(w.Rows), clamp16(w.Width), clamp16(w.Height)}, nil
}

func parseEnv(b []byte) (envRequest, error) {
	var e envRequest
	if err := ssh.Unmarshal(b, &e); err != nil {
		return envRequest{}, fmt.Errorf("sshd: env: %w", err)
	}
	return e, nil
}

func parseExec(b []byte) (execRequest, error) {
	var e execRequest
	if err := ssh.Unmarshal(b, &e); err != nil {
		return execRequest{}, fmt.Errorf("sshd: exec: %w", err)
	}
	if strings.ContainsRune(e.Command, 0) {
		return execRequest{}, errors.New("sshd: exec: NUL in command")
	}
	return e, nil
}

func parseSubsystem(b []byte) (subsystemRequest, error) {
	var sub subsystemRequest
	if err := ssh.Unmarshal(b, &sub); err != nil {
		return subsystemRequest{}, fmt.Errorf("sshd: subsystem: %w", err)
	}
	return sub, nil
}

func parseSignal(b []byte) (string, error) {
	var sig signalRequest
	if err := ssh.Unmarshal(b, &sig); err != nil {
		return "", fmt.Errorf("sshd: signal: %w", err)
	}
	return sig.Signal, nil
}
