package fleetctl

import (
	"context"
	"flag"
	"fmt"

	"remoteler.dev/edge/fleet/client"
)

// list runs an "ls" command: no arguments, --format=text|json (declared
// here), one API call, and text drawn by table. op names the command in
// errors.
func list[T any](ctx context.Context, r *runner, fs *flag.FlagSet, args []string, op string,
	fetch func(*client.Client, context.Context) ([]T, error), table func([]T) error) error {
	format := fs.String("format", "text", "output format: text or json")
	if _, err := r.parseN(fs, args, 0, ""); err != nil {
		return err
	}
	if err := r.checkFormat(fs, *format); err != nil {
		return err
	}
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	items, err := fetch(c, ctx)
	if err != nil {
		return fmt.Errorf("%s: %w", op, apiHint(err))
	}
	if items == nil {
		items = []T{}
	}
	if *format == "json" {
		return r.printJSON(items)
	}
	return table(items)
}

// remove runs an "rm NAME" command: one API call, then done printed with
// the name.
func remove(ctx context.Context, r *runner, fs *flag.FlagSet, args []string, op string,
	call func(*client.Client, context.Context, string) error, done string) error {
	pos, err := r.parseN(fs, args, 1, "NAME")
	if err != nil {
		return err
	}
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := call(c, ctx, pos[0]); err != nil {
		return fmt.Errorf("%s %s: %w", op, pos[0], apiHint(err))
	}
	fmt.Fprintf(r.stdio.Out, done+"\n", pos[0])
	return nil
}
