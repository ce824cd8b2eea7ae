package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"remoteler.dev/edge/proto/api"
)

// binaries are the products sshbench runs.
var binaries = []string{"fleetd", "edge-agent", "tsh", "fleetctl"}

// packages are their import paths, for go build.
var packages = []string{
	"remoteler.dev/edge/fleet/cmd/fleetd",
	"remoteler.dev/edge/firmware/cmd/edge-agent",
	"remoteler.dev/edge/fleet/cmd/tsh",
	"remoteler.dev/edge/fleet/cmd/fleetctl",
}

// build builds the binaries into dir with go build (extra flags first,
// such as -overlay), static and stripped like the device build
// (cross/build.sh), so that the agent's RSS is the device agent's. It must
// run inside the module.
func build(ctx context.Context, dir string, flags ...string) error {
	args := append([]string{"build", "-trimpath", "-ldflags=-s -w"}, flags...)
	args = append(args, "-o", dir+string(filepath.Separator))
	args = append(args, packages...)
	if _, err := runCmd(ctx, []string{"CGO_ENABLED=0"}, "", "go", args...); err != nil {
		return fmt.Errorf("build the binaries (run sshbench inside the repository): %w", err)
	}
	return nil
}

// fleet is a running fleetd with one device agent and one user logged in
// with tsh.
type fleet struct {
	bin     string // directory of the binaries
	dir     string // state and logs
	addr    string // fleetd's HOST:PORT
	pin     string
	fleetd  *proc
	agent   *proc
	login   string // the Unix login on the device
	device  string // the device's name
	tshHome string
	// sshConfig is the file holding tsh config's OpenSSH block.
	sshConfig string
}

var (
	listenRE = regexp.MustCompile(`listening on (\S+) `)
	pinRE    = regexp.MustCompile(`^CA pin: (sha256:[0-9a-f]{64})$`)
)

