package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"slices"
	"syscall"
	"time"

	"remoteler.dev/edge/tools/harness"
	"remoteler.dev/edge/tools/linksim"
)

// connect is a connection set-up time, on the profile and on a perfect
// link (to take the processes' own start-up out).
type connect struct {
	system  string
	what    string
	took    time.Duration // median on the profile
	perfect time.Duration // median on a perfect link; 0 when not measured
	rtt     time.Duration
	trials  int
	note    string
}

// RTTs is what the link adds, in round trips: (took - perfect) / rtt.
func (c connect) RTTs() float64 {
	return (c.took - c.perfect).Seconds() / c.rtt.Seconds()
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

var joinedRE = regexp.MustCompile(`msg="joined the fleet"`)

// oursFirstStart starts a new device's agent behind a link with profile p
// (joining with a fresh token) and returns how long the first start took
// to the tunnel being up, and to the join answer.
func (b *bench) oursFirstStart(ctx context.Context, name string, p linksim.Profile) (o *ours, upAfter, joinAfter time.Duration, err error) {
	if o, err = b.newOurs(name, p, 0); err != nil {
		return nil, 0, 0, err
	}
	agent := o.agent.Proc
	up, _, err := agent.AwaitLine(ctx, 0, harness.TunnelUpRE, time.Second)
	if err != nil {
		return nil, 0, 0, err
	}
	joined, _, err := agent.AwaitLine(ctx, 0, joinedRE, time.Second)
	if err != nil {
		return nil, 0, 0, err
	}
	return o, up.At.Sub(agent.Started), joined.At.Sub(agent.Started), nil
}

// oursRestarts restarts a joined device's agent n times and returns the
// times from process start to tunnel up.
func (b *bench) oursRestarts(ctx context.Context, o *ours, n int) ([]time.Duration, error) {
	var out []time.Duration
	for range n {
		o.agent.Restart()
		agent := o.agent.Proc
		up, _, err := agent.AwaitLine(ctx, 0, harness.TunnelUpRE, time.Second)
		if err != nil {
			return nil, err
		}
		out = append(out, up.At.Sub(agent.Started))
	}
	return out, nil
}

// peerStarts starts n one-shot reverse tunnels through a link with
// profile p to the fleet-side sshd of pe, and returns the times from ssh's
// start to the forward being up.
func (b *bench) peerStarts(ctx context.Context, pe *peer, p linksim.Profile, n int) ([]time.Duration, error) {
	link, addr, err := b.newLink(p, 0, fmt.Sprintf("127.0.0.1:%d", pe.server.Port), false)
	if err != nil {
		return nil, err
	}
	defer link.Close()
	args := retarget(pe.loop.args, addr)
	var out []time.Duration
	for i := range n {
		port, err := harness.FreePort()
		if err != nil {
			return nil, err
		}
		a := slices.Clone(args)
		for j := range a {
			if j > 0 && a[j-1] == "-R" {
				a[j] = fmt.Sprintf("127.0.0.1:%d:127.0.0.1:%d", port, b.devSSHD.Port)
			}
		}
		pr, err := harness.StartErr(b.tb, harness.Cmd{Name: fmt.Sprintf("ssh-R-connect-%s-%d", p.Name, i), Path: "ssh", Args: a, LogDir: b.logs})
		if err != nil {
			return nil, err
		}
		up, _, err := pr.AwaitLine(ctx, 0, forwardUpRE, time.Minute)
		pr.Stop()
		if err != nil {
			return nil, err
		}
		out = append(out, up.At.Sub(pr.Started))
	}
	return out, nil
}

// retarget points ssh -R arguments at the relay addr (the host key
// check uses a HostKeyAlias, so the port does not matter to it).
func retarget(args []string, addr string) []string {
	a := slices.Clone(args)
	_, port, _ := net.SplitHostPort(addr)
	for j := range a {
		if j > 0 && a[j-1] == "-p" {
			a[j] = port
		}
	}
	return a
}

var (
	downRE         = regexp.MustCompile(`msg="tunnel down; reconnecting".* in=(\S+)`)
	answersAgainRE = regexp.MustCompile(`msg="fleet answers again; reconnecting now"`)
)

// oursReconnect restarts fleetd and times the agent of o coming back.
func (b *bench) oursReconnect(ctx context.Context, o *ours, wait time.Duration) (connect, error) {
	c := connect{system: "ours", what: "reconnect after the server closed the connection", rtt: linkRTT(o.link), trials: 1}
	agent := o.agent.Proc
	mark := agent.Mark()
	t0 := time.Now()
	if err := b.fleet.RestartErr(); err != nil {
		return c, err
	}
	ready := b.fleet.ReadyAt
	up, _, err := agent.AwaitLine(ctx, mark, harness.TunnelUpRE, wait)
	if err != nil {
		c.note = fmt.Sprintf("not back within %s of the restart", wait)
		return c, nil
	}
	down, m, err := agent.AwaitLine(ctx, mark, downRE, time.Second)
	if err != nil || down.At.After(up.At) {
		// No back-off before the redial (the agent redials at once when
		// it learns its connection is gone): time it from the new fleetd.
		c.took = up.At.Sub(ready)
		c.note = fmt.Sprintf("redialled at once, no back-off logged; timed from the new fleetd listening; back %s after SIGTERM",
			up.At.Sub(t0).Round(time.Millisecond))
		return c, nil
	}
	backoff, _ := time.ParseDuration(m[1])
	dial := down.At.Add(backoff)
	// An agent holding sessions pings while it waits, and dials as soon
	// as the new fleetd answers.
	if early, _, err := agent.AwaitLine(ctx, mark, answersAgainRE, 0); err == nil && early.At.Before(dial) && !early.At.After(up.At) {
		dial = early.At
		backoff = early.At.Sub(down.At).Round(time.Millisecond)
	}
	c.took = up.At.Sub(dial)
	heard := down.At.Sub(t0)
	switch {
	case heard > 2*time.Second:
		c.note = fmt.Sprintf("the agent did not hear fleetd's close: it found out after %s; back %s after SIGTERM", heard.Round(time.Millisecond), up.At.Sub(t0).Round(time.Millisecond))
	case dial.Before(ready):
		c.note = fmt.Sprintf("redialled %s before the new fleetd listened (restart took %s); back %s after SIGTERM",
			ready.Sub(dial).Round(time.Millisecond), ready.Sub(t0).Round(time.Millisecond), up.At.Sub(t0).Round(time.Millisecond))
		c.took = up.At.Sub(ready)
	default:
		c.note = fmt.Sprintf("dial to up; back %s after SIGTERM (back-off %s, restart %s)", up.At.Sub(t0).Round(time.Millisecond),
			backoff, ready.Sub(t0).Round(time.Millisecond))
	}
	return c, nil
}

// peerReconnect ends the fleet-side sshd's connection of pe (killing the
// processes serving it) and times the loop's next tunnel.
func (b *bench) peerReconnect(ctx context.Context, pe *peer, wait time.Duration) (connect, error) {
	c := connect{system: "peer", what: "reconnect after the server closed the connection", rtt: linkRTT(pe.link), trials: 1}
	// The loop may be between two ssh runs: wait for the connection.
	var kids []int
	err := errors.New("none yet")
	if !harness.Eventually(time.Minute, func() bool {
		kids, err = harness.Children(pe.server.Proc.PID())
		return err == nil && len(kids) > 0
	}) {
		return c, fmt.Errorf("peer: find the fleet-side sshd's connection: %v (%d processes)", err, len(kids))
	}
	t0 := time.Now()
	for _, k := range kids {
		grand, _ := harness.Children(k)
		for _, g := range grand {
			syscall.Kill(g, syscall.SIGTERM)
		}
		syscall.Kill(k, syscall.SIGTERM)
	}
	run, err := pe.loop.waitUp(ctx, t0, wait)
	if err != nil {
		c.note = fmt.Sprintf("not back within %s", wait)
		return c, nil
	}
	c.took = run.up.Sub(run.start)
	c.note = fmt.Sprintf("ssh start to forward up; back %s after the server closed", run.up.Sub(t0).Round(time.Millisecond))
	return c, nil
}
