package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/devsim"
	"remoteler.dev/edge/tools/linksim"
)

// products are the commands linkbench runs, by import path.
var products = []string{
	"remoteler.dev/edge/fleet/cmd/fleetd",
	"remoteler.dev/edge/firmware/cmd/edge-agent",
	"remoteler.dev/edge/fleet/cmd/tsh",
	"remoteler.dev/edge/fleet/cmd/fleetctl",
}

// sshdPath is where Debian's openssh-server installs sshd.
const sshdPath = "/usr/sbin/sshd"

// bench is one run's shared state: the fleet, the logged-in user, and the
// OpenSSH servers of the peer.
type bench struct {
	cfg   config
	dir   string
	bin   string
	ps    *procs
	log   func(format string, args ...any)
	fleet *devsim.Fleetd
	login string // Unix login on the device (both systems)

	tshHome   string
	tshConfig string // tsh config's OpenSSH block

	userKey   string // the user's key for the peer's device sshd
	deviceKey string // the peer device's key for the fleet-side sshd
	devSSHD   *sshd  // the peer's device-side sshd (the "device")

}

// system is one of the two things compared: ours (fleetd, QUIC tunnel,
// edge-agent) or the peer (OpenSSH reverse tunnel over TCP).
type system interface {
	// Name is "ours" or "peer".
	Name() string
	// Link is the impaired link the device sits behind.
	Link() *linksim.Link
	// SSH returns the OpenSSH client arguments that run command on the
	// device as the user, and the environment they need.
	SSH(command ...string) (args, env []string)
	// Connects counts the device's tunnel connections so far (ours: the
	// agent's "tunnel up" lines; the peer: ssh -R runs with the forward
	// up), to tell how often a measurement made it reconnect.
	Connects() int
}

// newLink makes a link with the profile and relays on one port: UDP
// towards upstream (when udp) and TCP towards upstream.
func newLink(p linksim.Profile, nat time.Duration, upstream string, udp bool) (*linksim.Link, string, error) {
	link, err := linksim.New(linksim.Config{Profile: p, NATTimeout: nat})
	if err != nil {
		return nil, "", err
	}
	for range 20 {
		listen := "127.0.0.1:0"
		var u *linksim.UDPRelay
		if udp {
			if u, err = link.ListenUDP(listen, upstream); err != nil {
				break
			}
			listen = u.Addr().String()
		}
		t, terr := link.ListenTCP(listen, upstream)
		if terr == nil {
			return link, t.Addr().String(), nil
		}
		err = terr
		if u != nil {
			u.Close() // the port is taken for TCP: try another
		}
	}
	link.Close()
	return nil, "", fmt.Errorf("link relays: %w", err)
}

