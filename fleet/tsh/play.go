package tsh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/asciicast"
)

func (r *runner) recordingsCommand() *cobra.Command {
	group := &cobra.Command{
		Use:   "recordings",
		Short: "Session recordings you may see",
	}
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the session recordings you may see",
		Long: `List the recorded sessions you may see (your own; all of them with an
admin role): ID, device, user, login, kind, start, duration, size and
whether the upload is complete. tsh play ID replays one.`,
		Args: cli.NoArgs,
	}
	format := cli.FormatFlag(ls, "")
	ls.RunE = func(cmd *cobra.Command, _ []string) error { return r.recordingsLs(cmd.Context(), *format) }
	group.AddCommand(ls)
	return group
}

// recordings asks the fleet for the recordings the current login may see.
func (r *runner) recordings(ctx context.Context) ([]api.Recording, error) {
	p, dir, err := r.currentProfile()
	if err != nil {
		return nil, err
	}
	c, err := r.newClient(p, dir)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	list, err := c.Recordings(ctx)
	if err != nil {
		return nil, apiHint(err)
	}
	return list, nil
}

func (r *runner) recordingsLs(ctx context.Context, format cli.Format) error {
	list, err := r.recordings(ctx)
	if err != nil {
		return fmt.Errorf("recordings ls: %w", err)
	}
	return cli.PrintList(r.stdio.Out, format, "recordings", list, false, func() error {
		if len(list) == 0 {
			fmt.Fprintln(r.stdio.Err, "No recordings you may see yet; interactive sessions (tsh ssh with a terminal) are recorded.")
			return nil
		}
		tw := cli.NewTable(r.stdio.Out, "ID", "DEVICE", "USER", "LOGIN", "KIND", "STARTED", "DURATION", "SIZE", "STATUS")
		for _, rec := range list {
			dev := rec.DeviceName
			if dev == "" {
				dev = rec.Device
			}
			status := "complete"
			if !rec.Complete {
				status = "uploading"
			}
			kind := rec.Kind
			if rec.Command != "" {
				kind += ": " + rec.Command
			}
			dur := "-"
			if rec.Complete {
				dur = cli.Duration(rec.Duration)
			}
			tw.Row(rec.ID, cli.Dash(dev), cli.Dash(rec.User), cli.Dash(rec.Login), cli.Dash(kind), cli.Time(rec.Start), dur, fmtBytes(rec.Size), status)
		}
		return tw.Flush()
	})
}

// completeRecordings offers the IDs of the recordings the login may see.
func (r *runner) completeRecordings(ctx context.Context, _ *cobra.Command) ([]cobra.Completion, error) {
	list, err := r.recordings(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]cobra.Completion, 0, len(list))
	for _, rec := range list {
		dev := rec.DeviceName
		if dev == "" {
			dev = rec.Device
		}
		out = append(out, cli.Completion(rec.ID, rec.User+"@"+dev+" "+cli.Time(rec.Start)))
	}
	return out, nil
}

// playFlags are tsh play's flags.
type playFlags struct {
	speed   float64
	maxIdle time.Duration
	format  string
}

func (r *runner) playCommand() *cobra.Command {
	var f playFlags
	cmd := &cobra.Command{
		Use:   "play RECORDING_ID",
		Short: "Replay a recorded session",
		Long: `Replay a recorded session on this terminal at the speed it happened (or
faster with --speed), or print the recording itself (asciicast v2) with
--format=json. tsh recordings ls lists the IDs.`,
		Example: `  tsh play --speed=4 --max-idle=2s 5f0c3a...
  tsh play --format=json 5f0c3a... > session.cast`,
		Args:              cli.ExactArgs(1, "RECORDING_ID (tsh recordings ls lists them)"),
		ValidArgsFunction: cli.CompleteArgs(1, r.completeRecordings),
		RunE:              func(cmd *cobra.Command, args []string) error { return r.play(cmd, f, args[0]) },
	}
	cmd.Flags().Float64Var(&f.speed, "speed", 1, "playback speed: 1 is real time, 4 four times as fast, 0 as fast as possible")
	cmd.Flags().DurationVar(&f.maxIdle, "max-idle", 0, "shorten pauses longer than this `duration` to it (default: keep them)")
	cmd.Flags().StringVar(&f.format, "format", "text", "text plays the session's output on this terminal; json prints the recording itself (asciicast v2: a JSON header line, then one JSON event per line)")
	cmd.RegisterFlagCompletionFunc("format", cli.CompleteValues("text", "json"))
	return cmd
}

// play runs tsh play.
func (r *runner) play(cmd *cobra.Command, f playFlags, id string) error {
	ctx := cmd.Context()
	switch {
	case f.speed < 0:
		return cli.Usagef(cmd, "--speed must be 0 or more")
	case f.format != "text" && f.format != "json":
		return cli.Usagef(cmd, "--format must be text or json, not %q", f.format)
	}
	p, dir, err := r.currentProfile()
	if err != nil {
		return err
	}
	c, err := r.newClient(p, dir)
	if err != nil {
		return err
	}
	defer c.Close()
	data, err := c.Recording(ctx, id)
	if err != nil {
		return fmt.Errorf("play %s: %w", id, apiHint(err))
	}
	if f.format == "json" {
		_, err := r.stdio.Out.Write(data)
		return err
	}
	rd, err := asciicast.NewReader(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("play %s: %w", id, err)
	}
	return playCast(ctx, rd, r.stdio.Out, f.speed, f.maxIdle, sleepCtx)
}

// sleepCtx waits d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// playCast writes a recording's output to w, waiting between events as
// the session did, divided by speed (0: no waits), each wait at most
// maxIdle when that is set.
func playCast(ctx context.Context, rd *asciicast.Reader, w io.Writer, speed float64, maxIdle time.Duration, sleep func(context.Context, time.Duration) error) error {
	last := 0.0
	for {
		e, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if speed > 0 {
			d := time.Duration((e.Time - last) / speed * float64(time.Second))
			if maxIdle > 0 && d > maxIdle {
				d = maxIdle
			}
			if d > 0 {
				if err := sleep(ctx, d); err != nil {
					return err
				}
			}
		}
		last = e.Time
		if e.Type == asciicast.Output {
			if _, err := io.WriteString(w, e.Data); err != nil {
				return err
			}
		}
	}
}
