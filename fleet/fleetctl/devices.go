package fleetctl

import (
	"context"
	"flag"
	"fmt"
	"text/tabwriter"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
)

func (r *runner) devicesLs(ctx context.Context, fs *flag.FlagSet, args []string) error {
	verbose := fs.Bool("v", false, "show more columns: ID, OS/arch, address, joined, link health (RTT, loss, reconnects, bytes, address change)")
	return list(ctx, r, fs, args, "devices ls", (*client.Client).Devices, func(devices []api.Device) error {
		if len(devices) == 0 {
			fmt.Fprintln(r.stdio.Err, "No devices yet; fleetctl tokens add prints how to join one.")
			return nil
		}
		return cli.DeviceTable{Verbose: *verbose, Update: true, Now: r.stdio.Now()}.Write(r.stdio.Out, devices)
	})
}

func (r *runner) devicesRm(ctx context.Context, fs *flag.FlagSet, args []string) error {
	return remove(ctx, r, fs, args, "devices rm", (*client.Client).RemoveDevice, "Device %q removed; it must join again with a new token to come back.")
}

func (r *runner) status(ctx context.Context, fs *flag.FlagSet, args []string) error {
	if _, err := r.parseN(fs, args, 0, ""); err != nil {
		return err
	}
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	st, err := c.Status(ctx)
	if err != nil {
		return fmt.Errorf("status: %w", apiHint(err))
	}
	now := r.stdio.Now()
	tw := tabwriter.NewWriter(r.stdio.Out, 0, 8, 1, ' ', 0)
	fmt.Fprintf(tw, "Cluster:\t%s\n", st.Cluster)
	fmt.Fprintf(tw, "Version:\t%s\n", st.Version)
	fmt.Fprintf(tw, "Address:\t%s (fleetctl uses %s)\n", cli.Dash(st.Listen), c.Addr())
	fmt.Fprintf(tw, "CA pin:\t%s\n", st.CAPin)
	if !st.StartedAt.IsZero() {
		fmt.Fprintf(tw, "Up since:\t%s (%s)\n", cli.Time(st.StartedAt), cli.Duration(now.Sub(st.StartedAt)))
	}
	fmt.Fprintf(tw, "Users:\t%d\n", st.Users)
	fmt.Fprintf(tw, "Devices:\t%d (%d online)\n", st.Devices, st.DevicesOnline)
	return tw.Flush()
}
