package linksim

import (
	"container/heap"
	"net/netip"
	"sync"
	"time"
)

// item is one packet (UDP) or chunk (TCP) waiting in a line.
type item struct {
	at   time.Time // release time
	seq  uint64    // arrival order, breaks ties
	data []byte
	to   netip.AddrPort // UDP: the client the packet belongs to
	segs int            // TCP: segments in data
	eof  bool           // TCP: the sender closed its side
}

type itemHeap []*item

func (h itemHeap) Len() int { return len(h) }
func (h itemHeap) Less(i, j int) bool {
	if h[i].at.Equal(h[j].at) {
		return h[i].seq < h[j].seq
	}
	return h[i].at.Before(h[j].at)
}
func (h itemHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *itemHeap) Push(x any)   { *h = append(*h, x.(*item)) }
func (h *itemHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}

// gate lets a line hold its head item past its release time. It returns
// open, or when to ask again (zero: only when changed fires).
type gate func(now time.Time) (open bool, retry time.Time, changed <-chan struct{})

// line is one direction's delay line: items ordered by release time and one
// goroutine (run) that releases them on time with a single timer.
type line struct {
	now     func() time.Time
	counts  *dirCounters
	mu      sync.Mutex // guards q, seq, last, closed
	q       itemHeap
	seq     uint64
	last    time.Time // latest release time pushed, for in-order delivery
	closed  bool
	wake    chan struct{} // cap 1: an item went in at the head
	reorder func() bool   // whether items may overtake each other
}

func newLine(now func() time.Time, counts *dirCounters, reorder func() bool) *line {
	return &line{now: now, counts: counts, wake: make(chan struct{}, 1), reorder: reorder}
}

// push queues it. Unless reordering is allowed, an item never leaves before
// one pushed earlier. It reports false if the line has stopped.
func (l *line) push(it *item) bool {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return false
	}
	if (l.reorder == nil || !l.reorder()) && it.at.Before(l.last) {
		it.at = l.last
	}
	if it.at.After(l.last) {
		l.last = it.at
	}
	it.seq = l.seq
	l.seq++
	heap.Push(&l.q, it)
	head := l.q[0] == it
	l.mu.Unlock()
	l.counts.queued(len(it.data), 1)
	if head {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// run releases items to deliver until done is closed, then discards what is
// left. g may be nil. deliver is called from this goroutine only, one item
// at a time; it may block.
func (l *line) run(done <-chan struct{}, g gate, deliver func(*item)) {
	defer l.stop()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	wait := func(d time.Duration, changed <-chan struct{}) bool {
		if d > 0 {
			timer.Reset(d)
		}
		var tc <-chan time.Time
		if d > 0 {
			tc = timer.C
		}
		select {
		case <-tc:
		case <-l.wake:
		case <-changed:
		case <-done:
			return false
		}
		timer.Stop()
		return true
	}
	for {
		l.mu.Lock()
		if len(l.q) == 0 {
			l.mu.Unlock()
			if !wait(0, nil) {
				return
			}
			continue
		}
		now := l.now()
		if at := l.q[0].at; at.After(now) {
			l.mu.Unlock()
			if !wait(at.Sub(now), nil) {
				return
			}
			continue
		}
		if g != nil {
			if open, retry, changed := g(now); !open {
				l.mu.Unlock()
				var d time.Duration
				if !retry.IsZero() {
					d = max(retry.Sub(now), time.Microsecond)
				}
				if !wait(d, changed) {
					return
				}
				continue
			}
		}
		it := heap.Pop(&l.q).(*item)
		l.mu.Unlock()
		l.counts.queued(-len(it.data), -1)
		deliver(it)
		select {
		case <-done:
			return
		default:
		}
	}
}

// stop marks the line closed and forgets what it holds.
func (l *line) stop() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.closed = true
	for _, it := range l.q {
		l.counts.queued(-len(it.data), -1)
	}
	l.q = nil
}
