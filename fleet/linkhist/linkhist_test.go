package linkhist

import (
	"bytes"
	"path/filepath"
	"testing"
	"time"

	"remoteler.dev/edge/tools/logtest"
)

func open(t *testing.T, path string, now *time.Time) *History {
	t.Helper()
	h, err := Open(Config{Path: path, Source: func(func(Sample)) {}, Logger: logtest.Logger(t), Now: func() time.Time { return *now }})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestRecord feeds an hour and a half of samples of one device, once a
// minute: online with growing counters, a reconnect (a new connection,
// whose counters start again), ten minutes offline; then checks the
// hours, the day, and that they survive a restart.
func TestRecord(t *testing.T) {
	start := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	now := start
	path := filepath.Join(t.TempDir(), "linkhistory.db")
	h := open(t, path, &now)
	since := start.Add(-time.Hour)
	connects := 5
	var up, sent, lost uint64
	for m := range 90 {
		now = start.Add(time.Duration(m) * time.Minute)
		s := Sample{DeviceID: "d1", Connects: connects}
		switch {
		case m == 30: // reconnected: a new connection
			since, connects, up, sent, lost = now, connects+1, 0, 0, 0
			s.Connects = connects
			fallthrough
		case m < 70 || m >= 80:
			up += 1000
			sent += 100
			lost += 2
			s.Online, s.Since, s.RTT, s.BytesUp, s.BytesDown, s.Sent, s.Lost = true, since, 50*time.Millisecond, up, up/2, sent, lost
		}
		h.Record(now, []Sample{s})
	}
	check := func(t *testing.T, h *History) {
		t.Helper()
		hours, err := h.Hours("d1", start.Add(-24*time.Hour), now.Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if len(hours) != 2 {
			t.Fatalf("%d hours, want 2: %+v", len(hours), hours)
		}
		h10, h11 := hours[0], hours[1]
		if !h10.Start.Equal(start) || h10.Samples != 60 || h10.Online != 60 || h10.Reconnects != 1 || h10.RTT != 50*time.Millisecond {
			t.Errorf("10:00: %+v, want 60 online samples, 1 reconnect, 50ms", h10)
		}
		// The first sample of this fleetd counts its connection's bytes
		// from zero: 60 samples of 1000 bytes and 100 packets.
		if h10.BytesUp != 60000 || h10.BytesDown != 30000 || h10.Sent != 6000 || h10.Lost != 120 || h10.LossPercent() != 2 {
			t.Errorf("10:00 counters: %+v", h10)
		}
		if h11.Samples != 30 || h11.Online != 20 || h11.OnlinePercent() < 66 || h11.OnlinePercent() > 67 || h11.Reconnects != 0 {
			t.Errorf("11:00: %+v, want 30 samples, 20 online", h11)
		}
		// Back online at 11:20 on the same connection: the ten offline
		// minutes' traffic is not counted twice.
		if h11.BytesUp != 20000 {
			t.Errorf("11:00 bytes up %d, want 20000", h11.BytesUp)
		}
		days, err := h.Days("d1", start.Add(-24*time.Hour), now.Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if len(days) != 1 || days[0].Samples != 90 || days[0].Online != 80 || days[0].BytesUp != 80000 || !days[0].Start.Equal(start.Truncate(24*time.Hour)) {
			t.Errorf("days: %+v, want one of 90 samples, 80 online", days)
		}
		if other, _ := h.Hours("d2", start, now); len(other) != 0 {
			t.Errorf("another device has %d hours", len(other))
		}
	}
	t.Run("in memory", func(t *testing.T) { check(t, h) })
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	t.Run("after a restart", func(t *testing.T) {
		h := open(t, path, &now)
		defer h.Close()
		check(t, h)
	})
}

// TestPrune: days past DailyDays go, and days past HourlyDays keep only
// their total.
func TestPrune(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	h, err := Open(Config{Path: filepath.Join(t.TempDir(), "h.db"), Source: func(func(Sample)) {}, HourlyDays: 2, DailyDays: 5,
		Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for d := range 8 {
		at := now.Add(-time.Duration(d) * 24 * time.Hour)
		h.Record(at, []Sample{{DeviceID: "d1", Online: true, Since: at, RTT: time.Millisecond}})
		h.Record(at.Add(time.Hour), []Sample{{DeviceID: "d1", Online: true, Since: at, RTT: time.Millisecond}})
		if err := h.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := h.Prune(); err != nil || n != 6 {
		t.Errorf("pruned %d records, %v; want 3 dropped and 3 compacted", n, err)
	}
	from := now.Add(-30 * 24 * time.Hour)
	days, _ := h.Days("d1", from, now.Add(48*time.Hour))
	if len(days) != 5 {
		t.Errorf("%d days kept, want 5", len(days))
	}
	hours, _ := h.Hours("d1", from, now.Add(48*time.Hour))
	// Today's two hours and yesterday's; the current hour is in memory.
	if len(hours) != 4 {
		t.Errorf("%d hours kept, want 4 (two days of two)", len(hours))
	}
	for _, d := range days {
		if d.Samples != 2 {
			t.Errorf("day %s: %d samples, want its total of 2 kept", d.Start, d.Samples)
		}
	}
}

// TestForgetsRemovedDevices: a device no longer sampled leaves memory,
// its last hour written.
func TestForgetsRemovedDevices(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	h := open(t, filepath.Join(t.TempDir(), "h.db"), &now)
	defer h.Close()
	h.Record(now, []Sample{{DeviceID: "gone", Online: true, Since: now}})
	h.Record(now.Add(time.Minute), nil)
	if len(h.devs) != 0 {
		t.Errorf("%d devices in memory, want 0", len(h.devs))
	}
	if err := h.Flush(); err != nil {
		t.Fatal(err)
	}
	if hours, _ := h.Hours("gone", now.Add(-time.Hour), now.Add(time.Hour)); len(hours) != 1 {
		t.Errorf("the removed device's hour: %+v", hours)
	}
}

func TestEncoding(t *testing.T) {
	r := &dayRecord{}
	r.setHour(3, Point{Samples: 60, Online: 59, RTT: 42 * time.Millisecond, Sent: 1000, Lost: 7, Reconnects: 2, Blackouts: 1, BytesUp: 1 << 40, BytesDown: 12})
	r.setHour(23, Point{Samples: 1, Online: 0})
	b := r.encode()
	got, err := decodeDay(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.hours != r.hours || got.hour[3] != r.hour[3] || got.day.Samples != 61 || got.day.Online != 59 {
		t.Errorf("decoded %+v, want %+v", got, r)
	}
	if !bytes.Equal(got.encode(), b) {
		t.Error("encoding is not stable")
	}
	bad := map[string][]byte{
		"empty":               {},
		"other version":       {9},
		"truncated":           b[:len(b)-1],
		"trailing bytes":      append(append([]byte{}, b...), 0),
		"lost over sent":      (&dayRecord{day: Point{Sent: 1, Lost: 2}}).encode(),
		"online over samples": (&dayRecord{day: Point{Samples: 1, Online: 2}}).encode(),
	}
	for name, in := range bad {
		t.Run(name, func(t *testing.T) {
			if _, err := decodeDay(in); err == nil {
				t.Errorf("decoded %x", in)
			}
		})
	}
}

// FuzzDecodeDay: the history file's records never panic the decoder, and
// what decodes encodes to the same bytes.
func FuzzDecodeDay(f *testing.F) {
	r := &dayRecord{}
	r.setHour(0, Point{Samples: 60, Online: 60, RTT: time.Millisecond, Sent: 10, Lost: 1, BytesUp: 5})
	f.Add(r.encode())
	f.Add((&dayRecord{}).encode())
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		rec, err := decodeDay(b)
		if err != nil {
			return
		}
		again, err := decodeDay(rec.encode())
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if again.hours != rec.hours || again.hour != rec.hour {
			t.Fatalf("round trip changed the hours")
		}
	})
}
