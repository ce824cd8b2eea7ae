package harness

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Cmd says how to start a process.
type Cmd struct {
	// Name names the process in logs and errors; default the program's
	// base name.
	Name string
	// Path is the program: a path, or a name looked up in PATH. Required.
	Path string
	// Args are its arguments, without the program.
	Args []string
	// Env is added to this process's environment.
	Env []string
	// Dir is its working directory; empty is this process's.
	Dir string
	// Stdin is its standard input; nil is empty.
	Stdin io.Reader
	// LogDir, when set, also gets the output, each line timed, appended
	// to LogDir/NAME.log; a failure then logs only the last lines and the
	// file's path rather than everything.
	LogDir string
	// StopTimeout is how long Stop waits after SIGTERM before SIGKILL;
	// default 10s.
	StopTimeout time.Duration
	// Timeout bounds a command that RunErr runs; default RunTimeout.
	Timeout time.Duration
}

// Line is one line of a process's output.
type Line struct {
	At     time.Time // when it was read
	Text   string    // without the newline
	Stderr bool      // it came on stderr
}

// Proc is a running (or exited) process started by Start. Its stdout and
// stderr are read line by line and kept. The methods of a nil *Proc that
// stop it do nothing, so a clean-up never fails on a process that never
// started.
type Proc struct {
	tb      TB
	name    string
	cmd     *exec.Cmd
	stopAft time.Duration
	log     *os.File // LogDir copy, nil without
	logPath string
	// Started is just before the exec.
	Started time.Time
	done    chan struct{} // closed when the process has exited

	mu       sync.Mutex // guards the fields below
	lines    []Line
	out      strings.Builder // the lines, joined, for Output
	next     int             // where the next WaitLine looks from
	changed  chan struct{}   // closed and replaced when a line arrives or the output ends
	open     int             // output streams not yet at EOF
	exitedAt time.Time
	err      error // from Wait
}

// Start starts a process and registers its Stop as a clean-up of tb. It
// fails tb when the process cannot start.
func Start(tb TB, c Cmd) *Proc {
	tb.Helper()
	p, err := StartErr(tb, c)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return p
}

// StartErr is Start returning the error; it returns a nil *Proc then.
func StartErr(tb TB, c Cmd) (*Proc, error) {
	if c.Name == "" {
		c.Name = filepath.Base(c.Path)
	}
	if c.StopTimeout <= 0 {
		c.StopTimeout = 10 * time.Second
	}
	if err := tb.Context().Err(); err != nil {
		return nil, fmt.Errorf("start %s: %w", c.Name, err)
	}
	p := &Proc{tb: tb, name: c.Name, stopAft: c.StopTimeout, done: make(chan struct{}), changed: make(chan struct{}), open: 2}
	cmd := exec.Command(c.Path, c.Args...)
	cmd.Env = environ(c)
	cmd.Dir = c.Dir
	cmd.Stdin = c.Stdin
	cmd.SysProcAttr = childAttr()
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", c.Name, err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return nil, fmt.Errorf("start %s: %w", c.Name, err)
	}
	cmd.Stdout, cmd.Stderr = outW, errW
	if c.LogDir != "" {
		p.logPath = filepath.Join(c.LogDir, strings.NewReplacer(" ", "_", "/", "_").Replace(c.Name)+".log")
		// Appended: a restarted process (fleetd) keeps its predecessor's
		// lines in front of its own.
		if p.log, err = os.OpenFile(p.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644); err != nil {
			outR.Close()
			outW.Close()
			errR.Close()
			errW.Close()
			return nil, fmt.Errorf("start %s: %w", c.Name, err)
		}
	}
	p.cmd = cmd
	p.Started = time.Now()
	err = cmd.Start()
	outW.Close()
	errW.Close()
	if err != nil {
		outR.Close()
		errR.Close()
		if p.log != nil {
			p.log.Close()
		}
		return nil, fmt.Errorf("start %s: %w", c.Name, err)
	}
	go p.read(outR, false)
	go p.read(errR, true)
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.exitedAt, p.err = time.Now(), err
		p.wakeLocked()
		p.mu.Unlock()
		// Done means the output is all there too (or a child the
		// process left behind holds it open past a second).
		p.settle()
		close(p.done)
	}()
	tb.Cleanup(func() {
		p.Stop()
		if tb.Failed() {
			if p.logPath != "" {
				tb.Logf("--- %s, last lines (all in %s):\n%s", p.name, p.logPath, p.Tail(20))
			} else {
				tb.Logf("--- %s output:\n%s", p.name, p.Output())
			}
		}
	})
	return p, nil
}

