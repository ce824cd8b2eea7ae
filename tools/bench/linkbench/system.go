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
	"sync"
	"time"

	"remoteler.dev/edge/tools/harness"
	"remoteler.dev/edge/tools/linksim"
)

// bench is one run's shared state: the fleet, the logged-in user, and the
// OpenSSH servers of the peer.
type bench struct {
	cfg   config
	tb    harness.TB
	dir   string
	logs  string // the processes' logs
	log   func(format string, args ...any)
	fleet *harness.Fleet
	user  *harness.User
	login string // Unix login on the device (both systems)

	tshConfig string // tsh config's OpenSSH block

	arrivals string // the arrivals command (logs when an upload's bytes arrive on a device)

	userKey   string        // the user's key for the peer's device sshd
	deviceKey string        // the peer device's key for the fleet-side sshd
	devSSHD   *harness.SSHD // the peer's device-side sshd (the "device")
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
func (b *bench) newLink(p linksim.Profile, nat time.Duration, upstream string, udp bool) (*linksim.Link, string, error) {
	link, err := linksim.New(linksim.Config{Profile: p, NATTimeout: nat})
	if err != nil {
		return nil, "", err
	}
	b.tb.Cleanup(func() { link.Close() })
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
	bin := harness.Bin(b.cfg.Bin)
	if bin == "" {
		b.log("building fleetd, edge-agent, tsh and fleetctl")
		var err error
		if bin, err = harness.Build(ctx, filepath.Join(b.dir, "bin"), nil, harness.Products...); err != nil {
			return err
		}
	}
	helpers, err := harness.Build(ctx, filepath.Join(b.dir, "helpers"), nil, "remoteler.dev/edge/tools/bench/linkbench/arrivals")
	if err != nil {
		return err
	}
	b.arrivals = helpers.Path("arrivals")
	u, err := user.Current()
	if err != nil {
		return fmt.Errorf("current user: %w", err)
	}
	b.login = u.Username
	b.fleet, err = harness.StartFleetErr(b.tb, harness.FleetConfig{Bin: bin, DataDir: filepath.Join(b.dir, "fleet"), LogLevel: "info", LogDir: b.logs})
	if err != nil {
		return err
	}
	const name = "bench"
	b.user = b.fleet.Login(name, b.fleet.AddUser(name, "access", b.login))
	b.tshConfig = b.user.SSHConfig()

	keys := filepath.Join(b.dir, "keys")
	if err := os.MkdirAll(keys, 0o700); err != nil {
		return err
	}
	b.userKey, b.deviceKey = filepath.Join(keys, "user"), filepath.Join(keys, "device")
	for _, k := range []string{b.userKey, b.deviceKey} {
		if err := harness.KeygenErr(b.tb, k, "linkbench"); err != nil {
			return err
		}
	}
	b.devSSHD, err = b.startSSHD("sshd-device", b.userKey+".pub")
	return err
}

// ours is a device running edge-agent behind its own link.
type ours struct {
	b     *bench
	name  string
	link  *linksim.Link
	addr  string // the link's relay: the agent's --fleet
	agent *harness.Agent
}

func (o *ours) Name() string        { return "ours" }
func (o *ours) Link() *linksim.Link { return o.link }
func (o *ours) Connects() int       { return o.agent.Proc.Count(harness.TunnelUpRE) }
func (o *ours) SSH(command ...string) ([]string, []string) {
	args := append([]string{"-F", o.b.tshConfig, "-o", "BatchMode=yes", o.b.login + "@" + o.name + ".fleet"}, command...)
	return args, o.b.user.Env()
}

// newOurs makes a link with profile p and starts a new device's agent
// behind it, joining with a fresh token; it waits until the device is
// online.
func (b *bench) newOurs(name string, p linksim.Profile, nat time.Duration) (*ours, error) {
	link, addr, err := b.newLink(p, nat, b.fleet.Addr, true)
	if err != nil {
		return nil, err
	}
	o := &ours{b: b, name: name, link: link, addr: addr}
	o.agent = b.fleet.StartAgentWith(harness.AgentConfig{Name: name, Fleet: addr, DataDir: filepath.Join(b.dir, "agent-"+name),
		Kubeconfig: "off", LogLevel: "info", LogDir: b.logs})
	return o, nil
}

// startSSHD starts sshd on a free loopback port that accepts the key in
// authorizedFile.
func (b *bench) startSSHD(name, authorizedFile string) (*harness.SSHD, error) {
	return harness.StartSSHDErr(b.tb, harness.SSHDConfig{Name: name, Dir: filepath.Join(b.dir, name), AuthorizedKeys: authorizedFile, LogDir: b.logs})
}

// peer is a device exposing its sshd to a fleet-side sshd through an
// OpenSSH reverse tunnel (ssh -R) over its own link, redialled in a loop.
type peer struct {
	b          *bench
	name       string
	link       *linksim.Link
	addr       string        // the link's TCP relay to the fleet-side sshd
	server     *harness.SSHD // the fleet side
	remotePort int           // where the fleet side exposes the device's sshd
	sshConfig  string        // the user's OpenSSH config for Host name
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
func (b *bench) newPeer(name string, p linksim.Profile, aliveInterval time.Duration) (*peer, error) {
	server, err := b.startSSHD("sshd-fleet-"+name, b.deviceKey+".pub")
	if err != nil {
		return nil, err
	}
	link, addr, err := b.newLink(p, 0, fmt.Sprintf("127.0.0.1:%d", server.Port), false)
	if err != nil {
		return nil, err
	}
	rport, err := harness.FreePort()
	if err != nil {
		return nil, err
	}
	pe := &peer{b: b, name: name, link: link, addr: addr, server: server, remotePort: rport,
		sshConfig: filepath.Join(b.dir, "ssh_config."+name)}

	// The device's view of the fleet-side sshd, through the link.
	_, relayPort, _ := net.SplitHostPort(addr)
	alias := "linkbench-fleet-" + name
	devKnown := filepath.Join(b.dir, "known_hosts.device-"+name)
	if err := os.WriteFile(devKnown, fmt.Appendf(nil, "%s %s", alias, server.HostPub), 0o600); err != nil {
		return nil, err
	}
	// The user's view of the device's sshd, through the forwarded port.
	userKnown := filepath.Join(b.dir, "known_hosts.user-"+name)
	if err := os.WriteFile(userKnown, fmt.Appendf(nil, "[127.0.0.1]:%d %s", rport, b.devSSHD.HostPub), 0o600); err != nil {
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
		"-R", fmt.Sprintf("127.0.0.1:%d:127.0.0.1:%d", rport, b.devSSHD.Port),
		b.login + "@127.0.0.1",
	}
	pe.loop = &tunnelLoop{tb: b.tb, logs: b.logs, name: "ssh-R-" + name, args: args, changed: make(chan struct{}), done: make(chan struct{})}
	go pe.loop.run(b.tb.Context())
	b.tb.Cleanup(func() { <-pe.loop.done })
	if _, err := pe.loop.waitUp(b.tb.Context(), time.Time{}, 2*time.Minute); err != nil {
		return nil, err
	}
	return pe, nil
}

// tunnelLoop runs ssh -R again whenever it exits, like autossh with
// AUTOSSH_GATETIME=0: at once, or after a second when it failed within a
// second (so a refused forward does not spin). It runs until its context
// ends; done is closed then.
type tunnelLoop struct {
	tb   harness.TB
	logs string
	name string
	args []string
	done chan struct{}

	mu      sync.Mutex // guards runs, cur and changed
	runs    []loopRun
	cur     *harness.Proc
	changed chan struct{}
}

// loopRun is one ssh -R process: when it started, when its forward was up
// (zero if never) and when it exited (zero while running).
type loopRun struct {
	start, up, exit time.Time
}

var forwardUpRE = regexp.MustCompile(`remote forward success for: listen`)

func (l *tunnelLoop) run(ctx context.Context) {
	defer close(l.done)
	for n := 0; ctx.Err() == nil; n++ {
		p, err := harness.StartErr(l.tb, harness.Cmd{Name: fmt.Sprintf("%s-%d", l.name, n), Path: "ssh", Args: l.args, LogDir: l.logs})
		if err != nil {
			return
		}
		l.mu.Lock()
		l.cur = p
		l.runs = append(l.runs, loopRun{start: p.Started})
		i := len(l.runs) - 1
		l.mu.Unlock()
		if ln, _, err := p.AwaitLine(ctx, 0, forwardUpRE, time.Hour); err == nil {
			l.update(i, func(r *loopRun) { r.up = ln.At })
		}
		select {
		case <-p.Done():
		case <-ctx.Done():
			p.Stop()
			return
		}
		exit := time.Now()
		l.update(i, func(r *loopRun) { r.exit = exit })
		if exit.Sub(p.Started) < time.Second {
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
	return harness.Command(ctx, harness.Cmd{Path: "ssh", Args: args, Env: env})
}

// linkRTT is the mean round trip the link's profile adds.
func linkRTT(l *linksim.Link) time.Duration { return l.Profile().RTT() }
