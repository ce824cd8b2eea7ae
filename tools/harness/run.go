package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"remoteler.dev/edge/tools/plainshell"
)

// Result is how a command run to completion ended.
type Result struct {
	Stdout, Stderr string
	// Took is the wall time from start to exit; CPU is the user and
	// system time of the command and the children it waited for.
	Took, CPU time.Duration
}

// Run runs a command to completion with stdin and returns its stdout; it
// fails tb when the command fails.
func Run(tb TB, stdin string, c Cmd) string {
	tb.Helper()
	r, err := RunErr(tb.Context(), stdin, c)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return r.Stdout
}

// RunTimeout bounds a command that RunErr runs, unless its Cmd says.
const RunTimeout = 3 * time.Minute

// RunErr runs a command to completion with stdin, bounded by ctx and by
// c.Timeout. When it fails, the error names the command and holds its
// output; the Result holds the output too.
func RunErr(ctx context.Context, stdin string, c Cmd) (Result, error) {
	if c.Timeout <= 0 {
		c.Timeout = RunTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, c.Timeout)
	defer cancel()
	c.Stdin = strings.NewReader(stdin)
	cmd := Command(ctx, c)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	start := time.Now()
	err := cmd.Run()
	r := Result{Stdout: out.String(), Stderr: errOut.String(), Took: time.Since(start)}
	if cmd.ProcessState != nil {
		r.CPU = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if err != nil {
		return r, fmt.Errorf("%s %s: %w\n%s%s", filepath.Base(c.Path), strings.Join(c.Args, " "), err, Indent(r.Stdout), Indent(r.Stderr))
	}
	return r, nil
}

// ExitCode returns the exit status in err from exec: 0 for nil, -1 when
// the command did not exit (it could not start, or a signal ended it).
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

// Indent prefixes each line of s with four spaces and ends it with a
// newline; it returns "" for an empty s.
func Indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ") + "\n"
}

// Eventually polls cond until it holds or timeout passes, and reports
// whether it held. It polls every 20 ms at first and backs off to every
// 500 ms, so a cond that starts a process does not load a busy machine.
func Eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	wait := 20 * time.Millisecond
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(min(wait, time.Until(deadline)+time.Millisecond))
		wait = min(wait*3/2, 500*time.Millisecond)
	}
}

// Command returns an exec.Cmd for c, for a caller that needs the raw
// pipes: like the harness's own children it has a process group of its own
// that ctx's end kills (and Cancel kills at any time), and on Linux it dies
// with this process. c.Name, LogDir and StopTimeout are not used.
func Command(ctx context.Context, c Cmd) *exec.Cmd {
	cmd := exec.CommandContext(ctx, c.Path, c.Args...)
	cmd.Env = environ(c)
	cmd.Dir = c.Dir
	cmd.Stdin = c.Stdin
	cmd.SysProcAttr = childAttr()
	cmd.Cancel = func() error { return signalGroup(cmd.Process, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// environ is the environment of c's process: this process's, then c.Env.
// Every process sees plainshell's passwd file in EDGE_AGENT_PASSWD (unless
// either sets it), so that an edge-agent the harness starts, whichever way
// it is launched, gives logins a plain shell rather than the host user's.
func environ(c Cmd) []string {
	env := append(os.Environ(), c.Env...)
	if withShell, err := plainshell.Env(env); err == nil {
		return withShell
	}
	return env
}