// setup builds the binaries, starts fleetd, adds a user and logs them in,
// and makes the peer's keys and device sshd.
func (b *bench) setup(ctx context.Context) error {
	b.bin = b.cfg.Bin
	if b.bin == "" {
		b.bin = filepath.Join(b.dir, "bin")
		b.log("building fleetd, edge-agent, tsh and fleetctl")
		if err := devsim.Build(ctx, b.bin, products...); err != nil {
			return err
		}
	}
	if _, err := os.Stat(sshdPath); err != nil {
		return fmt.Errorf("the peer needs Debian's OpenSSH server at %s (apt-get install openssh-server): %w", sshdPath, err)
	}
	u, err := user.Current()
	if err != nil {
		return fmt.Errorf("current user: %w", err)
	}
	b.login = u.Username
	logFile, err := os.Create(filepath.Join(b.dir, "fleetd.log"))
	if err != nil {
		return err
	}
	b.fleet, err = devsim.StartFleetd(ctx, devsim.FleetdConfig{Bin: b.bin, DataDir: filepath.Join(b.dir, "fleet"), LogLevel: "info", Log: logFile})
	if err != nil {
		return err
	}
	const name, password = "bench", "linkbench-password-0123456789"
	admin, err := b.fleet.Admin()
	if err != nil {
		return err
	}
	defer admin.Close()
	if _, err := admin.AddUser(ctx, &api.AddUserRequest{Name: name, Password: password, Roles: []string{"access"}, Logins: []string{b.login}}); err != nil {
		return fmt.Errorf("add user: %w", err)
	}
	b.tshHome = filepath.Join(b.dir, "tsh")
	env := []string{"TSH_HOME=" + b.tshHome}
	if _, err := runCmd(ctx, env, password+"\n", b.path("tsh"), "login", "--proxy="+b.fleet.Addr, "--user="+name, "--ca-pin="+b.fleet.Pin); err != nil {
		return err
	}
	r, err := runCmd(ctx, env, "", b.path("tsh"), "config")
	if err != nil {
		return err
	}
	b.tshConfig = filepath.Join(b.dir, "ssh_config.fleet")
	if err := os.WriteFile(b.tshConfig, []byte(r.stdout), 0o600); err != nil {
		return err
	}

	keys := filepath.Join(b.dir, "keys")
	if err := os.MkdirAll(keys, 0o700); err != nil {
		return err
	}
	b.userKey, b.deviceKey = filepath.Join(keys, "user"), filepath.Join(keys, "device")
	for _, k := range []string{b.userKey, b.deviceKey} {
		if _, err := runCmd(ctx, nil, "", "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "linkbench", "-f", k); err != nil {
			return err
		}
	}
	b.devSSHD, err = b.startSSHD(ctx, "sshd-device", b.userKey+".pub")
	return err
}

func (b *bench) path(name string) string { return filepath.Join(b.bin, name) }

// ours is a device running edge-agent behind its own link.
type ours struct {
	b       *bench
	name    string
	link    *linksim.Link
	addr    string // the link's relay: the agent's --fleet
	dataDir string
	agent   *proc
}

func (o *ours) Name() string        { return "ours" }
func (o *ours) Link() *linksim.Link { return o.link }
func (o *ours) Connects() int       { return o.agent.count(tunnelUpRE) }
func (o *ours) SSH(command ...string) ([]string, []string) {
	args := append([]string{"-F", o.b.tshConfig, "-o", "BatchMode=yes", o.b.login + "@" + o.name + ".fleet"}, command...)
	return args, []string{"TSH_HOME=" + o.b.tshHome}
}

var tunnelUpRE = regexp.MustCompile(`msg="tunnel up"`)

// newOurs makes a link with profile p and starts a new device's agent
// behind it, joining with a fresh token; it waits until the tunnel is up.
func (b *bench) newOurs(ctx context.Context, name string, p linksim.Profile, nat time.Duration, agentArgs ...string) (*ours, error) {
	link, addr, err := newLink(p, nat, b.fleet.Addr, true)
	if err != nil {
		return nil, err
	}
	o := &ours{b: b, name: name, link: link, addr: addr, dataDir: filepath.Join(b.dir, "agent-"+name)}
	token, err := b.fleet.AddToken(ctx, 1)
	if err != nil {
		return nil, err
	}
	if err := o.start(ctx, append([]string{"--token", token, "--name", name}, agentArgs...)...); err != nil {
		return nil, err
	}
	return o, nil
}

// start starts (or restarts) the agent and waits until its tunnel is up.
func (o *ours) start(ctx context.Context, extra ...string) error {
	args := append([]string{"start", "--fleet", o.addr, "--data-dir", o.dataDir, "--kubeconfig", "off", "--log-level", "info"}, extra...)
	var err error
	if o.agent, err = o.b.ps.start("edge-agent-"+o.name, nil, o.b.path("edge-agent"), args...); err != nil {
		return err
	}
	_, _, err = o.agent.waitLine(ctx, 0, tunnelUpRE, 2*time.Minute)
	return err
}

// sshd is a Debian sshd on a loopback port with a temporary host key.
type sshd struct {
	proc    *proc
	port    int
	hostPub []byte
}

// startSSHD starts sshd on a free loopback port that accepts the key in
// authorizedFile for b.login.
func (b *bench) startSSHD(ctx context.Context, name, authorizedFile string) (*sshd, error) {
	dir := filepath.Join(b.dir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	hostKey := filepath.Join(dir, "host_ed25519")
	if _, err := runCmd(ctx, nil, "", "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", hostKey); err != nil {
		return nil, err
	}
	hostPub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		return nil, err
	}
	if os.Geteuid() == 0 {
		// sshd wants its privilege separation directory, which Debian's
		// service unit makes at boot.
		if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
			return nil, fmt.Errorf("start sshd: %w", err)
		}
	}
	conf := filepath.Join(dir, "sshd_config")
	// Defaults otherwise: AllowTcpForwarding yes, GatewayPorts no (remote
	// forwards bind loopback), no ClientAlive probes.
	text := fmt.Sprintf(`ListenAddress 127.0.0.1
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
`, hostKey, authorizedFile)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p, err := b.ps.start(name, nil, sshdPath, "-D", "-e", "-f", conf, "-p", strconv.Itoa(port))
	if err != nil {
		return nil, err
	}
	if _, _, err := p.waitLine(ctx, 0, regexp.MustCompile(`Server listening on 127\.0\.0\.1 port`), 10*time.Second); err != nil {
		return nil, fmt.Errorf("start sshd: %w", err)
	}
	return &sshd{proc: p, port: port, hostPub: hostPub}, nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// peer is a device exposing its sshd to a fleet-side sshd through an
// OpenSSH reverse tunnel (ssh -R) over its own link, redialled in a loop.
type peer struct {
	b          *bench
	name       string
	link       *linksim.Link
	addr       string // the link's TCP relay to the fleet-side sshd
	server     *sshd  // the fleet side
	remotePort int    // where the fleet side exposes the device's sshd
	sshConfig  string // the user's OpenSSH config for Host name
	loop       *tunnelLoop
}

func (p *peer) Name() string        { return "peer" }
func (p *peer) Link() *linksim.Link { return p.link }
func (p *peer) Connects() int       { return p.loop.ups() }
func (p *peer) SSH(command ...string) ([]string, []string) {
	return append([]string{"-F", p.sshConfig, p.name}, command...), nil
}

// newPeer starts a fleet-side sshd, a link to it, and the reverse tunnel
// loop; it waits until the first tunnel is up.
func (b *bench) newPeer(ctx context.Context, name string, p linksim.Profile, aliveInterval time.Duration) (*peer, error) {
	server, err := b.startSSHD(ctx, "sshd-fleet-"+name, b.deviceKey+".pub")
	if err != nil {
		return nil, err
	}
	link, addr, err := newLink(p, 0, fmt.Sprintf("127.0.0.1:%d", server.port), false)
	if err != nil {
		return nil, err
	}
	rport, err := freePort()
	if err != nil {
		return nil, err
	}
	pe := &peer{b: b, name: name, link: link, addr: addr, server: server, remotePort: rport,
		sshConfig: filepath.Join(b.dir, "ssh_config."+name)}

	// The device's view of the fleet-side sshd, through the link.
	_, relayPort, _ := net.SplitHostPort(addr)
	alias := "linkbench-fleet-" + name
	devKnown := filepath.Join(b.dir, "known_hosts.device-"+name)
	if err := os.WriteFile(devKnown, fmt.Appendf(nil, "%s %s", alias, server.hostPub), 0o600); err != nil {
		return nil, err
	}
	// The user's view of the device's sshd, through the forwarded port.
	userKnown := filepath.Join(b.dir, "known_hosts.user-"+name)
	if err := os.WriteFile(userKnown, fmt.Appendf(nil, "[127.0.0.1]:%d %s", rport, b.devSSHD.hostPub), 0o600); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`Host %s
    HostName 127.0.0.1
    Port %d
    User %s
    IdentityFile "%s"
    IdentitiesOnly yes
    UserKnownHostsFile "%s"
    StrictHostKeyChecking yes
    BatchMode yes
`, name, rport, b.login, b.userKey, userKnown)
	if err := os.WriteFile(pe.sshConfig, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	// The autossh way: no monitor port, OpenSSH's own keep-alive probes
	// end a dead connection, and the loop starts ssh again.
	args := []string{"-v", "-N", "-F", "/dev/null",
		"-o", "ExitOnForwardFailure=yes",
		"-o", fmt.Sprintf("ServerAliveInterval=%d", int(aliveInterval.Seconds())),
		"-o", "ServerAliveCountMax=3",
		"-o", "BatchMode=yes",
		"-o", "IdentitiesOnly=yes", "-i", b.deviceKey,
		"-o", "UserKnownHostsFile=" + devKnown, "-o", "StrictHostKeyChecking=yes", "-o", "HostKeyAlias=" + alias,
		"-p", relayPort,
		"-R", fmt.Sprintf("127.0.0.1:%d:127.0.0.1:%d", rport, b.devSSHD.port),
		b.login + "@127.0.0.1",
	}
	pe.loop = &tunnelLoop{ps: b.ps, name: "ssh-R-" + name, args: args, changed: make(chan struct{})}
	go pe.loop.run(ctx)
	if _, err := pe.loop.waitUp(ctx, time.Time{}, 2*time.Minute); err != nil {
		return nil, err
	}
	return pe, nil
}

