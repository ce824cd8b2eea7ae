package devsim

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync"
)

// tally counts the devices' tunnel messages (info and above) by what they
// say, with addresses, names and numbers taken out, so that a run of
// thousands of devices can say why they are down without a line a device:
// the simulator logs the most frequent with its progress.
type tally struct {
	mu     sync.Mutex
	counts map[string]int
}

// tallyHandler is a slog.Handler feeding a tally, then next.
type tallyHandler struct {
	t    *tally
	next slog.Handler
}

// variable is what differs between devices' messages of one kind.
var variable = regexp.MustCompile(`[0-9a-f]{8,}|\d+(\.\d+)*(:\d+)?(ms|s|m|µs)?`)

func (h *tallyHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= slog.LevelInfo || h.next.Enabled(ctx, l)
}

func (h *tallyHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Level >= slog.LevelInfo {
		key := r.Message
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "err" || a.Key == "reason" {
				key += ": " + a.Value.String()
				return false
			}
			return true
		})
		h.t.add(variable.ReplaceAllString(key, "N"))
	}
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h *tallyHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &tallyHandler{t: h.t, next: h.next.WithAttrs(as)}
}

func (h *tallyHandler) WithGroup(name string) slog.Handler {
	return &tallyHandler{t: h.t, next: h.next.WithGroup(name)}
}

func (t *tally) add(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.counts == nil {
		t.counts = map[string]int{}
	}
	t.counts[key]++
}

// take returns the n most frequent messages since the last take, each as
// "COUNT× MESSAGE", most frequent first, and starts counting again.
func (t *tally) take(n int) []string {
	t.mu.Lock()
	counts := t.counts
	t.counts = nil
	t.mu.Unlock()
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		if d := counts[b] - counts[a]; d != 0 {
			return d
		}
		return strings.Compare(a, b)
	})
	var out []string
	for _, k := range keys[:min(n, len(keys))] {
		out = append(out, fmt.Sprintf("%d× %s", counts[k], k))
	}
	return out
}