// read keeps the lines of one output stream.
func (p *Proc) read(r *os.File, stderr bool) {
	defer r.Close()
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		p.add(Line{At: time.Now(), Text: sc.Text(), Stderr: stderr})
	}
	io.Copy(io.Discard, r) // past an over-long line
	p.mu.Lock()
	defer p.mu.Unlock()
	p.open--
	if p.open == 0 && p.log != nil {
		p.log.Close()
	}
	p.wakeLocked()
}

func (p *Proc) add(l Line) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lines = append(p.lines, l)
	p.out.WriteString(l.Text)
	p.out.WriteByte('\n')
	if p.log != nil {
		fmt.Fprintf(p.log, "%s %s\n", l.At.Format("15:04:05.000"), l.Text)
	}
	p.wakeLocked()
}

func (p *Proc) wakeLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// Name is the process's name in logs.
func (p *Proc) Name() string { return p.name }

// PID is the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited and its output has been
// read to the end.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitedAt is when the process exited; zero while it runs.
func (p *Proc) ExitedAt() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.exitedAt
}

// Err is how the process ended (exec.Cmd.Wait's error); nil while it
// runs.
func (p *Proc) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Output returns everything the process wrote so far, stdout and stderr
// lines in the order read.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Lines returns a copy of the lines so far.
func (p *Proc) Lines() []Line {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Line(nil), p.lines...)
}

// Mark returns the number of lines so far, for AwaitLine to look after.
func (p *Proc) Mark() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

// Count returns how many lines so far match re.
func (p *Proc) Count(re *regexp.Regexp) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.lines {
		if re.MatchString(l.Text) {
			n++
		}
	}
	return n
}

// Tail returns the last n lines, indented.
func (p *Proc) Tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for _, l := range p.lines[max(0, len(p.lines)-n):] {
		b.WriteString("    " + l.Text + "\n")
	}
	return b.String()
}

// WaitLine waits for a line matching re after the line the last WaitLine
// matched, and returns its submatches. It fails the TB the process was
// started with when the process ends first or timeout passes.
func (p *Proc) WaitLine(re *regexp.Regexp, timeout time.Duration) []string {
	p.tb.Helper()
	_, m := p.WaitLineAt(re, timeout)
	return m
}

// WaitLineAt is WaitLine that also returns the line.
func (p *Proc) WaitLineAt(re *regexp.Regexp, timeout time.Duration) (Line, []string) {
	p.tb.Helper()
	p.mu.Lock()
	from := p.next
	p.mu.Unlock()
	l, m, n, err := p.await(p.tb.Context(), from, re, timeout)
	if err != nil {
		p.tb.Fatalf("%v", err)
	}
	p.mu.Lock()
	p.next = max(p.next, n+1)
	p.mu.Unlock()
	return l, m
}

// AwaitLine waits for a line matching re at index from (see Mark) or
// later and returns it with its submatches; it returns an error when the
// process ends first, timeout passes or ctx ends. It leaves WaitLine's
// place alone and may be called from any goroutine.
func (p *Proc) AwaitLine(ctx context.Context, from int, re *regexp.Regexp, timeout time.Duration) (Line, []string, error) {
	l, m, _, err := p.await(ctx, from, re, timeout)
	return l, m, err
}

func (p *Proc) await(ctx context.Context, from int, re *regexp.Regexp, timeout time.Duration) (Line, []string, int, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for i := from; ; {
		p.mu.Lock()
		for ; i < len(p.lines); i++ {
			if m := re.FindStringSubmatch(p.lines[i].Text); m != nil {
				l := p.lines[i]
				p.mu.Unlock()
				return l, m, i, nil
			}
		}
		ended, ch := p.endedLocked(), p.changed
		p.mu.Unlock()
		if ended {
			return Line{}, nil, 0, fmt.Errorf("%s exited (%v) before printing %q:\n%s", p.name, p.Err(), re, p.Tail(20))
		}
		select {
		case <-ch:
		case <-deadline.C:
			return Line{}, nil, 0, fmt.Errorf("%s did not print %q within %s:\n%s", p.name, re, timeout, p.Tail(20))
		case <-ctx.Done():
			return Line{}, nil, 0, fmt.Errorf("%s: waiting for %q: %w", p.name, re, ctx.Err())
		}
	}
}

