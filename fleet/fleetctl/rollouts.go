package fleetctl

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
)

// The rollout commands (docs/ota.md): create, follow and steer rollouts of
// a release, and pin devices to a version.

func (r *runner) rolloutsCommand() *cobra.Command {
	group := &cobra.Command{
		Use:   "rollouts",
		Short: "Roll a release out to devices in stages; pin devices to a version",
		Long: `A rollout offers a release (fleetctl releases add) to the devices its
selector matches, in stages: each stage offers it to a larger share of
them, and advances once its soak time is over and its online devices are
done. It halts by itself, saying why, when failed updates (refused, failed,
rolled back, or a device that went offline during its update and stayed
away) cross --max-failure. A device is in one rollout at a time; a pin
holds a device or a label set at a version.`,
	}
	var cf rolloutFlags
	create := &cobra.Command{
		Use:   "create --release VERSION [--selector k=v,...]",
		Short: "Start a rollout of a release",
		Long: `Start a rollout of a release to the devices that --selector matches (every
device by default) and that are neither pinned to another version nor in
another active rollout. The devices are fixed when the rollout starts, and
ordered at random once; devices offline now get the offer when they come
back.`,
		Example: `  fleetctl rollouts create --release v1.4.0 --selector site=north
  fleetctl rollouts create --release v1.4.0 --stages 1%,10%,50%,100% --soak 1h --max-failure 5% --window 02:00-05:00`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return r.rolloutsCreate(cmd, cf) },
	}
	fl := create.Flags()
	fl.StringVar(&cf.release, "release", "", "the release `VERSION` to roll out (required)")
	fl.StringVar(&cf.selector, "selector", "", "the devices, by labels `k=v,...` (default: every device)")
	fl.StringVar(&cf.stages, "stages", "1%,10%,50%,100%", "cumulative shares of the devices in `PERCENTS`, one per stage")
	fl.StringVar(&cf.soak, "soak", "1h", "`DURATION` each stage runs before the next may start")
	fl.StringVar(&cf.maxFailure, "max-failure", "5%", "the share of failed devices, a `PERCENT`, that halts the rollout")
	fl.StringVar(&cf.window, "window", "", "maintenance window `HH:MM-HH:MM` (UTC); devices download and restart only inside it (default: any time)")
	fl.StringVar(&cf.offline, "offline-deadline", "30m", "a device that goes offline during its update and stays away this `DURATION` counts as failed")
	fl.StringVar(&cf.health, "health-timeout", "", "`DURATION` a new agent has to come up healthy before it is rolled back (default: the agent's, 2m)")
	fl.Int64Var(&cf.bandwidth, "bandwidth", 0, "cap on each device's download, in `bytes` per second (default: none)")
	create.RegisterFlagCompletionFunc("release", cli.CompleteArgs(-1, r.names(r.releaseVersions)))
	create.RegisterFlagCompletionFunc("selector", r.completeList(r.labelPairs))

	ls := listCommand(r, &cobra.Command{
		Use:   "ls",
		Short: "List the rollouts and their progress",
	}, "rollouts", (*client.Client).Rollouts, r.rolloutsTable)

	status := &cobra.Command{
		Use:   "status ID",
		Short: "Show a rollout: its stage, progress, and the failed devices and why",
		Args:  cli.ExactArgs(1, "ID"),
	}
	status.ValidArgsFunction = cli.CompleteArgs(1, r.names(r.rolloutIDs))
	statusFormat := cli.FormatFlag(status, "the rollout")
	status.RunE = func(cmd *cobra.Command, args []string) error {
		return r.rolloutsStatus(cmd.Context(), args[0], *statusFormat)
	}

	actions := []struct{ name, short string }{
		{"pause", "Pause a rollout: no new offers until it resumes"},
		{"resume", "Resume a paused or halted rollout"},
		{"abort", "Abort a rollout: no more offers; devices keep the version they run"},
	}
	for _, a := range actions {
		group.AddCommand(&cobra.Command{
			Use:               a.name + " ID",
			Short:             a.short,
			Args:              cli.ExactArgs(1, "ID"),
			ValidArgsFunction: cli.CompleteArgs(1, r.names(r.rolloutIDs)),
			RunE:              func(cmd *cobra.Command, args []string) error { return r.rolloutAction(cmd.Context(), a.name, args[0]) },
		})
	}

	var pf pinFlags
	pin := &cobra.Command{
		Use:   "pin NAME --version VERSION (--device DEVICE | --selector k=v,...)",
		Short: "Hold a device, or the devices with some labels, at a version",
		Long: `Pin a device (--device) or the devices matching labels (--selector) to a
release: rollouts of other versions leave them out, and they are offered
the pinned version. NAME names the pin (for unpin); pinning again with the
same NAME replaces it.`,
		Example: `  fleetctl rollouts pin lab-pi --version v1.3.2 --device pi-lab-1
  fleetctl rollouts pin north-hold --version v1.3.2 --selector site=north`,
		Args: cli.ExactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error { return r.rolloutsPin(cmd, args[0], pf) },
	}
	pin.Flags().StringVar(&pf.version, "version", "", "the release `VERSION` to hold the devices at (required)")
	pin.Flags().StringVar(&pf.device, "device", "", "the device `NAME` to pin")
	pin.Flags().StringVar(&pf.selector, "selector", "", "or the devices with labels `k=v,...`")
	pin.RegisterFlagCompletionFunc("version", cli.CompleteArgs(-1, r.names(r.releaseVersions)))
	pin.RegisterFlagCompletionFunc("device", cli.CompleteArgs(-1, r.names(r.deviceNames)))
	pin.RegisterFlagCompletionFunc("selector", r.completeList(r.labelPairs))

	unpin := removeCommand(r, &cobra.Command{
		Use:   "unpin NAME",
		Short: "Remove a pin; its devices take part in rollouts again",
	}, (*client.Client).RemovePin, "Pin %s removed.", r.names(r.pinNames))
	pins := listCommand(r, &cobra.Command{
		Use:   "pins",
		Short: "List the pins",
	}, "pins", (*client.Client).Pins, r.pinsTable)
	group.AddCommand(create, ls, status, pin, unpin, pins)
	return group
}

