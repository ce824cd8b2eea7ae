package ota

import (
	"fmt"
	"time"
)

// Window is a daily maintenance window in UTC, "HH:MM-HH:MM"; it may wrap
// past midnight ("22:00-04:00"). The zero Window is always open.
// Devices without a real-time clock use the fleet's time (the agent's
// clock follows the fleet's), so UTC is the one zone both sides agree on.
type Window struct {
	start, end int // minutes after midnight UTC; start == end: always open
	set        bool
}

// ParseWindow reads "HH:MM-HH:MM"; "" is the always-open window.
func ParseWindow(s string) (Window, error) {
	if s == "" {
		return Window{}, nil
	}
	var h1, m1, h2, m2 int
	var rest string
	n, _ := fmt.Sscanf(s, "%02d:%02d-%02d:%02d%s", &h1, &m1, &h2, &m2, &rest)
	if n != 4 || len(s) != 11 || h1 > 23 || h2 > 23 || m1 > 59 || m2 > 59 || h1 < 0 || h2 < 0 || m1 < 0 || m2 < 0 {
		return Window{}, fmt.Errorf("ota: maintenance window %q: want HH:MM-HH:MM in UTC, like 02:00-05:00", s)
	}
	w := Window{start: h1*60 + m1, end: h2*60 + m2, set: true}
	if w.start == w.end {
		return Window{}, fmt.Errorf("ota: maintenance window %q is empty: start and end must differ", s)
	}
	return w, nil
}

// String returns the window as ParseWindow reads it; "" when always open.
func (w Window) String() string {
	if !w.set {
		return ""
	}
	return fmt.Sprintf("%02d:%02d-%02d:%02d", w.start/60, w.start%60, w.end/60, w.end%60)
}

// Open reports whether t falls inside the window.
func (w Window) Open(t time.Time) bool {
	if !w.set {
		return true
	}
	t = t.UTC()
	m := t.Hour()*60 + t.Minute()
	if w.start < w.end {
		return m >= w.start && m < w.end
	}
	return m >= w.start || m < w.end
}

// Next returns when the window next opens at or after t (t itself when it
// is open).
func (w Window) Next(t time.Time) time.Time {
	if w.Open(t) {
		return t
	}
	t = t.UTC()
	day := time.Date(t.Year(), t.Month(), t.Day(), 0, 0, 0, 0, time.UTC)
	open := day.Add(time.Duration(w.start) * time.Minute)
	if !open.After(t) {
		open = open.Add(24 * time.Hour)
	}
	return open
}
