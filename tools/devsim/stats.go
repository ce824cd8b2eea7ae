package devsim

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"
)

// Spread summarises a set of durations.
type Spread struct {
	N                       int
	Min, P50, P90, P99, Max time.Duration
	Mean                    time.Duration
}

// SpreadOf returns the spread of ds (nearest-rank percentiles); the zero
// Spread for none.
func SpreadOf(ds []time.Duration) Spread {
	if len(ds) == 0 {
		return Spread{}
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return Spread{
		N: len(s), Min: s[0], Max: s[len(s)-1],
		P50: Percentile(s, 50), P90: Percentile(s, 90), P99: Percentile(s, 99),
		Mean: sum / time.Duration(len(s)),
	}
}

// Percentile returns the p-th percentile (nearest rank) of sorted.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[min(max(rank, 1), len(sorted))-1]
}

// String formats the spread on one line, in milliseconds.
func (s Spread) String() string {
	if s.N == 0 {
		return "none"
	}
	return fmt.Sprintf("n=%d min=%s p50=%s p90=%s p99=%s max=%s", s.N, ms(s.Min), ms(s.P50), ms(s.P90), ms(s.P99), ms(s.Max))
}

func ms(d time.Duration) string { return fmt.Sprintf("%dms", d.Milliseconds()) }

// Histogram counts durations in buckets of Width, from Start (a multiple
// of Width at or below the smallest duration) on.
type Histogram struct {
	Width  time.Duration
	Start  time.Duration
	Counts []int
}

// HistogramOf buckets ds by width.
func HistogramOf(ds []time.Duration, width time.Duration) Histogram {
	h := Histogram{Width: width}
	if len(ds) == 0 || width <= 0 {
		return h
	}
	lo, hi := slices.Min(ds), slices.Max(ds)
	h.Start = floorTo(lo, width)
	h.Counts = make([]int, int((hi-h.Start)/width)+1)
	for _, d := range ds {
		h.Counts[int((d-h.Start)/width)]++
	}
	return h
}

// floorTo rounds d down to a multiple of w (towards minus infinity).
func floorTo(d, w time.Duration) time.Duration {
	f := d / w * w
	if f > d {
		f -= w
	}
	return f
}

// Total is the number of durations counted.
func (h Histogram) Total() int {
	n := 0
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// Peak returns the fullest bucket's count and where it starts.
func (h Histogram) Peak() (count int, at time.Duration) {
	for i, c := range h.Counts {
		if c > count {
			count, at = c, h.Start+time.Duration(i)*h.Width
		}
	}
	return count, at
}

// Mean is the mean count per bucket over the span from the first to the
// last non-empty bucket (every bucket of Counts).
func (h Histogram) Mean() float64 {
	if len(h.Counts) == 0 {
		return 0
	}
	return float64(h.Total()) / float64(len(h.Counts))
}

// Busiest returns the largest number of durations that fall in any window
// of n consecutive buckets.
func (h Histogram) Busiest(n int) int {
	best, sum := 0, 0
	for i, c := range h.Counts {
		sum += c
		if i >= n {
			sum -= h.Counts[i-n]
		}
		best = max(best, sum)
	}
	return best
}

// Write draws the histogram as text, one line per bucket, bars scaled to
// at most width characters. Runs of empty buckets are folded into one line.
func (h Histogram) Write(w io.Writer, width int) {
	peak, _ := h.Peak()
	if peak == 0 {
		fmt.Fprintln(w, "  (empty)")
		return
	}
	for i := 0; i < len(h.Counts); i++ {
		from := h.Start + time.Duration(i)*h.Width
		if h.Counts[i] == 0 {
			j := i
			for j+1 < len(h.Counts) && h.Counts[j+1] == 0 {
				j++
			}
			if j > i {
				fmt.Fprintf(w, "  %7s–%-7s %5d\n", ms(from), ms(h.Start+time.Duration(j+1)*h.Width), 0)
				i = j
				continue
			}
		}
		bar := int(math.Round(float64(h.Counts[i]) / float64(peak) * float64(width)))
		if h.Counts[i] > 0 && bar == 0 {
			bar = 1
		}
		fmt.Fprintf(w, "  %7s–%-7s %5d %s\n", ms(from), ms(from+h.Width), h.Counts[i], strings.Repeat("#", bar))
	}
}
