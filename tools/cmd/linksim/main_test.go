package main

import (
	"bufio"
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/tools/linksim"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		check   func(config) bool
		wantErr string
	}{
		{"profile with loss", []string{"-upstream", "127.0.0.1:3080", "-loss", "5%", "-profile", "lte"}, func(c config) bool {
			p := c.link.Profile
			return p.Up.Loss == 0.05 && p.Down.Loss == 0.05 && p.Up.Delay == 35*time.Millisecond && p.Down.Bandwidth == 12_000_000
		}, ""},
		{"per direction", []string{"-upstream", "x:1", "-up-rate", "768k", "-down-rate", "1.6mbit", "-up-loss", "1%", "-rtt", "100ms", "-mtu", "1400"}, func(c config) bool {
			p := c.link.Profile
			return p.Up.Bandwidth == 768_000 && p.Down.Bandwidth == 1_600_000 && p.Up.Loss == 0.01 && p.Down.Loss == 0 &&
				p.Down.Delay == 50*time.Millisecond && p.Up.MTU == 1400
		}, ""},
		{"nat and outages", []string{"-upstream", "x:1", "-nat-timeout", "30s", "-outage", "10s+5s", "-outage", "1m+5s/2m", "-tcp", "-seed", "7"}, func(c config) bool {
			return c.link.NATTimeout == 30*time.Second && len(c.link.Schedule) == 2 && c.tcp && c.tcpUpstream == "x:1" && c.link.Seed == 7
		}, ""},
		{"burst", []string{"-upstream", "x:1", "-burst-p", "1%", "-burst-r", "25%"}, func(c config) bool {
			return c.link.Profile.Up.Burst == linksim.GilbertElliott{P: 0.01, R: 0.25}
		}, ""},
		{"no upstream", nil, nil, "-upstream is required"},
		{"bad loss", []string{"-upstream", "x:1", "-loss", "120%"}, nil, "between"},
		{"bad profile", []string{"-upstream", "x:1", "-profile", "5g"}, nil, "unknown profile"},
		{"nothing to relay", []string{"-upstream", "x:1", "-udp=false"}, nil, "nothing to relay"},
		{"bad outage", []string{"-upstream", "x:1", "-outage", "10s"}, nil, "AT+FOR"},
		{"stray argument", []string{"-upstream", "x:1", "lte"}, nil, "unexpected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseFlags(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tt.check(c) {
				t.Errorf("flags %q gave %+v", tt.args, c)
			}
		})
	}
}

func TestRunCommands(t *testing.T) {
	ln, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	c, err := parseFlags([]string{"-listen", "127.0.0.1:0", "-upstream", ln.LocalAddr().String(), "-tcp", "-stats-every", "0"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, c, inR, outW); outW.Close() }()
	t.Cleanup(func() { cancel(); inW.Close(); <-done })

	out := bufio.NewScanner(outR)
	expect := func(want string) {
		t.Helper()
		for out.Scan() {
			if strings.Contains(out.Text(), want) {
				return
			}
		}
		t.Fatalf("output ended before a line containing %q", want)
	}
	expect(`type "help"`)
	steps := []struct{ in, want string }{
		{"down", "link down"},
		{"up", "link up"},
		{"blackout 1m", "link out for 1m0s"},
		{"loss 5%", "loss 5%"},
		{"move 127.0.0.3", "moved to 127.0.0.3"},
		{"explode", "unknown command"},
		{"stats", "nat mappings 0, tcp conns 0"},
	}
	for _, s := range steps {
		if _, err := io.WriteString(inW, s.in+"\n"); err != nil {
			t.Fatal(err)
		}
		expect(s.want)
	}
	cancel()
	expect("nat mappings") // final counters
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
	done <- nil
}
