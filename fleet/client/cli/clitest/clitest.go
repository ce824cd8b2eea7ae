// Package clitest checks the behaviour every command of tsh and fleetctl
// must have, for their tests: help at every level (CheckHelp) and reference
// pages in docs/cli that match the code (CheckDocs). Only tests import it.
package clitest

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
	"github.com/spf13/pflag"

	"remoteler.dev/edge/fleet/client/cli"
)

var update = flag.Bool("update", false, "rewrite the reference pages in docs/cli instead of comparing them")

// Result is what one run of the program gave.
type Result struct {
	Code           int
	Stdout, Stderr string
}

// Runner runs the program with args (without its name).
type Runner func(args ...string) Result

// Commands lists the paths of root's commands below it ("kube login"),
// hidden ones included, but not cobra's own __complete.
func Commands(root *cobra.Command) [][]string {
	var out [][]string
	cli.Walk(root, func(c *cobra.Command) {
		if c == root || strings.HasPrefix(c.Name(), "__") {
			return
		}
		out = append(out, strings.Fields(c.CommandPath())[1:])
	})
	return out
}

// CheckHelp checks, for the program and every command and group in root:
// COMMAND --help exits 0 and prints a usage that names every subcommand of
// a group and every flag of a command; "help COMMAND" prints the same; a
// bare group prints it too; and a mistyped subcommand of a group fails
// with a suggestion.
func CheckHelp(t *testing.T, root *cobra.Command, run Runner) {
	t.Helper()
	paths := append([][]string{nil}, Commands(root)...)
	for _, path := range paths {
		name := strings.Join(append([]string{root.Name()}, path...), " ")
		t.Run(name, func(t *testing.T) {
			cmd, _, err := root.Find(path)
			if err != nil {
				t.Fatalf("find %q: %v", path, err)
			}
			r := run(append(slices.Clone(path), "--help")...)
			if r.Code != 0 || !strings.Contains(r.Stdout, "Usage:") {
				t.Fatalf("%s --help: exit %d, stdout %q, stderr %q; want 0 and a usage", name, r.Code, r.Stdout, r.Stderr)
			}
			for _, want := range wantInHelp(cmd) {
				if !strings.Contains(r.Stdout, want) {
					t.Errorf("%s --help does not name %q:\n%s", name, want, r.Stdout)
				}
			}
			if h := run(append([]string{"help"}, path...)...); h.Code != 0 || h.Stdout != r.Stdout {
				t.Errorf("%s help %s: exit %d, stdout\n%s\nwant the same as --help", root.Name(), strings.Join(path, " "), h.Code, h.Stdout)
			}
			if !cmd.HasAvailableSubCommands() {
				return
			}
			if b := run(path...); b.Code != 0 || b.Stdout != r.Stdout {
				t.Errorf("%s alone: exit %d, stdout\n%s\nwant its help", name, b.Code, b.Stdout)
			}
			var sub string
			for _, c := range cmd.Commands() {
				if c.IsAvailableCommand() && sub == "" {
					sub = c.Name()
				}
			}
			typo := sub[:len(sub)-1] + "x" + sub[len(sub)-1:]
			if m := run(append(slices.Clone(path), typo)...); m.Code != 1 || !strings.Contains(m.Stderr, "did you mean ") || !strings.Contains(m.Stderr, fmt.Sprintf("%q", sub)) {
				t.Errorf("%s %s: exit %d, stderr %q; want 1 and a suggestion of %q", name, typo, m.Code, m.Stderr, sub)
			}
		})
	}
}

// wantInHelp is what cmd's help must name: its subcommands, or its flags.
func wantInHelp(cmd *cobra.Command) []string {
	var want []string
	for _, sub := range cmd.Commands() {
		if sub.IsAvailableCommand() {
			want = append(want, sub.Name())
		}
	}
	cmd.LocalFlags().VisitAll(func(f *pflag.Flag) {
		if !f.Hidden {
			want = append(want, "--"+f.Name)
		}
	})
	return want
}

// CheckDocs checks that docs/cli holds the reference pages that cobra's doc
// generator writes for root, one per command (PROGRAM_COMMAND_SUB.md), and
// no stale page of the program. With -update it writes them instead:
//
//	go test ./fleet/tsh ./fleet/fleetctl -run TestReferenceDocs -update
func CheckDocs(t *testing.T, root *cobra.Command) {
	t.Helper()
	dir := filepath.Join(moduleRoot(t), "docs", "cli")
	gen := t.TempDir()
	root.DisableAutoGenTag = true
	cli.Walk(root, func(c *cobra.Command) { c.DisableAutoGenTag = true })
	if err := doc.GenMarkdownTree(root, gen); err != nil {
		t.Fatalf("generate the reference pages: %v", err)
	}
	fresh, err := filepath.Glob(filepath.Join(gen, root.Name()+"*.md"))
	if err != nil || len(fresh) == 0 {
		t.Fatalf("generated no pages (%v)", err)
	}
	old, _ := filepath.Glob(filepath.Join(dir, root.Name()+"*.md"))
	if *update {
		for _, f := range old {
			os.Remove(f)
		}
		for _, f := range fresh {
			b, _ := os.ReadFile(f)
			if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("wrote %d pages to %s", len(fresh), dir)
		return
	}
	const fix = "run: go test ./fleet/tsh ./fleet/fleetctl -run TestReferenceDocs -update"
	names := map[string]bool{}
	for _, f := range fresh {
		name := filepath.Base(f)
		names[name] = true
		want, _ := os.ReadFile(f)
		got, err := os.ReadFile(filepath.Join(dir, name))
		switch {
		case errors.Is(err, os.ErrNotExist):
			t.Errorf("docs/cli/%s is missing; %s", name, fix)
		case err != nil:
			t.Error(err)
		case !bytes.Equal(got, want):
			t.Errorf("docs/cli/%s is not what the code says; %s\n--- got\n%s\n--- want\n%s", name, fix, got, want)
		}
	}
	for _, f := range old {
		if !names[filepath.Base(f)] {
			t.Errorf("docs/cli/%s documents a command that no longer exists; %s", filepath.Base(f), fix)
		}
	}
}

// moduleRoot is the directory of go.mod above the working directory.
func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the working directory")
		}
		dir = parent
	}
}
