package fleetctl

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/auditexport"
	"remoteler.dev/edge/proto/printable"
)

func (r *runner) auditExportCommand() *cobra.Command {
	var out string
	var only bool
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Write the audit events and signed checkpoints, for storage off the fleet",
		Long: `Write every audit event and the checkpoints fleetd signed of each chain's
head (JSON Lines, ending with an end line, so a cut file is detected), for
storage away from the fleet's machine. fleetctl audit verify --export FILE
checks it anywhere; audit verify --against FILE checks the fleet's log
against it later.`,
		Example: `  fleetctl audit export -o audit-$(date +%F).jsonl
  fleetctl audit export --checkpoints-only -o checkpoints.jsonl`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, _, err := r.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			if err := exportTo(cmd.Context(), c, out, only, r.stdio.Out); err != nil {
				return fmt.Errorf("audit export: %w", apiHint(err))
			}
			if out != "-" {
				fmt.Fprintf(r.stdio.Err, "Audit log exported to %s. Keep it off this machine; check it with: fleetctl audit verify --export %s\n", out, out)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "-", "write the export to this `file` (\"-\": standard output); written whole or not at all")
	cmd.Flags().BoolVar(&only, "checkpoints-only", false, "only the signed checkpoints: small, enough to check the fleet's log against later (audit verify --against)")
	return cmd
}

// exportTo downloads the fleet's export to path ("-": stdout). A file is
// written under a temporary name and renamed once complete.
func exportTo(ctx context.Context, c *client.Client, path string, checkpointsOnly bool, stdout io.Writer) error {
	if path == "-" {
		return c.AuditExport(ctx, stdout, checkpointsOnly)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*.part")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	err = c.AuditExport(ctx, tmp, checkpointsOnly)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// verifyExport checks an export: the file at path, or (path "") a fresh
// export of the fleet's log; against are the checkpoints of an earlier
// export it must still match, and key, when set, the pinned checkpoint key.
func verifyExport(ctx context.Context, c *client.Client, path string, against []*auditexport.Checkpoint, key ed25519.PublicKey) (*auditexport.Report, error) {
	opts := auditexport.Options{Key: key, Earlier: against}
	if path != "" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return auditexport.Verify(f, opts)
	}
	pr, pw := io.Pipe()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		err := c.AuditExport(ctx, pw, false)
		pw.CloseWithError(err)
		done <- err
	}()
	rep, err := auditexport.Verify(pr, opts)
	pr.CloseWithError(errors.New("verification ended"))
	cancel()
	if derr := <-done; err == nil && derr != nil && !errors.Is(derr, context.Canceled) {
		err = derr
	}
	return rep, err
}

// readEarlier reads the checkpoints (and key) of an earlier export.
func readEarlier(path string) ([]*auditexport.Checkpoint, ed25519.PublicKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	return auditexport.ReadCheckpoints(f)
}

// auditVerifyExport is audit verify with --export or --against: the check
// runs here, in fleetctl, not in the fleet.
func (r *runner) auditVerifyExport(ctx context.Context, exportPath, againstPath, keyFlag string, format cli.Format) error {
	var key ed25519.PublicKey
	if keyFlag != "" {
		k, err := auditexport.ParseKey(keyFlag)
		if err != nil {
			return fmt.Errorf("audit verify: --key: %w", err)
		}
		key = k
	}
	var against []*auditexport.Checkpoint
	if againstPath != "" {
		cps, earlierKey, err := readEarlier(againstPath)
		if err != nil {
			return fmt.Errorf("audit verify: --against: %w", err)
		}
		against = cps
		if key == nil {
			key = earlierKey // the earlier export pins the key
		}
	}
	var c *client.Client
	if exportPath == "" {
		var err error
		if c, _, err = r.connect(); err != nil {
			return err
		}
		defer c.Close()
	}
	rep, err := verifyExport(ctx, c, exportPath, against, key)
	if err != nil {
		return fmt.Errorf("audit verify: %w", apiHint(err))
	}
	if format != cli.Text {
		if err := cli.PrintValue(r.stdio.Out, format, rep); err != nil {
			return err
		}
	} else {
		printReport(r.stdio.Out, rep)
	}
	if !rep.OK {
		return fmt.Errorf("audit verify: the export does not verify (%d chains checked against %d signed checkpoints)", len(rep.Chains), rep.Checkpoints+rep.Earlier)
	}
	return nil
}

func printReport(w io.Writer, rep *auditexport.Report) {
	tw := cli.NewTable(w, "SOURCE", "EVENTS", "SEQUENCE", "CHAIN")
	for _, c := range rep.Chains {
		chain := "ok"
		if !c.OK {
			chain = "BROKEN"
		}
		seq := "-"
		if c.Events > 0 {
			seq = fmt.Sprintf("%d-%d", c.First, c.Last)
		}
		tw.Row(c.Source, fmt.Sprint(c.Events), seq, chain)
	}
	tw.Flush()
	for _, p := range rep.Problems {
		fmt.Fprintf(w, "checkpoints: %s\n", printable.Escape(p))
	}
	for _, c := range rep.Chains {
		for _, p := range c.Problems {
			fmt.Fprintf(w, "%s: %s\n", printable.Escape(c.Source), printable.Escape(p))
		}
	}
	last := "-"
	if !rep.LastCheckpoint.IsZero() {
		last = cli.Time(rep.LastCheckpoint)
	}
	fmt.Fprintf(w, "Checkpoint key: %s; %d signed checkpoints (the last %s)", rep.Key, rep.Checkpoints, last)
	if rep.Earlier > 0 {
		fmt.Fprintf(w, ", and %d from the earlier export", rep.Earlier)
	}
	fmt.Fprintln(w, ".")
	if rep.OK {
		fmt.Fprintf(w, "All %d audit chains in the export verified.\n", len(rep.Chains))
	}
}
