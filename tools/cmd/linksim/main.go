// Command linksim relays UDP (and optionally TCP) through an impaired link:
// delay, jitter, loss, bursty loss, bandwidth caps, MTU, blackouts, NAT
// expiry and rebinding, all in user space. Point a device agent at -listen
// instead of the fleet address, and type commands on stdin to impair the
// live link (help lists them).
//
//	linksim -listen 127.0.0.1:7000 -upstream 127.0.0.1:3080 -profile lte -loss 5% -tcp
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"remoteler.dev/edge/tools/linksim"
)

func main() {
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "linksim:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "linksim:", err)
		os.Exit(1)
	}
}

// config is what the flags say.
type config struct {
	listen      string
	upstream    string
	udp, tcp    bool
	tcpUpstream string
	statsEvery  time.Duration
	verbose     bool
	link        linksim.Config
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("linksim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	fs.StringVar(&c.listen, "listen", "127.0.0.1:7000", "`address` the relay listens on (UDP, and TCP with -tcp); port 0 picks a free one")
	fs.StringVar(&c.upstream, "upstream", "", "`address` to forward to, e.g. the fleet's QUIC port 127.0.0.1:3080 (required)")
	fs.BoolVar(&c.udp, "udp", true, "relay UDP (QUIC); -udp=false turns it off")
	fs.BoolVar(&c.tcp, "tcp", false, "also relay TCP on the -listen port (e.g. for an OpenSSH tunnel over the same link)")
	fs.StringVar(&c.tcpUpstream, "tcp-upstream", "", "`address` TCP is forwarded to (default: -upstream)")
	fs.DurationVar(&c.statsEvery, "stats-every", 10*time.Second, "print the counters this often; 0 turns it off (\"stats\" on stdin prints them any time)")
	fs.BoolVar(&c.verbose, "v", false, "log debug messages (mappings, blackouts) to stderr")

	profile := fs.String("profile", "perfect", "named impairment `profile`: "+strings.Join(linksim.ProfileNames(), ", ")+"; the flags below override it")
	// Overrides apply after -profile whatever the order on the command line.
	var overrides []func(*linksim.Impairment, linksim.Dir)
	both := func(f func(*linksim.Impairment)) {
		overrides = append(overrides, func(i *linksim.Impairment, _ linksim.Dir) { f(i) })
	}
	one := func(d linksim.Dir, f func(*linksim.Impairment)) {
		overrides = append(overrides, func(i *linksim.Impairment, dd linksim.Dir) {
			if dd == d {
				f(i)
			}
		})
	}
	fs.Func("rtt", "base round-trip `time` (e.g. 70ms), split evenly between directions; 0 = none", func(s string) error {
		d, err := parseNonNegDuration(s)
		both(func(i *linksim.Impairment) { i.Delay = d / 2 })
		return err
	})
	fs.Func("jitter", "extra random one-way delay, uniform in [0, `time`), per direction; 0 = none", func(s string) error {
		d, err := parseNonNegDuration(s)
		both(func(i *linksim.Impairment) { i.Jitter = d })
		return err
	})
	fs.BoolFunc("reorder", "let jitter reorder UDP datagrams (default: keep order)", func(s string) error {
		both(func(i *linksim.Impairment) { i.Reorder = s == "true" })
		return nil
	})
	ratio := func(name, usage string, set func(*linksim.Impairment, float64), d *linksim.Dir) {
		fs.Func(name, usage, func(s string) error {
			v, err := linksim.ParseRatio(s)
			f := func(i *linksim.Impairment) { set(i, v) }
			if d != nil {
				one(*d, f)
			} else {
				both(f)
			}
			return err
		})
	}
	up, down := linksim.Up, linksim.Down
	ratio("loss", "random loss per direction, `percent` (5%) or fraction (0.05); 0 = none", func(i *linksim.Impairment, v float64) { i.Loss = v }, nil)
	ratio("up-loss", "random loss client→server only, `percent`", func(i *linksim.Impairment, v float64) { i.Loss = v }, &up)
	ratio("down-loss", "random loss server→client only, `percent`", func(i *linksim.Impairment, v float64) { i.Loss = v }, &down)
	ratio("burst-p", "bursty loss (Gilbert-Elliott): chance per packet of entering the bad state, `percent`; 0 = off", func(i *linksim.Impairment, v float64) { i.Burst.P = v }, nil)
	ratio("burst-r", "bursty loss: chance per packet of leaving the bad state, `percent` (mean burst 1/r packets)", func(i *linksim.Impairment, v float64) { i.Burst.R = v }, nil)
	ratio("burst-bad", "bursty loss: loss in the bad state, `percent` (default 100%)", func(i *linksim.Impairment, v float64) { i.Burst.LossBad = v }, nil)
	rate := func(name, usage string, d *linksim.Dir) {
		fs.Func(name, usage, func(s string) error {
			v, err := linksim.ParseRate(s)
			f := func(i *linksim.Impairment) { i.Bandwidth = v }
			if d != nil {
				one(*d, f)
			} else {
				both(f)
			}
			return err
		})
	}
	rate("rate", "bandwidth cap per direction in `bits/s`, e.g. 2mbit, 750k; 0 = no cap", nil)
	rate("up-rate", "bandwidth cap client→server in `bits/s`, e.g. 768k", &up)
	rate("down-rate", "bandwidth cap server→client in `bits/s`, e.g. 1.6mbit", &down)
	fs.Func("queue", "queue in front of the bandwidth cap, `bytes` (default: 250 ms at the rate, at least 16384)", func(s string) error {
		var n int
		_, err := fmt.Sscan(s, &n)
		if err == nil && n < 0 {
			err = errors.New("negative")
		}
		both(func(i *linksim.Impairment) { i.QueueBytes = n })
		return err
	})
	fs.Func("mtu", "largest IP packet in `bytes` (UDP payload + 28); bigger UDP datagrams are dropped; 0 = no cap", func(s string) error {
		var n int
		_, err := fmt.Sscan(s, &n)
		if err == nil && n < 0 {
			err = errors.New("negative")
		}
		both(func(i *linksim.Impairment) { i.MTU = n })
		return err
	})
	fs.Func("outage", "scheduled blackout `AT+FOR[/EVERY]` from start, e.g. 30s+10s or 1m+5s/2m; repeat the flag for more; none by default", func(s string) error {
		o, err := linksim.ParseOutage(s)
		c.link.Schedule = append(c.link.Schedule, o)
		return err
	})
	fs.DurationVar(&c.link.NATTimeout, "nat-timeout", 0, "forget a UDP mapping idle this long (carrier NATs: 30s to 5m); 0 = never")
	fs.BoolVar(&c.link.ResetOnBlackout, "reset-on-blackout", false, "reset TCP connections when an outage starts (default: hold their bytes)")
	fs.Func("bind", "source `IP` of upstream sockets, the device's address as the server sees it (default: chosen by the kernel); \"move IP\" on stdin changes it", func(s string) error {
		ip, err := netip.ParseAddr(s)
		c.link.BindIP = ip
		return err
	})
	fs.Int64Var(&c.link.Seed, "seed", 0, "random seed for loss and jitter, for repeatable runs; 0 = random")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: linksim -upstream ADDRESS [flags]\n\n")
		fs.PrintDefaults()
		fmt.Fprintf(fs.Output(), "\nOn stdin, one a line:\n%s\n", linksim.CommandHelp)
	}
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if fs.NArg() > 0 {
		return config{}, fmt.Errorf("unexpected arguments %q (see -h)", fs.Args())
	}
	if c.upstream == "" {
		return config{}, errors.New("-upstream is required (see -h)")
	}
	if !c.udp && !c.tcp {
		return config{}, errors.New("nothing to relay: -udp=false without -tcp")
	}
	if c.tcpUpstream == "" {
		c.tcpUpstream = c.upstream
	}
	if c.statsEvery < 0 {
		return config{}, errors.New("-stats-every is negative")
	}
	p, err := linksim.ProfileByName(*profile)
	if err != nil {
		return config{}, err
	}
	if len(overrides) > 0 {
		p.Name += "+flags"
	}
	for _, o := range overrides {
		o(&p.Up, linksim.Up)
		o(&p.Down, linksim.Down)
	}
	if err := p.Validate(); err != nil {
		return config{}, err
	}
	c.link.Profile = p
	return c, nil
}

func parseNonNegDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err == nil && d < 0 {
		err = errors.New("negative")
	}
	return d, err
}

// run relays until ctx ends, printing counters and obeying commands read
// from in.
func run(ctx context.Context, c config, in io.Reader, out io.Writer) error {
	level := slog.LevelInfo
	if c.verbose {
		level = slog.LevelDebug
	}
	c.link.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	link, err := linksim.New(c.link)
	if err != nil {
		return err
	}
	defer link.Close()
	if c.udp {
		r, err := link.ListenUDP(c.listen, c.upstream)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "udp %v -> %v\n", r.Addr(), r.Upstream())
	}
	if c.tcp {
		r, err := link.ListenTCP(c.listen, c.tcpUpstream)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "tcp %v -> %v\n", r.Addr(), c.tcpUpstream)
	}
	fmt.Fprintf(out, "profile %v\n", link.Profile())
	for _, o := range c.link.Schedule {
		fmt.Fprintf(out, "outage %v\n", o)
	}
	fmt.Fprintln(out, `type "help" for commands`)

	lines := make(chan string)
	go func() { // ends with stdin; the process exits without waiting for it
		defer close(lines)
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
	}()
	var tick <-chan time.Time
	if c.statsEvery > 0 {
		t := time.NewTicker(c.statsEvery)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			fmt.Fprintln(out, link.Stats())
			return nil
		case <-tick:
			fmt.Fprintln(out, link.Stats())
		case line, ok := <-lines:
			if !ok {
				lines = nil // stdin closed: keep relaying until signalled
				continue
			}
			if strings.TrimSpace(line) == "" {
				continue
			}
			cmd, err := linksim.ParseCommand(line)
			if err != nil {
				fmt.Fprintln(out, err)
				continue
			}
			msg, err := cmd.Apply(link)
			if err != nil {
				fmt.Fprintln(out, err)
				continue
			}
			fmt.Fprintln(out, msg)
		}
	}
}
