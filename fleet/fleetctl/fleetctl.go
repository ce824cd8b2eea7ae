// Package fleetctl is the admin's command-line client as a library: users,
// roles, join tokens, devices, status and the audit log of a fleet. fleet/cmd/fleetctl is
// its thin main; tests drive Main directly.
//
// It talks to fleetd only through fleet/client and imports no server
// package. On the fleet's machine it uses the admin identity fleetd keeps
// in its data dir (DATADIR/admin/identity.pem and DATADIR/admin/fleet.json,
// renewed by fleetd while it runs); elsewhere -i IDENTITY --proxy HOST:PORT
// names an identity file of the same format (see client.Identity). Either
// way it trusts only the CA certificates in the identity.
package fleetctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"remoteler.dev/edge/firmware/buildinfo"
	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
)

// Version is fleetctl's version: the build's (firmware/buildinfo, set by the
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

const usage = `fleetctl: administer a Remoteler edge fleet.

Usage: fleetctl [--data-dir DIR | -i IDENTITY --proxy HOST:PORT] COMMAND

Commands:
  users add NAME --roles=ROLE,... [--logins=LOGIN,...] [--totp]
  users ls [--format=text|json]
  users rm NAME
  roles create -f ROLE.yaml        (also: fleetctl create -f ROLE.yaml; "-f -" reads stdin)
  roles ls [--format=text|json|yaml]
  roles rm NAME
  tokens add [--ttl=1h] [--uses=1] [--labels=KEY=VALUE,...] [--fleet-addr=HOST:PORT] [--format=text|json]
  tokens ls [--format=text|json]
  tokens rm ID
  devices ls [-v] [--format=text|json]
  devices rm NAME
  status
  audit search [--since=24h] [--until=TIME] [--device=NAME] [--user=NAME] [--session=ID] [--type=TYPE] [--json]
  audit verify [--json]             check every device's (and the fleet's) audit hash chain
  releases keygen PREFIX [--no-password]                  a minisign release key pair (PREFIX.key, PREFIX.pub)
  releases sign --key KEY --version V DIR                 write and sign DIR/manifest.json and each artefact (offline)
  releases rotate-key --key OLD.key NEW.pub               add a release key, signed with the current one (agents follow)
  releases add [--version V] DIR                          upload a signed release (make cross; releases sign)
  releases ls [--format=text|json]
  releases rm VERSION
  rollouts create --release V [--selector k=v,..] [--stages 1%,10%,50%,100%] [--soak 1h]
                  [--max-failure 5%] [--window 02:00-05:00] [--offline-deadline 30m]
  rollouts ls [--format=text|json]
  rollouts status ID [--format=text|json]
  rollouts pause|resume|abort ID
  rollouts pin NAME --version V (--device NAME | --selector k=v,..)
  rollouts unpin NAME
  rollouts pins
  version

A role file (YAML; several roles separated by ---):
  kind: role
  version: v1
  metadata:
    name: field-tech
    description: field technicians          # optional
  spec:
    allow:
      logins: ["{{internal.logins}}", pi]   # {{internal.logins}}: the user's --logins
      device_labels: {site: [north, south]} # "*" matches any value
      admin: false                          # true: the admin API (users, roles, ...)
    deny:                                   # deny wins over allow
      logins: [root]
      device_labels: {"*": "*"}
    options:
      max_session_ttl: 8h

Where the fleet is: --data-dir DIR (default /var/lib/fleetd) uses the admin
identity fleetd keeps in DIR/admin; -i IDENTITY --proxy HOST:PORT uses an
identity file instead. Both may come before or after the command.
`

// globals are the flags every command takes.
type globals struct {
	dataDir  string
	identity string
	proxy    string
}

func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.dataDir, "data-dir", DefaultDataDir, "fleetd's data dir, where it keeps the admin identity (admin/identity.pem)")
	fs.StringVar(&g.identity, "i", "", "an identity `file` (PEM: certificate, CA certificates, PKCS#8 key) instead of the data dir's; needs --proxy")
	fs.StringVar(&g.proxy, "proxy", "", "the fleet's address, HOST:PORT (default: the one in DATADIR/admin/fleet.json)")
}

// command is one fleetctl command.
type command struct {
	synopsis string
	run      func(r *runner, ctx context.Context, fs *flag.FlagSet, args []string) error
}

