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
// host CA keys in profile.json and names the device. The leaf clusters of
// the fleet (trusted clusters) keep certificates of their own under the
// profile (clusters.go).
package tsh

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/internal/buildinfo"
)

// Version is tsh's version: the build's (internal/buildinfo, set by the
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

const long = `tsh logs you in to a Remoteler edge fleet and reaches its devices: over
SSH (tsh ssh, tsh scp, or plain OpenSSH after tsh config), Kubernetes
(tsh kube login, then kubectl), web apps (tsh apps, tsh proxy app) and
session recordings (tsh play).

Start with: tsh login --proxy=HOST:PORT --user=NAME

Environment: TSH_HOME is where logins are kept (default ~/.tsh).
Exit status: 0 on success, 1 on any error; tsh ssh exits with the remote
command's status, or 255 when it could not reach the device.`

// Main runs tsh with args (without the program name) and returns the exit
// code (docs/cli/README.md): 0 on success, 1 on errors (usage mistakes
// included), 130 when interrupted; tsh ssh returns the remote command's
// exit status, or 255 when the connection failed.
func Main(ctx context.Context, args []string, stdio Stdio) int {
	stdio.setDefaults()
	r := &runner{stdio: stdio, prompt: &cli.Prompt{In: stdio.In, Err: stdio.Err}}
	return cli.Execute(ctx, r.command(), args, stdio.In, stdio.Out, stdio.Err)
}

// command is tsh's command tree. To add a command, write a method that
// returns its *cobra.Command (see ls.go for a listing, ssh.go for one that
// passes arguments through) and add it here; docs/cli/README.md says the
// rest.
func (r *runner) command() *cobra.Command {
	root := &cobra.Command{
		Use:     "tsh",
		Short:   "Log in to the fleet and reach its devices",
		Long:    long,
		Version: Version,
	}
	root.AddCommand(
		r.loginCommand(),
		r.statusCommand(),
		r.logoutCommand(),
		r.lsCommand(),
		r.sshCommand(),
		r.scpCommand(),
		r.configCommand(),
		r.recordingsCommand(),
		r.playCommand(),
		r.kubeCommand(),
		r.appsCommand(),
		r.proxyCommand(),
		r.clustersCommand(),
	)
	return cli.Setup(root)
}

// runner carries one run's streams and state.
type runner struct {
	stdio  Stdio
	prompt *cli.Prompt // over stdio.In and stdio.Err
	// session is the last connection dialSSH made, whose end the fleet
	// can explain (client.Client.SessionEnd).
	session net.Conn
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
