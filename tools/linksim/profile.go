package linksim

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Impairment describes what the link does to traffic in one direction. The
// zero value is a perfect wire: no delay, no loss, no cap.
type Impairment struct {
	// Delay is the fixed one-way delay added to every packet. 0 = none.
	Delay time.Duration
	// Jitter adds a random extra delay, uniform in [0, Jitter), to each
	// packet, so the one-way delay lies in [Delay, Delay+Jitter). Packets
	// stay in order (a packet that draws a short delay waits for the one
	// ahead of it, as on a real link) unless Reorder is set. 0 = none.
	Jitter time.Duration
	// Reorder lets jitter reorder UDP datagrams. TCP is a byte stream and
	// is never reordered. Default false.
	Reorder bool
	// Loss is the probability, in [0, 1], that a packet is lost, drawn
	// independently for each packet. 0 = none.
	Loss float64
	// Burst adds bursty loss with the Gilbert-Elliott model; the zero value
	// turns it off. It combines with Loss: a packet is lost if either says so.
	Burst GilbertElliott
	// Bandwidth caps the rate in bits per second, counting IP and UDP/TCP
	// headers (28 bytes per UDP datagram over IPv4, 48 over IPv6, 40 per TCP
	// segment). 0 = no cap.
	Bandwidth int64
	// QueueBytes bounds the queue in front of the bandwidth cap, in bytes
	// (headers included). A UDP datagram that does not fit is dropped (tail
	// drop); a TCP reader waits for room instead. Default: what drains in
	// 250 ms at Bandwidth, at least 16 KiB. Unused without Bandwidth.
	QueueBytes int
	// MTU is the largest IP packet the path carries, in bytes (UDP payload
	// plus 28 bytes of IPv4/UDP headers, or 48 for IPv6). Larger UDP
	// datagrams are dropped, as a router does with the don't-fragment bit
	// set; TCP uses MTU-40 as its segment size for loss and header
	// accounting. 0 = no cap for UDP, 1500 for TCP segment accounting.
	MTU int
}

// GilbertElliott is the two-state bursty loss model. The channel is in a
// good or a bad state; before each packet it moves good→bad with probability
// P and bad→good with probability R, then loses the packet with probability
// LossGood or LossBad depending on the state it is in. On average it stays
// 1/R packets in the bad state and spends P/(P+R) of the time there, so the
// mean loss rate is (R·LossGood + P·LossBad)/(P+R). With LossGood 0 and
// LossBad 1 (the Gilbert model) losses come in bursts of mean length 1/R.
type GilbertElliott struct {
	// P is the probability of moving from the good to the bad state.
	P float64
	// R is the probability of moving from the bad to the good state.
	R float64
	// LossGood is the loss probability in the good state. Default 0.
	LossGood float64
	// LossBad is the loss probability in the bad state. 0 means 1: every
	// packet sent in the bad state is lost.
	LossBad float64
}

// Enabled reports whether the model is switched on (P > 0 or LossGood > 0).
func (g GilbertElliott) Enabled() bool { return g.P > 0 || g.LossGood > 0 }

// MeanLoss returns the long-run loss rate of the model.
func (g GilbertElliott) MeanLoss() float64 {
	if !g.Enabled() {
		return 0
	}
	bad := g.lossBad()
	if g.P+g.R == 0 {
		return g.LossGood
	}
	return (g.R*g.LossGood + g.P*bad) / (g.P + g.R)
}

func (g GilbertElliott) lossBad() float64 {
	if g.LossBad == 0 {
		return 1
	}
	return g.LossBad
}

// Profile is a pair of impairments, one per direction. Up is client→server
// (device to fleet), Down is server→client.
type Profile struct {
	// Name is informational ("lte", "custom", ...).
	Name string
	Up   Impairment
	Down Impairment
}

// Both applies f to both directions and returns the changed profile, so a
// named profile is easy to adjust:
//
//	p, _ := linksim.ProfileByName("lte")
//	p = p.Both(func(i *linksim.Impairment) { i.Loss = 0.05 })
func (p Profile) Both(f func(*Impairment)) Profile {
	f(&p.Up)
	f(&p.Down)
	return p
}

// RTT returns the mean round-trip time the profile adds: both delays plus
// the mean of both jitters.
func (p Profile) RTT() time.Duration {
	return p.Up.Delay + p.Down.Delay + (p.Up.Jitter+p.Down.Jitter)/2
}

// String describes the profile in one line, in the units the command line
// takes.
func (p Profile) String() string {
	name := p.Name
	if name == "" {
		name = "custom"
	}
	return fmt.Sprintf("%s: up %s; down %s", name, p.Up, p.Down)
}

// String describes the impairment in one line.
func (i Impairment) String() string {
	var parts []string
	if i.Delay > 0 {
		parts = append(parts, "delay "+i.Delay.String())
	}
	if i.Jitter > 0 {
		parts = append(parts, "jitter "+i.Jitter.String())
	}
	if i.Reorder {
		parts = append(parts, "reorder")
	}
	if i.Loss > 0 {
		parts = append(parts, "loss "+FormatRatio(i.Loss))
	}
	if i.Burst.Enabled() {
		parts = append(parts, fmt.Sprintf("burst p=%s r=%s good=%s bad=%s",
			FormatRatio(i.Burst.P), FormatRatio(i.Burst.R),
			FormatRatio(i.Burst.LossGood), FormatRatio(i.Burst.lossBad())))
	}
	if i.Bandwidth > 0 {
		parts = append(parts, "rate "+FormatRate(i.Bandwidth))
		parts = append(parts, fmt.Sprintf("queue %dB", i.queueBytes()))
	}
	if i.MTU > 0 {
		parts = append(parts, fmt.Sprintf("mtu %d", i.MTU))
	}
	if len(parts) == 0 {
		return "perfect"
	}
	return strings.Join(parts, ", ")
}

