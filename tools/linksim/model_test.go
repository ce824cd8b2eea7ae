package linksim

import (
	"math"
	"strings"
	"testing"
	"time"
)

func TestProfileByName(t *testing.T) {
	tests := []struct {
		name     string
		rtt      time.Duration // base: both delays
		down, up int64
	}{
		{"perfect", 0, 0, 0},
		{"wifi", 2 * time.Millisecond, 30_000_000, 15_000_000},
		{"LTE", 70 * time.Millisecond, 12_000_000, 12_000_000},
		{"3g", 300 * time.Millisecond, 1_600_000, 768_000},
		{"2g", 800 * time.Millisecond, 280_000, 256_000},
		{"satellite", 600 * time.Millisecond, 25_000_000, 3_000_000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ProfileByName(tt.name)
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Up.Delay + p.Down.Delay; got != tt.rtt {
				t.Errorf("base rtt: got %v, want %v", got, tt.rtt)
			}
			if p.Down.Bandwidth != tt.down || p.Up.Bandwidth != tt.up {
				t.Errorf("bandwidth: got %d/%d, want %d/%d", p.Down.Bandwidth, p.Up.Bandwidth, tt.down, tt.up)
			}
			if err := p.Validate(); err != nil {
				t.Error(err)
			}
			if p.Name != strings.ToLower(tt.name) {
				t.Errorf("name: got %q, want %q", p.Name, strings.ToLower(tt.name))
			}
		})
	}
	if _, err := ProfileByName("5g"); err == nil || !strings.Contains(err.Error(), "lte") {
		t.Errorf("unknown profile: got %v, want an error listing the names", err)
	}
	if got := len(ProfileNames()); got != len(tests) {
		t.Errorf("ProfileNames: got %d names, want %d", got, len(tests))
	}
}

func TestProfileAdjust(t *testing.T) {
	p, _ := ProfileByName("lte")
	p = p.Both(func(i *Impairment) { i.Loss = 0.05 })
	if p.Up.Loss != 0.05 || p.Down.Loss != 0.05 {
		t.Errorf("adjusted loss: got %v/%v, want 0.05", p.Up.Loss, p.Down.Loss)
	}
	again, _ := ProfileByName("lte")
	if again.Up.Loss != 0.005 {
		t.Errorf("the named profile changed: loss %v, want 0.005", again.Up.Loss)
	}
	if got, want := again.RTT(), 80*time.Millisecond; got != want {
		t.Errorf("RTT with mean jitter: got %v, want %v", got, want)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"loss over 1", Config{Profile: Profile{Up: Impairment{Loss: 1.5}}}},
		{"negative delay", Config{Profile: Profile{Down: Impairment{Delay: -time.Second}}}},
		{"burst r NaN", Config{Profile: Profile{Up: Impairment{Burst: GilbertElliott{R: math.NaN()}}}}},
		{"outage longer than period", Config{Schedule: []Outage{{At: 0, For: time.Minute, Every: time.Minute}}}},
		{"outage of zero length", Config{Schedule: []Outage{{At: time.Second}}}},
		{"negative nat timeout", Config{NATTimeout: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if l, err := New(tt.cfg); err == nil {
				l.Close()
				t.Error("New: got nil error")
			}
		})
	}
}

func TestGilbertElliott(t *testing.T) {
	tests := []struct {
		name string
		g    GilbertElliott
		want float64
	}{
		{"gilbert", GilbertElliott{P: 0.05, R: 0.25}, 1.0 / 6},
		{"elliott", GilbertElliott{P: 0.1, R: 0.4, LossGood: 0.01, LossBad: 0.5}, (0.4*0.01 + 0.1*0.5) / 0.5},
		{"good only", GilbertElliott{LossGood: 0.2}, 0.2},
		{"off", GilbertElliott{}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.g.MeanLoss(); math.Abs(got-tt.want) > 1e-12 {
				t.Errorf("MeanLoss: got %v, want %v", got, tt.want)
			}
			c := newChannel(Impairment{Burst: tt.g}, 1)
			const n = 200_000
			lost := 0
			for range n {
				if c.loseLocked() {
					lost++
				}
			}
			if got := float64(lost) / n; math.Abs(got-tt.want) > 0.01 {
				t.Errorf("simulated loss: got %.4f, want %.4f ± 0.01", got, tt.want)
			}
		})
	}
}

