package fleetctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
)

func init() {
	commands["audit search"] = command{"audit search [--since=TIME|DURATION] [--until=TIME|DURATION] [--device=NAME] [--user=NAME] [--session=ID] [--type=TYPE] [--limit=N] [--json]", (*runner).auditSearch}
	commands["audit verify"] = command{"audit verify [--json] [--export FILE | --against FILE] [--key KEY]", (*runner).auditVerify}
}

// parseWhen reads an RFC 3339 time, or a duration meaning that long ago.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is neither a time (2026-11-21T08:00:00Z, 2026-11-21) nor a duration (24h)", s)
}

func (r *runner) auditSearch(ctx context.Context, fs *flag.FlagSet, args []string) error {
	since := fs.String("since", "24h", "the oldest events: an RFC 3339 time or date, or a duration meaning that long ago (\"\" for all)")
	until := fs.String("until", "", "events before this time or duration ago (default: now)")
	device := fs.String("device", "", "only events about this device (name or ID)")
	user := fs.String("user", "", "only events of this user")
	session := fs.String("session", "", "only events of this session ID")
	typ := fs.String("type", "", "only events of this type (session.start), or of a prefix ending in * (session.*)")
	limit := fs.Int("limit", api.DefaultAuditLimit, fmt.Sprintf("the most events to show (at most %d)", api.MaxAuditLimit))
	asJSON := fs.Bool("json", false, "print the events as JSON (the audit export format)")
	if _, err := r.parseN(fs, args, 0, ""); err != nil {
		return err
	}
	now := r.stdio.Now()
	q := client.AuditQuery{Device: *device, User: *user, Session: *session, Type: *typ, Limit: *limit}
	var err error
	if q.Since, err = parseWhen(*since, now); err != nil {
		return r.usageError(fs, "--since: %v", err)
	}
	if q.Until, err = parseWhen(*until, now); err != nil {
		return r.usageError(fs, "--until: %v", err)
	}
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	res, err := c.AuditSearch(ctx, q)
	if err != nil {
		return fmt.Errorf("audit search: %w", apiHint(err))
	}
	if res.Truncated {
		fmt.Fprintf(r.stdio.Err, "More events matched than the %d shown: narrow the search (--since, --type, ...) or raise --limit.\n", len(res.Events))
	}
	if *asJSON {
		return r.printJSON(res.Events)
	}
	if len(res.Events) == 0 {
		fmt.Fprintln(r.stdio.Err, "No events match.")
		return nil
	}
	tw := tabwriter.NewWriter(r.stdio.Out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tTYPE\tOUTCOME\tDEVICE\tUSER\tLOGIN\tSESSION\tBY\tDETAILS")
	for _, e := range res.Events {
		dev := e.DeviceName
		if dev == "" {
			dev = e.Device
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", cli.Time(e.Time), e.Type, cli.Dash(e.Outcome), cli.Dash(dev),
			cli.Dash(e.User), cli.Dash(e.Login), cli.Dash(shortID(e.Session)), assertedBy(e), details(e))
	}
	return tw.Flush()
}

// shortID shortens a session ID for a table; --json has it whole.
func shortID(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// assertedBy says who asserted an event, for a table: the fleet or the
// device.
func assertedBy(e api.AuditEvent) string {
	if e.AssertedBy == api.SourceFleet || e.AssertedBy == "" && e.Source == api.SourceFleet {
		return "fleet"
	}
	return "device"
}

// details is an event's message and fields on one line; a device's claim
// that did not verify comes first.
func details(e api.AuditEvent) string {
	var parts []string
	if e.Unverified != "" {
		parts = append(parts, "UNVERIFIED: "+e.Unverified+";")
	}
	if e.Message != "" {
		parts = append(parts, e.Message)
	}
	for _, k := range slices.Sorted(maps.Keys(e.Fields)) {
		parts = append(parts, k+"="+e.Fields[k])
	}
	s := strings.Join(parts, " ")
	s = strings.NewReplacer("\n", " ", "\t", " ").Replace(s)
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return cli.Dash(s)
}

func (r *runner) auditVerify(ctx context.Context, fs *flag.FlagSet, args []string) error {
	asJSON := fs.Bool("json", false, "print the result as JSON")
	export := fs.String("export", "", "check this export `file` (from fleetctl audit export) here, without the fleet")
	against := fs.String("against", "", "check a fresh export of the fleet's log here against the signed checkpoints of this earlier export `file` too")
	key := fs.String("key", "", "the checkpoint key the export must be signed with (ed25519:..., as fleetd and audit verify print it); default: the earlier export's, or the export's own")
	if _, err := r.parseN(fs, args, 0, ""); err != nil {
		return err
	}
	if *export != "" && *against != "" {
		return r.usageError(fs, "--export and --against check different things; give one")
	}
	if *export != "" || *against != "" {
		return r.auditVerifyExport(ctx, *export, *against, *key, *asJSON)
	}
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	res, err := c.AuditVerify(ctx)
	if err != nil {
		return fmt.Errorf("audit verify: %w", apiHint(err))
	}
	if *asJSON {
		if err := r.printJSON(res); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(r.stdio.Out, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "SOURCE\tDEVICE\tEVENTS\tSEQUENCE\tCHAIN\tQUEUED\tDROPPED\tDAMAGED")
		for _, s := range res.Sources {
			chain := "ok"
			if !s.OK {
				chain = "BROKEN"
			}
			queued, dropped, damaged := "-", "-", "-"
			if q := s.Queue; q != nil {
				queued, dropped, damaged = fmt.Sprint(q.Pending), fmt.Sprint(q.Dropped), fmt.Sprint(q.Damaged)
			}
			seq := "-"
			if s.Events > 0 {
				seq = fmt.Sprintf("%d-%d", s.First, s.Last)
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", s.Source, cli.Dash(s.DeviceName), s.Events, seq, chain, queued, dropped, damaged)
		}
		tw.Flush()
		for _, s := range res.Sources {
			for _, p := range s.Problems {
				fmt.Fprintf(r.stdio.Out, "%s: %s\n", nameOf(s), p)
			}
			if q := s.Queue; q != nil && q.Dropped > 0 {
				fmt.Fprintf(r.stdio.Out, "%s: the device dropped %d audit events (see its audit.dropped events)%s\n", nameOf(s), q.Dropped, lastErr(q))
			}
			if q := s.Queue; q != nil && q.Unverified > 0 {
				fmt.Fprintf(r.stdio.Out, "%s: %d of the device's events named a user or session the fleet did not broker to it; they are kept, marked UNVERIFIED (fleetctl audit search --device=%s)\n",
					nameOf(s), q.Unverified, nameOf(s))
			}
		}
	}
	if cp := res.Checkpoints; cp != nil && !*asJSON {
		for _, p := range cp.Problems {
			fmt.Fprintf(r.stdio.Out, "checkpoints: %s\n", p)
		}
		last := "none yet"
		if !cp.Last.IsZero() {
			last = "the last " + cli.Time(cp.Last)
		}
		fmt.Fprintf(r.stdio.Out, "Checked against %d signed checkpoints (%s); checkpoint key %s.\n", cp.Count, last, cp.Key)
	}
	bad := 0
	for _, s := range res.Sources {
		if !s.OK {
			bad++
		}
	}
	if bad > 0 {
		return fmt.Errorf("audit verify: %d of %d audit chains have problems", bad, len(res.Sources))
	}
	if !res.OK {
		return errors.New("audit verify: the signed checkpoints have problems")
	}
	if !*asJSON {
		fmt.Fprintf(r.stdio.Out, "All %d audit chains verified.\n", len(res.Sources))
	}
	return nil
}

func nameOf(s api.AuditChain) string {
	if s.DeviceName != "" {
		return s.DeviceName
	}
	return s.Source
}

func lastErr(q *api.DeviceAudit) string {
	if q.LastError == "" {
		return ""
	}
	return "; last error: " + q.LastError
}
