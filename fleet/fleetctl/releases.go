package fleetctl

import (
	"context"
	"fmt"
	"os"
	"strings"

	"aead.dev/minisign"
	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
)

// The release commands (docs/ota.md). Keys and signatures are made
// offline, from files (releasefiles.go); add, ls, rm and rotate-key call
// the fleet.

func (r *runner) releasesCommand() *cobra.Command {
	group := &cobra.Command{
		Use:   "releases",
		Short: "Signed agent releases: keys, signing, upload, list, remove",
		Long: `An agent release is the cross builds (make cross: dist/edge-agent-TARGET),
a minisign signature of each, and a signed manifest (version, and each
artefact's target, size and SHA-256). The release key signs them offline
(keygen, sign); fleetd checks every signature against its release keys
(fleetd --release-key) before it keeps a release, and prepares deltas from
the last releases; devices check them again against the keys they pin.
Rollouts (fleetctl rollouts) offer a release to devices.`,
	}
	var noPassword bool
	keygen := &cobra.Command{
		Use:   "keygen PREFIX",
		Short: "Make a release key pair (PREFIX.key, PREFIX.pub), offline",
		Long: `Make a minisign key pair for signing releases: PREFIX.key (the private
key, encrypted with a password you type; keep it off the fleet) and
PREFIX.pub. It prints the public key's line, which fleetd (--release-key)
and agents (--release-key) take. Debian's minisign -G makes the same.`,
		Example: `  fleetctl releases keygen release
  fleetctl releases keygen ci-test --no-password`,
		Args: cli.ExactArgs(1, "PREFIX"),
		RunE: func(cmd *cobra.Command, args []string) error { return r.releasesKeygen(cmd, args[0], noPassword) },
	}
	keygen.Flags().BoolVar(&noPassword, "no-password", false, "write the private key unencrypted (for test and CI keys only)")

	var signKey, signVersion string
	sign := &cobra.Command{
		Use:   "sign --key KEY --version V DIR",
		Short: "Write and sign DIR/manifest.json and each artefact, offline",
		Long: `Sign a release directory: every edge-agent-TARGET file in DIR gets a
minisign signature (FILE.minisig), and DIR/manifest.json (the version, and
each artefact's target, size and SHA-256) is written and signed too. Run it
where the release key is, then upload DIR with fleetctl releases add.`,
		Example: `  make cross
  fleetctl releases sign --key release.key --version v1.4.0 dist/`,
		Args: cli.ExactArgs(1, "DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return r.releasesSign(cmd, args[0], signKey, signVersion)
		},
	}
	sign.Flags().StringVar(&signKey, "key", "", "the minisign private key `file` (required)")
	sign.Flags().StringVar(&signVersion, "version", "", "the release version, like v1.2.3 (required)")

	var rotateKey string
	rotate := &cobra.Command{
		Use:   "rotate-key --key OLD.key NEW.pub",
		Short: "Trust a new release key, signed with the current one",
		Long: `Add a release key: the new key's line is signed with the current (old)
key, and the fleet adds it only if that signature verifies with a key it
trusts. The fleet sends the rotation with every offer, and agents add the
key under the same rule, so devices follow without a visit. Sign new
releases with the new key.`,
		Example: `  fleetctl releases keygen release-2027
  fleetctl releases rotate-key --key release.key release-2027.pub`,
		Args: cli.ExactArgs(1, "NEW.pub"),
		RunE: func(cmd *cobra.Command, args []string) error { return r.releasesRotateKey(cmd, args[0], rotateKey) },
	}
	rotate.Flags().StringVar(&rotateKey, "key", "", "the current (old) release key's private key `file` (required)")

	var addVersion string
	add := &cobra.Command{
		Use:   "add DIR",
		Short: "Upload a signed release (make cross; fleetctl releases sign)",
		Long: `Upload a signed release directory: its artefacts, then the manifest and
the signatures. The fleet checks the manifest's signature and each
artefact's size, hash and signature before it keeps the release, then
prepares deltas to it from the last releases.`,
		Example: `  fleetctl releases add dist/
  fleetctl releases add --version v1.4.0 dist/`,
		Args: cli.ExactArgs(1, "DIR"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return r.releasesAdd(cmd.Context(), args[0], addVersion)
		},
	}
	add.Flags().StringVar(&addVersion, "version", "", "the version the manifest must name (a check; default: the manifest's)")

	ls := listCommand(r, &cobra.Command{
		Use:   "ls",
		Short: "List the releases, their targets and deltas",
	}, "releases", (*client.Client).Releases, r.releasesTable)
	rm := removeCommand(r, &cobra.Command{
		Use:   "rm VERSION",
		Short: "Remove a release from the fleet",
	}, (*client.Client).RemoveRelease, "Release %s removed.", r.names(r.releaseVersions))
	group.AddCommand(keygen, sign, rotate, add, ls, rm)
	return group
}

// releaseVersions offers the fleet's releases.
func (r *runner) releaseVersions(ctx context.Context, c *client.Client) ([]cobra.Completion, error) {
	rels, err := c.Releases(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]cobra.Completion, 0, len(rels))
	for _, rel := range rels {
		out = append(out, cli.Completion(rel.Version, "added "+cli.Ago(r.stdio.Now(), rel.AddedAt)))
	}
	return out, nil
}

