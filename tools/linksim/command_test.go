package linksim

import (
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseCommand(t *testing.T) {
	tests := []struct {
		line    string
		want    Command
		wantErr string
	}{
		{line: "blackout 30s", want: Command{Op: OpBlackout, Duration: 30 * time.Second}},
		{line: "  BLACKOUT\t1m30s ", want: Command{Op: OpBlackout, Duration: 90 * time.Second}},
		{line: "down", want: Command{Op: OpDown}},
		{line: "up", want: Command{Op: OpUp}},
		{line: "rebind", want: Command{Op: OpRebind}},
		{line: "stats", want: Command{Op: OpStats}},
		{line: "help", want: Command{Op: OpHelp}},
		{line: "move 127.0.0.3", want: Command{Op: OpMove, IP: netip.MustParseAddr("127.0.0.3")}},
		{line: "move ::1", want: Command{Op: OpMove, IP: netip.MustParseAddr("::1")}},
		{line: "profile 3G", want: Command{Op: OpProfile, Name: "3g"}},
		{line: "loss 5%", want: Command{Op: OpLoss, Ratio: 0.05}},
		{line: "loss 0.25", want: Command{Op: OpLoss, Ratio: 0.25}},
		{line: "rtt 70ms", want: Command{Op: OpRTT, Duration: 70 * time.Millisecond}},
		{line: "rate 1.6mbit", want: Command{Op: OpRate, Rate: 1_600_000}},
		{line: "rate off", want: Command{Op: OpRate}},
		{line: "", wantErr: "empty"},
		{line: "explode", wantErr: "unknown command"},
		{line: "blackout", wantErr: "one argument"},
		{line: "blackout 0s", wantErr: "zero"},
		{line: "blackout -1s", wantErr: "negative"},
		{line: "blackout soon", wantErr: "invalid duration"},
		{line: "down now", wantErr: "no argument"},
		{line: "move 300.0.0.1", wantErr: "move"},
		{line: "move fe80::1%eth0", wantErr: "zones"},
		{line: "profile 5g", wantErr: "unknown profile"},
		{line: "loss 150%", wantErr: "between"},
		{line: "loss lots", wantErr: "percentage"},
		{line: "rate fast", wantErr: "bits per second"},
		{line: "rate -1mbit", wantErr: "range"},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			got, err := ParseCommand(tt.line)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %+v, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestCommandApply(t *testing.T) {
	l := newTestLink(t, Config{})
	tests := []struct {
		line  string
		check func() bool
	}{
		{"down", func() bool { return l.Out() }},
		{"up", func() bool { return !l.Out() }},
		{"blackout 1h", func() bool { return l.Out() }},
		{"up", func() bool { return !l.Out() }},
		{"profile lte", func() bool { return l.Profile().Up.Delay == 35*time.Millisecond }},
		{"loss 5%", func() bool { return l.Profile().Down.Loss == 0.05 && l.Profile().Up.Delay == 35*time.Millisecond }},
		{"rtt 100ms", func() bool { return l.Profile().Down.Delay == 50*time.Millisecond }},
		{"rate 2mbit", func() bool { return l.Profile().Up.Bandwidth == 2_000_000 }},
		{"move 127.0.0.3", func() bool { return l.currentBindIP() == netip.MustParseAddr("127.0.0.3") }},
		{"rebind", func() bool { return true }},
		{"stats", func() bool { return true }},
		{"help", func() bool { return true }},
	}
	for _, tt := range tests {
		c, err := ParseCommand(tt.line)
		if err != nil {
			t.Fatal(err)
		}
		msg, err := c.Apply(l)
		if err != nil {
			t.Errorf("%s: %v", tt.line, err)
			continue
		}
		if msg == "" {
			t.Errorf("%s: empty reply", tt.line)
		}
		if !tt.check() {
			t.Errorf("%s: had no effect", tt.line)
		}
	}
}

func TestParseRateAndOutage(t *testing.T) {
	rates := []struct {
		in   string
		want int64
	}{
		{"12mbit", 12_000_000}, {"1.6Mbit/s", 1_600_000}, {"750k", 750_000}, {"256000", 256_000},
		{"2gbps", 2_000_000_000}, {"0", 0}, {"none", 0}, {"35kbit", 35_000},
	}
	for _, tt := range rates {
		got, err := ParseRate(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("ParseRate(%q): got %d, %v; want %d", tt.in, got, err, tt.want)
		}
		if back, err := ParseRate(FormatRate(got)); err != nil || back != got {
			t.Errorf("ParseRate(FormatRate(%d)) = %d, %v", got, back, err)
		}
	}
	outages := []struct {
		in      string
		want    Outage
		wantErr bool
	}{
		{in: "10s+5s", want: Outage{At: 10 * time.Second, For: 5 * time.Second}},
		{in: "1m+10s/2m", want: Outage{At: time.Minute, For: 10 * time.Second, Every: 2 * time.Minute}},
		{in: "0s+1ms", want: Outage{For: time.Millisecond}},
		{in: "10s", wantErr: true},
		{in: "10s+0s", wantErr: true},
		{in: "-1s+5s", wantErr: true},
		{in: "1s+5s/5s", wantErr: true},
		{in: "1s+5s/0s", wantErr: true},
		{in: "x+5s", wantErr: true},
	}
	for _, tt := range outages {
		got, err := ParseOutage(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("ParseOutage(%q): got %+v, %v; want %+v (error %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func FuzzParseCommand(f *testing.F) {
	for _, s := range []string{"blackout 30s", "down", "up", "rebind", "move 127.0.0.3", "stats",
		"profile lte", "loss 5%", "loss 0.3333333", "rtt 1h2m", "rate 1.234567mbit", "help", "", "move ::ffff:1.2.3.4"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		c, err := ParseCommand(line)
		if err != nil {
			return
		}
		back, err := ParseCommand(c.String())
		if err != nil {
			t.Fatalf("ParseCommand(%q) = %+v, whose String %q does not parse: %v", line, c, c.String(), err)
		}
		if math.Abs(back.Ratio-c.Ratio) > 1e-9 {
			t.Fatalf("ratio round trip: %v became %v", c.Ratio, back.Ratio)
		}
		back.Ratio = c.Ratio
		if back != c {
			t.Fatalf("round trip of %q: %+v became %+v", line, c, back)
		}
	})
}

func FuzzParseOutage(f *testing.F) {
	for _, s := range []string{"10s+5s", "1m+10s/2m", "0s+1ns", "+", "1s+2s/", "1h+1h/1h"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		o, err := ParseOutage(s)
		if err != nil {
			return
		}
		if err := o.validate(); err != nil {
			t.Fatalf("ParseOutage(%q) accepted an invalid outage: %v", s, err)
		}
		back, err := ParseOutage(o.String())
		if err != nil || back != o {
			t.Fatalf("round trip of %q: %+v became %+v, %v", s, o, back, err)
		}
	})
}

func FuzzParseRate(f *testing.F) {
	for _, s := range []string{"12mbit", "1.6Mbit/s", "750k", "0", "off", "1e3k", "0.5", "NaN", "9e99"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseRate(s)
		if err != nil {
			return
		}
		if v < 0 {
			t.Fatalf("ParseRate(%q) = %d, negative", s, v)
		}
		back, err := ParseRate(FormatRate(v))
		if err != nil || back != v {
			t.Fatalf("round trip of %q: %d became %d, %v", s, v, back, err)
		}
	})
}
