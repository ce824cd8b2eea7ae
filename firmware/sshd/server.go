// Package sshd is the device's SSH server. The agent hands it each user
// connection that the fleet brokers down the tunnel (a net.Conn, in practice
// a QUIC stream) together with the identity the fleet verified, and sshd
// serves one SSH connection on it with golang.org/x/crypto/ssh: PTY shells,
// exec, environment, window changes, signals, exit status, the sftp
// subsystem (so OpenSSH ssh, scp and sftp work) and local port forwarding.
//
// Authentication is public key only, and the key must be a user certificate
// issued by one of the fleet's SSH user CAs, currently valid (with a clock
// skew allowance: devices often have no real-time clock), naming the login
// as a principal; the login must be the one the fleet authorised for the
// stream and the certificate's key ID must be the fleet user. So the device
// checks again what it can, even though the fleet checked first.
//
// When the agent runs as root, sessions run as the login's Unix user
// (uid, gid, groups, HOME, USER, LOGNAME, SHELL, PATH, working directory,
// and the terminal handed to the user). When it runs as any other user, it
// serves only that user's own login. SFTP runs in-process when the agent
// already has the login's privileges (its own user, or root for root);
// otherwise it runs as a helper process with the login's credentials, like
// a session command (see Config.SFTPCommand and ServeSFTPStdio), because a
// Go process cannot safely switch users for one goroutine. Legacy scp
// (scp -O) execs scp on the device and works where scp is installed.
//
// Clients may set only locale, terminal and time zone variables. Terminal
// modes sent with a pty request are not applied: the terminal starts with
// the kernel's defaults (echo, canonical input, signals). Agent, X11 and
// remote forwarding are refused; local forwarding (ssh -L) needs the
// certificate's permit-port-forwarding extension and a PTY needs
// permit-pty, as in OpenSSH. Forwards are dialled as the login's user (a
// helper process with its credentials, Config.DialCommand, when the agent
// runs as root). The fleet's stream header can turn forwarding and file
// copies (scp, sftp) off: the user's roles decide (port_forwarding,
// ssh_file_copy). As with OpenSSH, an account whose shell cannot run
// cannot log in, and one whose shell refuses logins (nologin) gets that
// shell's refusal for every command, sftp included.
//
// Access ends on the device too: no new channel opens once the
// certificate (or the expiry the fleet gave in the stream header) has
// expired, and the connection is closed then, with a message on the
// standard error of each open session; the same happens when the fleet
// ends the session (a ServeConn context cancelled with a
// *services.Ended cause).
// Sessions start on Linux only; elsewhere the package builds and serves
// only SFTP and forwarding.
//
// Only the agent (firmware/...) imports sshd.
package sshd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/firmware/services"
	"remoteler.dev/edge/proto"
)

