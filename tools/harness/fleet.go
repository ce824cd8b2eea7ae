package harness

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"remoteler.dev/edge/proto/api"
)

// FleetConfig says how to start fleetd. Bin is required; the zero value
// of every other field works.
type FleetConfig struct {
	// Bin holds fleetd and fleetctl (and edge-agent and tsh for agents and
	// users). Required.
	Bin Bin
	// DataDir is fleetd's --data-dir; default a new tb.TempDir().
	DataDir string
	// Listen is fleetd's --listen; default 127.0.0.1:0 (a free port).
	Listen string
	// LogLevel is fleetd's --log-level; default debug.
	LogLevel string
	// Args are more fleetd flags, such as --config FILE.
	Args []string
	// Env is added to fleetd's environment.
	Env []string
	// LogDir, when set, also gets fleetd's output (see Cmd.LogDir).
	LogDir string
	// Name names the process (its log file in LogDir); default fleetd.
	// Replicas sharing a LogDir need one each.
	Name string
	// StopTimeout bounds a graceful stop before SIGKILL; default 30s.
	StopTimeout time.Duration
	// ReadyTimeout bounds the wait for fleetd to listen; default 2m.
	ReadyTimeout time.Duration
}

// Fleet is a running fleetd.
type Fleet struct {
	tb  TB
	cfg FleetConfig
	// Bin holds the programs.
	Bin Bin
	// DataDir is fleetd's data directory; fleetctl runs on it.
	DataDir string
	// Addr is where fleetd listens (HTTPS on TCP, tunnels on UDP); Pin is
	// its CA pin. Both stay the same across Restart.
	Addr, Pin string
	// Proc is the current fleetd process.
	Proc *Proc
	// ReadyAt is when the current process printed that it listens.
	ReadyAt time.Time
}

var (
	listenRE = regexp.MustCompile(`listening on (\S+) `)
	pinRE    = regexp.MustCompile(`^CA pin: (sha256:[0-9a-f]{64})$`)
	// adminRE is the last line fleetd prints when it is ready.
	adminRE = regexp.MustCompile(`^Admin identity: `)
)

// StartFleet starts fleetd and waits until it listens; it is stopped at
// the end of the test.
func StartFleet(tb TB, cfg FleetConfig) *Fleet {
	tb.Helper()
	f, err := StartFleetErr(tb, cfg)
	if err != nil {
		tb.Fatalf("%v", err)
	}
	return f
}

