package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"

	"remoteler.dev/edge/tools/harness"
)

// binaries are the products sshbench runs.
var binaries = []string{"fleetd", "edge-agent", "tsh", "fleetctl"}

// build builds the binaries into dir with go build (extra flags first,
// such as -overlay), static and stripped like the device build
// (cross/build.sh), so that the agent's RSS is the device agent's. It must
// run inside the module.
func build(ctx context.Context, dir string, flags ...string) error {
	args := slices.Concat([]string{"-trimpath", "-ldflags=-s -w"}, flags, harness.Products)
	if _, err := harness.Build(ctx, dir, []string{"CGO_ENABLED=0"}, args...); err != nil {
		return fmt.Errorf("build the binaries (run sshbench inside the repository): %w", err)
	}
	return nil
}

// fleet is a running fleetd with one device agent and one user logged in
// with tsh.
type fleet struct {
	*harness.Fleet
	agent  *harness.Agent
	user   *harness.User
	login  string // the Unix login on the device
	device string // the device's name
	// sshConfig is the file holding tsh config's OpenSSH block.
	sshConfig string
}

// startFleet starts fleetd on a free loopback port, joins a device agent
// named device, adds a user allowed login and logs them in with tsh.
func startFleet(tb harness.TB, bin, dir, login, device string, env []string) (*fleet, error) {
	logs := filepath.Join(dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		return nil, err
	}
	h, err := harness.StartFleetErr(tb, harness.FleetConfig{Bin: harness.Bin(bin), DataDir: filepath.Join(dir, "fleet"), LogLevel: "info", Env: env, LogDir: logs})
	if err != nil {
		return nil, err
	}
	f := &fleet{Fleet: h, login: login, device: device}
	const user = "bench"
	f.user = f.Login(user, f.AddUser(user, "access", login))
	f.agent = f.StartAgentWith(harness.AgentConfig{Name: device, DataDir: filepath.Join(dir, "agent"), LogLevel: "info", Env: env, LogDir: logs})
	f.sshConfig = f.user.SSHConfig()
	return f, nil
}

// tshEnv is the environment tsh runs with.
func (f *fleet) tshEnv() []string { return f.user.Env() }

// tsh is the path of tsh.
func (f *fleet) tsh() string { return f.Bin.Path("tsh") }

// sshTarget is LOGIN@DEVICE.CLUSTER for OpenSSH through tsh config.
func (f *fleet) sshTarget() string { return f.login + "@" + f.device + ".fleet" }

// tshTarget is LOGIN@DEVICE for tsh ssh and tsh scp.
func (f *fleet) tshTarget() string { return f.login + "@" + f.device }

// sshArgs are the OpenSSH options that reach the device through the fleet.
func (f *fleet) sshArgs() []string { return []string{"-F", f.sshConfig, "-o", "BatchMode=yes"} }

// peer is Debian's OpenSSH sshd on a loopback port, the direct path that
// the fleet is compared with.
type peer struct {
	sshd   *harness.SSHD
	config string // an ssh_config with Host peerHost
}

// peerHost is the ssh_config alias of the peer sshd.
const peerHost = "sshbench-direct"

// startPeer starts sshd on a free loopback port with a temporary host key
// that accepts a temporary user key for login.
func startPeer(tb harness.TB, dir, login string) (*peer, error) {
	dir = filepath.Join(dir, "sshd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	userKey := filepath.Join(dir, "user_ed25519")
	if err := harness.KeygenErr(tb, userKey, "sshbench"); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	// internal-sftp: sftp without a shell start-up.
	sshd, err := harness.StartSSHDErr(tb, harness.SSHDConfig{Dir: dir, AuthorizedKeys: userKey + ".pub",
		Config: "Subsystem sftp internal-sftp\n", LogDir: filepath.Join(filepath.Dir(dir), "logs")})
	if err != nil {
		return nil, err
	}
	p := &peer{sshd: sshd, config: filepath.Join(dir, "ssh_config")}
	knownHosts := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(knownHosts, fmt.Appendf(nil, "[127.0.0.1]:%d %s", sshd.Port, sshd.HostPub), 0o600); err != nil {
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
`, peerHost, sshd.Port, login, userKey, knownHosts)
	if err := os.WriteFile(p.config, []byte(client), 0o600); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	return p, nil
}

// sshArgs are the OpenSSH options that reach the peer; its host is
// peerHost.
func (p *peer) sshArgs() []string { return []string{"-F", p.config} }

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
	r, err := harness.RunErr(ctx, "", harness.Cmd{Path: "ssh", Args: append(append([]string{"-v"}, args...), "true")})
	if err != nil {
		return algorithms{}, err
	}
	return parseAlgorithms(r.Stderr), nil
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
	tools := []string{"ssh", "scp", "ssh-keygen", harness.SSHDPath}
	if needGo {
		tools = append(tools, "go")
	}
	return harness.NeedPrograms("install openssh-client and openssh-server (tools/setup/setup.sh does)", tools...)
}