// Config configures a Server. The zero value of each field except HostSigner
// and UserCAKeys works; the defaults are documented per field.
type Config struct {
	// HostSigner returns the current host certificate signer: an ssh.Signer
	// made with ssh.NewCertSigner from the device's host certificate, which
	// the fleet's host CA issued. It is called for every connection, so
	// renewals take effect for the next one. Required.
	HostSigner func() ssh.Signer

	// UserCAKeys returns the fleet's SSH user CA public keys (more than one
	// during a rotation). Only user certificates signed by one of them are
	// accepted. It is called for every authentication attempt. Required.
	UserCAKeys func() []ssh.PublicKey

	// Logger receives one line per accepted or refused login and per
	// session event. Default: discard.
	Logger *slog.Logger

	// Now is the clock used to check certificate validity. Default:
	// time.Now.
	Now func() time.Time

	// ClockSkew is how far the device clock may be off when checking
	// certificate validity: a certificate is accepted from ClockSkew before
	// its start until ClockSkew after its end. Default: 5 minutes; a
	// negative value turns the allowance off.
	ClockSkew time.Duration

	// Shell is the shell used for logins whose passwd entry names none.
	// Default: /bin/sh.
	Shell string
	// PasswdFile is the passwd file that names login shells. Default:
	// /etc/passwd. (Tests point it at a copy that gives their user a plain
	// shell, so that the host's dotfiles do not run in them.)
	PasswdFile string

	// SFTPCommand is the command (argv) that serves SFTP on its standard
	// input and output, run as the login's user for the sftp subsystem
	// when the agent runs as root and the login is another user. (As that
	// user's own login, or as root for root, sshd serves SFTP in-process.)
	// The agent normally names its own binary in a helper mode whose main
	// calls ServeSFTPStdio. Default: OpenSSH's sftp-server, when one is
	// installed at a usual place; when none is, the sftp subsystem (and so
	// scp and sftp) is refused for such logins.
	SFTPCommand []string

	// DialCommand is the command (argv) that dials a port forward as the
	// login's user, when the agent runs as root and the login is another
	// user: sshd runs it with the user's credentials and HOST:PORT and a
	// timeout appended, and it hands the connected socket back (see
	// ServeDialHelper). The agent names its own binary in a helper mode.
	// Default: none, and port forwarding is refused for such logins (it
	// is never dialled as root for them).
	DialCommand []string

	// DialTimeout bounds each port-forwarding dial. Default: 10 seconds.
	DialTimeout time.Duration

	// HandshakeTimeout bounds the SSH handshake and authentication.
	// Default: 30 seconds.
	HandshakeTimeout time.Duration

	// Audit, when set, records an audit event (proto.AuditEvent) before
	// the action it describes goes ahead: a command before it starts
	// (exec, or file.transfer for sftp), a port forward before its dial,
	// and the end of each command (exec.end, with its exit status and
	// output size); refusals are recorded as access.denied. An error
	// refuses the action. ctx is the one given to ServeConn, so the
	// caller can fill in who and which session. Default: nothing is
	// recorded.
	Audit func(ctx context.Context, ev *proto.AuditEvent) error

	// Record, when set, is asked for a recorder for each shell and
	// command, with a terminal or without (file copies are audited as
	// transfers instead); a nil recorder records nothing. The output is
	// recorded as it is sent to the user (standard output and error
	// without a terminal), and window changes too. Default: no
	// recordings.
	Record func(ctx context.Context, info services.SessionInfo) services.Recorder

	// geteuid reports the agent's effective user ID. Default: os.Geteuid.
	// Tests set it.
	geteuid func() int
}

// Defaults for Config fields.
const (
	DefaultClockSkew        = 5 * time.Minute
	DefaultShell            = "/bin/sh"
	DefaultDialTimeout      = 10 * time.Second
	DefaultHandshakeTimeout = 30 * time.Second
)

