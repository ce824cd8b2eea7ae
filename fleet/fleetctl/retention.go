package fleetctl

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/printable"
)

func (r *runner) retentionCommand() *cobra.Command {
	group := &cobra.Command{
		Use:   "retention",
		Short: "How long and how much audit and recordings the fleet keeps",
		Long: `The fleet's storage policy: how long audit events and session recordings
are kept (by age, then by total size), how much of each one device may hold
(past its quota its uploads pause and it keeps its queue), and the free
space kept on the data dir (below it device uploads pause; user logins
and sessions go on).`,
	}
	show := &cobra.Command{
		Use:   "show",
		Short: "Show the policy, what is held now, and devices near a quota",
		Args:  cli.NoArgs,
	}
	format := cli.FormatFlag(show, "the policy and what is held")
	show.RunE = func(cmd *cobra.Command, _ []string) error { return r.retentionShow(cmd.Context(), *format) }
	set := &cobra.Command{
		Use:   "set",
		Short: "Change the policy; the flags not given keep their values",
		Example: `  fleetctl retention set --audit-max-age=8760h --recordings-device-quota=1GiB
  fleetctl retention set --min-free=5GiB`,
		Args: cli.NoArgs,
	}
	for _, f := range retentionFlags {
		set.Flags().String(f.name, "", f.help)
	}
	set.RunE = func(cmd *cobra.Command, _ []string) error {
		given := map[string]string{}
		cmd.Flags().Visit(func(f *pflag.Flag) { given[f.Name] = f.Value.String() })
		if len(given) == 0 {
			return cli.Usagef(cmd, "give at least one setting to change")
		}
		return r.retentionSet(cmd, given)
	}
	group.AddCommand(show, set)
	return group
}

// retentionFlags are retention set's flags.
var retentionFlags = []struct{ name, help string }{
	{"audit-max-age", "drop audit events older than this (e.g. 8760h; 0: keep them)"},
	{"audit-max-bytes", "drop the oldest audit events while all take more than this (e.g. 20GiB; 0: no cap)"},
	{"audit-device-quota", "the most of one device's audit events the fleet holds; past it the device's uploads pause (0: no quota)"},
	{"recordings-max-age", "delete recordings older than this (e.g. 2160h; 0: keep them)"},
	{"recordings-max-bytes", "delete the oldest recordings while all take more than this (0: no cap)"},
	{"recordings-device-quota", "the most of one device's recordings the fleet holds (0: no quota)"},
	{"min-free", "free space kept on the data dir: below it devices' uploads pause, users go on (0: no floor)"},
}

// parseSize reads a size: a number of bytes, or one with a unit (KiB, MiB,
// GiB, TiB, or KB, MB, GB, TB); "0" means no limit.
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			s, mult = strings.TrimSpace(n), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 || v*float64(mult) > 1<<62 {
		return 0, fmt.Errorf("%q is not a size (like 512MiB, 20GiB, 0 for no limit)", s)
	}
	return int64(v * float64(mult)), nil
}

// setRetention applies the flags the admin gave to p; the others keep
// their values.
func setRetention(p *api.Retention, given map[string]string) error {
	for name, v := range given {
		var err error
		switch name {
		case "audit-max-age":
			p.AuditMaxAge, err = time.ParseDuration(v)
		case "recordings-max-age":
			p.RecordingsMaxAge, err = time.ParseDuration(v)
		case "audit-max-bytes":
			p.AuditMaxBytes, err = parseSize(v)
		case "audit-device-quota":
			p.AuditDeviceQuota, err = parseSize(v)
		case "recordings-max-bytes":
			p.RecordingsMaxBytes, err = parseSize(v)
		case "recordings-device-quota":
			p.RecordingsDeviceQuota, err = parseSize(v)
		case "min-free":
			p.MinFreeBytes, err = parseSize(v)
		default:
			continue
		}
		if err != nil {
			return fmt.Errorf("--%s: %w", name, err)
		}
	}
	return p.Validate()
}

func (r *runner) retentionSet(cmd *cobra.Command, given map[string]string) error {
	ctx := cmd.Context()
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	cur, err := c.Retention(ctx)
	if err != nil {
		return fmt.Errorf("retention set: %w", apiHint(err))
	}
	p := cur.Policy
	if err := setRetention(&p, given); err != nil {
		return cli.Usagef(cmd, "%v", err)
	}
	st, err := c.SetRetention(ctx, p)
	if err != nil {
		return fmt.Errorf("retention set: %w", apiHint(err))
	}
	return writeRetention(r.stdio.Out, st)
}

func (r *runner) retentionShow(ctx context.Context, format cli.Format) error {
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	st, err := c.Retention(ctx)
	if err != nil {
		return fmt.Errorf("retention show: %w", apiHint(err))
	}
	if format != cli.Text {
		return cli.PrintValue(r.stdio.Out, format, st)
	}
	return writeRetention(r.stdio.Out, st)
}

// writeRetention prints the policy and what the audit trail takes.
func writeRetention(w io.Writer, st *api.RetentionStatus) error {
	p := st.Policy
	age := func(d time.Duration) string {
		if d == 0 {
			return "forever"
		}
		return d.String()
	}
	size := func(n int64) string {
		if n == 0 {
			return "no limit"
		}
		return cli.Bytes(uint64(n))
	}
	tw := cli.NewTable(w, "", "KEPT FOR", "AT MOST", "PER DEVICE", "HELD NOW")
	tw.Row("Audit events", age(p.AuditMaxAge), size(p.AuditMaxBytes), size(p.AuditDeviceQuota), cli.Bytes(uint64(st.AuditBytes)))
	tw.Row("Recordings", age(p.RecordingsMaxAge), size(p.RecordingsMaxBytes), size(p.RecordingsDeviceQuota), cli.Bytes(uint64(st.RecordingsBytes)))
	tw.Flush()
	fmt.Fprintf(w, "Free space kept on the data dir: %s (free now: %s of %s)\n", size(p.MinFreeBytes), cli.Bytes(st.FreeBytes), cli.Bytes(st.TotalBytes))
	if st.UploadsPaused != "" {
		fmt.Fprintf(w, "Device uploads are PAUSED: %s. Devices keep their events and recordings and send them once there is room.\n", printable.Escape(st.UploadsPaused))
	}
	if len(st.Devices) > 0 {
		fmt.Fprintln(w, "\nDevices near or over a quota:")
		tw := cli.NewTable(w, "DEVICE", "AUDIT", "RECORDINGS", "UPLOADS")
		for _, d := range st.Devices {
			name := d.Name
			if name == "" {
				name = d.ID
			}
			state := "flowing"
			if d.Paused != "" {
				state = "PAUSED: " + d.Paused
			}
			tw.Row(name, cli.Bytes(uint64(d.AuditBytes)), cli.Bytes(uint64(d.RecordingsBytes)), state)
		}
		tw.Flush()
	}
	return nil
}