// rolloutFlags are rollouts create's flags.
type rolloutFlags struct {
	release, selector, stages, maxFailure, window string
	soak, offline, health                         string
	bandwidth                                     int64
}

// pinFlags are rollouts pin's flags.
type pinFlags struct {
	version, device, selector string
}

// rolloutIDs offers the fleet's rollouts.
func (r *runner) rolloutIDs(ctx context.Context, c *client.Client) ([]cobra.Completion, error) {
	ros, err := c.Rollouts(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]cobra.Completion, 0, len(ros))
	for _, ro := range ros {
		out = append(out, cli.Completion(ro.ID, ro.Release+" "+ro.State))
	}
	return out, nil
}

// pinNames offers the fleet's pins.
func (r *runner) pinNames(ctx context.Context, c *client.Client) ([]cobra.Completion, error) {
	pins, err := c.Pins(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]cobra.Completion, 0, len(pins))
	for _, p := range pins {
		out = append(out, cli.Completion(p.Name, p.Version+" "+pinTarget(p)))
	}
	return out, nil
}

// labelPairs offers the devices' LABEL=VALUE pairs.
func (r *runner) labelPairs(ctx context.Context, c *client.Client) ([]cobra.Completion, error) {
	devices, err := c.Devices(ctx)
	if err != nil {
		return nil, err
	}
	return cli.LabelCompletions(devices), nil
}

// parsePercents reads "1%,10%,50%,100%" (the % signs are optional).
func parsePercents(s string) ([]float64, error) {
	var out []float64
	for _, p := range splitList(s) {
		p = strings.TrimSpace(strings.TrimSuffix(p, "%"))
		v, err := strconv.ParseFloat(p, 64)
		if err != nil {
			return nil, fmt.Errorf("%q is not a percentage", p)
		}
		out = append(out, v)
	}
	return out, nil
}

func (r *runner) rolloutsCreate(cmd *cobra.Command, f rolloutFlags) error {
	if f.release == "" {
		return cli.Usagef(cmd, "--release is required (fleetctl releases ls lists the releases)")
	}
	req := api.CreateRolloutRequest{Release: f.release, Soak: f.soak, Window: f.window,
		OfflineDeadline: f.offline, HealthTimeout: f.health, BandwidthBytes: f.bandwidth}
	var err error
	if req.Selector, err = parseLabels(f.selector); err != nil {
		return cli.Usagef(cmd, "--selector: %v", err)
	}
	if req.Stages, err = parsePercents(f.stages); err != nil {
		return cli.Usagef(cmd, "--stages: %v", err)
	}
	mf, err := parsePercents(f.maxFailure)
	if err != nil || len(mf) != 1 {
		return cli.Usagef(cmd, "--max-failure: want one percentage, like 5%%")
	}
	req.MaxFailure = mf[0]
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	ro, err := c.CreateRollout(cmd.Context(), &req)
	if err != nil {
		return fmt.Errorf("rollouts create: %w", apiHint(err))
	}
	fmt.Fprintf(r.stdio.Out, "Rollout %s of %s to %d devices started; fleetctl rollouts status %s follows it.\n", ro.ID, ro.Release, ro.Devices, ro.ID)
	return nil
}