// tunnelLoop runs ssh -R again whenever it exits, like autossh with
// AUTOSSH_GATETIME=0: at once, or after a second when it failed within a
// second (so a refused forward does not spin).
type tunnelLoop struct {
	ps   *procs
	name string
	args []string

	mu      sync.Mutex // guards runs, cur and changed
	runs    []loopRun
	cur     *proc
	changed chan struct{}
}

// loopRun is one ssh -R process: when it started, when its forward was up
// (zero if never) and when it exited (zero while running).
type loopRun struct {
	start, up, exit time.Time
}

var forwardUpRE = regexp.MustCompile(`remote forward success for: listen`)

func (l *tunnelLoop) run(ctx context.Context) {
	for n := 0; ctx.Err() == nil; n++ {
		p, err := l.ps.start(fmt.Sprintf("%s-%d", l.name, n), nil, "ssh", l.args...)
		if err != nil {
			return
		}
		l.mu.Lock()
		l.cur = p
		l.runs = append(l.runs, loopRun{start: p.started})
		i := len(l.runs) - 1
		l.mu.Unlock()
		if ln, _, err := p.waitLine(ctx, 0, forwardUpRE, time.Hour); err == nil {
			l.update(i, func(r *loopRun) { r.up = ln.at })
		}
		select {
		case <-p.done:
		case <-ctx.Done():
			p.stop()
			return
		}
		exit := time.Now()
		l.update(i, func(r *loopRun) { r.exit = exit })
		if exit.Sub(p.started) < time.Second {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}
}

func (l *tunnelLoop) update(i int, f func(*loopRun)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	f(&l.runs[i])
	close(l.changed)
	l.changed = make(chan struct{})
}

// ups counts the runs whose forward came up.
func (l *tunnelLoop) ups() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, r := range l.runs {
		if !r.up.IsZero() {
			n++
		}
	}
	return n
}

// waitUp waits for a run that started after since to have its forward up,
// and returns it.
func (l *tunnelLoop) waitUp(ctx context.Context, since time.Time, timeout time.Duration) (loopRun, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		ch := l.changed
		for _, r := range l.runs {
			if !r.up.IsZero() && !r.start.Before(since) {
				l.mu.Unlock()
				return r, nil
			}
		}
		l.mu.Unlock()
		select {
		case <-ch:
		case <-deadline.C:
			return loopRun{}, fmt.Errorf("%s: no reverse tunnel up within %s", l.name, timeout)
		case <-ctx.Done():
			return loopRun{}, ctx.Err()
		}
	}
}

// sshCmd returns an OpenSSH client command for sys running command.
func sshCmd(ctx context.Context, sys system, command ...string) *exec.Cmd {
	args, env := sys.SSH(command...)
	cmd := exec.CommandContext(ctx, "ssh", args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.SysProcAttr = procAttr()
	cmd.Cancel = func() error { return signalGroup(cmd.Process, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// linkRTT is the mean round trip the link's profile adds.
func linkRTT(l *linksim.Link) time.Duration { return l.Profile().RTT() }
