package devsim

import (
	"strings"
	"testing"
	"time"
)

func msList(ms ...int) []time.Duration {
	out := make([]time.Duration, len(ms))
	for i, m := range ms {
		out[i] = time.Duration(m) * time.Millisecond
	}
	return out
}

func TestSpreadOf(t *testing.T) {
	tests := []struct {
		name string
		in   []time.Duration
		want Spread
	}{
		{"none", nil, Spread{}},
		{"one", msList(7), Spread{N: 1, Min: 7 * time.Millisecond, P50: 7 * time.Millisecond, P90: 7 * time.Millisecond,
			P99: 7 * time.Millisecond, Max: 7 * time.Millisecond, Mean: 7 * time.Millisecond}},
		{"ten unsorted", msList(10, 1, 9, 2, 8, 3, 7, 4, 6, 5), Spread{N: 10, Min: time.Millisecond, P50: 5 * time.Millisecond,
			P90: 9 * time.Millisecond, P99: 10 * time.Millisecond, Max: 10 * time.Millisecond, Mean: 5500 * time.Microsecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := SpreadOf(tt.in); got != tt.want {
				t.Errorf("SpreadOf = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestHistogram(t *testing.T) {
	tests := []struct {
		name       string
		in         []time.Duration
		wantStart  time.Duration
		wantCounts []int
		wantPeak   int
		wantPeakAt time.Duration
		wantSecond int // Busiest(10)
	}{
		{"empty", nil, 0, nil, 0, 0, 0},
		{"one bucket", msList(120, 150, 199), 100 * time.Millisecond, []int{3}, 3, 100 * time.Millisecond, 3},
		{"gap", msList(50, 320, 330, 1250), 0, []int{1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 1}, 2, 300 * time.Millisecond, 3},
		{"negative", msList(-150, -20, 30), -200 * time.Millisecond, []int{1, 1, 1}, 1, -200 * time.Millisecond, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := HistogramOf(tt.in, 100*time.Millisecond)
			if h.Start != tt.wantStart {
				t.Errorf("Start = %v, want %v", h.Start, tt.wantStart)
			}
			if got, want := len(h.Counts), len(tt.wantCounts); got != want {
				t.Fatalf("Counts = %v, want %v", h.Counts, tt.wantCounts)
			}
			for i := range h.Counts {
				if h.Counts[i] != tt.wantCounts[i] {
					t.Fatalf("Counts = %v, want %v", h.Counts, tt.wantCounts)
				}
			}
			if peak, at := h.Peak(); peak != tt.wantPeak || at != tt.wantPeakAt {
				t.Errorf("Peak = %d at %v, want %d at %v", peak, at, tt.wantPeak, tt.wantPeakAt)
			}
			if got := h.Busiest(10); got != tt.wantSecond {
				t.Errorf("Busiest(10) = %d, want %d", got, tt.wantSecond)
			}
			if got := h.Total(); got != len(tt.in) {
				t.Errorf("Total = %d, want %d", got, len(tt.in))
			}
		})
	}
}

func TestHistogramWriteFoldsEmptyRuns(t *testing.T) {
	var b strings.Builder
	HistogramOf(msList(50, 1250), 100*time.Millisecond).Write(&b, 10)
	got := b.String()
	if n := strings.Count(got, "\n"); n != 3 {
		t.Errorf("%d lines, want 3 (bucket, folded gap, bucket):\n%s", n, got)
	}
	if !strings.Contains(got, "100ms–1200ms") {
		t.Errorf("folded gap missing:\n%s", got)
	}
}

func TestStormVerdict(t *testing.T) {
	tests := []struct {
		name  string
		count int
		backs []time.Duration
		storm bool
	}{
		{"spread evenly over 10 s", 100, spreadEvenly(100, 10*time.Second), false},
		{"all in one second", 100, spreadEvenly(100, 900*time.Millisecond), true},
		{"a spike on a long tail", 100, append(spreadEvenly(70, 60*time.Second), spreadEvenly(30, 50*time.Millisecond)...), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &RestartReport{Count: tt.count, Back: SpreadOf(tt.backs), BackHist: HistogramOf(tt.backs, Bucket)}
			if got, why := r.Storm(); got != tt.storm {
				t.Errorf("Storm = %v (%s), want %v", got, why, tt.storm)
			}
		})
	}
}

func spreadEvenly(n int, over time.Duration) []time.Duration {
	out := make([]time.Duration, n)
	for i := range out {
		out[i] = over * time.Duration(i) / time.Duration(n)
	}
	return out
}
