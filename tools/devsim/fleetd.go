package devsim

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/proto/api"
)

// Build builds the named commands of this module (import paths such as
// "remoteler.dev/edge/fleet/cmd/fleetd") into dir with go build. It must
// run inside the module.
func Build(ctx context.Context, dir string, pkgs ...string) error {
	args := append([]string{"build", "-o", dir + string(filepath.Separator)}, pkgs...)
	cmd := exec.CommandContext(ctx, "go", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go build (run it inside the repository): %w\n%s", err, out.String())
	}
	return nil
}

// FleetdConfig says how to start fleetd.
type FleetdConfig struct {
	// Bin is the directory holding the fleetd binary. Required.
	Bin string
	// DataDir is fleetd's --data-dir. Required.
	DataDir string
	// Listen is fleetd's --listen; default 127.0.0.1:0.
	Listen string
	// LogLevel is fleetd's --log-level; default warn (a fleet of simulated
	// devices logs a line per connect otherwise).
	LogLevel string
	// Log receives fleetd's stderr; nil discards it.
	Log io.Writer
	// Args are more fleetd flags (--release-key=KEY, say).
	Args []string
}

// Fleetd is a fleetd process started by a tool.
type Fleetd struct {
	cfg FleetdConfig
	// Addr is where it listens (HTTPS on TCP, tunnels on UDP); Pin is its
	// CA pin. Both stay the same across Restart.
	Addr, Pin string
	// ReadyAt is when the current process printed that it listens.
	ReadyAt time.Time

	mu   sync.Mutex // guards cmd and done
	cmd  *exec.Cmd
	done chan struct{}
}

var (
	listenRE = regexp.MustCompile(`listening on (\S+) `)
	pinRE    = regexp.MustCompile(`^CA pin: (sha256:[0-9a-f]{64})$`)
)

// StartFleetd starts fleetd and waits until it listens.
func StartFleetd(ctx context.Context, cfg FleetdConfig) (*Fleetd, error) {
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "warn"
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	f := &Fleetd{cfg: cfg}
	if err := f.start(ctx, cfg.Listen); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *Fleetd) start(ctx context.Context, listen string) error {
	cmd := exec.Command(filepath.Join(f.cfg.Bin, "fleetd"), append([]string{"start", "--data-dir", f.cfg.DataDir,
		"--listen", listen, "--log-level", f.cfg.LogLevel}, f.cfg.Args...)...)
	cmd.Stderr = f.cfg.Log
	cmd.SysProcAttr = childAttr()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("start fleetd: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start fleetd: %w", err)
	}
	done := make(chan struct{})
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
		close(lines)
		cmd.Wait()
		close(done)
	}()
	f.mu.Lock()
	f.cmd, f.done = cmd, done
	f.mu.Unlock()
	timeout := time.NewTimer(60 * time.Second)
	defer timeout.Stop()
	var addr, caPin string
	for addr == "" || caPin == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				return errors.New("start fleetd: it exited before it listened (see its log)")
			}
			if m := listenRE.FindStringSubmatch(l); m != nil {
				addr = m[1]
				f.ReadyAt = time.Now()
			}
			if m := pinRE.FindStringSubmatch(l); m != nil {
				caPin = m[1]
			}
		case <-timeout.C:
			f.Kill()
			return errors.New("start fleetd: it did not listen within 60s")
		case <-ctx.Done():
			f.Kill()
			return ctx.Err()
		}
	}
	f.Addr, f.Pin = addr, caPin
	return nil
}

// PID returns the current process's id.
func (f *Fleetd) PID() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cmd.Process.Pid
}

// Stop sends SIGTERM and waits for fleetd to exit (SIGKILL after 30 s). It
// returns how long the exit took.
func (f *Fleetd) Stop() time.Duration {
	f.mu.Lock()
	cmd, done := f.cmd, f.done
	f.mu.Unlock()
	start := time.Now()
	select {
	case <-done:
		return 0
	default:
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
	}
	return time.Since(start)
}

// Kill kills fleetd at once and waits for it.
func (f *Fleetd) Kill() {
	f.mu.Lock()
	cmd, done := f.cmd, f.done
	f.mu.Unlock()
	cmd.Process.Kill()
	<-done
}

// Restart stops fleetd and starts it again on the same address and data
// directory. It returns how long the old process took to exit.
func (f *Fleetd) Restart(ctx context.Context) (stopped time.Duration, err error) {
	stopped = f.Stop()
	return stopped, f.start(ctx, f.Addr)
}

// Admin returns an API client with the admin identity fleetd keeps in its
// data directory.
func (f *Fleetd) Admin() (*client.Client, error) {
	b, err := os.ReadFile(filepath.Join(f.cfg.DataDir, "admin", "identity.pem"))
	if err != nil {
		return nil, fmt.Errorf("fleetd admin identity: %w", err)
	}
	id, err := client.ParseIdentity(b)
	if err != nil {
		return nil, fmt.Errorf("fleetd admin identity: %w", err)
	}
	tlsConf, err := client.CATLS(f.Addr, id.CACerts, &id.Cert)
	if err != nil {
		return nil, err
	}
	return client.New(client.Config{Addr: f.Addr, TLS: tlsConf, Timeout: time.Minute})
}

// AddToken creates a join token for uses devices and returns its join
// string.
func (f *Fleetd) AddToken(ctx context.Context, uses int) (string, error) {
	c, err := f.Admin()
	if err != nil {
		return "", err
	}
	defer c.Close()
	tok, err := c.AddToken(ctx, &api.AddTokenRequest{TTL: 2 * time.Hour, Uses: uses})
	if err != nil {
		return "", fmt.Errorf("add join token: %w", err)
	}
	if tok.JoinString != "" {
		return tok.JoinString, nil
	}
	return tok.Token + "@" + f.Pin, nil
}

// Online returns how many devices fleetd lists as online.
func (f *Fleetd) Online(ctx context.Context) (int, error) {
	c, err := f.Admin()
	if err != nil {
		return 0, err
	}
	defer c.Close()
	ds, err := c.Devices(ctx)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, d := range ds {
		if d.Online {
			n++
		}
	}
	return n, nil
}

// ProcStat is what /proc says about a process.
type ProcStat struct {
	RSS, PeakRSS int64         // VmRSS and VmHWM, bytes
	CPU          time.Duration // user + system time so far
	Threads      int
}

// ReadProcStat reads /proc/PID/status and /proc/PID/stat (Linux only).
func ReadProcStat(pid int) (ProcStat, error) {
	var ps ProcStat
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ps, fmt.Errorf("read process %d status: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(fields[0], 10, 64)
		switch k {
		case "VmRSS":
			ps.RSS = n << 10
		case "VmHWM":
			ps.PeakRSS = n << 10
		case "Threads":
			ps.Threads = int(n)
		}
	}
	b, err = os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ps, fmt.Errorf("read process %d stat: %w", pid, err)
	}
	// The command name (field 2) may hold spaces; fields count from ')'.
	if i := bytes.LastIndexByte(b, ')'); i >= 0 {
		f := strings.Fields(string(b[i+1:]))
		if len(f) > 13 {
			ut, _ := strconv.ParseInt(f[11], 10, 64)
			st, _ := strconv.ParseInt(f[12], 10, 64)
			ps.CPU = time.Duration(ut+st) * time.Second / clockTicks
		}
	}
	return ps, nil
}

// clockTicks is USER_HZ, which is 100 on every Linux architecture Go runs on.
const clockTicks = 100

// MB formats bytes in megabytes (10^6).
func MB(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
