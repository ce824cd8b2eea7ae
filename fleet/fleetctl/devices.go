package fleetctl

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
)

func (r *runner) devicesCommand() *cobra.Command {
	group := &cobra.Command{
		Use:   "devices",
		Short: "List and remove the fleet's devices",
	}
	var verbose bool
	ls := listCommand(r, &cobra.Command{
		Use:   "ls",
		Short: "List the devices",
		Long: `List every device of the fleet: name, labels, status, when the fleet last
heard from it, its agent's version, and its update (TARGET: the version a
rollout or pin is moving it to; UPDATE: where that stands, with the reason
of a failure or rollback). -v adds the device ID, OS and architecture,
address, join time and link health (round-trip time, packet loss outside
blackouts, reconnects, bytes).`,
	}, "devices", (*client.Client).Devices, func(devices []api.Device) error {
		if len(devices) == 0 {
			fmt.Fprintln(r.stdio.Err, "No devices yet; fleetctl tokens add prints how to join one.")
			return nil
		}
		return cli.DeviceTable{Verbose: verbose, Update: true, Now: r.stdio.Now()}.Write(r.stdio.Out, devices)
	})
	ls.Flags().BoolVarP(&verbose, "verbose", "v", false, "show more columns: ID, OS/arch, address, joined, link health (RTT, loss, reconnects, bytes, address change)")
	rm := removeCommand(r, &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a device; it must join again with a new token to come back",
	}, (*client.Client).RemoveDevice, "Device %q removed; it must join again with a new token to come back.", r.names(r.deviceNames))
	group.AddCommand(ls, rm)
	return group
}

// deviceNames offers the fleet's devices.
func (r *runner) deviceNames(ctx context.Context, c *client.Client) ([]cobra.Completion, error) {
	devices, err := c.Devices(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]cobra.Completion, 0, len(devices))
	for _, d := range devices {
		out = append(out, cli.DeviceCompletion(d))
	}
	return out, nil
}

func (r *runner) statusCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the fleet's name, version, address, CA pin and counts",
		Long: `Show the fleet's name, version, address and CA pin (which users give tsh
login --ca-pin, and devices verify the fleet by), when it started, and how
many users and devices (online) it has.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return r.status(cmd.Context()) },
	}
}

func (r *runner) status(ctx context.Context) error {
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
	tw := cli.NewTable(r.stdio.Out)
	tw.Row("Cluster:", st.Cluster)
	tw.Row("Version:", st.Version)
	tw.Row("Address:", fmt.Sprintf("%s (fleetctl uses %s)", cli.Dash(st.Listen), c.Addr()))
	tw.Row("CA pin:", st.CAPin)
	if !st.StartedAt.IsZero() {
		tw.Row("Up since:", fmt.Sprintf("%s (%s)", cli.Time(st.StartedAt), cli.Duration(now.Sub(st.StartedAt))))
	}
	tw.Row("Users:", fmt.Sprint(st.Users))
	tw.Row("Devices:", fmt.Sprintf("%d (%d online)", st.Devices, st.DevicesOnline))
	return tw.Flush()
}
