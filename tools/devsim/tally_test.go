package devsim

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"
)

// TestTally: the devices' tunnel messages are counted by what they say,
// addresses, IDs and durations aside, most frequent first; debug lines
// are not counted, and what the next handler wants still reaches it.
func TestTally(t *testing.T) {
	var tl tally
	var passed []string
	next := &recordHandler{level: slog.LevelDebug, got: &passed}
	log := slog.New(&tallyHandler{t: &tl, next: next}).With("device", "sim-00001")
	for _, addr := range []string{"127.0.0.1:4433", "127.1.2.3:61000", "10.0.0.1:443"} {
		log.Warn("tunnel down; reconnecting", "err", errors.New("tunnel: dial fleet "+addr+": timeout: no recent network activity"), "in", "1.5s")
	}
	log.Info("tunnel up", "device_id", "874410624f2a8d41ce594d6f5efe77f1")
	log.Info("tunnel up", "device_id", "9d4936381533f124a1b3c2e4f11b5001")
	log.Warn("tunnel down; reconnecting", "err", errors.New("fleet busy; reconnect within 2500ms"))
	log.Debug("noise")

	want := []string{
		"3× tunnel down; reconnecting: tunnel: dial fleet N: timeout: no recent network activity",
		"2× tunnel up",
	}
	if got := tl.take(2); !slices.Equal(got, want) {
		t.Errorf("take(2) = %q\nwant %q", got, want)
	}
	if got := tl.take(2); len(got) != 0 {
		t.Errorf("take after take = %q; want nothing (counting starts again)", got)
	}
	if len(passed) != 7 {
		t.Errorf("the next handler got %d records; want all 7", len(passed))
	}
}

// recordHandler keeps the messages of records at level and above.
type recordHandler struct {
	level slog.Level
	got   *[]string
}

func (h *recordHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	*h.got = append(*h.got, r.Message)
	return nil
}
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }
