package fleetctl

import (
	"context"
	"flag"
	"fmt"
	"strings"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
)

func (r *runner) appsLs(ctx context.Context, fs *flag.FlagSet, args []string) error {
	return list(ctx, r, fs, args, "apps ls", (*client.Client).Apps, func(apps []api.App) error {
		if len(apps) == 0 {
			fmt.Fprintln(r.stdio.Err, "No web apps: devices declare them in their agent's settings (apps, or --app NAME=URI).")
			return nil
		}
		return cli.AppTable{URIs: true}.Write(r.stdio.Out, apps)
	})
}

func (r *runner) appsRotateKey(ctx context.Context, fs *flag.FlagSet, args []string) error {
	if _, err := r.parseN(fs, args, 0, ""); err != nil {
		return err
	}
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	keys, err := c.RotateAppKey(ctx)
	if err != nil {
		return fmt.Errorf("apps rotate-key: %w", apiHint(err))
	}
	fmt.Fprintf(r.stdio.Out, "Apps' JWTs are now signed with key %s; published: %s (the previous key stays until the next rotation).\n",
		keys.Keys[0], strings.Join(keys.Keys, ", "))
	return nil
}
