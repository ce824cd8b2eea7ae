package tsh

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
)

func (r *runner) lsCommand() *cobra.Command {
	var verbose bool
	var cluster string
	cmd := &cobra.Command{
		Use:   "ls [LABEL=VALUE...]",
		Short: "List the devices you may reach",
		Long: `List the devices your roles let you reach: name, labels, status, when the
fleet last heard from them and their agent's version. LABEL=VALUE arguments
keep only the devices with all those labels. -v adds the device ID, OS and
architecture, address, join time, link health (round-trip time, packet
loss outside blackouts, reconnects, bytes) and your logins on each.`,
		Example: `  tsh ls
  tsh ls site=north env=prod
  tsh ls -v --format=json`,
		ValidArgsFunction: cli.CompleteArgs(-1, r.completeLabels),
	}
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "show more columns: ID, OS/arch, address, joined, link health (RTT, loss, reconnects, bytes, address change), your logins")
	format := cli.FormatFlag(cmd, "")
	r.clusterFlag(cmd, &cluster)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		return r.ls(cmd, args, verbose, cluster, *format)
	}
	return cmd
}

func (r *runner) ls(cmd *cobra.Command, args []string, verbose bool, cluster string, format cli.Format) error {
	want := map[string]string{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || k == "" {
			return cli.Usagef(cmd, "%q is not LABEL=VALUE (e.g. site=north)", a)
		}
		want[k] = v
	}
	all, err := r.devices(cmd.Context(), cluster)
	if err != nil {
		return fmt.Errorf("ls: %w", err)
	}
	devices := []api.Device{}
	for _, d := range all {
		if matches(d.Labels, want) {
			devices = append(devices, d)
		}
	}
	slices.SortFunc(devices, func(a, b api.Device) int { return strings.Compare(a.Name, b.Name) })
	return cli.PrintList(r.stdio.Out, format, "devices", devices, false, func() error {
		if len(devices) == 0 {
			if len(want) > 0 {
				fmt.Fprintln(r.stdio.Err, "No device you may reach has those labels; run tsh ls without labels to see them all.")
			} else {
				fmt.Fprintln(r.stdio.Err, "No device you may reach; if you expected some, ask your fleet admin about your roles.")
			}
			return nil
		}
		return cli.DeviceTable{Verbose: verbose, Logins: verbose, Now: r.stdio.Now()}.Write(r.stdio.Out, devices)
	})
}

// devices asks the fleet for the devices the current login may reach, in
// cluster (--cluster; "" for the current one).
func (r *runner) devices(ctx context.Context, cluster string) ([]api.Device, error) {
	s, err := r.site(cluster)
	if err != nil {
		return nil, err
	}
	c, err := r.client(s)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	all, err := c.Devices(ctx)
	if err != nil {
		if s.leaf != "" {
			return nil, clusterError(err, s.leaf)
		}
		return nil, apiHint(err)
	}
	return all, nil
}

// completeDevices offers the names of the devices the current login may
// reach, with their status and labels.
func (r *runner) completeDevices(ctx context.Context, _ *cobra.Command) ([]cobra.Completion, error) {
	all, err := r.devices(ctx, "")
	if err != nil {
		return nil, err
	}
	out := make([]cobra.Completion, 0, len(all))
	for _, d := range all {
		out = append(out, cli.DeviceCompletion(d))
	}
	return out, nil
}

// completeLabels offers the LABEL=VALUE pairs of those devices.
func (r *runner) completeLabels(ctx context.Context, _ *cobra.Command) ([]cobra.Completion, error) {
	all, err := r.devices(ctx, "")
	if err != nil {
		return nil, err
	}
	return cli.LabelCompletions(all), nil
}

// matches reports whether labels hold every key=value of want.
func matches(labels, want map[string]string) bool {
	for k, v := range want {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// withAdvice appends advice to a message from the fleet, unless the fleet
// already said what to do (it names a tsh or fleetctl command).
func withAdvice(msg, advice string) string {
	if strings.Contains(msg, "tsh ") || strings.Contains(msg, "fleetctl ") {
		return msg
	}
	return msg + "; " + advice
}

// apiHint adds what to do next to errors of the fleet's API that users
// see outside login.
func apiHint(err error) error {
	apiErr, ok := errors.AsType[*api.Error](err)
	if !ok {
		return err
	}
	switch apiErr.Code {
	case api.CodeUnauthorized:
		return errors.New(withAdvice(apiErr.Message, "run tsh login again"))
	case api.CodeForbidden:
		return errors.New(withAdvice(apiErr.Message, "ask your fleet admin for a role that allows it"))
	case api.CodeInternal:
		return errors.New(withAdvice(apiErr.Message, "the fleet failed, try again or tell your fleet admin"))
	}
	return err
}

// connectError adds what to do next to a failed Connect at site s.
func connectError(err error, s *site, device, login string) error {
	apiErr, ok := errors.AsType[*api.Error](err)
	if !ok {
		var exp *client.ExpiredError
		if errors.As(err, &exp) {
			return err
		}
		return fmt.Errorf("connect to %s: %w", device, err)
	}
	switch apiErr.Code {
	case api.CodeForbidden:
		return fmt.Errorf("connect to %s as %s: %s", device, login, withAdvice(apiErr.Message,
			fmt.Sprintf("your logins are %s: use tsh ssh LOGIN@%s, or ask your fleet admin", cli.List(s.logins()), device)))
	case api.CodeDeviceOffline:
		return fmt.Errorf("connect to %s: %s", device, withAdvice(apiErr.Message,
			"tsh ls shows when it was last seen, and it reconnects by itself when its link is back"))
	case api.CodeNotFound:
		return fmt.Errorf("connect to %s: %s", device, withAdvice(apiErr.Message, "tsh ls lists the devices you may reach"))
	}
	return fmt.Errorf("connect to %s: %w", device, apiHint(err))
}