// endedLocked reports whether no more output can come: the process has
// exited and its output is read, or it exited over a second ago (a child
// it left behind may hold the output open).
func (p *Proc) endedLocked() bool {
	if p.exitedAt.IsZero() {
		return false
	}
	if p.open == 0 || time.Since(p.exitedAt) > time.Second {
		return true
	}
	// Look again when the second is up.
	ch := p.changed
	time.AfterFunc(time.Second-time.Since(p.exitedAt), func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.changed == ch {
			p.wakeLocked()
		}
	})
	return false
}

// WaitOutput waits until the output holds s (which may span lines: they
// end in "\n"). It fails the TB when the process ends first or timeout
// passes.
func (p *Proc) WaitOutput(s string, timeout time.Duration) {
	p.tb.Helper()
	if err := p.AwaitOutput(p.tb.Context(), s, timeout); err != nil {
		p.tb.Fatalf("%v", err)
	}
}

// AwaitOutput is WaitOutput returning the error.
func (p *Proc) AwaitOutput(ctx context.Context, s string, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for from := 0; ; {
		p.mu.Lock()
		out := p.out.String()
		ended, ch := p.endedLocked(), p.changed
		p.mu.Unlock()
		if strings.Contains(out[from:], s) {
			return nil
		}
		from = max(0, len(out)-len(s))
		if ended {
			return fmt.Errorf("%s exited (%v) without printing %q:\n%s", p.name, p.Err(), s, p.Tail(20))
		}
		select {
		case <-ch:
		case <-deadline.C:
			return fmt.Errorf("%s did not print %q within %s:\n%s", p.name, s, timeout, p.Tail(20))
		case <-ctx.Done():
			return fmt.Errorf("%s: waiting for %q: %w", p.name, s, ctx.Err())
		}
	}
}

// Wait waits for the process to exit, up to timeout, and for its output to
// be read, and returns how it ended; it fails the TB when it runs on.
func (p *Proc) Wait(timeout time.Duration) error {
	p.tb.Helper()
	select {
	case <-p.done:
		p.settle()
		return p.Err()
	case <-time.After(timeout):
		p.tb.Fatalf("%s still runs after %s:\n%s", p.name, timeout, p.Tail(20))
	case <-p.tb.Context().Done():
		p.tb.Fatalf("%s: waiting for it to exit: %v", p.name, p.tb.Context().Err())
	}
	return nil
}

// Signal sends sig to the process's group.
func (p *Proc) Signal(sig syscall.Signal) error {
	if p == nil || p.Exited() {
		return nil
	}
	return signalGroup(p.cmd.Process, sig)
}

// Stop asks the process to end (SIGTERM to its process group), waits up
// to the Cmd's StopTimeout and then kills the group. It returns once the
// process has exited and its output is read; it does nothing on a nil or exited Proc (but kill
// what the process left behind in its group).
func (p *Proc) Stop() {
	if p == nil {
		return
	}
	if !p.Exited() {
		signalGroup(p.cmd.Process, syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(p.stopAft):
		}
	}
	p.Kill()
}

// Kill kills the process's group at once and waits for the process to
// exit. It does nothing on a nil Proc.
func (p *Proc) Kill() {
	if p == nil {
		return
	}
	signalGroup(p.cmd.Process, syscall.SIGKILL)
	<-p.done
	p.settle()
}

// settle waits, once the process has exited, until its output is read to
// the end (or a second has passed: a child it left behind may hold the
// output open), so that Output then holds every line it printed.
func (p *Proc) settle() {
	for {
		p.mu.Lock()
		ended, ch := p.endedLocked(), p.changed
		p.mu.Unlock()
		if ended {
			return
		}
		<-ch
	}
}