// withDefaults returns cfg with its zero fields set to their defaults.
func (cfg Config) withDefaults() Config {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	switch {
	case cfg.ClockSkew == 0:
		cfg.ClockSkew = DefaultClockSkew
	case cfg.ClockSkew < 0:
		cfg.ClockSkew = 0
	}
	if cfg.Shell == "" {
		cfg.Shell = DefaultShell
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.PasswdFile == "" {
		cfg.PasswdFile = "/etc/passwd"
	}
	if cfg.geteuid == nil {
		cfg.geteuid = os.Geteuid
	}
	return cfg
}

// Server serves SSH connections. It holds no per-connection state, so one
// Server serves any number of connections at once.
type Server struct {
	cfg Config
	log *slog.Logger
}

// New returns a Server for cfg.
func New(cfg Config) *Server {
	cfg = cfg.withDefaults()
	return &Server{cfg: cfg, log: cfg.Logger.With("component", "sshd")}
}

// ServeConn serves one SSH connection on conn for the fleet-verified
// identity id, and returns when the connection ends. It closes conn.
// Cancelling ctx ends the connection and hangs up its sessions. A client
// that disconnects, or is refused at login, is not an error; a handshake
// that fails is.
//
// The certificate's source-address critical option, if any, is checked
// against conn.RemoteAddr(), so a caller that knows the user's address
// should return it from there.
func (s *Server) ServeConn(ctx context.Context, conn net.Conn, id proto.Identity) error {
	outer, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	defer conn.Close()
	// ctx is what the connection's handlers run under. It ends after
	// outer: when the fleet ends the session (a *services.Ended cause) or
	// its certificate expires, the open sessions are told why first, and
	// their commands hung up after that.
	ctx, hangUp := context.WithCancel(context.WithoutCancel(outer))
	defer hangUp()
	var cs atomic.Pointer[connState] // the state once authenticated
	stop := context.AfterFunc(outer, func() {
		var end *services.Ended
		if c := cs.Load(); c != nil && errors.As(context.Cause(outer), &end) {
			c.tellAll(end.Message)
		}
		hangUp()
		conn.Close()
	})
	defer stop()

	log := s.log.With("user", id.User, "login", id.Login)
	if s.cfg.HostSigner == nil || s.cfg.UserCAKeys == nil {
		return errors.New("sshd: serve: config needs HostSigner and UserCAKeys")
	}
	signer := s.cfg.HostSigner()
	if signer == nil {
		return errors.New("sshd: serve: no host certificate yet")
	}

	a := &authenticator{s: s, id: id, log: log, remote: conn.RemoteAddr()}
	config := &ssh.ServerConfig{
		Config:            ssh.Config{Ciphers: ciphers()},
		PublicKeyCallback: a.publicKey,
		ServerVersion:     "SSH-2.0-RemotelerEdge",
	}
	config.AddHostKey(signer)

	timer := time.AfterFunc(s.cfg.HandshakeTimeout, func() { conn.Close() })
	sconn, chans, reqs, err := ssh.NewServerConn(conn, config)
	if !timer.Stop() && err != nil {
		return fmt.Errorf("sshd: handshake: timed out after %v", s.cfg.HandshakeTimeout)
	}
	if err != nil {
		if a.refused {
			s.deny(ctx, "login", a.reason)
		}
		if a.refused || errors.Is(err, io.EOF) {
			// The client gave up, after a refusal that is logged.
			return nil
		}
		if outer.Err() != nil {
			return outer.Err()
		}
		return fmt.Errorf("sshd: handshake: %w", err)
	}
	defer sconn.Close()

	c := &connState{
		s:       s,
		ctx:     ctx,
		log:     log,
		acct:    a.acct,
		perms:   sconn.Permissions,
		id:      id,
		expires: s.expiry(a.cert, id),
		open:    map[*session]struct{}{},
	}
	cs.Store(c)
	if !c.expires.IsZero() {
		// The device ends the connection at its certificate's expiry
		// itself, whatever the fleet does.
		at := c.expires
		t := time.AfterFunc(at.Sub(s.cfg.Now()), func() {
			cancel(&services.Ended{Message: fmt.Sprintf("your certificate expired at %s; log in to the fleet again (tsh login)", at.Add(-s.cfg.ClockSkew).UTC().Format(time.RFC3339))})
		})
		defer t.Stop()
	}
	var wg sync.WaitGroup
	wg.Go(func() { c.globalRequests(reqs) })
	for nc := range chans {
		wg.Go(func() { c.channel(nc) })
	}
	// The connection is over: hang up whatever still runs, and wait for
	// every goroutine this connection started.
	cancel(nil)
	hangUp()
	sconn.Close()
	wg.Wait()
	log.Info("sshd: connection closed")
	return nil
}

// expiry is when the connection's access ends on the device's clock: the
// user certificate's end or the expiry the fleet gave in the stream
// header, whichever comes first, plus the clock skew allowance (the same
// rule that admits the certificate at login). Zero means never.
func (s *Server) expiry(cert *ssh.Certificate, id proto.Identity) time.Time {
	var at time.Time
	if cert != nil && cert.ValidBefore != ssh.CertTimeInfinity && cert.ValidBefore <= math.MaxInt64 {
		at = time.Unix(int64(cert.ValidBefore), 0)
	}
	if id.Expires > 0 {
		if e := time.UnixMilli(id.Expires); at.IsZero() || e.Before(at) {
			at = e
		}
	}
	if at.IsZero() {
		return at
	}
	return at.Add(s.cfg.ClockSkew)
}

// connState is what the handlers of one authenticated connection share.
type connState struct {
	s     *Server
	ctx   context.Context // cancelled when the connection ends
	log   *slog.Logger
	acct  *account // the login's account, found at authentication
	perms *ssh.Permissions
	id    proto.Identity
	// expires is when access ends (Server.expiry); zero means never.
	expires time.Time

	mu   sync.Mutex // guards open
	open map[*session]struct{}
}

// expired reports whether access has ended: no new channel is opened.
func (c *connState) expired() bool {
	return !c.expires.IsZero() && !c.s.cfg.Now().Before(c.expires)
}

// tellAll writes msg to the standard error of every open session and
// closes them, waiting at most a second for clients that do not read.
func (c *connState) tellAll(msg string) {
	if len(msg) > proto.MaxSessionEndMessage {
		msg = msg[:proto.MaxSessionEndMessage]
	}
	msg = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' ' // no terminal control from the fleet's message
		}
		return r
	}, msg)
	c.mu.Lock()
	list := make([]*session, 0, len(c.open))
	for s := range c.open {
		list = append(list, s)
	}
	c.mu.Unlock()
	done := make(chan struct{}, len(list))
	for _, s := range list {
		go func() {
			defer func() { done <- struct{}{} }()
			line := "remoteler: " + msg + "\n"
			if s.pty != nil {
				line = "\r\n" + strings.TrimSuffix(line, "\n") + "\r\n"
			}
			io.WriteString(s.ch.Stderr(), line)
			s.ch.CloseWrite()
			s.ch.Close()
		}()
	}
	deadline := time.NewTimer(time.Second)
	defer deadline.Stop()
	for range list {
		select {
		case <-done:
		case <-deadline.C:
			return
		}
	}
	c.log.Info("sshd: the fleet ended the connection", "reason", msg, "sessions", len(list))
}

