package tsh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/crypto/ssh"
	"golang.org/x/term"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
)

// sshHandshakeTimeout bounds the SSH handshake with a device.
const sshHandshakeTimeout = 30 * time.Second

// splitTarget splits [LOGIN@]HOST and strips a ".CLUSTER" suffix from HOST,
// so "pi@gw1.fleet" and "pi@gw1" name the same device.
func splitTarget(s, cluster string) (login, device string) {
	if i := strings.LastIndexByte(s, '@'); i >= 0 {
		login, s = s[:i], s[i+1:]
	}
	return login, strings.TrimSuffix(s, "."+cluster)
}

// hostKeyCallback accepts a device's host key when it is a host certificate
// signed by one of the fleet's host CA keys and valid for one of names (the
// device's name, with and without the cluster suffix).
func hostKeyCallback(cas []ssh.PublicKey, now func() time.Time, names ...string) ssh.HostKeyCallback {
	checker := &ssh.CertChecker{
		IsHostAuthority: func(auth ssh.PublicKey, _ string) bool {
			for _, ca := range cas {
				if bytes.Equal(ca.Marshal(), auth.Marshal()) {
					return true
				}
			}
			return false
		},
		Clock: now,
	}
	return func(_ string, remote net.Addr, key ssh.PublicKey) error {
		var first error
		for _, n := range names {
			err := checker.CheckHostKey(net.JoinHostPort(n, "22"), remote, key)
			if err == nil {
				return nil
			}
			if first == nil {
				first = err
			}
		}
		return fmt.Errorf("the host key of %s is not a certificate from the fleet's host CA for that name (%v); the connection may be intercepted: do not go on, and tell your fleet admin", names[0], first)
	}
}

// certHostKeyAlgorithms asks devices for their host certificate, not a
// plain key.
var certHostKeyAlgorithms = []string{
	ssh.CertAlgoED25519v01,
	ssh.CertAlgoECDSA256v01, ssh.CertAlgoECDSA384v01, ssh.CertAlgoECDSA521v01,
	ssh.CertAlgoRSASHA512v01, ssh.CertAlgoRSASHA256v01,
}

// userSigner loads the profile's SSH key in dir and the certificate in
// certFile (the profile's, or a leaf cluster's for the same key).
func userSigner(dir, certFile string) (ssh.Signer, error) {
	damaged := func(err error) error {
		return fmt.Errorf("the login in %s is incomplete (%w); run tsh login again", dir, err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, fileKey))
	if err != nil {
		return nil, damaged(err)
	}
	signer, err := ssh.ParsePrivateKey(keyPEM)
	if err != nil {
		return nil, damaged(err)
	}
	certLine, err := os.ReadFile(certFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, errors.New("your roles give you no SSH logins on any device; ask your fleet admin, then run tsh login again")
	}
	if err != nil {
		return nil, damaged(err)
	}
	key, _, _, _, err := ssh.ParseAuthorizedKey(certLine)
	if err != nil {
		return nil, damaged(err)
	}
	cert, ok := key.(*ssh.Certificate)
	if !ok {
		return nil, damaged(errors.New(fileCert + " is not a certificate"))
	}
	return ssh.NewCertSigner(cert, signer)
}

