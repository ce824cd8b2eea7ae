package linksim

import (
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Op is a command's verb.
type Op int

const (
	OpHelp     Op = iota + 1 // help
	OpStats                  // stats
	OpBlackout               // blackout DURATION
	OpDown                   // down
	OpUp                     // up
	OpRebind                 // rebind
	OpMove                   // move IP
	OpProfile                // profile NAME
	OpLoss                   // loss PERCENT
	OpRTT                    // rtt DURATION
	OpRate                   // rate RATE
)

var opNames = map[Op]string{
	OpHelp: "help", OpStats: "stats", OpBlackout: "blackout", OpDown: "down", OpUp: "up",
	OpRebind: "rebind", OpMove: "move", OpProfile: "profile", OpLoss: "loss", OpRTT: "rtt", OpRate: "rate",
}

// CommandHelp describes the command language, one command a line.
const CommandHelp = `commands:
  blackout DURATION  take the link out (both directions) for DURATION, e.g. 30s
  down               take the link out until "up"
  up                 bring the link back (ends "down" and any blackout)
  rebind             the NAT gives every UDP mapping a new port; TCP connections reset
  move IP            the device moves to IP (e.g. 127.0.0.3); mappings renewed, TCP reset
  profile NAME       switch to a named profile (` + "perfect, wifi, lte, 3g, 2g, satellite" + `)
  loss PERCENT       random loss in both directions, e.g. 5% (0 = off)
  rtt DURATION       base round-trip time, split evenly between directions (0 = off)
  rate RATE          bandwidth cap in both directions, e.g. 2mbit (0 = off)
  stats              print the counters
  help               print this`

// Command is one parsed line of the command language (see CommandHelp).
type Command struct {
	Op       Op
	Duration time.Duration // blackout, rtt
	IP       netip.Addr    // move
	Name     string        // profile
	Ratio    float64       // loss
	Rate     int64         // rate, bits per second
}

// ParseCommand parses one line of the command language.
func ParseCommand(line string) (Command, error) {
	f := strings.Fields(line)
	if len(f) == 0 {
		return Command{}, errors.New("linksim: empty command")
	}
	verb := strings.ToLower(f[0])
	var op Op
	for o, n := range opNames {
		if n == verb {
			op = o
		}
	}
	if op == 0 {
		return Command{}, fmt.Errorf("linksim: unknown command %q (try help)", f[0])
	}
	c := Command{Op: op}
	wantArg := op == OpBlackout || op == OpMove || op == OpProfile || op == OpLoss || op == OpRTT || op == OpRate
	switch {
	case wantArg && len(f) != 2:
		return Command{}, fmt.Errorf("linksim: %s takes one argument", verb)
	case !wantArg && len(f) != 1:
		return Command{}, fmt.Errorf("linksim: %s takes no argument", verb)
	}
	var err error
	switch op {
	case OpBlackout, OpRTT:
		c.Duration, err = time.ParseDuration(f[1])
		switch {
		case err != nil:
		case c.Duration < 0:
			err = errors.New("negative duration")
		case op == OpBlackout && c.Duration == 0:
			err = errors.New("zero duration")
		}
	case OpMove:
		c.IP, err = netip.ParseAddr(f[1])
		if err == nil && c.IP.Zone() != "" {
			err = errors.New("zones are not supported")
		}
	case OpProfile:
		_, err = ProfileByName(f[1])
		c.Name = strings.ToLower(f[1])
	case OpLoss:
		c.Ratio, err = ParseRatio(f[1])
	case OpRate:
		c.Rate, err = ParseRate(f[1])
	}
	if err != nil {
		return Command{}, fmt.Errorf("linksim: %s: %w", verb, err)
	}
	return c, nil
}

// String formats the command so that ParseCommand reads it back.
func (c Command) String() string {
	n := opNames[c.Op]
	switch c.Op {
	case OpBlackout, OpRTT:
		return n + " " + c.Duration.String()
	case OpMove:
		return n + " " + c.IP.String()
	case OpProfile:
		return n + " " + c.Name
	case OpLoss:
		return n + " " + FormatRatio(c.Ratio)
	case OpRate:
		return n + " " + FormatRate(c.Rate)
	}
	return n
}

// Apply carries out the command on l and returns what to show the person
// who typed it.
func (c Command) Apply(l *Link) (string, error) {
	switch c.Op {
	case OpHelp:
		return CommandHelp, nil
	case OpStats:
		return l.Stats().String(), nil
	case OpBlackout:
		l.Blackout(c.Duration)
		return "link out for " + c.Duration.String(), nil
	case OpDown:
		l.SetDown(true)
		return "link down", nil
	case OpUp:
		l.SetDown(false)
		if l.Out() {
			return "link up (a scheduled outage is in progress)", nil
		}
		return "link up", nil
	case OpRebind:
		l.Rebind()
		return "nat rebound", nil
	case OpMove:
		if err := l.MoveTo(c.IP); err != nil {
			return "", err
		}
		return "moved to " + c.IP.String(), nil
	case OpProfile:
		p, err := ProfileByName(c.Name)
		if err != nil {
			return "", err
		}
		return setProfile(l, p)
	case OpLoss:
		return setProfile(l, l.Profile().Both(func(i *Impairment) { i.Loss = c.Ratio }))
	case OpRTT:
		return setProfile(l, l.Profile().Both(func(i *Impairment) { i.Delay = c.Duration / 2 }))
	case OpRate:
		return setProfile(l, l.Profile().Both(func(i *Impairment) { i.Bandwidth = c.Rate }))
	}
	return "", fmt.Errorf("linksim: command %d not known", c.Op)
}

func setProfile(l *Link, p Profile) (string, error) {
	if err := l.SetProfile(p); err != nil {
		return "", err
	}
	return l.Profile().String(), nil
}

// ParseRatio parses a probability written as a percentage ("5%", "0.5%")
// or a fraction ("0.05"). It must lie in [0, 1].
func ParseRatio(s string) (float64, error) {
	t := strings.TrimSpace(s)
	pct := strings.HasSuffix(t, "%")
	t = strings.TrimSuffix(t, "%")
	v, err := strconv.ParseFloat(t, 64)
	if err != nil {
		return 0, fmt.Errorf("ratio %q: want a percentage like 5%% or a fraction like 0.05", s)
	}
	if pct {
		v /= 100
	}
	if !(v >= 0 && v <= 1) {
		return 0, fmt.Errorf("ratio %q: not between 0%% and 100%%", s)
	}
	return v, nil
}

// FormatRatio formats a probability as a percentage that ParseRatio reads.
func FormatRatio(v float64) string {
	return strconv.FormatFloat(v*100, 'g', 10, 64) + "%"
}

// ParseRate parses a bandwidth in bits per second: a number with an
// optional decimal prefix k, m or g and an optional "bit", "bit/s" or "bps"
// ("12mbit", "1.6Mbit/s", "750k", "256000"). "0", "off" and "none" mean no
// cap (0).
func ParseRate(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	switch t {
	case "off", "none":
		return 0, nil
	}
	for _, suf := range []string{"bit/s", "bps", "bit", "b/s"} {
		if strings.HasSuffix(t, suf) {
			t = strings.TrimSuffix(t, suf)
			break
		}
	}
	mult := 1.0
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k':
			mult = 1e3
		case 'm':
			mult = 1e6
		case 'g':
			mult = 1e9
		}
		if mult != 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(v) || math.IsInf(v, 0) {
		return 0, fmt.Errorf("rate %q: want bits per second like 2mbit, 750k or 0 for no cap", s)
	}
	v *= mult
	if v < 0 || v > 1e12 {
		return 0, fmt.Errorf("rate %q: out of range (0 to 1000gbit)", s)
	}
	if v > 0 && v < 1 {
		return 0, fmt.Errorf("rate %q: below 1 bit/s", s)
	}
	return int64(math.Round(v)), nil
}

