package harness

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func sh(script string) Cmd { return Cmd{Name: "sh", Path: "/bin/sh", Args: []string{"-c", script}} }

func TestWaitLineInOrder(t *testing.T) {
	p := Start(t, sh(`echo one; echo two >&2; echo three; sleep 30`))
	re := regexp.MustCompile(`^(one|two|three)$`)
	var got []string
	for range 3 {
		got = append(got, p.WaitLine(re, 30*time.Second)[1])
	}
	// stdout and stderr are read apart: "two" may come anywhere, but
	// "one" comes before "three", and each line once.
	if strings.Join(slices.Sorted(slices.Values(got)), " ") != "one three two" || slices.Index(got, "one") > slices.Index(got, "three") {
		t.Errorf("WaitLine gave %q, want one, two and three, each once, one before three", got)
	}
	if p.Count(re) != 3 {
		t.Errorf("Count = %d, want 3", p.Count(re))
	}
	p.WaitOutput("one\n", 10*time.Second)
}

func TestWaitOutputSpansLines(t *testing.T) {
	p := Start(t, sh(`echo generated 30; echo generated 300; sleep 30`))
	p.WaitOutput("generated 300\n", 30*time.Second)
}

// A wait on a process that exits fails at once with its output, rather
// than at the timeout.
func TestWaitFailsWhenProcessExits(t *testing.T) {
	start := time.Now()
	err := Do(t.Context(), DoConfig{}, func(tb TB) error {
		p := Start(tb, sh(`echo bye; exit 3`))
		p.WaitLine(regexp.MustCompile(`never`), time.Minute)
		return errors.New("WaitLine returned")
	})
	if err == nil || !strings.Contains(err.Error(), "exited") || !strings.Contains(err.Error(), "bye") {
		t.Errorf("Do = %v, want an error saying sh exited, with its output", err)
	}
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("the wait took %s: it should end when the process exits", took)
	}
}

// What a process prints as it ends is in Output once Stop, Kill or Wait
// returns: they wait for the output to be read, not only for the exit.
// TestLastWordsAfterStop: after Stop, Wait or Done, the output is there
// to the last line.
func TestLastWordsAfterStop(t *testing.T) {
	script := `trap 'i=0; while [ $i -lt 200 ]; do echo "last $i"; i=$((i+1)); done; echo gone; exit 1' TERM; echo up; while :; do sleep 1; done`
	for i := range 10 {
		p := Start(t, sh(script))
		p.WaitOutput("up\n", 30*time.Second)
		p.Stop()
		if !strings.Contains(p.Output(), "gone\n") {
			t.Fatalf("round %d: after Stop, Output lacks the last line:\n%s", i, p.Tail(3))
		}
		q := Start(t, sh(`i=0; while [ $i -lt 200 ]; do echo "line $i"; i=$((i+1)); done; echo done; exit 2`))
		q.Wait(30 * time.Second)
		if !strings.Contains(q.Output(), "done\n") {
			t.Fatalf("round %d: after Wait, Output lacks the last line:\n%s", i, q.Tail(3))
		}
		r := Start(t, sh(`i=0; while [ $i -lt 200 ]; do echo "line $i"; i=$((i+1)); done; echo done`))
		<-r.Done()
		if !strings.Contains(r.Output(), "done\n") {
			t.Fatalf("round %d: after Done, Output lacks the last line:\n%s", i, r.Tail(3))
		}
	}
}

func TestWaitTimesOut(t *testing.T) {
	err := Do(t.Context(), DoConfig{}, func(tb TB) error {
		p := Start(tb, sh(`echo hi; sleep 30`))
		p.WaitOutput("never", 100*time.Millisecond)
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "within 100ms") {
		t.Errorf("Do = %v, want a timeout naming 100ms", err)
	}
}

// Stop ends a process that ignores SIGTERM (by SIGKILL after the
// timeout), and the children it started.
func TestStopKillsStubbornGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child")
	c := sh(`trap "" TERM; sleep 300 & echo $! > ` + pidFile + `; echo started; wait`)
	c.StopTimeout = 200 * time.Millisecond
	p := Start(t, c)
	p.WaitLine(regexp.MustCompile(`^started$`), 30*time.Second)
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	child, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	p.Stop()
	if !p.Exited() || p.ExitedAt().IsZero() {
		t.Fatal("Stop returned before the process exited")
	}
	if !Eventually(10*time.Second, func() bool { return syscall.Kill(child, 0) != nil }) {
		t.Errorf("the child %d outlived Stop", child)
	}
	p.Stop() // again: nothing to do
}

