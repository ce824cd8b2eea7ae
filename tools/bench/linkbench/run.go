package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/tools/harness"
	"remoteler.dev/edge/tools/linksim"
)

// results is everything one run measured.
type results struct {
	cfg        config
	started    time.Time
	took       time.Duration
	load       [2]string // load average at the start and the end
	profile    linksim.Profile
	recoveries []recovery
	bulkRecs   []bulkRecovery
	bulks      []bulk
	// reconnectBytes are the wire bytes one reconnect cost each system's
	// device (after the server closed the connection), for the idle-day
	// figures; zero when not measured.
	reconnectBytes map[string]uint64
	idles          []idle
	connects       []connect
}

// run measures and writes the report to stdout; progress goes to stderr.
func run(ctx context.Context, cfg config, stdout, stderr io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	dir := cfg.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "linkbench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	logs := filepath.Join(dir, "logs")
	if err := os.MkdirAll(logs, 0o700); err != nil {
		return err
	}
	// Every process, link and loop started below is stopped when the
	// function returns, however it returns.
	return harness.Do(ctx, harness.DoConfig{Log: stderr, Dir: filepath.Join(dir, "tmp")}, func(tb harness.TB) error {
		return measure(tb, cfg, dir, logs, stdout, stderr)
	})
}

// measure is run's body.
func measure(tb harness.TB, cfg config, dir, logs string, stdout, stderr io.Writer) error {
	ctx := tb.Context()
	start := time.Now()
	progress := func(format string, args ...any) {
		fmt.Fprintf(stderr, "linkbench %5.1fs: %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	b := &bench{cfg: cfg, tb: tb, dir: dir, logs: logs, log: progress}
	if err := b.setup(ctx); err != nil {
		return err
	}
	res := &results{cfg: cfg, started: start}
	res.load[0] = loadAverage()
	res.profile, _ = linksim.ProfileByName(cfg.Profile)

	// The idle devices idle alongside everything else.
	progress("starting the idle devices (%s, NAT timeout %s)", cfg.Profile, cfg.NATTimeout)
	idleOurs, err := b.newOurs("idle1", res.profile, cfg.NATTimeout)
	if err != nil {
		return err
	}
	idlePeer, err := b.newPeer("peer-idle", res.profile, cfg.PeerAlive)
	if err != nil {
		return err
	}
	// Let the connections' set-up traffic pass before counting.
	if err := sleep(ctx, 3*time.Second); err != nil {
		return err
	}
	watches := []*idleWatch{
		watchIdle(ctx, idleOurs, udpHeaders, cfg.Idle, func(ctx context.Context) error {
			_, _, err := b.user.TshErr("", "ssh", b.login+"@idle1", "true")
			return err
		}),
		watchIdle(ctx, idlePeer, tcpHeaders, cfg.Idle, func(ctx context.Context) error {
			args, env := idlePeer.SSH("true")
			_, err := harness.RunErr(ctx, "", harness.Cmd{Path: "ssh", Args: args, Env: env})
			return err
		}),
	}

	progress("starting the measured devices")
	dev, err := b.newOurs("dev1", res.profile, 0)
	if err != nil {
		return err
	}
	pe, err := b.newPeer("peer1", res.profile, cfg.PeerAlive)
	if err != nil {
		return err
	}
	systems := []system{dev, pe}

	for _, bo := range cfg.Blackouts {
		progress("recovery after a %s blackout (both systems at once, each on its own link)", bo)
		rs := make([]recovery, len(systems))
		errs := make([]error, len(systems))
		var wg sync.WaitGroup
		for i, sys := range systems {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rs[i], errs[i] = measureRecovery(ctx, sys, bo, 2*time.Minute)
			}()
		}
		wg.Wait()
		for i := range systems {
			if errs[i] != nil {
				return errs[i]
			}
			progress("  %s: %s", rs[i].system, rs[i].summary())
		}
		res.recoveries = append(res.recoveries, rs...)
	}

	if cfg.BulkRecovery {
		for _, bo := range cfg.Blackouts {
			for _, dir := range []string{dirUp, dirDown} {
				progress("bulk %s through a %s blackout (both systems at once, each on its own link)", dir, bo)
				rs := make([]bulkRecovery, len(systems))
				errs := make([]error, len(systems))
				var wg sync.WaitGroup
				for i, sys := range systems {
					wg.Go(func() { rs[i], errs[i] = b.measureBulkRecovery(ctx, sys, dir, bo, 2*time.Minute) })
				}
				wg.Wait()
				for i := range systems {
					if errs[i] != nil {
						return errs[i]
					}
					progress("  %s: %s", rs[i].system, rs[i].summary())
				}
				res.bulkRecs = append(res.bulkRecs, rs...)
			}
		}
	}

	for _, c := range cfg.Bulk {
		p, _ := linksim.ProfileByName(c.profile)
		p = p.Both(func(i *linksim.Impairment) { i.Loss = c.loss })
		p.Name = c.profile
		for _, sys := range systems {
			if err := sys.Link().SetProfile(p); err != nil {
				return err
			}
		}
		size := cfg.Sizes[c.profile]
		for _, dir := range []string{dirDown, dirUp} {
			for _, sys := range systems {
				progress("bulk %s, %s loss, %s %s: %s", c.profile, linksim.FormatRatio(c.loss), dir, formatSize(size), sys.Name())
				var r bulk
				var err error
				before := sys.Connects()
				if dir == dirUp {
					r, err = measureDownload(ctx, sys, size, cfg.Cap)
				} else {
					r, err = measureUpload(ctx, sys, size, cfg.Cap)
				}
				if err != nil {
					r = bulk{system: sys.Name(), dir: dir, note: err.Error()}
					progress("  %v", err)
				} else {
					progress("  %.3f MB/s (%d bytes in %s), %d reconnects", r.rate()/1e6, r.bytes, r.took.Round(time.Millisecond), sys.Connects()-before)
				}
				r.profile, r.loss, r.redials = c.profile, c.loss, sys.Connects()-before
				res.bulks = append(res.bulks, r)
			}
		}
	}
	for _, sys := range systems {
		sys.Link().SetProfile(res.profile)
	}

	progress("connection set-up, %d trial(s) each", cfg.Trials)
	cs, err := b.measureStarts(ctx, pe, res.profile)
	if err != nil {
		return err
	}
	res.connects = append(res.connects, cs...)

	progress("waiting for the idle window (%s) to end", cfg.Idle)
	for _, w := range watches {
		res.idles = append(res.idles, w.result(ctx))
	}

	progress("reconnect after the server closed the connection (waiting up to %s)", cfg.ReconnectWait)
	c, err := b.peerReconnect(ctx, pe, cfg.ReconnectWait)
	if err != nil {
		return err
	}
	// The peer's reconnect starts a new ssh: take out its start-up as
	// measured on a perfect link.
	for _, s := range cs {
		if s.system == "peer" && s.what == "start of a provisioned device" {
			c.perfect = s.perfect
		}
	}
	res.connects = append(res.connects, c)
	// The idle devices, quiet since their window ended, give the bytes of
	// one reconnect: ours in the same fleetd restart, the peer's when its
	// connection is killed the same way.
	res.reconnectBytes = map[string]uint64{}
	idleMark, s0 := idleOurs.agent.Proc.Mark(), idleOurs.link.Stats()
	if c, err = b.oursReconnect(ctx, dev, cfg.ReconnectWait); err != nil {
		return err
	}
	res.connects = append(res.connects, c)
	if _, _, err := idleOurs.agent.Proc.AwaitLine(ctx, idleMark, harness.TunnelUpRE, cfg.ReconnectWait); err == nil {
		res.reconnectBytes["ours"] = afterSettling(ctx, idleOurs.link, s0, udpHeaders)
	}
	s0 = idlePeer.link.Stats()
	if _, err := b.peerReconnect(ctx, idlePeer, cfg.ReconnectWait); err == nil {
		res.reconnectBytes["peer"] = afterSettling(ctx, idlePeer.link, s0, tcpHeaders)
	}

	res.load[1] = loadAverage()
	res.took = time.Since(start)
	res.write(stdout)
	return nil
}

// measureStarts times first starts and starts of provisioned devices of
// both systems on profile p and on a perfect link.
func (b *bench) measureStarts(ctx context.Context, pe *peer, p linksim.Profile) ([]connect, error) {
	perfect, _ := linksim.ProfileByName("perfect")
	rtt := p.RTT()
	first := connect{system: "ours", what: "first start: join, then tunnel", rtt: rtt, trials: 1}
	again := connect{system: "ours", what: "start of a provisioned device", rtt: rtt, trials: b.cfg.Trials}
	var joinP, joinPerfect time.Duration
	for _, prof := range []linksim.Profile{p, perfect} {
		o, up, join, err := b.oursFirstStart(ctx, "cold-"+prof.Name, prof)
		if err != nil {
			return nil, err
		}
		restarts, err := b.oursRestarts(ctx, o, b.cfg.Trials)
		o.agent.Stop()
		o.link.Close()
		if err != nil {
			return nil, err
		}
		if prof.Name == p.Name {
			first.took, joinP, again.took = up, join, median(restarts)
		} else {
			first.perfect, joinPerfect, again.perfect = up, join, median(restarts)
		}
	}
	first.note = fmt.Sprintf("join answered after %s (%s on a perfect link)", joinP.Round(time.Millisecond), joinPerfect.Round(time.Millisecond))
	peerStart := connect{system: "peer", what: "start of a provisioned device", rtt: rtt, trials: b.cfg.Trials,
		note: "ssh start to remote forward up"}
	ds, err := b.peerStarts(ctx, pe, p, b.cfg.Trials)
	if err != nil {
		return nil, err
	}
	peerStart.took = median(ds)
	if ds, err = b.peerStarts(ctx, pe, perfect, b.cfg.Trials); err != nil {
		return nil, err
	}
	peerStart.perfect = median(ds)
	peerFirst := peerStart
	peerFirst.what = first.what
	peerFirst.note = "no join step: keys provisioned by hand; same as a start"
	return []connect{first, peerFirst, again, peerStart}, nil
}

// afterSettling waits a few seconds for a reconnect's last packets
// (session tickets, the answer to the hello), then returns the wire bytes
// that crossed link since s0, header bytes added per packet.
func afterSettling(ctx context.Context, link *linksim.Link, s0 linksim.Stats, header int) uint64 {
	sleep(ctx, 5*time.Second)
	s1 := link.Stats()
	var n uint64
	for _, d := range [][2]linksim.Counter{{s0.Up.Received, s1.Up.Received}, {s0.Down.Received, s1.Down.Received}} {
		n += d[1].Bytes - d[0].Bytes + uint64(header)*(d[1].Packets-d[0].Packets)
	}
	return n
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// loadAverage is /proc/loadavg's first three fields.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
