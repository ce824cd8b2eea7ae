package tsh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/asciicast"
)

// recordings runs tsh recordings ls.
func (r *runner) recordings(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] != "ls" {
		fmt.Fprintln(r.stdio.Err, "Usage: tsh recordings ls [--format=text|json]")
		return errUsage
	}
	fs := r.flags("recordings ls", "tsh recordings ls [--format=text|json]")
	format := fs.String("format", "text", "output format: text or json")
	pos, err := cli.Parse(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return r.usageError(fs, "unexpected argument %q", pos[0])
	}
	if *format != "text" && *format != "json" {
		return r.usageError(fs, "--format must be text or json, not %q", *format)
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
	list, err := c.Recordings(ctx)
	if err != nil {
		return fmt.Errorf("recordings ls: %w", apiHint(err))
	}
	if list == nil {
		list = []api.Recording{}
	}
	if *format == "json" {
		b, err := jsonIndent(list)
		if err != nil {
			return err
		}
		_, err = r.stdio.Out.Write(b)
		return err
	}
	if len(list) == 0 {
		fmt.Fprintln(r.stdio.Err, "No recordings you may see yet; interactive sessions (tsh ssh with a terminal) are recorded.")
		return nil
	}
	tw := tabwriter.NewWriter(r.stdio.Out, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tDEVICE\tUSER\tLOGIN\tKIND\tSTARTED\tDURATION\tSIZE\tSTATUS")
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
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", rec.ID, cli.Dash(dev), cli.Dash(rec.User), cli.Dash(rec.Login),
			cli.Dash(kind), cli.Time(rec.Start), dur, fmtBytes(rec.Size), status)
	}
	return tw.Flush()
}

// play runs tsh play.
func (r *runner) play(ctx context.Context, args []string) error {
	fs := r.flags("play", "tsh play [--speed=N] [--max-idle=DURATION] [--format=text|json] RECORDING_ID")
	speed := fs.Float64("speed", 1, "playback speed: 1 is real time, 4 four times as fast, 0 as fast as possible")
	maxIdle := fs.Duration("max-idle", 0, "shorten pauses longer than this `duration` to it (default: keep them)")
	format := fs.String("format", "text", "text plays the session's output on this terminal; json prints the recording itself (asciicast v2: a JSON header line, then one JSON event per line)")
	pos, err := cli.Parse(fs, args)
	if err != nil {
		return err
	}
	switch {
	case len(pos) != 1:
		return r.usageError(fs, "want one RECORDING_ID (see tsh recordings ls)")
	case *speed < 0:
		return r.usageError(fs, "--speed must be 0 or more")
	case *format != "text" && *format != "json":
		return r.usageError(fs, "--format must be text or json, not %q", *format)
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
	data, err := c.Recording(ctx, pos[0])
	if err != nil {
		return fmt.Errorf("play %s: %w", pos[0], apiHint(err))
	}
	if *format == "json" {
		_, err := r.stdio.Out.Write(data)
		return err
	}
	rd, err := asciicast.NewReader(bytes.NewReader(data))
	if err != nil {
		return fmt.Errorf("play %s: %w", pos[0], err)
	}
	return playCast(ctx, rd, r.stdio.Out, *speed, *maxIdle, sleepCtx)
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
