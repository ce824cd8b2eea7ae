// Command edge-agent runs on each device: it joins the fleet, keeps a QUIC
// tunnel to it and serves the sessions the fleet brokers.
//
//	edge-agent start --fleet=HOST:PORT --token=JOIN_STRING [--config=FILE] [flags]
//	edge-agent version
//	edge-agent update-check [--config=FILE] [--data-dir=DIR]   (the unit's pre-start check; see firmware/update)
//	edge-agent help [COMMAND]
//
// Its settings are agent.Config's: flags and the config file set the same
// ones (agent.Config.RegisterFlags, ReadFile). It parses them with the
// standard library's flag package, the smallest way to give help at every
// level (docs/benchmarks.md, "Command-line libraries").
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"remoteler.dev/edge/firmware/agent"
	"remoteler.dev/edge/firmware/service"
	"remoteler.dev/edge/firmware/sshd"
	"remoteler.dev/edge/internal/buildinfo"
)

// command is one of edge-agent's commands.
type command struct {
	name, synopsis, help string
	hidden               bool
	// flags registers the command's flags; run runs it with them parsed.
	flags func(fs *flag.FlagSet) func(fs *flag.FlagSet) int
}

var commands = []command{
	{
		name:     "start",
		synopsis: "start --fleet=HOST:PORT --token=JOIN_STRING [--config=FILE] [flags]",
		help: `Join the fleet (on the first start, with a join string from fleetctl tokens
add) and keep the tunnel to it up, serving the sessions it brokers. Every
setting is a flag and a key of the YAML config file (--config): the key is
the flag's name with "_" for "-" (session_hold: 10m). Flags given on the
command line override the file.`,
		flags: startFlags,
	},
	{
		name:     "version",
		synopsis: "version",
		help:     "Print the agent's version, commit, build target and Go version.",
		flags: func(*flag.FlagSet) func(*flag.FlagSet) int {
			return func(*flag.FlagSet) int {
				fmt.Println("edge-agent", buildinfo.String())
				return 0
			}
		},
	},
	{
		name:     "update-check",
		synopsis: "update-check [--config=FILE] [--data-dir=DIR]",
		help: `Check the last self-update before the agent starts, and put the old binary
back when the new one failed its trial (crashed, hung, missed its health
deadline) or an apply was interrupted. The unit runs it from the kept old
binary before every start (ExecStartPre); see docs/ota.md.`,
		flags: updateCheckFlags,
	},
	{
		name:     "sftp-server",
		synopsis: "sftp-server",
		help:     "Serve SFTP on standard input and output (the SSH server runs it as the login's user).",
		hidden:   true,
		flags: func(*flag.FlagSet) func(*flag.FlagSet) int {
			return func(*flag.FlagSet) int {
				if err := sshd.ServeSFTPStdio(); err != nil {
					fmt.Fprintln(os.Stderr, "edge-agent sftp-server:", err)
					return 1
				}
				return 0
			}
		},
	},
	{
		name:     "dial-helper",
		synopsis: "dial-helper HOST:PORT TIMEOUT",
		help:     "Dial a port forward's address and pass the connected socket back (the SSH server runs it as the login's user).",
		hidden:   true,
		flags: func(*flag.FlagSet) func(*flag.FlagSet) int {
			return func(fs *flag.FlagSet) int {
				if err := sshd.ServeDialHelper(fs.Args()); err != nil {
					fmt.Fprintln(os.Stderr, "edge-agent dial-helper:", err)
					return 1
				}
				return 0
			}
		},
	},
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// run runs edge-agent with args and returns the exit code: 0, 1 when the
// command failed, 2 for a mistake on the command line.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	name, rest := args[0], args[1:]
	switch name {
	case "help", "-h", "-help", "--help":
		if len(rest) == 0 {
			usage(stdout)
			return 0
		}
		name, rest = rest[0], []string{"-h"}
	case "--version":
		name = "version"
	}
	for _, c := range commands {
		if c.name != name {
			continue
		}
		fs := flag.NewFlagSet("edge-agent "+c.name, flag.ContinueOnError)
		fs.SetOutput(stderr)
		fs.Usage = func() {
			fmt.Fprintf(fs.Output(), "Usage: edge-agent %s\n\n%s\n", c.synopsis, c.help)
			if hasFlags(fs) {
				fmt.Fprintln(fs.Output(), "\nFlags:")
				fs.PrintDefaults()
			}
		}
		runCmd := c.flags(fs)
		if err := fs.Parse(rest); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(stdout)
				fs.Usage()
				return 0
			}
			return 2
		}
		if fs.NArg() > 0 {
			fmt.Fprintf(stderr, "edge-agent %s: unexpected argument %q\nRun 'edge-agent %s -h' for usage.\n", c.name, fs.Arg(0), c.name)
			return 2
		}
		return runCmd(fs)
	}
	fmt.Fprintf(stderr, "edge-agent: unknown command %q\n", name)
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, "Usage: edge-agent COMMAND [flags]\n\nCommands:\n")
	for _, c := range commands {
		if !c.hidden {
			fmt.Fprintf(w, "  %-12s %s\n", c.name, firstSentence(c.help))
		}
	}
	fmt.Fprint(w, "\nRun 'edge-agent help COMMAND' (or edge-agent COMMAND -h) for its flags.\n")
}

// firstSentence is the first sentence of s, on one line.
func firstSentence(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if i := strings.Index(s, ". "); i >= 0 {
		return s[:i+1]
	}
	return s
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

// startFlags registers start's flags: --config and every setting of
// agent.Config.
func startFlags(fs *flag.FlagSet) func(*flag.FlagSet) int {
	var cfg agent.Config
	configPath := fs.String("config", "", "YAML config `FILE`; flags given on the command line override it")
	cfg.RegisterFlags(fs)
	return func(fs *flag.FlagSet) int {
		if *configPath != "" {
			// The file, then the flags given again over it.
			given := map[string]string{}
			fs.Visit(func(f *flag.Flag) { given[f.Name] = f.Value.String() })
			if err := cfg.ReadFile(*configPath); err != nil {
				fmt.Fprintln(fs.Output(), "edge-agent:", err)
				return 2
			}
			for name, v := range given {
				fs.Set(name, v)
			}
		}
		return startAgent(cfg)
	}
}

// startAgent runs the agent with cfg; tests replace it.
var startAgent = start

func start(cfg agent.Config) int {
	explicitKube := cfg.Kubeconfig != ""
	cfg = cfg.WithDefaults()
	log := service.NewLogger(os.Stderr, cfg.Level())
	cfg.Logger = log
	cfg.Notify = service.NewNotifier(log)
	if exe, err := os.Executable(); err == nil {
		cfg.SFTPCommand = []string{exe, "sftp-server"}
		cfg.DialCommand = []string{exe, "dial-helper"}
	}
	// The passwd file that names login shells, for tests that must not
	// run the host user's own shell and dotfiles (tools/passwdtest).
	cfg.PasswdFile = os.Getenv("EDGE_AGENT_PASSWD")
	if code, stop := startupCheck(&cfg, log); stop {
		return code
	}
	if kp := kubeService(&cfg, cfg.Kubeconfig, explicitKube, log); kp != nil {
		defer kp.Close()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := agent.Run(ctx, cfg); err != nil {
		if re, ok := errors.AsType[*agent.RestartError](err); ok {
			log.Info("edge-agent exits to be started again", "reason", re.Reason)
			return exitRestart
		}
		log.Error("edge-agent failed", "err", err)
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
