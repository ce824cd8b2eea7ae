package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/proto/printable"
)

// Exit codes of tsh and fleetctl (docs/cli/README.md).
const (
	// ExitOK: the command did what it was asked.
	ExitOK = 0
	// ExitError: anything went wrong, a mistake on the command line
	// included; the reason is on standard error.
	ExitError = 1
	// ExitInterrupted: Ctrl-C (SIGINT) or SIGTERM ended the command, as a
	// shell reports a process killed by SIGINT.
	ExitInterrupted = 130
)

// StatusError ends a command with exit code Code. Err, when set, is
// printed like any error; a nil Err prints nothing (tsh ssh passing on the
// remote command's own exit status).
type StatusError struct {
	Code int
	Err  error
}

func (e *StatusError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *StatusError) Unwrap() error { return e.Err }

// UsageError is a mistake on the command line. Execute prints it with a
// pointer to the command's help.
type UsageError struct {
	Cmd *cobra.Command
	Msg string
}

func (e *UsageError) Error() string { return e.Msg }

// Usagef returns a *UsageError of cmd.
func Usagef(cmd *cobra.Command, format string, args ...any) error {
	return &UsageError{Cmd: cmd, Msg: fmt.Sprintf(format, args...)}
}

// Setup gives root and every command below it the behaviour tsh and
// fleetctl share, and returns root. Call it once the tree is complete:
//
//   - errors are not printed by cobra (Execute prints them, once);
//   - a group (a command with subcommands and no Run) run bare prints its
//     help, and run with an unknown subcommand fails with suggestions;
//   - flag mistakes are usage errors;
//   - "help", "completion bash|zsh|fish|powershell" and the hidden
//     "__complete" that the completion scripts call are there, and
//     "version" and --version print "PROGRAM VERSION" when root.Version is
//     set.
func Setup(root *cobra.Command) *cobra.Command {
	// The program prints its version itself: a version template would
	// link text/template, whose reflection keeps every method of every
	// type in the binary (+2 MB for fleetctl, +3 MB for tsh).
	version := root.Version
	root.Version = ""
	var showVersion bool
	if version != "" {
		printVersion := func(cmd *cobra.Command) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", root.Name(), version)
			return err
		}
		root.Flags().BoolVarP(&showVersion, "version", "v", false, "print "+root.Name()+"'s version")
		root.AddCommand(&cobra.Command{
			Use:   "version",
			Short: "Print " + root.Name() + "'s version",
			Args:  NoArgs,
			RunE:  func(cmd *cobra.Command, _ []string) error { return printVersion(cmd) },
		})
		root.RunE = func(cmd *cobra.Command, args []string) error {
			if showVersion {
				return printVersion(cmd)
			}
			return runGroup(cmd, args)
		}
		root.Args = cobra.ArbitraryArgs
		root.DisableFlagsInUseLine = true
	}
	root.SilenceErrors = true
	root.SilenceUsage = true
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return &UsageError{Cmd: cmd, Msg: err.Error()}
	})
	root.CompletionOptions.HiddenDefaultCmd = false
	root.SetHelpCommand(helpCommand(root))
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	Walk(root, func(c *cobra.Command) {
		c.SuggestionsMinimumDistance = 2
		if c.HasSubCommands() && c.Run == nil && c.RunE == nil {
			c.Args = cobra.ArbitraryArgs
			c.RunE = runGroup
			c.DisableFlagsInUseLine = true
		}
		if c.Name() == "completion" && c.Parent() == root {
			c.Short = "Print a shell completion script: bash, zsh, fish or powershell"
		}
	})
	return root
}

// Walk calls fn for c and every command below it, parents first.
func Walk(c *cobra.Command, fn func(*cobra.Command)) {
	fn(c)
	for _, sub := range c.Commands() {
		Walk(sub, fn)
	}
}

// runGroup is the Run of a group: help when bare, else an unknown command.
func runGroup(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return cmd.Help()
	}
	return unknownCommand(cmd, args[0])
}

// unknownCommand is the error for a subcommand name that cmd does not have,
// with the names it may have meant.
func unknownCommand(cmd *cobra.Command, name string) error {
	msg := fmt.Sprintf("unknown command %q for %q", name, cmd.CommandPath())
	if s := cmd.SuggestionsFor(name); len(s) > 0 {
		msg += "; did you mean " + quoteAll(s, " or ") + "?"
	}
	return &UsageError{Cmd: cmd, Msg: msg}
}

func quoteAll(s []string, sep string) string {
	q := make([]string, len(s))
	for i, x := range s {
		q[i] = fmt.Sprintf("%q", x)
	}
	return strings.Join(q, sep)
}

// helpCommand is "help [COMMAND...]": the help of the command named, or
// the error for a name that does not exist, with suggestions.
func helpCommand(root *cobra.Command) *cobra.Command {
	return &cobra.Command{
		Use:   "help [COMMAND...]",
		Short: "Show the help of a command (or of " + root.Name() + ")",
		Long: "Help shows what a command does, its flags and its subcommands: " + root.Name() + " help COMMAND..." +
			" is the same as " + root.Name() + " COMMAND... --help.",
		ValidArgsFunction: func(c *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
			cmd, _, err := root.Find(args)
			if err != nil {
				return nil, cobra.ShellCompDirectiveNoFileComp
			}
			var out []cobra.Completion
			for _, sub := range cmd.Commands() {
				if sub.IsAvailableCommand() && strings.HasPrefix(sub.Name(), toComplete) {
					out = append(out, cobra.CompletionWithDesc(sub.Name(), sub.Short))
				}
			}
			return out, cobra.ShellCompDirectiveNoFileComp
		},
		RunE: func(c *cobra.Command, args []string) error {
			cmd, rest, err := root.Find(args)
			if err != nil {
				return &UsageError{Cmd: c, Msg: err.Error()}
			}
			if len(rest) > 0 && cmd.HasSubCommands() {
				return unknownCommand(cmd, rest[0])
			}
			if len(rest) > 0 {
				return Usagef(c, "%q has no subcommand %q", cmd.CommandPath(), rest[0])
			}
			cmd.InitDefaultHelpFlag()
			return cmd.Help()
		},
	}
}

// Execute runs root with args, reading stdin from in and writing to out and
// errOut, and returns the exit code: ExitOK, ExitError (the error printed
// on errOut as "PROGRAM: ERROR", escaped), ExitInterrupted, or a
// *StatusError's code.
func Execute(ctx context.Context, root *cobra.Command, args []string, in io.Reader, out, errOut io.Writer) int {
	root.SetArgs(args)
	root.SetIn(in)
	root.SetOut(out)
	root.SetErr(errOut)
	err := root.ExecuteContext(ctx)
	prog := root.Name()
	say := func(err error) {
		fmt.Fprintf(errOut, "%s: %s\n", prog, printable.Escape(client.Plain(err).Error()))
	}
	var status *StatusError
	var usage *UsageError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &status):
		if status.Err != nil {
			say(status.Err)
		}
		return status.Code
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		fmt.Fprintf(errOut, "%s: interrupted\n", prog)
		return ExitInterrupted
	case errors.As(err, &usage):
		say(err)
		path := prog
		if usage.Cmd != nil {
			path = usage.Cmd.CommandPath()
		}
		fmt.Fprintf(errOut, "Run '%s --help' for usage.\n", path)
		return ExitError
	default:
		say(err)
		return ExitError
	}
}
