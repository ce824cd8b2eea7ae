package linkhealth

import (
	"context"
	"math"
	"testing"
	"testing/synctest"
	"time"
)

// link simulates a connection's counters second by second: each second the
// fleet sends `send` packets; while the link is up, a share `loss` of them
// is lost and the rest acknowledged; when it goes, the last quarter second
// of sending is in flight and lost, and during a blackout the fleet sends
// a probe a second; QUIC declares them lost once the link is back.
type link struct {
	c       Counters
	pending uint64 // lost in the blackout, not yet declared lost
	down    bool
	// late is how many seconds after the link returns QUIC declares the
	// blackout's packets lost; waiting counts them down.
	late, waiting int
}

func (l *link) second(send uint64, loss float64, up bool) {
	if !up {
		if !l.down {
			l.pending += send / 4
		}
		l.down = true
		l.waiting = l.late
		l.c.Sent++
		l.pending++
		return
	}
	l.down = false
	l.c.Sent += send
	lost := uint64(math.Round(float64(send) * loss))
	l.c.Lost += lost
	if l.waiting > 0 {
		l.waiting--
	} else {
		l.c.Lost += l.pending
		l.pending = 0
	}
	if send > lost {
		l.c.Received += send - lost // their acknowledgements
	}
}

func TestMeter(t *testing.T) {
	tests := []struct {
		name          string
		seconds       int
		send          uint64
		loss          float64
		blackouts     [][2]int // [from, to) seconds
		wantLoss      float64  // -1: QUIC's own count
		wantBlackouts int
		late          int // seconds after the link returns that the blackout's losses are declared
		every         int // seconds between samples (a busy sampler); default 1
	}{
		{"clean link", 60, 10, 0, nil, 0, 0, 0, 0},
		{"1% loss", 100, 100, 0.01, nil, 1, 0, 0, 0},
		{"clean link through a 20 s blackout", 60, 10, 0, [][2]int{{20, 40}}, 0, 1, 0, 0},
		{"2% loss through two blackouts", 120, 50, 0.02, [][2]int{{10, 30}, {60, 90}}, 2, 2, 0, 0},
		{"2 s outage counts as loss", 60, 10, 0, [][2]int{{20, 22}}, -1, 0, 0, 0},
		{"losses declared 3 s after the link returns", 60, 10, 0, [][2]int{{20, 30}}, 0, 1, 3, 0},
		{"a sampler that runs every 2 s", 60, 10, 0, [][2]int{{20, 30}}, 0, 1, 1, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m Meter
			l := link{late: tt.late}
			every := max(tt.every, 1)
			start := time.Unix(1000, 0)
			for s := 1; s <= tt.seconds; s++ {
				up := true
				for _, b := range tt.blackouts {
					if s > b[0] && s <= b[1] {
						up = false
					}
				}
				l.second(tt.send, tt.loss, up)
				if s%every == 0 {
					m.Sample(start.Add(time.Duration(s)*time.Second), l.c)
				}
			}
			raw := 100 * float64(l.c.Lost) / float64(l.c.Sent)
			if tt.wantLoss < 0 {
				tt.wantLoss = raw
			}
			if got := m.LossPercent(); math.Abs(got-tt.wantLoss) > 0.2 || m.Blackouts() != tt.wantBlackouts {
				t.Errorf("loss %.2f%%, %d blackouts; want %.2f%%, %d (QUIC's own count: %.2f%%)", got, m.Blackouts(), tt.wantLoss, tt.wantBlackouts, raw)
			}
		})
	}
}

// TestSampler runs a Sampler in virtual time over two devices, one of which
// reconnects (a new meter) and one goes away (its meter is dropped).
func TestSampler(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var (
			a, b   link
			aSince = time.Now()
			bGone  bool
		)
		s := &Sampler{Links: func(fn func(string, time.Time, Counters)) {
			fn("a", aSince, a.c)
			if !bGone {
				fn("b", time.Time{}, b.c)
			}
		}}
		ctx, cancel := context.WithCancel(t.Context())
		go s.Run(ctx)
		for sec := 1; sec <= 60; sec++ {
			a.second(10, 0, sec <= 20 || sec > 40) // a 20 s blackout
			b.second(100, 0.05, true)
			time.Sleep(time.Second)
			synctest.Wait()
		}
		if loss, blackouts, ok := s.Loss("a"); !ok || loss != 0 || blackouts != 1 {
			t.Errorf("a: %.2f%%, %d blackouts, %v; want 0%%, 1", loss, blackouts, ok)
		}
		if loss, _, ok := s.Loss("b"); !ok || math.Abs(loss-5) > 0.1 {
			t.Errorf("b: %.2f%%, %v; want 5%%", loss, ok)
		}
		// Counted gives the terms of the loss, for differences over time.
		if sent, lost, _, ok := s.Counted("b"); !ok || sent != b.c.Sent || lost != b.c.Lost {
			t.Errorf("b counted %d sent, %d lost, %v; want %d and %d", sent, lost, ok, b.c.Sent, b.c.Lost)
		}
		if sent, lost, blackouts, _ := s.Counted("a"); lost != 0 || sent >= a.c.Sent || blackouts != 1 {
			t.Errorf("a counted %d sent, %d lost, %d blackouts; want the blackout's packets (of %d sent) set apart", sent, lost, blackouts, a.c.Sent)
		}
		aSince, a, bGone = time.Now(), link{}, true
		time.Sleep(time.Second)
		synctest.Wait()
		if _, blackouts, ok := s.Loss("a"); !ok || blackouts != 0 {
			t.Errorf("a after reconnecting: %d blackouts, %v; want a new meter", blackouts, ok)
		}
		if _, _, ok := s.Loss("b"); ok {
			t.Error("b's meter outlived its tunnel")
		}
		cancel()
	})
}
