package main

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// parseSize reads a byte count such as "100MB", "1MiB" or "4096".
// KB, MB and GB are powers of 1000; KiB, MiB and GiB powers of 1024.
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1},
	}
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range units {
		if strings.HasSuffix(strings.ToUpper(num), strings.ToUpper(u.suffix)) {
			num, mult = strings.TrimSpace(num[:len(num)-len(u.suffix)]), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(num, 64)
	if err != nil || v <= 0 || math.IsInf(v, 0) || v*float64(mult) > 1<<40 {
		return 0, fmt.Errorf("%q is not a size like 100MB (more than 0, at most 1 TiB)", s)
	}
	n := int64(v * float64(mult))
	if n < 1 {
		return 0, fmt.Errorf("%q is less than a byte", s)
	}
	return n, nil
}

// quantile returns the q-quantile (0 < q <= 1) of ds by the nearest-rank
// method: the smallest value with at least q of the values at or below it.
// The median of an even count is the mean of the middle two.
func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	if q == 0.5 && len(s)%2 == 0 {
		return (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	rank := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(rank, len(s)-1))]
}

// median is quantile(ds, 0.5).
func median(ds []time.Duration) time.Duration { return quantile(ds, 0.5) }

// mbps is size bytes in d as MB/s (10^6 bytes per second).
func mbps(size int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(size) / 1e6 / d.Seconds()
}

// ms formats d in milliseconds.
func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	if v < 10 {
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

// mb formats a byte count in MB (10^6 bytes).
func mb(n int64) string { return fmt.Sprintf("%.1f", float64(n)/1e6) }

// ratio formats a/b as "0.52×", or "-" when b is 0.
func ratio(a, b float64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// humanSize formats a byte count the way -size reads it ("100 MB").
func humanSize(n int64) string {
	switch {
	case n >= 1e9 && n%1e7 == 0:
		return strconv.FormatFloat(float64(n)/1e9, 'f', -1, 64) + " GB"
	case n >= 1e6 && n%1e4 == 0:
		return strconv.FormatFloat(float64(n)/1e6, 'f', -1, 64) + " MB"
	case n >= 1e3 && n%10 == 0:
		return strconv.FormatFloat(float64(n)/1e3, 'f', -1, 64) + " KB"
	}
	return strconv.FormatInt(n, 10) + " B"
}
