// Package tsh is the user's command-line client as a library: tsh login,
// status, logout, ls, ssh, scp, proxy ssh, config, recordings ls and play.
// fleet/cmd/tsh is its thin main; tests drive Main directly.
//
// It talks to the fleet only through fleet/client and imports no server
// package. A login is kept as a profile under $TSH_HOME (default ~/.tsh):
//
//	$TSH_HOME/current                        names the active profile: PROXY/USER
//	$TSH_HOME/known_hosts                    @cert-authority *.CLUSTER lines for OpenSSH
//	$TSH_HOME/keys/PROXY/USER/key            SSH private key (OpenSSH format, 0600)
//	$TSH_HOME/keys/PROXY/USER/key.pub        SSH public key
//	$TSH_HOME/keys/PROXY/USER/key-cert.pub   SSH user certificate
//	$TSH_HOME/keys/PROXY/USER/tls.key        TLS private key (PKCS#8 PEM, 0600)
//	$TSH_HOME/keys/PROXY/USER/tls.crt        TLS client certificate
//	$TSH_HOME/keys/PROXY/USER/cas.pem        the fleet's CA certificates
//	$TSH_HOME/keys/PROXY/USER/profile.json   proxy, user, cluster, roles, logins, expiry, host CA keys
//
// After login every connection trusts the fleet through cas.pem alone, and
// tsh ssh trusts a device when its host certificate is signed by one of the
// host CA keys in profile.json and names the device.
package tsh

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"time"

	"remoteler.dev/edge/firmware/buildinfo"
	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
)

// Version is tsh's version: the build's (firmware/buildinfo, set by the
// release build). Tests may change it.
var Version = buildinfo.Version

