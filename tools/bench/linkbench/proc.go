package main

import (
	"bufio"
	"bytes"
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

// procs starts processes, keeps their logs in a directory, and stops every
// one of them in stopAll.
type procs struct {
	dir string

	mu  sync.Mutex // guards all
	all []*proc
}

// line is one line of a process's output and when it arrived.
type line struct {
	at   time.Time
	text string
}

// proc is a background process whose stdout and stderr lines are kept,
// timestamped on arrival, and written to NAME.log.
type proc struct {
	name    string
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{}
	log     *os.File

	mu      sync.Mutex // guards lines and changed
	lines   []line
	changed chan struct{}
}

// start runs path with args in the background; env is added to this
// process's environment.
func (ps *procs) start(name string, env []string, path string, args ...string) (*proc, error) {
	f, err := os.Create(filepath.Join(ps.dir, strings.ReplaceAll(name, " ", "_")+".log"))
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, done: make(chan struct{}), log: f, changed: make(chan struct{})}
	p.cmd = exec.Command(path, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.SysProcAttr = procAttr()
	pr, pw := io.Pipe()
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	ps.mu.Lock()
	ps.all = append(ps.all, p)
	ps.mu.Unlock()
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.add(sc.Text())
		}
		io.Copy(io.Discard, pr)
	}()
	go func() {
		p.cmd.Wait()
		pw.Close()
		f.Close()
		close(p.done)
		p.mu.Lock()
		close(p.changed)
		p.changed = make(chan struct{})
		p.mu.Unlock()
	}()
	return p, nil
}

func (p *proc) add(text string) {
	now := time.Now()
	fmt.Fprintf(p.log, "%s %s\n", now.Format("15:04:05.000"), text)
	p.mu.Lock()
	p.lines = append(p.lines, line{now, text})
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
}

// mark returns the number of lines so far, for waitLine to start after.
func (p *proc) mark() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

// count returns how many lines so far match re.
func (p *proc) count(re *regexp.Regexp) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, l := range p.lines {
		if re.MatchString(l.text) {
			n++
		}
	}
	return n
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitLine waits for a line matching re from line index from on and
// returns it with its submatches.
func (p *proc) waitLine(ctx context.Context, from int, re *regexp.Regexp, timeout time.Duration) (line, []string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for i := from; ; {
		p.mu.Lock()
		lines, ch := p.lines, p.changed
		p.mu.Unlock()
		for ; i < len(lines); i++ {
			if m := re.FindStringSubmatch(lines[i].text); m != nil {
				return lines[i], m, nil
			}
		}
		if p.exited() {
			// Lines may still be arriving from the pipe; look once more.
			time.Sleep(50 * time.Millisecond)
			if p.mark() == len(lines) {
				return line{}, nil, fmt.Errorf("%s exited before printing %q:\n%s", p.name, re, p.tail(15))
			}
			continue
		}
		select {
		case <-ch:
		case <-deadline.C:
			return line{}, nil, fmt.Errorf("%s did not print %q within %s:\n%s", p.name, re, timeout, p.tail(15))
		case <-ctx.Done():
			return line{}, nil, ctx.Err()
		}
	}
}

// tail returns the last n lines, indented.
func (p *proc) tail(n int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for _, l := range p.lines[max(0, len(p.lines)-n):] {
		b.WriteString("    " + l.text + "\n")
	}
	return b.String()
}

// stop sends SIGTERM to the process group and waits (SIGKILL after 10 s).
func (p *proc) stop() {
	if p.exited() {
		return
	}
	signalGroup(p.cmd.Process, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		signalGroup(p.cmd.Process, syscall.SIGKILL)
		<-p.done
	}
}

// stopAll stops every process started, newest first.
func (ps *procs) stopAll() {
	ps.mu.Lock()
	all := append([]*proc(nil), ps.all...)
	ps.mu.Unlock()
	for i := len(all) - 1; i >= 0; i-- {
		all[i].stop()
	}
}

// result is what a command that ran to completion printed.
type result struct {
	stdout, stderr string
}

// runCmd runs a command to completion with stdin, bounded by 2 minutes.
func runCmd(ctx context.Context, env []string, stdin, path string, args ...string) (result, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	r := result{out.String(), errOut.String()}
	if err != nil {
		return r, fmt.Errorf("%s %s: %w\n%s%s", filepath.Base(path), strings.Join(args, " "), err, indent(r.stdout), indent(r.stderr))
	}
	return r, nil
}

func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ") + "\n"
}

// childrenOf returns the pids whose parent is pid (Linux /proc).
func childrenOf(pid int) ([]int, error) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, e := range ents {
		var child int
		if _, err := fmt.Sscanf(e.Name(), "%d", &child); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		var state string
		var ppid int
		if _, err := fmt.Sscanf(string(b[i+1:]), " %s %d", &state, &ppid); err == nil && ppid == pid {
			out = append(out, child)
		}
	}
	return out, nil
}
