package fleetd

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

// StoreMain runs "fleetd store COMMAND [flags]" (args after "store") and
// returns the exit code: 0, 1 on errors, 2 on a mistake on the command
// line. Its one command is copy: the offline copy of the fleet's state from
// one store to another, from the embedded bbolt store to etcd when a fleet
// moves to several replicas, and back. It lives in fleetd, not fleetctl,
// because it opens the stores itself: fleetctl links no server code.
func StoreMain(ctx context.Context, args []string, out, errOut io.Writer) int {
	if len(args) == 0 || args[0] != "copy" {
		fmt.Fprint(errOut, storeUsage)
		if len(args) > 0 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help") {
			return 0
		}
		return 2
	}
	fs := flag.NewFlagSet("fleetd store copy", flag.ContinueOnError)
	fs.SetOutput(errOut)
	var o StoreCopyOptions
	dataDir := fs.String("data-dir", "", "`DIR` of the fleet's data dir, for --from=bolt or --to=bolt (DIR/fleet.db)")
	fs.StringVar(&o.From.URL, "from", "", "the store to copy: bolt (DATA_DIR/fleet.db), a data dir, a bbolt file, or etcd://HOST:PORT[,...]/PREFIX (required)")
	fs.StringVar(&o.To.URL, "to", "", "the store to copy into, named as --from (required)")
	fs.BoolVar(&o.Overwrite, "overwrite", false, "copy into a store that holds items, making it equal to the source (its items the source lacks are deleted)")
	fs.StringVar(&o.From.TLS.CAFile, "from-ca", "", "for an etcd source: PEM `file` of the CA of its members")
	fs.StringVar(&o.From.TLS.CertFile, "from-cert", "", "for an etcd source: PEM `file` of a client certificate")
	fs.StringVar(&o.From.TLS.KeyFile, "from-key", "", "for an etcd source: PEM `file` of the client certificate's key")
	fs.StringVar(&o.To.TLS.CAFile, "to-ca", "", "for an etcd destination: PEM `file` of the CA of its members")
	fs.StringVar(&o.To.TLS.CertFile, "to-cert", "", "for an etcd destination: PEM `file` of a client certificate")
	fs.StringVar(&o.To.TLS.KeyFile, "to-key", "", "for an etcd destination: PEM `file` of the client certificate's key")
	fs.Usage = func() {
		fmt.Fprint(errOut, storeUsage+"\nFlags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 || o.From.URL == "" || o.To.URL == "" {
		fmt.Fprintln(errOut, "fleetd store copy: --from and --to are required, and nothing else")
		fs.Usage()
		return 2
	}
	o.From.DataDir, o.To.DataDir = *dataDir, *dataDir
	if err := StoreCopy(ctx, o, out, errOut); err != nil {
		fmt.Fprintln(errOut, "fleetd:", err)
		return 1
	}
	return 0
}

const storeUsage = `usage: fleetd store copy --from=SRC --to=DST [--data-dir=DIR] [--overwrite] [TLS flags]

Copy the fleet's state (CAs, users, roles, tokens, devices, ...) from one
store to another while fleetd is stopped. SRC and DST are "bolt" (the data
dir's fleet.db), a data dir, a bbolt file, or
etcd://HOST:PORT[,HOST:PORT...]/PREFIX. A destination that holds items is
refused unless --overwrite, which makes it an exact copy of the source.
Progress and counts by kind are printed; the copy is checked item by item
at the end.

  fleetd store copy --data-dir /var/lib/fleetd --from=bolt \
      --to=etcd://10.0.0.1:2379,10.0.0.2:2379/fleet/ --to-ca=ca.pem --to-cert=fleetd.pem --to-key=fleetd-key.pem
`

// storeOpenTimeout bounds how long store copy waits for an etcd that does
// not answer.
const storeOpenTimeout = 30 * time.Second

// StoreCopyOptions are store copy's settings.
type StoreCopyOptions struct {
	// From and To name the stores (backend.Config: URL, data dir, TLS).
	From, To backend.Config
	// Overwrite copies into a store that holds items, deleting those the
	// source lacks.
	Overwrite bool
}

// StoreCopy copies one store into another (store.Copy), offline: it opens
// both stores itself (a bbolt file in use by a running fleetd is refused),
// prints progress and counts to out, and etcd's connection problems to
// errOut.
func StoreCopy(ctx context.Context, o StoreCopyOptions, out, errOut io.Writer) error {
	from, err := backend.Parse(o.From)
	if err != nil {
		return fmt.Errorf("store copy: --from: %w", err)
	}
	to, err := backend.Parse(o.To)
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
		Overwrite: o.Overwrite,
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
