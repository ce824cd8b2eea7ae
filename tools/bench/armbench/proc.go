package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"
)

// procs owns every long-running child of a run (fleetd, the agents);
// stopAll ends them.
type procs struct {
	dir string // where the NAME.log files go

	mu  sync.Mutex // guards all
	all []*proc
}

// line is one line of a process's output and when it was read.
type line struct {
	at   time.Time
	text string
}

// proc is a background process whose merged stdout and stderr are
// written to a log file and kept, line by line, with the time each line
// was read.
type proc struct {
	name    string
	cmd     *exec.Cmd
	log     string    // path of the log file
	started time.Time // just before the exec
	done    chan struct{}

	mu      sync.Mutex // guards lines and changed
	lines   []line
	changed chan struct{} // closed (and replaced) when a line arrives or the output ends
	ended   bool          // the output has ended
}

// start starts path with args in the background, logging to DIR/name.log;
// env is added to this process's environment.
func (ps *procs) start(name string, env []string, path string, args ...string) (*proc, error) {
	logPath := filepath.Join(ps.dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, log: logPath, done: make(chan struct{}), changed: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	p.cmd.SysProcAttr = childAttr()
	p.started = time.Now()
	err = p.cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	ps.mu.Lock()
	ps.all = append(ps.all, p)
	ps.mu.Unlock()
	go func() {
		defer logFile.Close()
		defer pr.Close()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.add(line{at: time.Now(), text: sc.Text()})
			fmt.Fprintln(logFile, sc.Text())
		}
		p.mu.Lock()
		p.ended = true
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}()
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// add records a line and wakes the waiters.
func (p *proc) add(l line) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.lines = append(p.lines, l)
	close(p.changed)
	p.changed = make(chan struct{})
}

// pid is the process id (for a command started through a script that
// execs, the final program's).
func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitLine waits for an output line matching re and returns it with its
// submatches.
func (p *proc) waitLine(ctx context.Context, re *regexp.Regexp, timeout time.Duration) (line, []string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for i := 0; ; {
		p.mu.Lock()
		for ; i < len(p.lines); i++ {
			if m := re.FindStringSubmatch(p.lines[i].text); m != nil {
				l := p.lines[i]
				p.mu.Unlock()
				return l, m, nil
			}
		}
		ended, changed := p.ended, p.changed
		p.mu.Unlock()
		if ended {
			return line{}, nil, fmt.Errorf("%s ended before printing %q:\n%s", p.name, re, p.tail(20))
		}
		select {
		case <-changed:
		case <-deadline.C:
			return line{}, nil, fmt.Errorf("%s did not print %q within %s:\n%s", p.name, re, timeout, p.tail(20))
		case <-ctx.Done():
			return line{}, nil, ctx.Err()
		}
	}
}

// stop sends SIGTERM and waits for the process to end, with SIGKILL after
// 10 s (an agent under emulation takes a while to shut down).
func (p *proc) stop() {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// stopAll stops every process, the last started first.
func (ps *procs) stopAll() {
	ps.mu.Lock()
	all := ps.all
	ps.all = nil
	ps.mu.Unlock()
	for i := len(all) - 1; i >= 0; i-- {
		all[i].stop()
	}
}

// tail returns the last n lines of the process's output, indented.
func (p *proc) tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	ls := p.lines[max(0, len(p.lines)-n):]
	var b strings.Builder
	for _, l := range ls {
		b.WriteString("    " + l.text + "\n")
	}
	return strings.TrimRight(b.String(), "\n")
}

// runCmd runs a short command to completion with env added to this
// process's environment and returns its stdout. Its error holds the
// command's output.
func runCmd(ctx context.Context, env []string, path string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = childAttr()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\n%s", filepath.Base(path), strings.Join(args, " "), err, indent(stdout.String()+stderr.String()))
	}
	return stdout.String(), nil
}

// indent prefixes each line of s with four spaces.
func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}
