package fleetctl

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/printable"
)

func (r *runner) auditCommand() *cobra.Command {
	group := &cobra.Command{
		Use:   "audit",
		Short: "Search and verify the audit log",
		Long: `Every login, session, command, transfer, Kubernetes request and denial is
an audit event, stored once per source in a hash chain (docs/audit.md).`,
	}
	var q auditSearchFlags
	search := &cobra.Command{
		Use:   "search",
		Short: "Search the audit events",
		Long: `Search the audit events, newest last, by time, device, user, session and
type. At most --limit events are shown; when more match, text output says
so on standard error and JSON or YAML output has "truncated": true.`,
		Example: `  fleetctl audit search --since=2h --type='session.*'
  fleetctl audit search --device=pi-1 --user=alice --format=json
  fleetctl audit search --cluster=plant-7 --type='session.*'`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return r.auditSearch(cmd, q) },
	}
	fl := search.Flags()
	fl.StringVar(&q.since, "since", "24h", "the oldest events: an RFC 3339 time or date, or a duration meaning that long ago (\"\" for all)")
	fl.StringVar(&q.until, "until", "", "events before this time or duration ago (default: now)")
	fl.StringVar(&q.device, "device", "", "only events about this device (name or ID)")
	fl.StringVar(&q.user, "user", "", "only events of this user")
	fl.StringVar(&q.session, "session", "", "only events of this session ID")
	fl.StringVar(&q.typ, "type", "", "only events of this type (session.start), or of a prefix ending in * (session.*)")
	fl.IntVar(&q.limit, "limit", api.DefaultAuditLimit, fmt.Sprintf("the most events to show (at most %d)", api.MaxAuditLimit))
	fl.StringVar(&q.cluster, "cluster", "", "search the audit trail of this leaf `cluster` through this fleet, its root (when the leaf's trust allows it: audit_search)")
	q.format = cli.FormatFlag(search, "")
	search.RegisterFlagCompletionFunc("device", cli.CompleteArgs(-1, r.names(r.deviceNames)))
	search.RegisterFlagCompletionFunc("user", cli.CompleteArgs(-1, r.names(r.userNames)))

	var v auditVerifyFlags
	verify := &cobra.Command{
		Use:   "verify",
		Short: "Check every audit hash chain, against fleetd's signed checkpoints",
		Long: `Check every audit hash chain in the fleet's store against the newest
checkpoint fleetd signed of its head, and the devices' reports of their
audit queues. It fails when a chain or a checkpoint has a problem.

With --export FILE it checks an export (fleetctl audit export) here,
without the fleet: a copy kept off the fleet's machine can be checked
anywhere. With --against FILE it checks a fresh export of the fleet's log
against the signed checkpoints of an earlier export too: that catches a
rewrite even when whoever rewrote the log also replaced the checkpoints
in the fleet's store.`,
		Example: `  fleetctl audit verify
  fleetctl audit verify --export audit-2026-12-01.jsonl --key ed25519:...
  fleetctl audit verify --against audit-2026-12-01.jsonl`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if v.export != "" && v.against != "" {
				return cli.Usagef(cmd, "--export and --against check different things; give one")
			}
			if v.export != "" || v.against != "" {
				return r.auditVerifyExport(cmd.Context(), v.export, v.against, v.key, *v.format)
			}
			return r.auditVerify(cmd.Context(), *v.format)
		},
	}
	vfl := verify.Flags()
	vfl.StringVar(&v.export, "export", "", "check this export `file` (from fleetctl audit export) here, without the fleet")
	vfl.StringVar(&v.against, "against", "", "check a fresh export of the fleet's log against the signed checkpoints of this earlier export `file` too")
	vfl.StringVar(&v.key, "key", "", "the checkpoint key the export must be signed with (ed25519:..., as fleetd and audit verify print it); default: the earlier export's, or the export's own")
	v.format = cli.FormatFlag(verify, "the result: sources, each with its chain's state")
	group.AddCommand(search, verify, r.auditExportCommand())
	return group
}

// auditVerifyFlags are audit verify's flags.
type auditVerifyFlags struct {
	export, against, key string
	format               *cli.Format
}