func (r *runner) rolloutsTable(ros []api.Rollout) error {
	if len(ros) == 0 {
		fmt.Fprintln(r.stdio.Err, "No rollouts yet; fleetctl rollouts create --release VERSION starts one.")
		return nil
	}
	tw := cli.NewTable(r.stdio.Out, "ID", "RELEASE", "STATE", "STAGE", "DEVICES", "COMMITTED", "FAILED", "IN PROGRESS", "CREATED")
	for _, ro := range ros {
		tw.Row(ro.ID, ro.Release, ro.State, stageText(ro), fmt.Sprint(ro.Devices), fmt.Sprint(ro.Committed), fmt.Sprint(ro.Failed),
			fmt.Sprint(ro.InProgress), cli.Ago(r.stdio.Now(), ro.CreatedAt))
	}
	return tw.Flush()
}

func stageText(ro api.Rollout) string {
	if len(ro.Stages) == 0 {
		return "-"
	}
	return fmt.Sprintf("%d/%d (%g%%)", ro.Stage+1, len(ro.Stages), ro.Stages[min(ro.Stage, len(ro.Stages)-1)])
}

func (r *runner) rolloutsStatus(ctx context.Context, id string, format cli.Format) error {
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	ro, err := c.Rollout(ctx, id)
	if err != nil {
		return fmt.Errorf("rollouts status %s: %w", id, apiHint(err))
	}
	if format != cli.Text {
		return cli.PrintValue(r.stdio.Out, format, ro)
	}
	return writeRollout(r.stdio.Out, *ro, r.stdio.Now())
}

func (r *runner) rolloutAction(ctx context.Context, action, id string) error {
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	ro, err := c.RolloutAction(ctx, id, action)
	if err != nil {
		return fmt.Errorf("rollouts %s %s: %w", action, id, apiHint(err))
	}
	fmt.Fprintf(r.stdio.Out, "Rollout %s is %s.\n", ro.ID, ro.State)
	return nil
}

func (r *runner) rolloutsPin(cmd *cobra.Command, name string, f pinFlags) error {
	if f.version == "" {
		return cli.Usagef(cmd, "--version is required")
	}
	p := api.Pin{Name: name, Version: f.version, Device: f.device}
	var err error
	if p.Selector, err = parseLabels(f.selector); err != nil {
		return cli.Usagef(cmd, "--selector: %v", err)
	}
	if (p.Device == "") == (len(p.Selector) == 0) {
		return cli.Usagef(cmd, "give one of --device and --selector")
	}
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.PutPin(cmd.Context(), &p); err != nil {
		return fmt.Errorf("rollouts pin %s: %w", name, apiHint(err))
	}
	fmt.Fprintf(r.stdio.Out, "Pin %s holds %s at %s.\n", p.Name, pinTarget(p), p.Version)
	return nil
}

func pinTarget(p api.Pin) string {
	if p.Device != "" {
		return "device " + p.Device
	}
	return "devices " + cli.Labels(p.Selector)
}

func (r *runner) pinsTable(pins []api.Pin) error {
	if len(pins) == 0 {
		fmt.Fprintln(r.stdio.Err, "No pins; fleetctl rollouts pin NAME --version VERSION --device DEVICE adds one.")
		return nil
	}
	tw := cli.NewTable(r.stdio.Out, "PIN", "VERSION", "HOLDS")
	for _, p := range pins {
		tw.Row(p.Name, p.Version, pinTarget(p))
	}
	return tw.Flush()
}

// writeRollout prints one rollout's state and progress.
func writeRollout(w io.Writer, ro api.Rollout, now time.Time) error {
	tw := cli.NewTable(w)
	tw.Row("Rollout:", ro.ID)
	tw.Row("Release:", ro.Release)
	tw.Row("Devices:", fmt.Sprintf("%s (%d)", cli.Labels(ro.Selector), ro.Devices))
	tw.Row("State:", ro.State)
	if ro.Reason != "" {
		tw.Row("Reason:", ro.Reason)
	}
	tw.Row("Stage:", fmt.Sprintf("%s since %s, soak %s", stageText(ro), cli.Ago(now, ro.StageAt), ro.Soak))
	tw.Row("Max failure:", fmt.Sprintf("%g%%", ro.MaxFailure))
	if ro.Window != "" {
		tw.Row("Window:", ro.Window+" UTC")
	}
	tw.Row("Progress:", fmt.Sprintf("%d of %d offered so far: %d committed, %d failed, %d in progress, %d pending",
		ro.Assigned, ro.Devices, ro.Committed, ro.Failed, ro.InProgress, ro.Pending))
	for _, f := range ro.Failures {
		tw.Row("Failed:", f.Device+" "+f.State+": "+f.Reason)
	}
	return tw.Flush()
}
