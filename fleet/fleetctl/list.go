package fleetctl

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
)

// listCommand makes cmd an "ls" command: no arguments, --format (declared
// here), one API call, and text drawn by table. kind names the items in
// JSON and YAML ("users"); cmd.Use names the command in errors.
func listCommand[T any](r *runner, cmd *cobra.Command, kind string,
	fetch func(*client.Client, context.Context) ([]T, error), table func([]T) error) *cobra.Command {
	format := cli.FormatFlag(cmd, "")
	cmd.Args = cli.NoArgs
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, _, err := r.connect()
		if err != nil {
			return err
		}
		defer c.Close()
		items, err := fetch(c, cmd.Context())
		if err != nil {
			return fmt.Errorf("%s: %w", opName(cmd), apiHint(err))
		}
		return cli.PrintList(r.stdio.Out, *format, kind, items, false, func() error { return table(items) })
	}
	return cmd
}

// removeCommand makes cmd an "rm NAME" command: one API call, then done
// printed with the name; complete offers the names.
func removeCommand(r *runner, cmd *cobra.Command, call func(*client.Client, context.Context, string) error,
	done string, complete cli.Completer) *cobra.Command {
	cmd.Args = cli.ExactArgs(1, "NAME")
	cmd.ValidArgsFunction = cli.CompleteArgs(1, complete)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, _, err := r.connect()
		if err != nil {
			return err
		}
		defer c.Close()
		if err := call(c, cmd.Context(), args[0]); err != nil {
			return fmt.Errorf("%s %s: %w", opName(cmd), args[0], apiHint(err))
		}
		fmt.Fprintf(r.stdio.Out, done+"\n", args[0])
		return nil
	}
	return cmd
}

// opName names a command in errors: "users ls".
func opName(cmd *cobra.Command) string {
	path := cmd.CommandPath()
	if root := cmd.Root().Name() + " "; len(path) > len(root) {
		return path[len(root):]
	}
	return path
}

// names calls the fleet for a completion: list returns candidates.
func (r *runner) names(list func(ctx context.Context, c *client.Client) ([]cobra.Completion, error)) cli.Completer {
	return func(ctx context.Context, _ *cobra.Command) ([]cobra.Completion, error) {
		c, _, err := r.connect()
		if err != nil {
			return nil, err
		}
		defer c.Close()
		return list(ctx, c)
	}
}
