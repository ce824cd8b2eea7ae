package fleetctl

import (
	"context"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
)

func init() {
	commands["retention show"] = command{"retention show [--format=text|json]", (*runner).retentionShow}
	commands["retention set"] = command{"retention set [--audit-max-age=8760h] [--audit-max-bytes=20GiB] [--audit-device-quota=1GiB] " +
		"[--recordings-max-age=2160h] [--recordings-max-bytes=100GiB] [--recordings-device-quota=2GiB] [--min-free=1GiB]", (*runner).retentionSet}
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

func (r *runner) retentionSet(ctx context.Context, fs *flag.FlagSet, args []string) error {
	for _, f := range []struct{ name, help string }{
		{"audit-max-age", "drop audit events older than this (e.g. 8760h; 0: keep them)"},
		{"audit-max-bytes", "drop the oldest audit events while all take more than this (e.g. 20GiB; 0: no cap)"},
		{"audit-device-quota", "the most of one device's audit events the fleet holds; past it the device's uploads pause (0: no quota)"},
		{"recordings-max-age", "delete recordings older than this (e.g. 2160h; 0: keep them)"},
		{"recordings-max-bytes", "delete the oldest recordings while all take more than this (0: no cap)"},
		{"recordings-device-quota", "the most of one device's recordings the fleet holds (0: no quota)"},
		{"min-free", "free space kept on the data dir: below it devices' uploads pause, users go on (0: no floor)"},
	} {
		fs.String(f.name, "", f.help)
	}
	if _, err := r.parseN(fs, args, 0, ""); err != nil {
		return err
	}
	given := map[string]string{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = f.Value.String() })
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
		return r.usageError(fs, "%v", err)
	}
	st, err := c.SetRetention(ctx, p)
	if err != nil {
		return fmt.Errorf("retention set: %w", apiHint(err))
	}
	return writeRetention(r.stdio.Out, st)
}

func (r *runner) retentionShow(ctx context.Context, fs *flag.FlagSet, args []string) error {
	format := fs.String("format", "text", "text or json")
	if _, err := r.parseN(fs, args, 0, ""); err != nil {
		return err
	}
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	st, err := c.Retention(ctx)
	if err != nil {
		return fmt.Errorf("retention show: %w", apiHint(err))
	}
	if *format == "json" {
		return r.printJSON(st)
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
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "\tKEPT FOR\tAT MOST\tPER DEVICE\tHELD NOW")
	fmt.Fprintf(tw, "Audit events\t%s\t%s\t%s\t%s\n", age(p.AuditMaxAge), size(p.AuditMaxBytes), size(p.AuditDeviceQuota), cli.Bytes(uint64(st.AuditBytes)))
	fmt.Fprintf(tw, "Recordings\t%s\t%s\t%s\t%s\n", age(p.RecordingsMaxAge), size(p.RecordingsMaxBytes), size(p.RecordingsDeviceQuota), cli.Bytes(uint64(st.RecordingsBytes)))
	tw.Flush()
	fmt.Fprintf(w, "Free space kept on the data dir: %s (free now: %s of %s)\n", size(p.MinFreeBytes), cli.Bytes(st.FreeBytes), cli.Bytes(st.TotalBytes))
	if st.UploadsPaused != "" {
		fmt.Fprintf(w, "Device uploads are PAUSED: %s. Devices keep their events and recordings and send them once there is room.\n", st.UploadsPaused)
	}
	if len(st.Devices) > 0 {
		fmt.Fprintln(w, "\nDevices near or over a quota:")
		tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "DEVICE\tAUDIT\tRECORDINGS\tUPLOADS")
		for _, d := range st.Devices {
			name := d.Name
			if name == "" {
				name = d.ID
			}
			state := "flowing"
			if d.Paused != "" {
				state = "PAUSED: " + d.Paused
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", name, cli.Bytes(uint64(d.AuditBytes)), cli.Bytes(uint64(d.RecordingsBytes)), state)
		}
		tw.Flush()
	}
	return nil
}