// startFleet starts fleetd on a free loopback port, joins a device agent
// named device, adds a user allowed login and logs them in with tsh.
func startFleet(ctx context.Context, ps *procs, bin, dir, login, device string, env []string) (*fleet, error) {
	f := &fleet{bin: bin, dir: dir, login: login, device: device, tshHome: filepath.Join(dir, "tsh")}
	var err error
	f.fleetd, err = ps.start(dir, "fleetd", env, f.path("fleetd"), "start", "--data-dir", filepath.Join(dir, "fleet"), "--listen", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	m, err := f.fleetd.waitLine(ctx, listenRE, 60*time.Second)
	if err != nil {
		return nil, fmt.Errorf("start fleetd: %w", err)
	}
	f.addr = m[1]
	if m, err = f.fleetd.waitLine(ctx, pinRE, 10*time.Second); err != nil {
		return nil, fmt.Errorf("start fleetd: %w", err)
	}
	f.pin = m[1]

	const user, password = "bench", "sshbench-password-0123456789"
	if _, err := f.ctl(ctx, password+"\n", "users", "add", user, "--roles=access", "--logins="+login); err != nil {
		return nil, err
	}
	out, err := f.ctl(ctx, "", "tokens", "add", "--ttl=10m", "--uses=1", "--format=json")
	if err != nil {
		return nil, err
	}
	var tok api.Token
	if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.JoinString == "" {
		return nil, fmt.Errorf("fleetctl tokens add --format=json gave no join string (%v):\n%s", err, indent(out))
	}
	f.agent, err = ps.start(dir, "edge-agent", env, f.path("edge-agent"), "start", "--fleet", f.addr, "--token", tok.JoinString,
		"--data-dir", filepath.Join(dir, "agent"), "--name", device)
	if err != nil {
		return nil, err
	}
	if err := f.waitOnline(ctx, 30*time.Second); err != nil {
		return nil, err
	}
	if _, err := f.tsh(ctx, password+"\n", "login", "--proxy="+f.addr, "--user="+user, "--ca-pin="+f.pin); err != nil {
		return nil, err
	}
	cfg, err := f.tsh(ctx, "", "config")
	if err != nil {
		return nil, err
	}
	f.sshConfig = filepath.Join(dir, "ssh_config.fleet")
	if err := os.WriteFile(f.sshConfig, []byte(cfg), 0o600); err != nil {
		return nil, fmt.Errorf("write tsh config: %w", err)
	}
	return f, nil
}

func (f *fleet) path(name string) string { return filepath.Join(f.bin, name) }

// ctl runs fleetctl on the fleet's data directory.
func (f *fleet) ctl(ctx context.Context, stdin string, args ...string) (string, error) {
	r, err := runCmd(ctx, nil, stdin, f.path("fleetctl"), append([]string{"--data-dir", filepath.Join(f.dir, "fleet")}, args...)...)
	return r.stdout, err
}

// tshEnv is the environment tsh runs with.
func (f *fleet) tshEnv() []string { return []string{"TSH_HOME=" + f.tshHome} }

// tsh runs tsh as the logged-in user.
func (f *fleet) tsh(ctx context.Context, stdin string, args ...string) (string, error) {
	r, err := runCmd(ctx, f.tshEnv(), stdin, f.path("tsh"), args...)
	return r.stdout, err
}

// waitOnline polls the device list until the device is online.
func (f *fleet) waitOnline(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		out, err := f.ctl(ctx, "", "devices", "ls", "--format=json")
		if err == nil {
			var ds api.List[api.Device]
			if json.Unmarshal([]byte(out), &ds) == nil && slices.ContainsFunc(ds.Items, func(d api.Device) bool { return d.Name == f.device && d.Online }) {
				return nil
			}
		}
		if f.agent.exited() || time.Now().After(deadline) {
			return fmt.Errorf("device %s did not come online within %s:\n%s", f.device, timeout, f.agent.tail(20))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// sshTarget is LOGIN@DEVICE.CLUSTER for OpenSSH through tsh config.
func (f *fleet) sshTarget() string { return f.login + "@" + f.device + ".fleet" }

// tshTarget is LOGIN@DEVICE for tsh ssh and tsh scp.
func (f *fleet) tshTarget() string { return f.login + "@" + f.device }

// sshArgs are the OpenSSH options that reach the device through the fleet.
func (f *fleet) sshArgs() []string { return []string{"-F", f.sshConfig, "-o", "BatchMode=yes"} }

// peer is Debian's OpenSSH sshd on a loopback port, the direct path that
// the fleet is compared with.
type peer struct {
	proc   *proc
	port   int
	config string // an ssh_config with Host peerHost
}

// peerHost is the ssh_config alias of the peer sshd.
const peerHost = "sshbench-direct"

// sshdPath is where Debian's openssh-server puts sshd.
const sshdPath = "/usr/sbin/sshd"

// startPeer starts sshd on a free loopback port with a temporary host key
// that accepts a temporary user key for login.
func startPeer(ctx context.Context, ps *procs, dir, login string) (*peer, error) {
	dir = filepath.Join(dir, "sshd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	hostKey, userKey := filepath.Join(dir, "host_ed25519"), filepath.Join(dir, "user_ed25519")
	for _, k := range []string{hostKey, userKey} {
		if _, err := runCmd(ctx, nil, "", "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sshbench", "-f", k); err != nil {
			return nil, fmt.Errorf("start sshd: %w", err)
		}
	}
	userPub, err := os.ReadFile(userKey + ".pub")
	if err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	hostPub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	authorized := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(authorized, userPub, 0o600); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	if os.Geteuid() == 0 {
		// sshd refuses to start without its privilege separation
		// directory, which the Debian service unit creates at boot.
		if _, err := os.Stat("/run/sshd"); os.IsNotExist(err) {
			if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
				return nil, fmt.Errorf("start sshd: create /run/sshd: %w", err)
			}
		}
	}
	sshdConfig := filepath.Join(dir, "sshd_config")
	// SetEnv SHLVL=1: bash sources ~/.bashrc for a command whose stdin is
	// a socket (sshd's sessions) unless it is a nested shell; the agent
	// gives commands pipes, where bash never does. Without it the direct
	// path would be charged for the login's shell start-up files.
	// internal-sftp: sftp without a shell start-up either.
	conf := fmt.Sprintf(`ListenAddress 127.0.0.1
HostKey %s
AuthorizedKeysFile %s
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
UseDNS no
PidFile none
PrintMotd no
SetEnv SHLVL=1
Subsystem sftp internal-sftp
`, hostKey, authorized)
	if err := os.WriteFile(sshdConfig, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	p := &peer{port: port, config: filepath.Join(dir, "ssh_config")}
	p.proc, err = ps.start(filepath.Dir(dir), "sshd", nil, sshdPath, "-D", "-e", "-f", sshdConfig, "-p", strconv.Itoa(port))
	if err != nil {
		return nil, err
	}
	if _, err := p.proc.waitLine(ctx, regexp.MustCompile(`^Server listening on 127\.0\.0\.1 port \d+`), 10*time.Second); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	knownHosts := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(knownHosts, fmt.Appendf(nil, "[127.0.0.1]:%d %s", port, hostPub), 0o600); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	client := fmt.Sprintf(`Host %s
    HostName 127.0.0.1
    Port %d
    User %s
    IdentityFile "%s"
    IdentitiesOnly yes
    UserKnownHostsFile "%s"
    StrictHostKeyChecking yes
    BatchMode yes
`, peerHost, port, login, userKey, knownHosts)
	if err := os.WriteFile(p.config, []byte(client), 0o600); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	return p, nil
}

// sshArgs are the OpenSSH options that reach the peer; its host is
// peerHost.
func (p *peer) sshArgs() []string { return []string{"-F", p.config} }

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago
// (sshd takes a port number, not a listener).
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// algorithms are what an OpenSSH client negotiated, from ssh -v.
type algorithms struct {
	Kex, HostKey, Cipher string
}

var (
	kexRE     = regexp.MustCompile(`kex: algorithm: (\S+)`)
	hostKeyRE = regexp.MustCompile(`kex: host key algorithm: (\S+)`)
	cipherRE  = regexp.MustCompile(`kex: client->server cipher: (\S+)`)
)

// negotiated runs "ssh -v ARGS true" and reads the algorithms from its
// debug output.
func negotiated(ctx context.Context, args ...string) (algorithms, error) {
	r, err := runCmd(ctx, nil, "", "ssh", append(append([]string{"-v"}, args...), "true")...)
	if err != nil {
		return algorithms{}, err
	}
	return parseAlgorithms(r.stderr), nil
}

// parseAlgorithms reads ssh -v's "kex:" debug lines.
func parseAlgorithms(debug string) algorithms {
	var a algorithms
	for _, x := range []struct {
		re  *regexp.Regexp
		dst *string
	}{{kexRE, &a.Kex}, {hostKeyRE, &a.HostKey}, {cipherRE, &a.Cipher}} {
		if m := x.re.FindStringSubmatch(debug); m != nil {
			*x.dst = m[1]
		}
	}
	return a
}

// needTools checks that the OpenSSH programs (and go, to build) are
// installed.
func needTools(needGo bool) error {
	var missing []string
	tools := []string{"ssh", "scp", "ssh-keygen"}
	if needGo {
		tools = append(tools, "go")
	}
	for _, t := range tools {
		if _, err := exec.LookPath(t); err != nil {
			missing = append(missing, t)
		}
	}
	if _, err := os.Stat(sshdPath); err != nil {
		missing = append(missing, sshdPath)
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s: install openssh-client and openssh-server (tools/setup/setup.sh does)", strings.Join(missing, ", "))
	}
	return nil
}