func TestAdmitPacketBottleneck(t *testing.T) {
	now := time.Unix(1000, 0)
	// 8 kbit/s: a 972-byte payload (1000 bytes on the wire) takes 1 s.
	c := newChannel(Impairment{Bandwidth: 8000, QueueBytes: 3000, Delay: time.Second}, 1)
	tests := []struct {
		name string
		want time.Duration // release after now; -1: dropped (queue)
	}{
		{"first leaves after 1 s on the wire", 2 * time.Second},
		{"second waits for the first", 3 * time.Second},
		{"third fills the queue (bytes on the wire count)", 4 * time.Second},
		{"fourth is tail-dropped", -1},
	}
	for _, tt := range tests {
		at, reason, ok := c.admitPacket(now, 1000)
		switch {
		case tt.want < 0 && (ok || reason != ReasonQueue):
			t.Errorf("%s: got ok=%v reason %v, want a queue drop", tt.name, ok, reason)
		case tt.want >= 0 && (!ok || at.Sub(now) != tt.want):
			t.Errorf("%s: got %v ok=%v (%v), want release after %v", tt.name, at.Sub(now), ok, reason, tt.want)
		}
	}
}

func TestOutageSchedule(t *testing.T) {
	clk := newFakeClock()
	t0 := clk.Now()
	l := newTestLink(t, Config{Now: clk.Now, Schedule: []Outage{
		{At: 10 * time.Second, For: 5 * time.Second},
		{At: time.Minute, For: 10 * time.Second, Every: time.Minute},
	}})
	clk.Advance(14 * time.Second)
	l.Blackout(6 * time.Second) // 14 s to 20 s: joins the first outage
	tests := []struct {
		at    time.Duration
		out   bool
		until time.Duration
	}{
		{0, false, 0},
		{9 * time.Second, false, 0},
		{10 * time.Second, true, 20 * time.Second},
		{16 * time.Second, true, 20 * time.Second},
		{20 * time.Second, false, 0},
		{60 * time.Second, true, 70 * time.Second},
		{70 * time.Second, false, 0},
		{185 * time.Second, true, 190 * time.Second},
	}
	for _, tt := range tests {
		out, until := l.outage(t0.Add(tt.at))
		if out != tt.out || (out && until.Sub(t0) != tt.until) {
			t.Errorf("at %v: got out=%v until %v, want %v until %v", tt.at, out, until.Sub(t0), tt.out, tt.until)
		}
	}
	l.SetDown(true)
	if out, until := l.outage(clk.Now()); !out || !until.IsZero() {
		t.Errorf("down: got out=%v until %v, want out with no end", out, until)
	}
	l.SetDown(false) // at 14 s: ends the manual blackout, not the schedule
	if out, until := l.outage(t0.Add(12 * time.Second)); !out || until.Sub(t0) != 15*time.Second {
		t.Errorf("after up, at 12 s: got out=%v until %v, want the scheduled outage until 15s", out, until.Sub(t0))
	}
	if out, _ := l.outage(t0.Add(16 * time.Second)); out {
		t.Error("after up, at 16 s: the manual blackout is still there")
	}
}

func TestRetransmitAt(t *testing.T) {
	stall := time.Unix(0, 0)
	ms := time.Millisecond
	tests := []struct {
		name string
		rto  time.Duration
		back time.Duration
		want time.Duration
	}{
		{"back before first", 200 * ms, 100 * ms, 200 * ms},
		{"exactly first", 200 * ms, 200 * ms, 200 * ms},
		{"second", 200 * ms, 250 * ms, 600 * ms},
		{"third", 200 * ms, 700 * ms, 1400 * ms},
		{"capped", 100 * time.Second, 1000 * time.Second, 1060 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := retransmitAt(stall, stall.Add(tt.back), tt.rto).Sub(stall); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestStatsString(t *testing.T) {
	s := Stats{Up: DirStats{Forwarded: Counter{3, 3000}, Dropped: Drops{Loss: 2}}, Mappings: 1}
	got := s.String()
	for _, want := range []string{"up", "fwd 3 pkt 2.9 KiB", "loss=2", "nat mappings 1"} {
		if !strings.Contains(got, want) {
			t.Errorf("String() = %q, want it to contain %q", got, want)
		}
	}
}
