package fleetctl

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
)

// The OTA commands: releases and rollouts. Each parses its flags and calls
// a plain function (releasefiles.go, or one client call).

func (r *runner) releasesKeygen(ctx context.Context, fs *flag.FlagSet, args []string) error {
	noPassword := fs.Bool("no-password", false, "write the private key unencrypted (for test and CI keys only)")
	pos, err := r.parseN(fs, args, 1, "PREFIX")
	if err != nil {
		return err
	}
	pw := ""
	if !*noPassword {
		if pw, err = r.prompt.Secret(ctx, "Password for the new release key: "); err != nil {
			return err
		}
		if pw == "" {
			return r.usageError(fs, "an empty password: use --no-password for an unencrypted key")
		}
	}
	line, err := GenerateReleaseKey(pos[0], pw)
	if err != nil {
		return fmt.Errorf("releases keygen: %w", err)
	}
	fmt.Fprintf(r.stdio.Out, "Wrote %s.key (keep it offline) and %s.pub.\nRelease key: %s\nGive it to fleetd (--release-key) and to agents (--release-key, or update.release_keys in their config).\n", pos[0], pos[0], line)
	return nil
}

func (r *runner) releasesSign(ctx context.Context, fs *flag.FlagSet, args []string) error {
	key := fs.String("key", "", "the minisign private key `file` (required)")
	version := fs.String("version", "", "the release version, like v1.2.3 (required to sign a release directory)")
	pos, err := r.parseN(fs, args, 1, "DIR")
	if err != nil {
		return err
	}
	if *key == "" || *version == "" {
		return r.usageError(fs, "--key and --version are required")
	}
	priv, err := LoadReleaseKey(*key, func() (string, error) { return r.prompt.Secret(ctx, "Password for "+*key+": ") })
	if err != nil {
		return fmt.Errorf("releases sign: %w", err)
	}
	m, err := SignRelease(pos[0], *version, priv)
	if err != nil {
		return fmt.Errorf("releases sign: %w", err)
	}
	fmt.Fprintf(r.stdio.Out, "Signed release %s: %d artefacts and the manifest in %s.\n", m.Version, len(m.Artifacts), pos[0])
	return nil
}

