package fleetctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/backend"
)

// storeOpenTimeout bounds how long store copy waits for an etcd that does
// not answer.
const storeOpenTimeout = 30 * time.Second

func (r *runner) storeCommand() *cobra.Command {
	group := &cobra.Command{
		Use:   "store",
		Short: "The fleet's state store: copy it between bbolt and etcd",
	}
	var o storeCopyOptions
	cp := &cobra.Command{
		Use:   "copy --from=SRC --to=DST",
		Short: "Copy the fleet's state from one store to another, offline",
		Long: `Copy the fleet's state (CAs, users, roles, tokens, devices, ...) from one
store to another while fleetd is stopped: from the embedded bbolt store to
etcd when a fleet moves to several replicas, and back. SRC and DST are
"bolt" (the --data-dir's fleet.db), a data dir, a bbolt file, or
etcd://HOST:PORT[,HOST:PORT...]/PREFIX. A destination that holds items is
refused unless --overwrite, which makes it an exact copy of the source.
Progress and counts by kind are printed; the copy is checked item by item
at the end.`,
		Example: `  fleetctl store copy --from=bolt --to=etcd://10.0.0.1:2379,10.0.0.2:2379/fleet/ \
      --to-ca=etcd-ca.pem --to-cert=fleetd.pem --to-key=fleetd-key.pem`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.from.URL == "" || o.to.URL == "" {
				return cli.Usagef(cmd, "--from and --to are required")
			}
			o.from.DataDir, o.to.DataDir = r.g.dataDir, r.g.dataDir
			return storeCopy(cmd.Context(), o, r.stdio.Out, r.stdio.Err)
		},
	}
	fs := cp.Flags()
	fs.StringVar(&o.from.URL, "from", "", "the store to copy: bolt (DATADIR/fleet.db), a data dir, a bbolt file, or etcd://HOST:PORT[,...]/PREFIX (required)")
	fs.StringVar(&o.to.URL, "to", "", "the store to copy into, named as --from (required)")
	fs.BoolVar(&o.overwrite, "overwrite", false, "copy into a store that holds items, making it equal to the source (its items the source lacks are deleted)")
	fs.StringVar(&o.from.TLS.CAFile, "from-ca", "", "for an etcd source: PEM `file` of the CA of its members")
	fs.StringVar(&o.from.TLS.CertFile, "from-cert", "", "for an etcd source: PEM `file` of a client certificate")
	fs.StringVar(&o.from.TLS.KeyFile, "from-key", "", "for an etcd source: PEM `file` of the client certificate's key")
	fs.StringVar(&o.to.TLS.CAFile, "to-ca", "", "for an etcd destination: PEM `file` of the CA of its members")
	fs.StringVar(&o.to.TLS.CertFile, "to-cert", "", "for an etcd destination: PEM `file` of a client certificate")
	fs.StringVar(&o.to.TLS.KeyFile, "to-key", "", "for an etcd destination: PEM `file` of the client certificate's key")
	group.AddCommand(cp)
	return group
}

// storeCopyOptions are store copy's settings.
type storeCopyOptions struct {
	from, to  backend.Config
	overwrite bool
}

// storeCopy copies one store into another (store.Copy), offline: it opens
// both stores itself (a bbolt file in use by a running fleetd is refused),
// prints progress and counts to out, and etcd's connection problems to
// errOut.
func storeCopy(ctx context.Context, o storeCopyOptions, out, errOut io.Writer) error {
	from, err := backend.Parse(o.from)
	if err != nil {
		return fmt.Errorf("store copy: --from: %w", err)
	}
	to, err := backend.Parse(o.to)
	if err != nil {
		return fmt.Errorf("store copy: --to: %w", err)
	}
	if from.String() == to.String() {
		return fmt.Errorf("store copy: --from and --to are the same store (%s)", from)
	}
	if from.Kind == backend.Bolt {
		if _, err := os.Stat(from.Path); err != nil {
			return fmt.Errorf("store copy: the source: %w", err)
		}
	}
	log := slog.New(slog.NewTextHandler(errOut, &slog.HandlerOptions{Level: slog.LevelWarn}))
	src, err := openForCopy(ctx, from, log)
	if err != nil {
		return fmt.Errorf("store copy: the source: %w", err)
	}
	defer src.Close()
	dst, err := openForCopy(ctx, to, log)
	if err != nil {
		return fmt.Errorf("store copy: the destination: %w", err)
	}
	defer dst.Close()

	fmt.Fprintf(out, "Copying %s\n   into %s\n", from, to)
	stats, err := store.Copy(ctx, dst, src, store.CopyOptions{
		Overwrite: o.overwrite,
		Progress: func(done, total int) {
			if done%max(total/10, 100) == 0 || done == total {
				fmt.Fprintf(out, "  %d/%d items\n", done, total)
			}
		},
	})
	if errors.Is(err, store.ErrNotEmpty) {
		return fmt.Errorf("store copy: %w; pass --overwrite to replace its contents", err)
	}
	if err != nil {
		return fmt.Errorf("store copy: %w", err)
	}
	fmt.Fprintf(out, "Copied %d items (%s).\n", stats.Total(), stats.Summary())
	if stats.Leased > 0 {
		fmt.Fprintf(out, "Left out %d leased items (tunnel presence, leadership: they belong to a running fleetd; is one still running on the source?).\n", stats.Leased)
	}
	if stats.Deleted > 0 {
		fmt.Fprintf(out, "Deleted %d items of the destination that the source does not have.\n", stats.Deleted)
	}
	fmt.Fprintln(out, "Checked: the destination holds exactly the items copied.")
	return nil
}

// openForCopy opens a store, waiting at most storeOpenTimeout for etcd.
func openForCopy(ctx context.Context, spec backend.Spec, log *slog.Logger) (store.Store, error) {
	octx, cancel := context.WithTimeout(ctx, storeOpenTimeout)
	defer cancel()
	return backend.Open(octx, spec, log)
}