func TestNilProcStops(t *testing.T) {
	var p *Proc
	p.Stop()
	p.Kill()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Error(err)
	}
}

func TestStartErrMissingProgram(t *testing.T) {
	p, err := StartErr(t, Cmd{Path: filepath.Join(t.TempDir(), "no-such-program")})
	if err == nil || p != nil {
		t.Fatalf("StartErr = %v, %v; want nil and an error", p, err)
	}
	p.Stop()
}

// Do stops what it started when its function returns, runs the clean-ups
// last first, removes its temporary directory and refuses to start
// processes once it is done.
func TestDoCleansUp(t *testing.T) {
	var (
		order []int
		p     *Proc
		dir   string
		tb    TB
	)
	err := Do(context.Background(), DoConfig{}, func(s TB) error {
		tb = s
		dir = s.TempDir()
		p = Start(s, sh(`sleep 300`))
		s.Cleanup(func() { order = append(order, 1) })
		s.Cleanup(func() { order = append(order, 2) })
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Exited() {
		t.Error("the process still runs after Do")
	}
	if len(order) != 2 || order[0] != 2 {
		t.Errorf("clean-ups ran in order %v, want [2 1]", order)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("TempDir %s still there: %v", dir, err)
	}
	if tb.Context().Err() == nil {
		t.Error("the context is still live after Do")
	}
	if _, err := StartErr(tb, sh(`true`)); err == nil {
		t.Error("StartErr after Do started a process")
	}
}

func TestDoFatalf(t *testing.T) {
	errBoom := errors.New("boom")
	after := false
	err := Do(t.Context(), DoConfig{}, func(tb TB) error {
		tb.Fatalf("step: %w", errBoom)
		after = true
		return nil
	})
	if !errors.Is(err, errBoom) || after {
		t.Errorf("Do = %v (went on after Fatalf: %v), want the Fatalf error, wrapped", err, after)
	}
}

func TestRunErr(t *testing.T) {
	r, err := RunErr(t.Context(), "in", sh(`cat; echo err >&2; exit 2`))
	if ExitCode(err) != 2 || r.Stdout != "in" || r.Stderr != "err\n" {
		t.Errorf("RunErr = %+v, %v (exit %d); want stdout in, stderr err, exit 2", r, err, ExitCode(err))
	}
	if !strings.Contains(err.Error(), "err") {
		t.Errorf("the error %q lacks the output", err)
	}
	if ExitCode(nil) != 0 {
		t.Error("ExitCode(nil) != 0")
	}
}

func TestEventually(t *testing.T) {
	n := 0
	if !Eventually(10*time.Second, func() bool { n++; return n == 3 }) {
		t.Error("Eventually gave up on a condition that held on the third try")
	}
	if Eventually(50*time.Millisecond, func() bool { return false }) {
		t.Error("Eventually reported a condition that never held")
	}
}

// The log file gets every line, and a second process of the same name (a
// restart) adds to it.
func TestLogDir(t *testing.T) {
	dir := t.TempDir()
	for _, word := range []string{"first", "second"} {
		c := sh(`echo ` + word)
		c.Name, c.LogDir = "with space", dir
		p := Start(t, c)
		p.WaitLine(regexp.MustCompile(`^`+word+`$`), 30*time.Second)
		p.Stop()
	}
	if !Eventually(10*time.Second, func() bool {
		b, _ := os.ReadFile(filepath.Join(dir, "with_space.log"))
		return strings.Contains(string(b), " first\n") && strings.Contains(string(b), " second\n")
	}) {
		t.Error("the log file lacks a line")
	}
}
