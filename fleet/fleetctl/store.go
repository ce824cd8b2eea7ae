package fleetctl

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/backend"
)

// storeOpenTimeout bounds how long store copy waits for an etcd that does
// not answer.
const storeOpenTimeout = 30 * time.Second

func (r *runner) storeCopy(ctx context.Context, fs *flag.FlagSet, args []string) error {
	var o storeCopyOptions
	fs.StringVar(&o.from.URL, "from", "", "the store to copy: bolt (DATADIR/fleet.db), a data dir, a bbolt file, or etcd://HOST:PORT[,...]/PREFIX (required)")
	fs.StringVar(&o.to.URL, "to", "", "the store to copy into, named as --from (required)")
	fs.BoolVar(&o.overwrite, "overwrite", false, "copy into a store that holds items, making it equal to the source (its items the source lacks are deleted)")
	fs.StringVar(&o.from.TLS.CAFile, "from-ca", "", "for an etcd source: PEM `file` of the CA of its members")
	fs.StringVar(&o.from.TLS.CertFile, "from-cert", "", "for an etcd source: PEM `file` of a client certificate")
	fs.StringVar(&o.from.TLS.KeyFile, "from-key", "", "for an etcd source: PEM `file` of the client certificate's key")
	fs.StringVar(&o.to.TLS.CAFile, "to-ca", "", "for an etcd destination: PEM `file` of the CA of its members")
	fs.StringVar(&o.to.TLS.CertFile, "to-cert", "", "for an etcd destination: PEM `file` of a client certificate")
	fs.StringVar(&o.to.TLS.KeyFile, "to-key", "", "for an etcd destination: PEM `file` of the client certificate's key")
	if _, err := r.parseN(fs, args, 0, ""); err != nil {
		return err
	}
	if o.from.URL == "" || o.to.URL == "" {
		return r.usageError(fs, "--from and --to are required")
	}
	o.from.DataDir, o.to.DataDir = r.g.dataDir, r.g.dataDir
	return storeCopy(ctx, o, r.stdio.Out, r.stdio.Err)
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
