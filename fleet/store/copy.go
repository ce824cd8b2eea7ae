package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

// ErrNotEmpty is returned by Copy when the destination holds items and
// CopyOptions.Overwrite is not set.
var ErrNotEmpty = errors.New("store: the destination is not empty")

// CopyOptions configure Copy. The zero value works.
type CopyOptions struct {
	// Overwrite lets Copy write into a destination that holds items: the
	// destination is made equal to the source, so its items the source
	// lacks are deleted (a user removed since would come back otherwise).
	Overwrite bool
	// Progress, when set, is called as items are written, with how many
	// of total are done.
	Progress func(done, total int)
	// Workers is how many writes run at once; default 8 (a remote store
	// is bound by round trips, not by its disk).
	Workers int
}

// CopyStats say what Copy did.
type CopyStats struct {
	// Copied counts the items written, by their first path element
	// ("users", "devices", ...).
	Copied map[string]int
	// Deleted is how many items of the destination Copy removed
	// (Overwrite).
	Deleted int
	// Leased is how many items of the source Copy left out: they belong
	// to a live process (presence, leadership) and go with it.
	Leased int
}

// Total is the number of items copied.
func (s CopyStats) Total() int {
	n := 0
	for _, c := range s.Copied {
		n += c
	}
	return n
}

// Summary lists the counts by kind, "devices 120, roles 4, users 3".
func (s CopyStats) Summary() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(s.Copied)) {
		parts = append(parts, fmt.Sprintf("%s %d", k, s.Copied[k]))
	}
	return strings.Join(parts, ", ")
}

// Copy copies every item of src into dst (an offline migration between
// stores: no fleetd may use either meanwhile), from one snapshot of src,
// and then checks that dst holds exactly what was copied. It leaves out
// src's leased items. It refuses a destination that holds items unless
// opts.Overwrite is set, and one with leased items (a fleetd runs on it)
// in any case.
func Copy(ctx context.Context, dst, src Store, opts CopyOptions) (CopyStats, error) {
	stats := CopyStats{Copied: map[string]int{}}
	if opts.Workers <= 0 {
		opts.Workers = 8
	}
	all, err := src.List(ctx, "")
	if err != nil {
		return stats, fmt.Errorf("store: copy: list the source: %w", err)
	}
	items := make([]Item, 0, len(all))
	want := make(map[string][]byte, len(all))
	for _, it := range all {
		if it.Lease != 0 {
			stats.Leased++
			continue
		}
		items = append(items, it)
		want[it.Key] = it.Value
	}
	existing, err := dst.List(ctx, "")
	if err != nil {
		return stats, fmt.Errorf("store: copy: list the destination: %w", err)
	}
	var stale []string
	for _, it := range existing {
		if it.Lease != 0 {
			return stats, fmt.Errorf("store: copy: the destination is in use: %s is held by a live lease (stop every fleetd on it first)", it.Key)
		}
		if _, ok := want[it.Key]; !ok {
			stale = append(stale, it.Key)
		}
	}
	if len(existing) > 0 && !opts.Overwrite {
		return stats, fmt.Errorf("%w: it holds %d items (overwrite to make it a copy of the source: its %d items the source lacks would be deleted)",
			ErrNotEmpty, len(existing), len(stale))
	}

	if err := parallel(ctx, opts.Workers, items, func(ctx context.Context, it Item) error {
		if err := dst.Put(ctx, it.Key, it.Value); err != nil {
			return fmt.Errorf("store: copy %s: %w", it.Key, err)
		}
		return nil
	}, opts.Progress); err != nil {
		return stats, err
	}
	for _, it := range items {
		kind, _, _ := strings.Cut(it.Key, "/")
		stats.Copied[kind]++
	}
	for _, k := range stale {
		if err := dst.Delete(ctx, k); err != nil && !errors.Is(err, ErrNotFound) {
			return stats, fmt.Errorf("store: copy: delete %s from the destination: %w", k, err)
		}
		stats.Deleted++
	}

	got, err := dst.List(ctx, "")
	if err != nil {
		return stats, fmt.Errorf("store: copy: check the destination: %w", err)
	}
	if len(got) != len(want) {
		return stats, fmt.Errorf("store: copy: the destination holds %d items after the copy, want %d (did a fleetd write to it meanwhile?)", len(got), len(want))
	}
	for _, it := range got {
		if v, ok := want[it.Key]; !ok || !bytes.Equal(v, it.Value) {
			return stats, fmt.Errorf("store: copy: %s differs in the destination after the copy (did a fleetd write to it meanwhile?)", it.Key)
		}
	}
	return stats, nil
}

// parallel runs f on every item with workers goroutines, stopping at the
// first error, and reports progress.
func parallel(ctx context.Context, workers int, items []Item, f func(context.Context, Item) error, progress func(done, total int)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	next := make(chan Item)
	var (
		mu       sync.Mutex // guards done and firstErr
		done     int
		firstErr error
		wg       sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for it := range next {
				err := f(ctx, it)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
					cancel()
				}
				done++
				if progress != nil && err == nil {
					progress(done, len(items))
				}
				mu.Unlock()
			}
		})
	}
feed:
	for _, it := range items {
		select {
		case next <- it:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	return ctx.Err()
}