func (r *runner) releasesKeygen(cmd *cobra.Command, prefix string, noPassword bool) error {
	pw := ""
	if !noPassword {
		var err error
		if pw, err = r.prompt.Secret(cmd.Context(), "Password for the new release key: "); err != nil {
			return fmt.Errorf("releases keygen: read password: %w", err)
		}
		if pw == "" {
			return cli.Usagef(cmd, "an empty password: type one, or use --no-password for an unencrypted key")
		}
	}
	line, err := GenerateReleaseKey(prefix, pw)
	if err != nil {
		return fmt.Errorf("releases keygen: %w", err)
	}
	fmt.Fprintf(r.stdio.Out, "Wrote %s.key (keep it offline) and %s.pub.\nRelease key: %s\nGive it to fleetd (--release-key) and to agents (--release-key, or release_key in their config).\n", prefix, prefix, line)
	return nil
}

// releaseKey reads a release key's private key file, asking for its
// password when it is encrypted.
func (r *runner) releaseKey(ctx context.Context, path string) (minisign.PrivateKey, error) {
	return LoadReleaseKey(path, func() (string, error) { return r.prompt.Secret(ctx, "Password for "+path+": ") })
}

func (r *runner) releasesSign(cmd *cobra.Command, dir, key, version string) error {
	if key == "" || version == "" {
		return cli.Usagef(cmd, "--key and --version are required")
	}
	priv, err := r.releaseKey(cmd.Context(), key)
	if err != nil {
		return fmt.Errorf("releases sign: %w", err)
	}
	m, err := SignRelease(dir, version, priv)
	if err != nil {
		return fmt.Errorf("releases sign: %w", err)
	}
	fmt.Fprintf(r.stdio.Out, "Signed release %s: %d artefacts and the manifest in %s.\n", m.Version, len(m.Artifacts), dir)
	return nil
}

func (r *runner) releasesRotateKey(cmd *cobra.Command, pub, key string) error {
	if key == "" {
		return cli.Usagef(cmd, "--key is required: the current release key's private key file")
	}
	ctx := cmd.Context()
	priv, err := r.releaseKey(ctx, key)
	if err != nil {
		return fmt.Errorf("releases rotate-key: %w", err)
	}
	line, sig, err := SignRotation(pub, priv)
	if err != nil {
		return fmt.Errorf("releases rotate-key: %w", err)
	}
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.RotateReleaseKey(ctx, &api.KeyRotation{Key: line, Sig: string(sig)}); err != nil {
		return fmt.Errorf("releases rotate-key: %w", apiHint(err))
	}
	fmt.Fprintf(r.stdio.Out, "Release key %s added; devices accept it with their next update offer. Sign new releases with it.\n", line)
	return nil
}

func (r *runner) releasesAdd(ctx context.Context, dir, version string) error {
	rf, err := ReadRelease(dir, version)
	if err != nil {
		return fmt.Errorf("releases add: %w", err)
	}
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	rel, err := AddRelease(ctx, c, rf)
	if err != nil {
		return fmt.Errorf("releases add: %w", apiHint(err))
	}
	fmt.Fprintf(r.stdio.Out, "Release %s added (%d artefacts, key %s); deltas from earlier releases are being prepared.\n", rel.Version, len(rel.Artifacts), rel.KeyID)
	return nil
}

// AddRelease uploads a signed release's artefacts and adds it.
func AddRelease(ctx context.Context, c *client.Client, rf *ReleaseFiles) (*api.Release, error) {
	for _, a := range rf.manifestObj.Artifacts {
		f, err := os.Open(rf.paths[a.Target])
		if err != nil {
			return nil, err
		}
		err = c.PutReleaseBlob(ctx, a.SHA256, f, a.Size)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("upload %s: %w", a.Name, err)
		}
	}
	return c.AddRelease(ctx, &api.AddReleaseRequest{Manifest: string(rf.manifest), ManifestSig: string(rf.manifestSig), ArtifactSigs: rf.sigs})
}

func (r *runner) releasesTable(rels []api.Release) error {
	if len(rels) == 0 {
		fmt.Fprintln(r.stdio.Err, "No releases yet; fleetctl releases add DIR adds one.")
		return nil
	}
	tw := cli.NewTable(r.stdio.Out, "VERSION", "ADDED", "KEY", "TARGETS", "DELTAS")
	for _, rel := range rels {
		var targets, deltas []string
		for _, a := range rel.Artifacts {
			if a.Unavailable != "" {
				// Devices cannot download it until a replica holding it runs.
				targets = append(targets, a.Target+" (UNAVAILABLE: "+a.Unavailable+")")
				continue
			}
			targets = append(targets, a.Target)
		}
		for _, d := range rel.Deltas {
			if d.Skipped != "" {
				deltas = append(deltas, d.Target+" from "+d.From+": none ("+d.Skipped+")")
			} else {
				deltas = append(deltas, fmt.Sprintf("%s from %s: %s", d.Target, d.From, cli.Bytes(uint64(d.Size))))
			}
		}
		tw.Row(rel.Version, cli.Ago(r.stdio.Now(), rel.AddedAt), rel.KeyID, strings.Join(targets, ","), cli.Dash(strings.Join(deltas, "; ")))
	}
	return tw.Flush()
}
