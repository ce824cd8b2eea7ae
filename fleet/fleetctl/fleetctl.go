// Package fleetctl is the admin's command-line client as a library: users,
// roles, join tokens, devices, status, the audit log, the retention policy,
// and agent releases and rollouts (OTA) of a fleet. fleet/cmd/fleetctl is
// its thin main; tests drive Main directly.
//
// It talks to fleetd only through fleet/client and links none of the
// server's packages. On the fleet's machine it uses the admin identity fleetd keeps
// in its data dir (DATADIR/admin/identity.pem and DATADIR/admin/fleet.json,
// renewed by fleetd while it runs); elsewhere -i IDENTITY --proxy HOST:PORT
// names an identity file of the same format (see client.Identity). Either
// way it trusts only the CA certificates in the identity.
package fleetctl

import (
	"context"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/internal/buildinfo"
)

// Version is fleetctl's version: the build's (internal/buildinfo, set by the
// release build). Tests may change it.
var Version = buildinfo.Version

// Stdio is what a run of fleetctl talks to. Zero fields fall back to the
// real process's.
type Stdio struct {
	// In is standard input; nil means os.Stdin. Passwords and role files
	// ("-f -") are read from it.
	In io.Reader
	// Out and Err are standard output and error; nil means os.Stdout and
	// os.Stderr.
	Out, Err io.Writer
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
	if s.Now == nil {
		s.Now = time.Now
	}
}

// DefaultDataDir is fleetd's default data dir, where fleetctl looks for the
// admin identity.
const DefaultDataDir = "/var/lib/fleetd"

const long = `fleetctl administers a Remoteler edge fleet: its users, roles, join
tokens, devices, audit log and retention policy, the agent's releases and
rollouts, and trusted clusters.

Where the fleet is: on the fleet's machine, --data-dir DIR (default
/var/lib/fleetd) uses the admin identity fleetd keeps in DIR/admin;
elsewhere, -i IDENTITY --proxy HOST:PORT uses an identity file of the same
format. These flags may come before or after the command.

Exit status: 0 on success, 1 on any error (the reason is on standard error).`

// globals are the flags every command takes.
type globals struct {
	dataDir  string
	identity string
	proxy    string
}

func (g *globals) register(fs *pflag.FlagSet) {
	fs.StringVar(&g.dataDir, "data-dir", DefaultDataDir, "fleetd's data dir, where it keeps the admin identity (admin/identity.pem)")
	fs.StringVarP(&g.identity, "identity", "i", "", "an identity `file` (PEM: certificate, CA certificates, PKCS#8 key) instead of the data dir's; needs --proxy")
	fs.StringVar(&g.proxy, "proxy", "", "the fleet's address, HOST:PORT (default: the one in DATADIR/admin/fleet.json)")
}

// Main runs fleetctl with args (without the program name) and returns the
// exit code (docs/cli/README.md): 0 on success, 1 on errors (usage mistakes
// included), 130 when interrupted.
func Main(ctx context.Context, args []string, stdio Stdio) int {
	stdio.setDefaults()
	r := &runner{stdio: stdio, prompt: &cli.Prompt{In: stdio.In, Err: stdio.Err}}
	return cli.Execute(ctx, r.command(), args, stdio.In, stdio.Out, stdio.Err)
}

// command is fleetctl's command tree. To add a command, write a method that
// returns its *cobra.Command (see users.go: a group with add, ls and rm) and
// add it here; docs/cli/README.md says the rest.
func (r *runner) command() *cobra.Command {
	root := &cobra.Command{
		Use:     "fleetctl",
		Short:   "Administer a Remoteler edge fleet",
		Long:    long,
		Version: Version,
	}
	r.g.register(root.PersistentFlags())
	root.AddCommand(
		r.usersCommand(),
		r.rolesCommand(),
		r.createCommand(),
		r.connectorsCommand(),
		r.tokensCommand(),
		r.devicesCommand(),
		r.lockCommand(),
		r.locksCommand(),
		r.appsCommand(),
		r.statusCommand(),
		r.auditCommand(),
		r.retentionCommand(),
		r.releasesCommand(),
		r.rolloutsCommand(),
		r.clustersCommand(),
	)
	return cli.Setup(root)
}

// runner carries one run's streams and flags.
type runner struct {
	stdio  Stdio
	prompt *cli.Prompt
	g      globals
}
