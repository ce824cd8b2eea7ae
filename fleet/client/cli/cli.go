// Package cli holds what tsh and fleetctl share as command-line programs,
// which are built on github.com/spf13/cobra: the behaviour of every command
// (Setup, Execute: help at every level, suggestions, exit codes), the one
// output contract (--format=text|json|yaml, api.List, tables that escape
// what they print), shell completion from the fleet, prompts that read
// secrets without echo from a terminal (or lines from a pipe), and the
// human formats of times, durations and labels. Only fleet/tsh and
// fleet/fleetctl import it; docs/cli/README.md says how to add a command.
package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"golang.org/x/term"
)

// Terminal reports whether x (an *os.File, say) is a terminal, and its file
// descriptor.
func Terminal(x any) (fd int, ok bool) {
	f, isFile := x.(interface{ Fd() uintptr })
	if !isFile {
		return -1, false
	}
	fd = int(f.Fd())
	return fd, term.IsTerminal(fd)
}

// Prompt reads answers from In, writing prompts to Err only when In is a
// terminal. Line reads go through one buffer, so consecutive answers piped
// on stdin ("password\ncode\n") are read in turn.
//
// A read ends early when its ctx is done (Ctrl-C at a prompt): the terminal
// is restored and ctx.Err() returned, but the goroutine doing the read stays
// blocked until input comes; the Prompt must not be used after that, and
// the command is expected to exit.
type Prompt struct {
	In  io.Reader
	Err io.Writer

	lines *bufio.Reader // over In, made on first use
}

// Line reads one line, without its line ending. A last line without a
// newline counts; no line at all is an error.
func (p *Prompt) Line(ctx context.Context, prompt string) (string, error) {
	if _, ok := Terminal(p.In); ok {
		fmt.Fprint(p.Err, prompt)
	}
	if p.lines == nil {
		p.lines = bufio.NewReader(p.In)
	}
	return read(ctx, func() (string, error) {
		line, err := p.lines.ReadString('\n')
		if err != nil && (err != io.EOF || line == "") {
			if err == io.EOF {
				return "", errors.New("standard input ended")
			}
			return "", err
		}
		return strings.TrimRight(line, "\r\n"), nil
	})
}

// Secret reads a secret without echo from a terminal, else one line.
func (p *Prompt) Secret(ctx context.Context, prompt string) (string, error) {
	fd, ok := Terminal(p.In)
	if !ok {
		return p.Line(ctx, prompt)
	}
	state, err := term.GetState(fd)
	if err != nil {
		return "", err
	}
	fmt.Fprint(p.Err, prompt)
	defer fmt.Fprintln(p.Err)
	s, err := read(ctx, func() (string, error) {
		b, err := term.ReadPassword(fd)
		return string(b), err
	})
	if ctx.Err() != nil {
		term.Restore(fd, state) // ReadPassword turned echo off
	}
	return s, err
}

// read runs fn, returning early with ctx.Err() when ctx is done first.
func read(ctx context.Context, fn func() (string, error)) (string, error) {
	type result struct {
		s   string
		err error
	}
	done := make(chan result, 1)
	go func() {
		s, err := fn()
		done <- result{s, err}
	}()
	select {
	case r := <-done:
		return r.s, r.err
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// Duration prints a duration the way people say it: 7h59m, 45m, 30s, 3d.
// The sign is dropped.
func Duration(d time.Duration) string {
	if d < 0 {
		d = -d
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		h := int(d.Hours())
		if m := int(d.Minutes()) % 60; m != 0 {
			return fmt.Sprintf("%dh%dm", h, m)
		}
		return fmt.Sprintf("%dh", h)
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}

// Ago says how long before now t was: "12s ago", "just now", "never" for
// the zero time.
func Ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := now.Sub(t)
	if d < time.Second {
		return "just now"
	}
	return Duration(d) + " ago"
}

// Until says how long from now t is: "in 45m", or "expired 2h ago".
func Until(now, t time.Time) string {
	if t.Before(now) {
		return "expired " + Duration(now.Sub(t)) + " ago"
	}
	return "in " + Duration(t.Sub(now))
}

// Time prints t in local time with its zone.
func Time(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05 MST") }

// Labels prints labels as k=v,k2=v2 in key order, or "-".
func Labels(labels map[string]string) string {
	if len(labels) == 0 {
		return "-"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		parts = append(parts, k+"="+labels[k])
	}
	return strings.Join(parts, ",")
}

// List prints names separated by ", ", or "(none)".
func List(s []string) string {
	if len(s) == 0 {
		return "(none)"
	}
	return strings.Join(s, ", ")
}

// Dash prints s, or "-" when it is empty (for table cells).
func Dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