// queueBytes returns QueueBytes or its default.
func (i Impairment) queueBytes() int {
	if i.QueueBytes > 0 {
		return i.QueueBytes
	}
	q := int(i.Bandwidth / 8 / 4) // 250 ms
	return max(q, 16<<10)
}

// mss returns the TCP segment size used for loss and header accounting.
func (i Impairment) mss() int {
	if i.MTU > 40+64 {
		return i.MTU - 40
	}
	return 1460
}

// validate checks ranges.
func (i Impairment) validate() error {
	for _, f := range []struct {
		name string
		v    float64
	}{
		{"loss", i.Loss}, {"burst p", i.Burst.P}, {"burst r", i.Burst.R},
		{"burst good loss", i.Burst.LossGood}, {"burst bad loss", i.Burst.LossBad},
	} {
		if !(f.v >= 0 && f.v <= 1) {
			return fmt.Errorf("%s %v is not a probability in [0, 1]", f.name, f.v)
		}
	}
	switch {
	case i.Delay < 0:
		return fmt.Errorf("delay %v is negative", i.Delay)
	case i.Jitter < 0:
		return fmt.Errorf("jitter %v is negative", i.Jitter)
	case i.Bandwidth < 0:
		return fmt.Errorf("bandwidth %d is negative", i.Bandwidth)
	case i.QueueBytes < 0:
		return fmt.Errorf("queue %d is negative", i.QueueBytes)
	case i.MTU < 0:
		return fmt.Errorf("mtu %d is negative", i.MTU)
	}
	return nil
}

// Validate reports the first out-of-range field of either direction.
func (p Profile) Validate() error {
	if err := p.Up.validate(); err != nil {
		return fmt.Errorf("linksim: profile %q up: %w", p.Name, err)
	}
	if err := p.Down.validate(); err != nil {
		return fmt.Errorf("linksim: profile %q down: %w", p.Name, err)
	}
	return nil
}

// The named profiles. Bandwidth and round-trip time come from WebPageTest's
// connectivity presets ("LTE", "Mobile 3G", "2G"), which the web
// performance community uses as its reference; the Wi-Fi figures are Chrome
// DevTools' "WiFi" throttling preset; the satellite figures are a
// geostationary link (about 600 ms round trip, which FCC Measuring Broadband
// America reports for geostationary providers, at the 25/3 Mbit/s tier they
// advertise). Those presets set no jitter or loss; the jitter and loss here
// are ours: radio links retransmit at the link layer (HARQ/RLC, 802.11
// retries), so the residual loss seen above IP is well under a few percent
// and shows up as delay variation instead. Delay is half the round trip in
// each direction; jitter adds on top of it.
//
//	name       RTT      jitter/dir  down / up             loss/dir
//	perfect    0        0           unlimited             0
//	wifi       2 ms     1 ms        30 / 15 Mbit/s        0.1%
//	lte        70 ms    10 ms       12 / 12 Mbit/s        0.5%
//	3g         300 ms   30 ms       1.6 / 0.768 Mbit/s    1%
//	2g         800 ms   100 ms      280 / 256 kbit/s      2%
//	satellite  600 ms   20 ms       25 / 3 Mbit/s         0.5%
//
// None caps the MTU (operators differ, 1358 to 1500 bytes are all common on
// cellular): set Impairment.MTU to test path MTU discovery.
var profiles = map[string]Profile{
	"perfect":   {},
	"wifi":      symmetric(2*time.Millisecond, time.Millisecond, 30_000_000, 15_000_000, 0.001),
	"lte":       symmetric(70*time.Millisecond, 10*time.Millisecond, 12_000_000, 12_000_000, 0.005),
	"3g":        symmetric(300*time.Millisecond, 30*time.Millisecond, 1_600_000, 768_000, 0.01),
	"2g":        symmetric(800*time.Millisecond, 100*time.Millisecond, 280_000, 256_000, 0.02),
	"satellite": symmetric(600*time.Millisecond, 20*time.Millisecond, 25_000_000, 3_000_000, 0.005),
}

func symmetric(rtt, jitter time.Duration, down, up int64, loss float64) Profile {
	i := Impairment{Delay: rtt / 2, Jitter: jitter, Loss: loss}
	p := Profile{Up: i, Down: i}
	p.Up.Bandwidth, p.Down.Bandwidth = up, down
	return p
}

// ProfileNames returns the names ProfileByName knows, sorted.
func ProfileNames() []string {
	names := make([]string, 0, len(profiles))
	for n := range profiles {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// ProfileByName returns a named profile (case-insensitive): perfect, wifi,
// lte, 3g, 2g or satellite. The result is a copy the caller may change.
func ProfileByName(name string) (Profile, error) {
	n := strings.ToLower(strings.TrimSpace(name))
	p, ok := profiles[n]
	if !ok {
		return Profile{}, fmt.Errorf("linksim: unknown profile %q (known: %s)", name, strings.Join(ProfileNames(), ", "))
	}
	p.Name = n
	return p, nil
}