// FormatRate formats bits per second as ParseRate reads it.
func FormatRate(bps int64) string {
	switch {
	case bps == 0:
		return "0"
	case bps%1_000_000_000 == 0:
		return strconv.FormatInt(bps/1_000_000_000, 10) + "gbit"
	case bps%1_000_000 == 0:
		return strconv.FormatInt(bps/1_000_000, 10) + "mbit"
	case bps%1_000 == 0:
		return strconv.FormatInt(bps/1_000, 10) + "kbit"
	case bps >= 1_000_000:
		return strconv.FormatFloat(float64(bps)/1e6, 'f', -1, 64) + "mbit"
	}
	return strconv.FormatInt(bps, 10) + "bit"
}

// ParseOutage parses a scheduled outage "AT+FOR" or "AT+FOR/EVERY", each a
// Go duration counted from the link's start: "10s+5s" is out from 10 s to
// 15 s; "1m+10s/2m" is out for 10 s every 2 min from 1 min on.
func ParseOutage(s string) (Outage, error) {
	t := strings.TrimSpace(s)
	at, rest, ok := strings.Cut(t, "+")
	if !ok {
		return Outage{}, fmt.Errorf("outage %q: want AT+FOR or AT+FOR/EVERY, like 10s+5s", s)
	}
	dur, every, hasEvery := strings.Cut(rest, "/")
	var o Outage
	var err error
	if o.At, err = time.ParseDuration(at); err != nil {
		return Outage{}, fmt.Errorf("outage %q: %w", s, err)
	}
	if o.For, err = time.ParseDuration(dur); err != nil {
		return Outage{}, fmt.Errorf("outage %q: %w", s, err)
	}
	if hasEvery {
		if o.Every, err = time.ParseDuration(every); err != nil {
			return Outage{}, fmt.Errorf("outage %q: %w", s, err)
		}
		if o.Every == 0 {
			return Outage{}, fmt.Errorf("outage %q: EVERY must be positive", s)
		}
	}
	if err := o.validate(); err != nil {
		return Outage{}, err
	}
	return o, nil
}