var commands = map[string]command{
	"users add":    {"users add NAME --roles=ROLE,... [--logins=LOGIN,...] [--totp]", (*runner).usersAdd},
	"users ls":     {"users ls [--format=text|json]", (*runner).usersLs},
	"users rm":     {"users rm NAME", (*runner).usersRm},
	"roles create": {"roles create -f ROLE.yaml", (*runner).rolesCreate},
	"create":       {"create -f ROLE.yaml", (*runner).rolesCreate},
	"roles ls":     {"roles ls [--format=text|json|yaml]", (*runner).rolesLs},
	"roles rm":     {"roles rm NAME", (*runner).rolesRm},
	"tokens add":   {"tokens add [--ttl=1h] [--uses=1] [--labels=KEY=VALUE,...] [--fleet-addr=HOST:PORT] [--format=text|json]", (*runner).tokensAdd},
	"tokens ls":    {"tokens ls [--format=text|json]", (*runner).tokensLs},
	"tokens rm":    {"tokens rm ID", (*runner).tokensRm},
	"devices ls":   {"devices ls [-v] [--format=text|json]", (*runner).devicesLs},
	"devices rm":   {"devices rm NAME", (*runner).devicesRm},
	"status":       {"status", (*runner).status},

	"releases keygen":     {"releases keygen PREFIX [--no-password]", (*runner).releasesKeygen},
	"releases sign":       {"releases sign --key KEY --version V DIR", (*runner).releasesSign},
	"releases rotate-key": {"releases rotate-key --key OLD.key NEW.pub", (*runner).releasesRotateKey},
	"releases add":        {"releases add [--version V] DIR", (*runner).releasesAdd},
	"releases ls":         {"releases ls [--format=text|json]", (*runner).releasesLs},
	"releases rm":         {"releases rm VERSION", (*runner).releasesRm},
	"rollouts create":     {"rollouts create --release V [--selector k=v,..] [--stages 1%,10%,50%,100%] [--soak 1h] [--max-failure 5%] [--window 02:00-05:00]", (*runner).rolloutsCreate},
	"rollouts ls":         {"rollouts ls [--format=text|json]", (*runner).rolloutsLs},
	"rollouts status":     {"rollouts status ID [--format=text|json]", (*runner).rolloutsStatus},
	"rollouts pause":      {"rollouts pause ID", rolloutsAction("pause")},
	"rollouts resume":     {"rollouts resume ID", rolloutsAction("resume")},
	"rollouts abort":      {"rollouts abort ID", rolloutsAction("abort")},
	"rollouts pin":        {"rollouts pin NAME --version V (--device NAME | --selector k=v,..)", (*runner).rolloutsPin},
	"rollouts unpin":      {"rollouts unpin NAME", (*runner).rolloutsUnpin},
	"rollouts pins":       {"rollouts pins [--format=text|json]", (*runner).rolloutsPins},
}

// Main runs fleetctl with args (without the program name) and returns the
// exit code: 0 on success, 1 on errors, 2 on usage errors.
func Main(ctx context.Context, args []string, stdio Stdio) int {
	stdio.setDefaults()
	r := &runner{stdio: stdio, prompt: &cli.Prompt{In: stdio.In, Err: stdio.Err}}
	top := flag.NewFlagSet("fleetctl", flag.ContinueOnError)
	top.SetOutput(stdio.Err)
	top.Usage = func() { fmt.Fprint(stdio.Err, usage) }
	r.g.register(top)
	rest, err := cli.ParseFirst(top, args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	if len(rest) == 0 {
		fmt.Fprint(stdio.Err, usage)
		return 2
	}
	switch rest[0] {
	case "help":
		fmt.Fprint(stdio.Out, usage)
		return 0
	case "version":
		fmt.Fprintf(stdio.Out, "fleetctl %s\n", Version)
		return 0
	}
	name := rest[0]
	cmd, ok := commands[name]
	if !ok && len(rest) > 1 {
		name = rest[0] + " " + rest[1]
		cmd, ok = commands[name]
	}
	if !ok {
		fmt.Fprintf(stdio.Err, "fleetctl: unknown command %q; run fleetctl help for the list\n", strings.Join(rest[:min(2, len(rest))], " "))
		return 2
	}
	fs := flag.NewFlagSet("fleetctl "+name, flag.ContinueOnError)
	fs.SetOutput(stdio.Err)
	fs.Usage = func() {
		fmt.Fprintf(stdio.Err, "Usage: fleetctl %s\n", cmd.synopsis)
		fs.PrintDefaults()
	}
	// Keep the values given before the command: registering the flags
	// again resets them to their defaults.
	given := map[string]string{}
	top.Visit(func(f *flag.Flag) { given[f.Name] = f.Value.String() })
	r.g.register(fs)
	for name, v := range given {
		fs.Set(name, v)
	}
	err = cmd.run(r, ctx, fs, rest[len(strings.Fields(name)):])
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, cli.ErrUsage):
		return 2
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(stdio.Err, "fleetctl: interrupted")
		return 130
	default:
		fmt.Fprintf(stdio.Err, "fleetctl: %v\n", client.Plain(err))
		return 1
	}
}

// runner carries one run's streams and flags.
type runner struct {
	stdio  Stdio
	prompt *cli.Prompt
	g      globals
}

// usageError prints a usage mistake and the synopsis, and returns
// cli.ErrUsage.
func (r *runner) usageError(fs *flag.FlagSet, format string, args ...any) error {
	fmt.Fprintf(r.stdio.Err, "%s: %s\n", fs.Name(), fmt.Sprintf(format, args...))
	fs.Usage()
	return cli.ErrUsage
}

// parseN parses fs among args and wants exactly n other arguments, named
// by what (e.g. "NAME").
func (r *runner) parseN(fs *flag.FlagSet, args []string, n int, what string) ([]string, error) {
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return nil, err
	}
	switch {
	case len(pos) < n:
		return nil, r.usageError(fs, "missing %s", what)
	case len(pos) > n:
		return nil, r.usageError(fs, "unexpected argument %q", pos[n])
	}
	return pos, nil
}