// auditSearchFlags are audit search's flags.
type auditSearchFlags struct {
	since, until, device, user, session, typ string
	cluster                                  string
	limit                                    int
	format                                   *cli.Format
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

func (r *runner) auditSearch(cmd *cobra.Command, f auditSearchFlags) error {
	ctx := cmd.Context()
	now := r.stdio.Now()
	q := client.AuditQuery{Device: f.device, User: f.user, Session: f.session, Type: f.typ, Limit: f.limit}
	var err error
	if q.Since, err = parseWhen(f.since, now); err != nil {
		return cli.Usagef(cmd, "--since: %v", err)
	}
	if q.Until, err = parseWhen(f.until, now); err != nil {
		return cli.Usagef(cmd, "--until: %v", err)
	}
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	res, err := c.In(f.cluster).AuditSearch(ctx, q)
	if err != nil {
		return fmt.Errorf("audit search: %w", apiHint(err))
	}
	for _, m := range res.Missing {
		fmt.Fprintf(r.stdio.Err, "warning: replica %s did not answer; its events are not shown\n", printable.Escape(m))
	}
	return cli.PrintList(r.stdio.Out, *f.format, "audit_events", res.Events, res.Truncated, func() error {
		if res.Truncated {
			fmt.Fprintf(r.stdio.Err, "More events matched than the %d shown: narrow the search (--since, --type, ...) or raise --limit.\n", len(res.Events))
		}
		if len(res.Events) == 0 {
			fmt.Fprintln(r.stdio.Err, "No events match.")
			return nil
		}
		tw := cli.NewTable(r.stdio.Out, "TIME", "TYPE", "OUTCOME", "DEVICE", "USER", "LOGIN", "SESSION", "BY", "DETAILS")
		for _, e := range res.Events {
			dev := e.DeviceName
			if dev == "" {
				dev = e.Device
			}
			tw.Row(cli.Time(e.Time), e.Type, cli.Dash(e.Outcome), cli.Dash(dev), cli.Dash(e.User), cli.Dash(e.Login), cli.Dash(shortID(e.Session)), assertedBy(e), details(e))
		}
		return tw.Flush()
	})
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
	s := printable.Escape(strings.Join(parts, " "))
	if r := []rune(s); len(r) > 120 {
		s = string(r[:117]) + "..."
	}
	return cli.Dash(s)
}

func (r *runner) auditVerify(ctx context.Context, format cli.Format) error {
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	res, err := c.AuditVerify(ctx)
	if err != nil {
		return fmt.Errorf("audit verify: %w", apiHint(err))
	}
	if format != cli.Text {
		if err := cli.PrintValue(r.stdio.Out, format, res); err != nil {
			return err
		}
	} else {
		replicas := len(res.Replicas) > 0
		cols := []string{"SOURCE", "DEVICE", "EVENTS", "SEQUENCE", "CHAIN", "QUEUED", "DROPPED", "DAMAGED"}
		if replicas {
			cols = append(cols, "REPLICA")
		}
		tw := cli.NewTable(r.stdio.Out, cols...)
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
			row := []string{s.Source, cli.Dash(s.DeviceName), fmt.Sprint(s.Events), seq, chain, queued, dropped, damaged}
			if replicas {
				row = append(row, s.Replica)
			}
			tw.Row(row...)
		}
		tw.Flush()
		for _, m := range res.Missing {
			fmt.Fprintf(r.stdio.Out, "replica %s did not answer: its log was not checked\n", printable.Escape(m))
		}
		for _, s := range res.Sources {
			for _, p := range s.Problems {
				fmt.Fprintf(r.stdio.Out, "%s: %s\n", printable.Escape(nameOf(s)), printable.Escape(p))
			}
			if q := s.Queue; q != nil && q.Dropped > 0 {
				fmt.Fprintf(r.stdio.Out, "%s: the device dropped %d audit events (see its audit.dropped events)%s\n", printable.Escape(nameOf(s)), q.Dropped, printable.Escape(lastErr(q)))
			}
			if q := s.Queue; q != nil && q.Unverified > 0 {
				fmt.Fprintf(r.stdio.Out, "%s: %d of the device's events named a user or session the fleet did not broker to it; they are kept, marked UNVERIFIED (fleetctl audit search --device=%s)\n",
					printable.Escape(nameOf(s)), q.Unverified, printable.Escape(nameOf(s)))
			}
		}
		cps := res.Replicas
		if len(cps) == 0 && res.Checkpoints != nil {
			cps = []api.AuditCheckpoints{*res.Checkpoints}
		}
		for _, cp := range cps {
			of := ""
			if cp.Replica != "" {
				of = " of replica " + printable.Escape(cp.Replica)
			}
			for _, p := range cp.Problems {
				fmt.Fprintf(r.stdio.Out, "checkpoints%s: %s\n", of, printable.Escape(p))
			}
			last := "none yet"
			if !cp.Last.IsZero() {
				last = "the last " + cli.Time(cp.Last)
			}
			fmt.Fprintf(r.stdio.Out, "Checked%s against %d signed checkpoints (%s); checkpoint key %s.\n", of, cp.Count, last, cp.Key)
		}
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
	if len(res.Missing) > 0 {
		return fmt.Errorf("audit verify: %d replicas did not answer", len(res.Missing))
	}
	if !res.OK {
		return errors.New("audit verify: the signed checkpoints have problems")
	}
	if format == cli.Text {
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