// permits reports whether the user's certificate carries the extension
// ext (such as "permit-pty").
func (c *connState) permits(ext string) bool {
	if c.perms == nil {
		return false
	}
	_, ok := c.perms.Extensions[ext]
	return ok
}

// globalRequests answers connection-level requests until the connection
// ends. Remote forwarding is refused; so is everything else.
func (c *connState) globalRequests(reqs <-chan *ssh.Request) {
	for req := range reqs {
		switch req.Type {
		case "tcpip-forward", "streamlocal-forward@openssh.com":
			c.log.Info("sshd: refused remote forwarding", "request", req.Type)
		}
		if req.WantReply {
			req.Reply(false, nil)
		}
	}
}

// channel serves one channel the client opened.
func (c *connState) channel(nc ssh.NewChannel) {
	if c.expired() {
		c.log.Info("sshd: refused channel: the certificate expired", "type", nc.ChannelType())
		c.s.deny(c.ctx, nc.ChannelType()+" channel", "the certificate expired")
		nc.Reject(ssh.Prohibited, "your certificate has expired; log in to the fleet again (tsh login)")
		return
	}
	switch nc.ChannelType() {
	case "session":
		c.session(nc)
	case "direct-tcpip":
		c.directTCPIP(nc)
	case "x11", "auth-agent@openssh.com", "forwarded-tcpip", "direct-streamlocal@openssh.com":
		c.log.Info("sshd: refused channel", "type", nc.ChannelType())
		nc.Reject(ssh.Prohibited, nc.ChannelType()+" channels are not supported by this device")
	default:
		nc.Reject(ssh.UnknownChannelType, "unknown channel type "+nc.ChannelType())
	}
}