// StartFleetErr is StartFleet returning the error.
func StartFleetErr(tb TB, cfg FleetConfig) (*Fleet, error) {
	if cfg.DataDir == "" {
		cfg.DataDir = tb.TempDir()
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.Name == "" {
		cfg.Name = "fleetd"
	}
	if cfg.LogLevel == "" {
		cfg.LogLevel = "debug"
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 30 * time.Second
	}
	if cfg.ReadyTimeout <= 0 {
		cfg.ReadyTimeout = 2 * time.Minute
	}
	f := &Fleet{tb: tb, cfg: cfg, Bin: cfg.Bin, DataDir: cfg.DataDir}
	return f, f.start(cfg.Listen)
}

func (f *Fleet) start(listen string) error {
	args := append([]string{"start", "--data-dir", f.DataDir, "--listen", listen, "--log-level", f.cfg.LogLevel}, f.cfg.Args...)
	p, err := StartErr(f.tb, Cmd{Name: f.cfg.Name, Path: f.Bin.Path("fleetd"), Args: args, Env: f.cfg.Env,
		LogDir: f.cfg.LogDir, StopTimeout: f.cfg.StopTimeout})
	if err != nil {
		return err
	}
	f.Proc = p
	ctx := f.tb.Context()
	l, m, err := p.AwaitLine(ctx, 0, listenRE, f.cfg.ReadyTimeout)
	if err != nil {
		p.Kill()
		return fmt.Errorf("start fleetd: %w", err)
	}
	_, pm, err := p.AwaitLine(ctx, 0, pinRE, f.cfg.ReadyTimeout)
	if err != nil {
		p.Kill()
		return fmt.Errorf("start fleetd: %w", err)
	}
	if _, _, err := p.AwaitLine(ctx, 0, adminRE, f.cfg.ReadyTimeout); err != nil {
		p.Kill()
		return fmt.Errorf("start fleetd: %w", err)
	}
	f.Addr, f.Pin, f.ReadyAt = m[1], pm[1], l.At
	return nil
}

// Stop stops fleetd (SIGTERM, then SIGKILL after the StopTimeout).
func (f *Fleet) Stop() { f.Proc.Stop() }

// Kill kills fleetd at once.
func (f *Fleet) Kill() { f.Proc.Kill() }

// Restart stops fleetd and starts it again on the same address and data
// directory; it fails the TB when the new process does not listen.
func (f *Fleet) Restart() {
	f.tb.Helper()
	if err := f.RestartErr(); err != nil {
		f.tb.Fatalf("%v", err)
	}
}

// Start starts fleetd again, after Proc.Stop, on the same address and
// data dir: for tests that change its files while it is down.
func (f *Fleet) Start() {
	f.tb.Helper()
	if err := f.start(f.Addr); err != nil {
		f.tb.Fatalf("%v", err)
	}
}

// RestartErr is Restart returning the error.
func (f *Fleet) RestartErr() error {
	f.Proc.Stop()
	return f.start(f.Addr)
}

// Ctl runs fleetctl on the fleet's data directory and returns its stdout;
// it fails the TB when fleetctl fails.
func (f *Fleet) Ctl(stdin string, args ...string) string {
	f.tb.Helper()
	out, errOut, err := f.CtlErr(stdin, args...)
	if err != nil {
		f.tb.Fatalf("fleetctl %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, errOut)
	}
	return out
}

// CtlErr runs fleetctl on the fleet's data directory and returns its
// stdout, stderr and how it ended.
func (f *Fleet) CtlErr(stdin string, args ...string) (stdout, stderr string, err error) {
	r, err := RunErr(f.tb.Context(), stdin, Cmd{Path: f.Bin.Path("fleetctl"), Args: append([]string{"--data-dir", f.DataDir}, args...)})
	return r.Stdout, r.Stderr, err
}

// Password is the password AddUser gives user name.
func Password(name string) string { return "pw-" + name + "-0123456789" }

// AddUser adds a user with roles and logins (comma-separated; logins may
// be empty) and the password Password(name), which it returns.
func (f *Fleet) AddUser(name, roles, logins string) string {
	f.tb.Helper()
	pw := Password(name)
	args := []string{"users", "add", name, "--roles=" + roles}
	if logins != "" {
		args = append(args, "--logins="+logins)
	}
	f.Ctl(pw+"\n", args...)
	return pw
}

// Token creates a join token (with fleetctl tokens add flags args, such
// as --uses=N) and returns its join string.
func (f *Fleet) Token(args ...string) string {
	f.tb.Helper()
	tok, err := f.TokenErr(args...)
	if err != nil {
		f.tb.Fatalf("%v", err)
	}
	return tok
}

// TokenErr is Token returning the error.
func (f *Fleet) TokenErr(args ...string) (string, error) {
	out, errOut, err := f.CtlErr("", append([]string{"tokens", "add", "--format=json"}, args...)...)
	if err != nil {
		return "", fmt.Errorf("fleetctl tokens add: %w\n%s", err, Indent(errOut))
	}
	var tok api.Token
	if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.JoinString == "" {
		return "", fmt.Errorf("fleetctl tokens add --format=json gave no join string (%v):\n%s", err, Indent(out))
	}
	return tok.JoinString, nil
}

// Devices lists the fleet's devices.
func (f *Fleet) Devices() []api.Device {
	f.tb.Helper()
	ds, err := f.DevicesErr()
	if err != nil {
		f.tb.Fatalf("%v", err)
	}
	return ds
}

// DevicesErr is Devices returning the error.
func (f *Fleet) DevicesErr() ([]api.Device, error) {
	out, errOut, err := f.CtlErr("", "devices", "ls", "--format=json")
	if err != nil {
		return nil, fmt.Errorf("fleetctl devices ls: %w\n%s", err, Indent(errOut))
	}
	var ds api.List[api.Device]
	if err := json.Unmarshal([]byte(out), &ds); err != nil {
		return nil, fmt.Errorf("fleetctl devices ls --format=json: %w\n%s", err, Indent(out))
	}
	return ds.Items, nil
}

// Online reports whether the fleet lists device name as online; false
// when fleetctl fails.
func (f *Fleet) Online(name string) bool {
	ds, _ := f.DevicesErr()
	for _, d := range ds {
		if d.Name == name {
			return d.Online
		}
	}
	return false
}

// OnlineTimeout bounds WaitOnline: generous, for a busy machine.
const OnlineTimeout = time.Minute

// WaitOnline waits until the fleet lists device name as online; it fails
// the TB after OnlineTimeout.
func (f *Fleet) WaitOnline(name string) {
	f.tb.Helper()
	if !Eventually(OnlineTimeout, func() bool { return f.Online(name) }) {
		ds, err := f.DevicesErr()
		f.tb.Fatalf("device %s not online within %s: %+v (%v)", name, OnlineTimeout, ds, err)
	}
}

// CASPKI returns the base64 SHA-256 of the fleet CA's public key (its
// SubjectPublicKeyInfo), read from the admin identity in dataDir: what
// Chromium is told to trust (browsertest.Options.TrustedSPKI) to reach the
// fleet over HTTPS.
func CASPKI(dataDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, "admin", "identity.pem"))
	if err != nil {
		return "", fmt.Errorf("harness: %w", err)
	}
	// The admin's own certificate comes first, then the CAs.
	for i := 0; ; i++ {
		var blk *pem.Block
		if blk, b = pem.Decode(b); blk == nil {
			return "", errors.New("harness: no CA certificate in the admin identity")
		}
		if blk.Type != "CERTIFICATE" || i == 0 {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return "", fmt.Errorf("harness: %w", err)
		}
		sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
		return base64.StdEncoding.EncodeToString(sum[:]), nil
	}
}