// Stdio is what a run of tsh talks to: its standard streams and a few
// process facts. Zero fields fall back to the real process's.
type Stdio struct {
	// In is standard input; nil means os.Stdin. Passwords are read from it
	// without echo when it is a terminal, else one line each.
	In io.Reader
	// Out and Err are standard output and error; nil means os.Stdout and
	// os.Stderr.
	Out, Err io.Writer
	// Getenv reads the environment (TSH_HOME, HOME, TERM, USER); nil means
	// os.Getenv.
	Getenv func(string) string
	// Executable returns the path of the running tsh, for tsh config; nil
	// means os.Executable.
	Executable func() (string, error)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

func (s *Stdio) setDefaults() {
	if s.In == nil {
		s.In = os.Stdin
	}
	if s.Out == nil {
		s.Out = os.Stdout
	}
	if s.Err == nil {
		s.Err = os.Stderr
	}
	if s.Getenv == nil {
		s.Getenv = os.Getenv
	}
	if s.Executable == nil {
		s.Executable = os.Executable
	}
	if s.Now == nil {
		s.Now = time.Now
	}
}

// exitError ends tsh with a given exit code. A nil err prints nothing (a
// remote command's own exit status).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// errUsage marks a command-line mistake; flag has printed the details.
var errUsage = cli.ErrUsage

const usage = `tsh: log in to the fleet and reach its devices.

Usage:
  tsh login --proxy=HOST:PORT --user=NAME [--ca-pin=sha256:HEX] [--insecure] [--ttl=8h]
  tsh status                          show your logins and their validity
  tsh logout [--all]                  forget the current (or every) login
  tsh ls [LABEL=VALUE...] [-v] [--format=text|json]
                                      list the devices you may reach
  tsh ssh [-l LOGIN] [-t|-T] [LOGIN@]DEVICE [COMMAND...]
  tsh scp [-r] [-q] SRC... DST        a remote side is [LOGIN@]DEVICE:PATH
  tsh config                          print an OpenSSH config block for the fleet
  tsh recordings ls [--format=text|json]
                                      list the session recordings you may see
  tsh play [--speed=N] [--format=text|json] RECORDING_ID
                                      replay a recorded session (speed 0: at once)
  tsh kube ls|login NAME|logout       Kubernetes clusters through the fleet (tsh kube help)
  tsh proxy ssh [LOGIN@]HOST[:PORT]   used by OpenSSH's ProxyCommand (see tsh config)
  tsh version

Environment: TSH_HOME is where logins are kept (default ~/.tsh).
`

// Main runs tsh with args (without the program name) and returns the exit
// code: 0 on success, 1 on errors, 2 on usage errors; tsh ssh returns the
// remote command's exit status, or 255 when the connection failed.
func Main(ctx context.Context, args []string, stdio Stdio) int {
	stdio.setDefaults()
	r := &runner{stdio: stdio, prompt: &cli.Prompt{In: stdio.In, Err: stdio.Err}}
	if len(args) == 0 {
		fmt.Fprint(stdio.Err, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	var err error
	switch cmd {
	case "login":
		err = r.login(ctx, rest)
	case "logout":
		err = r.logout(rest)
	case "status":
		err = r.status(rest)
	case "ls":
		err = r.ls(ctx, rest)
	case "ssh":
		err = r.ssh(ctx, rest)
	case "scp":
		err = r.scp(ctx, rest)
	case "proxy":
		err = r.proxy(ctx, rest)
	case "config":
		err = r.config(rest)
	case "kube":
		err = r.kube(ctx, rest)
	case "recordings":
		err = r.recordings(ctx, rest)
	case "play":
		err = r.play(ctx, rest)
	case "version":
		fmt.Fprintf(stdio.Out, "tsh %s\n", Version)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdio.Out, usage)
	default:
		fmt.Fprintf(stdio.Err, "tsh: unknown command %q; run tsh help for the list\n", cmd)
		return 2
	}
	var ex *exitError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(stdio.Err, "tsh: interrupted")
		return 130
	case errors.As(err, &ex):
		if ex.err != nil {
			fmt.Fprintf(stdio.Err, "tsh: %v\n", client.Plain(ex.err))
		}
		return ex.code
	default:
		fmt.Fprintf(stdio.Err, "tsh: %v\n", client.Plain(err))
		return 1
	}
}

// runner carries one run's streams and state.
type runner struct {
	stdio  Stdio
	prompt *cli.Prompt // over stdio.In and stdio.Err
	// session is the last connection dialSSH made, whose end the fleet
	// can explain (client.Client.SessionEnd).
	session net.Conn
}

// flags returns a flag set for a command whose errors and help go to Err.
func (r *runner) flags(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet("tsh "+name, flag.ContinueOnError)
	fs.SetOutput(r.stdio.Err)
	fs.Usage = func() {
		fmt.Fprintf(r.stdio.Err, "Usage: %s\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// usageError prints a usage mistake and the synopsis, and returns errUsage.
func (r *runner) usageError(fs *flag.FlagSet, format string, args ...any) error {
	fmt.Fprintf(r.stdio.Err, "%s: %s\n", fs.Name(), fmt.Sprintf(format, args...))
	fs.Usage()
	return errUsage
}

// home is $TSH_HOME, or ~/.tsh.
func (r *runner) home() (string, error) {
	if h := r.stdio.Getenv("TSH_HOME"); h != "" {
		return filepath.Abs(h)
	}
	h := r.stdio.Getenv("HOME")
	if h == "" {
		var err error
		if h, err = os.UserHomeDir(); err != nil {
			return "", fmt.Errorf("find home directory: %w; set TSH_HOME", err)
		}
	}
	return filepath.Join(h, ".tsh"), nil
}

// localUser is the local OS user name, the default login (as in OpenSSH)
// and default fleet user.
func (r *runner) localUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		name := u.Username
		if i := strings.LastIndexByte(name, '\\'); i >= 0 { // DOMAIN\name
			name = name[i+1:]
		}
		return name
	}
	return r.stdio.Getenv("USER")
}
