package fleetctl

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
)

func (r *runner) appsCommand() *cobra.Command {
	group := &cobra.Command{
		Use:   "apps",
		Short: "List the web apps devices offer; rotate the key of their JWTs",
	}
	ls := listCommand(r, &cobra.Command{
		Use:   "ls",
		Short: "List the web apps devices offer",
		Long: `List every web app the devices declare and the fleet accepted: its name,
device, labels, status, public address, and where it listens on the device
(its URI; "certificate not verified" when the device skips checking an
https app's certificate). Devices declare apps in their agent's settings
(apps, or --app NAME=URI); docs/apps.md.`,
	}, "apps", (*client.Client).Apps, func(apps []api.App) error {
		if len(apps) == 0 {
			fmt.Fprintln(r.stdio.Err, "No web apps: devices declare them in their agent's settings (apps, or --app NAME=URI).")
			return nil
		}
		return cli.AppTable{URIs: true}.Write(r.stdio.Out, apps)
	})
	rotate := &cobra.Command{
		Use:   "rotate-key",
		Short: "Sign the JWTs apps get with a new key; the previous one stays published",
		Long: `Make a new signing key for the JWTs the fleet gives web apps. The fleet's
key set (/.well-known/jwks.json) keeps the previous key until the next
rotation, so tokens already handed out verify until they expire.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return r.rotateAppKey(cmd.Context()) },
	}
	group.AddCommand(ls, rotate)
	return group
}

func (r *runner) rotateAppKey(ctx context.Context) error {
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