// dialSSH opens an SSH client connection to device as login through the
// fleet, at site s (the fleet, or a leaf cluster through it).
func (r *runner) dialSSH(ctx context.Context, c *client.Client, s *site, device, login string) (*ssh.Client, error) {
	if err := r.sshReady(ctx, s); err != nil {
		return nil, err
	}
	signer, err := userSigner(s.dir, s.certFile())
	if err != nil {
		return nil, err
	}
	cas, err := s.hostCAs()
	if err != nil {
		return nil, err
	}
	if len(cas) == 0 {
		return nil, errors.New("your login holds no SSH host CA key, so devices cannot be verified; run tsh login again, and tell your fleet admin if this repeats")
	}
	conn, err := r.connectHeld(ctx, c, device, login)
	if err != nil {
		return nil, connectError(err, s, device, login)
	}
	r.session = conn
	conf := &ssh.ClientConfig{
		User:              login,
		Auth:              []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback:   hostKeyCallback(cas, r.stdio.Now, device, device+"."+s.name()),
		HostKeyAlgorithms: certHostKeyAlgorithms,
		ClientVersion:     "SSH-2.0-tsh_" + strings.ReplaceAll(Version, " ", "_"),
	}
	conn.SetDeadline(time.Now().Add(sshHandshakeTimeout))
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	sc, chans, reqs, err := ssh.NewClientConn(conn, net.JoinHostPort(device, "22"), conf)
	stop()
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if strings.Contains(err.Error(), "no common algorithm for host key") {
			return nil, fmt.Errorf("%s offered no host certificate, only a plain host key, so it cannot be verified; do not go on, and tell your fleet admin (%v)", device, err)
		}
		if strings.Contains(err.Error(), "unable to authenticate") {
			return nil, fmt.Errorf("%s refused your certificate for login %q; your logins are %s (tsh status)", device, login, cli.List(s.logins()))
		}
		return nil, fmt.Errorf("ssh to %s: %w", device, err)
	}
	conn.SetDeadline(time.Time{})
	return ssh.NewClient(sc, chans, reqs), nil
}

// exitNoConnection is tsh ssh's exit status when it could not reach the
// device or lost it, as OpenSSH's ssh.
const exitNoConnection = 255

// sshFlags are tsh ssh's flags.
type sshFlags struct {
	login           string
	forceTTY, noTTY bool
	cluster         string
}

func (r *runner) sshCommand() *cobra.Command {
	var f sshFlags
	cmd := &cobra.Command{
		Use:   "ssh [LOGIN@]DEVICE [COMMAND...]",
		Short: "Log in to a device, or run a command on it",
		Long: `Open an SSH session to a device through the fleet: an interactive shell,
or COMMAND when one is given (its words are joined with spaces, as OpenSSH
does). The device is verified by its host certificate from the fleet's host
CA. Flags go before the device; everything after it is the command.

Exit status: the remote command's own (128+N when a signal N ended it), or
255 when tsh could not reach the device or lost it, as OpenSSH's ssh.`,
		Example: `  tsh ssh pi-1
  tsh ssh root@pi-1 uname -a
  tsh ssh -t pi-1 top`,
		Args:              cli.RangeArgs(1, -1, "the device: tsh ssh [LOGIN@]DEVICE"),
		ValidArgsFunction: r.completeTarget(""),
		RunE:              func(cmd *cobra.Command, args []string) error { return r.ssh(cmd, f, args) },
	}
	fl := cmd.Flags()
	fl.SetInterspersed(false) // flags after DEVICE belong to the command
	fl.StringVarP(&f.login, "login", "l", "", "log in as `LOGIN` on the device (default: LOGIN@ of the target, else your local user name)")
	fl.BoolVarP(&f.forceTTY, "tty", "t", false, "ask for a terminal even when running a command or when stdin is not a terminal")
	fl.BoolVarP(&f.noTTY, "no-tty", "T", false, "never ask for a terminal")
	r.clusterFlag(cmd, &f.cluster)
	cmd.RegisterFlagCompletionFunc("login", r.completeLogins)
	return cmd
}

// completeTarget completes the first argument, [LOGIN@]DEVICE, with the
// devices the login may reach; suffix follows each name (":" for scp).
func (r *runner) completeTarget(suffix string) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 && suffix == "" {
			return nil, cobra.ShellCompDirectiveDefault
		}
		prefix := ""
		if i := strings.LastIndexByte(toComplete, '@'); i >= 0 {
			prefix = toComplete[:i+1]
		}
		all := cli.Candidates(cmd, r.completeDevices)
		if suffix != "" {
			for i, c := range all {
				name, desc, _ := strings.Cut(c, "\t")
				all[i] = name + suffix + "\t" + desc
			}
		}
		d := cobra.ShellCompDirectiveNoFileComp
		if suffix != "" {
			d |= cobra.ShellCompDirectiveNoSpace
		}
		return cli.Filter(all, toComplete, prefix), d
	}
}

// completeLogins offers the logins of the current login.
func (r *runner) completeLogins(cmd *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	s, err := r.site("")
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	return cli.Filter(s.logins(), toComplete, ""), cobra.ShellCompDirectiveNoFileComp
}

func (r *runner) ssh(cmd *cobra.Command, f sshFlags, pos []string) error {
	ctx := cmd.Context()
	loginFlag, forceTTY, noTTY := &f.login, &f.forceTTY, &f.noTTY
	st, err := r.site(f.cluster)
	if err != nil {
		return &cli.StatusError{Code: exitNoConnection, Err: err}
	}
	login, device := splitTarget(pos[0], st.name())
	if *loginFlag != "" {
		login = *loginFlag
	}
	if login == "" {
		login = r.localUser()
	}
	if device == "" {
		return cli.Usagef(cmd, "name a device")
	}
	command := strings.Join(pos[1:], " ")
	c, err := r.client(st)
	if err != nil {
		return &cli.StatusError{Code: exitNoConnection, Err: err}
	}
	defer c.Close()
	sc, err := r.dialSSH(ctx, c, st, device, login)
	if err != nil {
		// The session may have ended under the handshake (the device's
		// agent restarted, say): the fleet's reason says more than
		// "handshake failed: EOF".
		if reason := endReason(ctx, c, r.session); reason != "" && ctx.Err() == nil {
			err = sessionEnded(device, reason)
		}
		return &cli.StatusError{Code: exitNoConnection, Err: err}
	}
	defer sc.Close()
	stop := context.AfterFunc(ctx, func() { sc.Close() })
	defer stop()
	code, err := r.runSession(ctx, sc, command, *forceTTY, *noTTY)
	if err != nil {
		if code == 255 && ctx.Err() == nil {
			// One line that says what happened, in place of what the SSH
			// layer saw (EOF, a missing exit status).
			if reason := endReason(ctx, c, r.session); reason != "" {
				return &cli.StatusError{Code: code, Err: sessionEnded(device, reason)}
			}
		}
		return &cli.StatusError{Code: code, Err: fmt.Errorf("ssh %s: %w", device, err)}
	}
	if code != 0 {
		return &cli.StatusError{Code: code}
	}
	return nil
}

// runSession runs command (a shell when empty) and returns its exit status.
func (r *runner) runSession(ctx context.Context, sc *ssh.Client, command string, forceTTY, noTTY bool) (int, error) {
	sess, err := sc.NewSession()
	if err != nil {
		return 255, fmt.Errorf("open session: %w", err)
	}
	defer sess.Close()
	sess.Stdin = r.stdio.In
	sess.Stdout = r.stdio.Out
	sess.Stderr = r.stdio.Err

	inFd, inTerm := cli.Terminal(r.stdio.In)
	outFd, outTerm := cli.Terminal(r.stdio.Out)
	tty := (inTerm && command == "") || forceTTY
	if noTTY {
		tty = false
	}
	if tty {
		width, height := 80, 24
		if outTerm {
			if w, h, err := term.GetSize(outFd); err == nil {
				width, height = w, h
			}
		}
		termType := r.stdio.Getenv("TERM")
		if termType == "" {
			termType = "xterm-256color"
		}
		modes := ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}
		if err := sess.RequestPty(termType, height, width, modes); err != nil {
			return 255, fmt.Errorf("request a terminal: %w", err)
		}
		if inTerm {
			old, err := term.MakeRaw(inFd)
			if err != nil {
				return 255, fmt.Errorf("set the terminal to raw mode: %w", err)
			}
			defer term.Restore(inFd, old)
		}
		if outTerm {
			stop := watchWindow(outFd, func(w, h int) { sess.WindowChange(h, w) })
			defer stop()
		}
	}
	if command == "" {
		err = sess.Shell()
	} else {
		err = sess.Start(command)
	}
	if err != nil {
		return 255, fmt.Errorf("start: %w", err)
	}
	err = sess.Wait()
	var exit *ssh.ExitError
	var missing *ssh.ExitMissingError
	switch {
	case err == nil:
		return 0, nil
	case errors.As(err, &exit):
		// ExitStatus is 128+n for a known exit-signal, like a shell's.
		return exit.ExitStatus(), nil
	case ctx.Err() != nil:
		return 130, errors.New("interrupted")
	case errors.As(err, &missing):
		return 255, errors.New("the session ended without an exit status; the link to the device may have dropped")
	default:
		return 255, err
	}
}
