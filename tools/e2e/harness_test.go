package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"remoteler.dev/edge/proto/api"
)

// bin holds the binaries built once for all tests.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "edge-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = dir
	cmd := exec.Command("go", "build", "-o", dir+"/",
		"remoteler.dev/edge/fleet/cmd/fleetd", "remoteler.dev/edge/fleet/cmd/tsh",
		"remoteler.dev/edge/fleet/cmd/fleetctl", "remoteler.dev/edge/firmware/cmd/edge-agent")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: build binaries:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a background process whose output is kept for the test log.
type proc struct {
	t    *testing.T
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex // guards out
	out  bytes.Buffer
	done chan struct{}
	// lines receives stdout lines until the process exits.
	lines chan string
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

// Output returns everything the process wrote so far.
func (p *proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func start(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, done: make(chan struct{}), lines: make(chan string, 100)}
	path := filepath.Join(bin, args[0])
	if _, err := os.Stat(path); err != nil {
		path = args[0] // a system command
	}
	p.cmd = exec.Command(path, args[1:]...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stderr = p
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.Write([]byte(sc.Text() + "\n"))
			select {
			case p.lines <- sc.Text():
			default:
			}
		}
		close(p.lines)
		p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("--- %s output:\n%s", name, p.Output())
		}
	})
	return p
}

// Stop sends SIGTERM and waits for the process to exit (SIGKILL after 10 s).
func (p *proc) Stop() {
	select {
	case <-p.done:
		return
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// Kill sends SIGKILL and waits.
func (p *proc) Kill() {
	p.cmd.Process.Kill()
	<-p.done
}

// waitLine waits for a stdout line matching re and returns its submatches.
func (p *proc) waitLine(re *regexp.Regexp, timeout time.Duration) []string {
	p.t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case l, ok := <-p.lines:
			if !ok {
				p.t.Fatalf("%s exited before printing %q:\n%s", p.name, re, p.Output())
			}
			if m := re.FindStringSubmatch(l); m != nil {
				return m
			}
		case <-deadline:
			p.t.Fatalf("%s did not print %q within %s:\n%s", p.name, re, timeout, p.Output())
		}
	}
}

// waitOutput waits until the process's output contains s (for log lines on
// stderr). It polls the captured output, bounded by timeout.
func (p *proc) waitOutput(s string, timeout time.Duration) {
	p.t.Helper()
	if !eventually(timeout, func() bool { return strings.Contains(p.Output(), s) }) {
		p.t.Fatalf("%s never logged %q:\n%s", p.name, s, p.Output())
	}
}

// eventually polls cond every 20 ms until it holds or timeout passes.
func eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fleet is a running fleetd.
type fleet struct {
	t       *testing.T
	dataDir string
	addr    string
	pin     string
	proc    *proc
}

var (
	listenRE = regexp.MustCompile(`listening on (\S+) `)
	pinRE    = regexp.MustCompile(`^CA pin: (sha256:[0-9a-f]{64})$`)
)

func startFleet(t *testing.T) *fleet {
	t.Helper()
	f := &fleet{t: t, dataDir: t.TempDir()}
	f.start("127.0.0.1:0")
	return f
}

func (f *fleet) start(listen string) {
	f.t.Helper()
	f.proc = start(f.t, "fleetd", nil, "fleetd", "start", "--data-dir", f.dataDir, "--listen", listen, "--log-level", "debug")
	f.addr = f.proc.waitLine(listenRE, 30*time.Second)[1]
	f.pin = f.proc.waitLine(pinRE, 5*time.Second)[1]
}

// restart stops fleetd and starts it again on the same port and data dir.
func (f *fleet) restart() {
	f.t.Helper()
	f.proc.Stop()
	f.start(f.addr)
}

