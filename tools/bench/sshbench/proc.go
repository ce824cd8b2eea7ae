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

// proc is a long-running child process (fleetd, the agent, sshd, an ssh
// ControlMaster). Its stdout and stderr go, merged, to a log file and, line
// by line, to waitLine.
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string // path of the log file
	done chan struct{}
	// lines receives output lines until the output ends; lines that find
	// it full are dropped (they are still in the log file).
	lines chan string
}

// procs owns every long-running child of a run; stopAll ends them.
type procs struct {
	mu   sync.Mutex // guards list
	list []*proc
}

// start starts a child process with its output logged to dir/name.log.
func (ps *procs) start(dir, name string, env []string, path string, args ...string) (*proc, error) {
	logPath := filepath.Join(dir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, log: logPath, done: make(chan struct{}), lines: make(chan string, 256)}
	p.cmd = exec.Command(path, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = pw, pw
	p.cmd.SysProcAttr = childAttr()
	err = p.cmd.Start()
	pw.Close()
	if err != nil {
		pr.Close()
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	ps.mu.Lock()
	ps.list = append(ps.list, p)
	ps.mu.Unlock()
	go func() {
		defer logFile.Close()
		defer pr.Close()
		defer close(p.lines)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			fmt.Fprintln(logFile, sc.Text())
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
	}()
	go func() {
		p.cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// pid is the process id.
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

// stop sends SIGTERM and waits for the process to end, with SIGKILL after
// 5 s.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// stopAll stops every process, the last started first.
func (ps *procs) stopAll() {
	ps.mu.Lock()
	list := ps.list
	ps.list = nil
	ps.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		list[i].stop()
	}
}

// waitLine waits for an output line matching re and returns its
// submatches.
func (p *proc) waitLine(ctx context.Context, re *regexp.Regexp, timeout time.Duration) ([]string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				return nil, fmt.Errorf("%s ended before printing %q:\n%s", p.name, re, p.tail(20))
			}
			if m := re.FindStringSubmatch(l); m != nil {
				return m, nil
			}
		case <-deadline.C:
			return nil, fmt.Errorf("%s did not print %q within %s:\n%s", p.name, re, timeout, p.tail(20))
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// tail returns the last n lines of the process's log.
func (p *proc) tail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return "    " + strings.Join(lines, "\n    ")
}

// result is how one short command ended.
type result struct {
	stdout, stderr string
	elapsed        time.Duration // wall time from start to exit
	cpu            time.Duration // user+system time of it and its waited-for descendants
}

// runCmd runs a short command to completion and times it. Its error holds
// the command's stderr.
func runCmd(ctx context.Context, env []string, stdin string, path string, args ...string) (result, error) {
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.SysProcAttr = childAttr()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
	if cmd.ProcessState != nil {
		r.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if err != nil {
		return r, fmt.Errorf("%s %s: %w\n%s", path, strings.Join(args, " "), err, indent(stdout.String()+stderr.String()))
	}
	return r, nil
}

// indent prefixes each line of s with four spaces.
func indent(s string) string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return ""
	}
	return "    " + strings.ReplaceAll(s, "\n", "\n    ")
}