func (r *runner) releasesRotateKey(ctx context.Context, fs *flag.FlagSet, args []string) error {
	key := fs.String("key", "", "the current (old) release key's private key `file` (required)")
	pos, err := r.parseN(fs, args, 1, "NEW.pub")
	if err != nil {
		return err
	}
	if *key == "" {
		return r.usageError(fs, "--key is required")
	}
	priv, err := LoadReleaseKey(*key, func() (string, error) { return r.prompt.Secret(ctx, "Password for "+*key+": ") })
	if err != nil {
		return fmt.Errorf("releases rotate-key: %w", err)
	}
	line, sig, err := SignRotation(pos[0], priv)
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

func (r *runner) releasesAdd(ctx context.Context, fs *flag.FlagSet, args []string) error {
	version := fs.String("version", "", "the release version the manifest must name (optional check)")
	pos, err := r.parseN(fs, args, 1, "DIR")
	if err != nil {
		return err
	}
	rf, err := ReadRelease(pos[0], *version)
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

func (r *runner) releasesLs(ctx context.Context, fs *flag.FlagSet, args []string) error {
	return list(ctx, r, fs, args, "releases ls", (*client.Client).Releases, func(rels []api.Release) error {
		if len(rels) == 0 {
			fmt.Fprintln(r.stdio.Err, "No releases yet; fleetctl releases add DIR adds one.")
			return nil
		}
		tw := tabwriter.NewWriter(r.stdio.Out, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "VERSION\tADDED\tKEY\tTARGETS\tDELTAS")
		for _, rel := range rels {
			var targets, deltas []string
			for _, a := range rel.Artifacts {
				targets = append(targets, a.Target)
			}
			for _, d := range rel.Deltas {
				if d.Skipped != "" {
					deltas = append(deltas, d.Target+" from "+d.From+": none ("+d.Skipped+")")
				} else {
					deltas = append(deltas, fmt.Sprintf("%s from %s: %s", d.Target, d.From, cli.Bytes(uint64(d.Size))))
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", rel.Version, cli.Ago(r.stdio.Now(), rel.AddedAt), rel.KeyID, strings.Join(targets, ","), cli.Dash(strings.Join(deltas, "; ")))
		}
		return tw.Flush()
	})
}

func (r *runner) releasesRm(ctx context.Context, fs *flag.FlagSet, args []string) error {
	return remove(ctx, r, fs, args, "releases rm", (*client.Client).RemoveRelease, "Release %s removed.")
}

// parsePercents reads "1%,10%,50%,100%" (the % signs are optional).
func parsePercents(s string) ([]float64, error) {
	var out []float64
	for _, p := range strings.Split(s, ",") {
		p = strings.TrimSuffix(strings.TrimSpace(p), "%")
		if p == "" {
			continue
		}
		v, err := strconv.ParseFloat(p, 64)
		if err != nil {
			return nil, fmt.Errorf("%q is not a percentage", p)
		}
		out = append(out, v)
	}
	return out, nil
}

func (r *runner) rolloutsCreate(ctx context.Context, fs *flag.FlagSet, args []string) error {
	release := fs.String("release", "", "the release `VERSION` to roll out (required)")
	selector := fs.String("selector", "", "the devices, by labels `k=v,..` (default: every device)")
	stages := fs.String("stages", "1%,10%,50%,100%", "cumulative shares of the devices per stage")
	soak := fs.String("soak", "1h", "how long each stage runs before the next may start")
	maxFail := fs.String("max-failure", "5%", "the failure share that halts the rollout")
	window := fs.String("window", "", "maintenance window `HH:MM-HH:MM` (UTC); devices download and restart only inside it (default: any time)")
	offline := fs.String("offline-deadline", "30m", "a device that goes offline during its update and stays away this long counts as failed")
	health := fs.String("health-timeout", "", "how long a new agent has to come up healthy (default: the agent's, 2m)")
	bw := fs.Int64("bandwidth", 0, "cap on each device's download, `bytes` per second (default: none)")
	if _, err := r.parseN(fs, args, 0, ""); err != nil {
		return err
	}
	if *release == "" {
		return r.usageError(fs, "--release is required")
	}
	req := api.CreateRolloutRequest{Release: *release, Soak: *soak, Window: *window, OfflineDeadline: *offline, HealthTimeout: *health, BandwidthBytes: *bw}
	var err error
	if req.Selector, err = parseLabels(*selector); err != nil {
		return r.usageError(fs, "--selector: %v", err)
	}
	if req.Stages, err = parsePercents(*stages); err != nil {
		return r.usageError(fs, "--stages: %v", err)
	}
	mf, err := parsePercents(*maxFail)
	if err != nil || len(mf) != 1 {
		return r.usageError(fs, "--max-failure: want a percentage like 5%%")
	}
	req.MaxFailure = mf[0]
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	ro, err := c.CreateRollout(ctx, &req)
	if err != nil {
		return fmt.Errorf("rollouts create: %w", apiHint(err))
	}
	fmt.Fprintf(r.stdio.Out, "Rollout %s of %s to %d devices started; fleetctl rollouts status %s follows it.\n", ro.ID, ro.Release, ro.Devices, ro.ID)
	return nil
}

func (r *runner) rolloutsLs(ctx context.Context, fs *flag.FlagSet, args []string) error {
	return list(ctx, r, fs, args, "rollouts ls", (*client.Client).Rollouts, func(ros []api.Rollout) error {
		if len(ros) == 0 {
			fmt.Fprintln(r.stdio.Err, "No rollouts yet; fleetctl rollouts create --release V starts one.")
			return nil
		}
		tw := tabwriter.NewWriter(r.stdio.Out, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tRELEASE\tSTATE\tSTAGE\tDEVICES\tCOMMITTED\tFAILED\tIN PROGRESS\tCREATED")
		for _, ro := range ros {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%s\n", ro.ID, ro.Release, ro.State, stageText(ro), ro.Devices, ro.Committed, ro.Failed, ro.InProgress, cli.Ago(r.stdio.Now(), ro.CreatedAt))
		}
		return tw.Flush()
	})
}

func stageText(ro api.Rollout) string {
	if len(ro.Stages) == 0 {
		return "-"
	}
	return fmt.Sprintf("%d/%d (%g%%)", ro.Stage+1, len(ro.Stages), ro.Stages[min(ro.Stage, len(ro.Stages)-1)])
}

func (r *runner) rolloutsStatus(ctx context.Context, fs *flag.FlagSet, args []string) error {
	format := fs.String("format", "text", "output format: text or json")
	pos, err := r.parseN(fs, args, 1, "ID")
	if err != nil {
		return err
	}
	if err := r.checkFormat(fs, *format); err != nil {
		return err
	}
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	ro, err := c.Rollout(ctx, pos[0])
	if err != nil {
		return fmt.Errorf("rollouts status %s: %w", pos[0], apiHint(err))
	}
	if *format == "json" {
		return r.printJSON(ro)
	}
	return writeRollout(r.stdio.Out, *ro, r.stdio.Now)
}

func rolloutsAction(action string) func(*runner, context.Context, *flag.FlagSet, []string) error {
	return func(r *runner, ctx context.Context, fs *flag.FlagSet, args []string) error {
		pos, err := r.parseN(fs, args, 1, "ID")
		if err != nil {
			return err
		}
		c, _, err := r.connect()
		if err != nil {
			return err
		}
		defer c.Close()
		ro, err := c.RolloutAction(ctx, pos[0], action)
		if err != nil {
			return fmt.Errorf("rollouts %s %s: %w", action, pos[0], apiHint(err))
		}
		fmt.Fprintf(r.stdio.Out, "Rollout %s is %s.\n", ro.ID, ro.State)
		return nil
	}
}

func (r *runner) rolloutsPin(ctx context.Context, fs *flag.FlagSet, args []string) error {
	version := fs.String("version", "", "the release `VERSION` to hold the devices at (required)")
	device := fs.String("device", "", "the device `NAME` to pin")
	selector := fs.String("selector", "", "or the devices with labels `k=v,..`")
	pos, err := r.parseN(fs, args, 1, "PIN-NAME")
	if err != nil {
		return err
	}
	p := api.Pin{Name: pos[0], Version: *version, Device: *device}
	if p.Selector, err = parseLabels(*selector); err != nil {
		return r.usageError(fs, "--selector: %v", err)
	}
	if len(p.Selector) == 0 {
		p.Selector = nil
	}
	c, _, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.PutPin(ctx, &p); err != nil {
		return fmt.Errorf("rollouts pin: %w", apiHint(err))
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

func (r *runner) rolloutsUnpin(ctx context.Context, fs *flag.FlagSet, args []string) error {
	return remove(ctx, r, fs, args, "rollouts unpin", (*client.Client).RemovePin, "Pin %s removed.")
}

func (r *runner) rolloutsPins(ctx context.Context, fs *flag.FlagSet, args []string) error {
	return list(ctx, r, fs, args, "rollouts pins", (*client.Client).Pins, func(pins []api.Pin) error {
		tw := tabwriter.NewWriter(r.stdio.Out, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "PIN\tVERSION\tHOLDS")
		for _, p := range pins {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", p.Name, p.Version, pinTarget(p))
		}
		return tw.Flush()
	})
}

// writeRollout prints one rollout's state and progress.
func writeRollout(w interface{ Write([]byte) (int, error) }, ro api.Rollout, now func() time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
	fmt.Fprintf(tw, "Rollout:\t%s\n", ro.ID)
	fmt.Fprintf(tw, "Release:\t%s\n", ro.Release)
	fmt.Fprintf(tw, "Devices:\t%s (%d)\n", cli.Labels(ro.Selector), ro.Devices)
	fmt.Fprintf(tw, "State:\t%s\n", ro.State)
	if ro.Reason != "" {
		fmt.Fprintf(tw, "Reason:\t%s\n", ro.Reason)
	}
	fmt.Fprintf(tw, "Stage:\t%s since %s, soak %s\n", stageText(ro), cli.Ago(now(), ro.StageAt), ro.Soak)
	fmt.Fprintf(tw, "Max failure:\t%g%%\n", ro.MaxFailure)
	if ro.Window != "" {
		fmt.Fprintf(tw, "Window:\t%s UTC\n", ro.Window)
	}
	fmt.Fprintf(tw, "Progress:\t%d of %d offered so far: %d committed, %d failed, %d in progress, %d pending\n",
		ro.Assigned, ro.Devices, ro.Committed, ro.Failed, ro.InProgress, ro.Pending)
	for _, f := range ro.Failures {
		fmt.Fprintf(tw, "Failed:\t%s %s: %s\n", f.Device, f.State, f.Reason)
	}
	return tw.Flush()
}