// ctl runs fleetctl against this fleet and returns its stdout; it fails the
// test when fleetctl fails.
func (f *fleet) ctl(stdin string, args ...string) string {
	f.t.Helper()
	out, errOut, err := f.ctlErr(stdin, args...)
	if err != nil {
		f.t.Fatalf("fleetctl %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

func (f *fleet) ctlErr(stdin string, args ...string) (string, string, error) {
	return run(stdin, nil, "fleetctl", append([]string{"--data-dir", f.dataDir}, args...)...)
}

// run runs one of the built binaries (or a system command when name has no
// binary here) to completion.
func run(stdin string, env []string, name string, args ...string) (string, string, error) {
	path := filepath.Join(bin, name)
	if _, err := os.Stat(path); err != nil {
		path = name
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	return out.String(), errOut.String(), err
}

// addUser adds a user with a password and returns the password.
func (f *fleet) addUser(name string, roles, logins string) string {
	f.t.Helper()
	pw := "pw-" + name + "-0123456789"
	args := []string{"users", "add", name, "--roles=" + roles}
	if logins != "" {
		args = append(args, "--logins="+logins)
	}
	f.ctl(pw+"\n", args...)
	return pw
}

// token creates a join token and returns its join string.
func (f *fleet) token(args ...string) string {
	f.t.Helper()
	out := f.ctl("", append([]string{"tokens", "add", "--format=json"}, args...)...)
	var tok api.Token
	if err := json.Unmarshal([]byte(out), &tok); err != nil {
		f.t.Fatalf("tokens add --format=json: %v\n%s", err, out)
	}
	if tok.JoinString == "" {
		f.t.Fatalf("tokens add gave no join string: %s", out)
	}
	return tok.JoinString
}

// devices lists the fleet's devices.
func (f *fleet) devices() []api.Device {
	f.t.Helper()
	out := f.ctl("", "devices", "ls", "--format=json")
	var ds api.List[api.Device]
	if err := json.Unmarshal([]byte(out), &ds); err != nil {
		f.t.Fatalf("devices ls --format=json: %v\n%s", err, out)
	}
	return ds.Items
}

func (f *fleet) online(name string) bool {
	for _, d := range f.devices() {
		if d.Name == name {
			return d.Online
		}
	}
	return false
}

// waitOnline waits until the device is online.
func (f *fleet) waitOnline(name string) {
	f.t.Helper()
	if !eventually(30*time.Second, func() bool { return f.online(name) }) {
		f.t.Fatalf("device %s never came online: %+v", name, f.devices())
	}
}

// agent is a running edge-agent.
type agent struct {
	name    string
	dataDir string
	proc    *proc
}

// startAgent joins a new device called name with labels "k=v,..".
func (f *fleet) startAgent(name, labels string) *agent {
	f.t.Helper()
	a := &agent{name: name, dataDir: f.t.TempDir()}
	a.proc = start(f.t, "edge-agent "+name, nil, "edge-agent", "start", "--fleet", f.addr, "--token", f.token(),
		"--data-dir", a.dataDir, "--name", name, "--labels", labels, "--log-level", "debug")
	f.waitOnline(name)
	return a
}

// user is a tsh user with their own TSH_HOME.
type user struct {
	t    *testing.T
	f    *fleet
	name string
	home string
}

func (f *fleet) login(name, password string, extra ...string) *user {
	f.t.Helper()
	u := &user{t: f.t, f: f, name: name, home: f.t.TempDir()}
	out, errOut, err := u.tshErr(password+"\n", append([]string{"login", "--proxy=" + f.addr, "--user=" + name, "--ca-pin=" + f.pin}, extra...)...)
	if err != nil {
		f.t.Fatalf("tsh login %s: %v\n%s\n%s", name, err, out, errOut)
	}
	return u
}

func (u *user) env() []string { return []string{"TSH_HOME=" + u.home} }

func (u *user) tshErr(stdin string, args ...string) (string, string, error) {
	return run(stdin, u.env(), "tsh", args...)
}

func (u *user) tsh(args ...string) string {
	u.t.Helper()
	out, errOut, err := u.tshErr("", args...)
	if err != nil {
		u.t.Fatalf("tsh %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// exitCode returns the exit status of err from exec.
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}
