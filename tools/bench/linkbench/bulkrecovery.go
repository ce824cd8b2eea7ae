package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// bulkRecovery is one blackout in the middle of a bulk transfer, measured
// on one system.
type bulkRecovery struct {
	system   string
	dir      string // dirUp: device to user (a download); dirDown: user to device
	blackout time.Duration
	rtt      time.Duration
	// after is from the link's return to the first bytes arriving at the
	// receiver; zero when none did.
	after   time.Duration
	redials int
	note    string
}

// RTTs is after in round trips of the link.
func (r bulkRecovery) RTTs() float64 { return r.after.Seconds() / r.rtt.Seconds() }

// arrivalLog is when the receiver of a transfer got bytes.
type arrivalLog struct {
	mu sync.Mutex // guards at
	at []time.Time
}

func (a *arrivalLog) add(t time.Time) {
	a.mu.Lock()
	a.at = append(a.at, t)
	a.mu.Unlock()
}

// firstAfter returns the first arrival after t, or zero.
func (a *arrivalLog) firstAfter(t time.Time) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, at := range a.at {
		if at.After(t) {
			return at
		}
	}
	return time.Time{}
}

// measureBulkRecovery runs a bulk transfer through sys in direction dir,
// blacks the link out in its middle and times the first bytes to arrive
// at the receiver after the link returns: at the user for a download, on
// the device for an upload (arrivals, on the device, logs each read). The
// link's rate caps the transfer, so data is always in flight when the
// blackout starts.
func (b *bench) measureBulkRecovery(ctx context.Context, sys system, dir string, blackout, wait time.Duration) (bulkRecovery, error) {
	r := bulkRecovery{system: sys.Name(), dir: dir, blackout: blackout, rtt: linkRTT(sys.Link())}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	log := &arrivalLog{}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	const endless = 1 << 40 // more than any link here carries in the run
	var file string
	if dir == dirUp {
		cmd := sshCmd(ctx, sys, fmt.Sprintf("head -c %d /dev/zero", int64(endless)))
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return r, err
		}
		if err := cmd.Start(); err != nil {
			return r, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cmd.Wait()
			buf := make([]byte, 16<<10)
			for {
				n, err := stdout.Read(buf)
				if n > 0 {
					log.add(time.Now())
				}
				if err != nil {
					return
				}
			}
		}()
	} else {
		file = filepath.Join(b.dir, fmt.Sprintf("arrivals-%s-%d", sys.Name(), time.Now().UnixNano()))
		cmd := sshCmd(ctx, sys, b.arrivals+" -o "+file)
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return r, err
		}
		if err := cmd.Start(); err != nil {
			return r, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer cmd.Wait()
			defer stdin.Close()
			zeros := make([]byte, 32<<10)
			for ctx.Err() == nil {
				if _, err := stdin.Write(zeros); err != nil {
					return
				}
			}
		}()
	}
	// The transfer's first bytes, then a few seconds of steady state.
	first := func() time.Time {
		if dir == dirUp {
			return log.firstAfter(time.Time{})
		}
		return firstArrival(file, time.Time{})
	}
	firstAfter := func(t time.Time) time.Time {
		if dir == dirUp {
			return log.firstAfter(t)
		}
		return firstArrival(file, t)
	}
	if !pollFor(ctx, time.Minute, func() bool { return !first().IsZero() }) {
		return r, fmt.Errorf("%s: bulk %s: no bytes within a minute", sys.Name(), dir)
	}
	if err := sleep(ctx, 3*time.Second); err != nil {
		return r, err
	}
	before := sys.Connects()
	start := time.Now()
	sys.Link().Blackout(blackout)
	back := start.Add(blackout)
	var at time.Time
	if !pollFor(ctx, blackout+wait, func() bool { at = firstAfter(back); return !at.IsZero() }) {
		r.note = fmt.Sprintf("no bytes within %s of the link's return", wait)
	} else {
		r.after = at.Sub(back)
	}
	r.redials = sys.Connects() - before
	return r, ctx.Err()
}

// pollFor checks cond every 20 ms until it holds (true) or timeout passes.
func pollFor(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) || sleep(ctx, 20*time.Millisecond) != nil {
			return false
		}
	}
	return true
}

// firstArrival reads arrivals' log file and returns the first arrival
// after t, or zero.
func firstArrival(file string, t time.Time) time.Time {
	f, err := os.Open(file)
	if err != nil {
		return time.Time{}
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, 1<<30))
	for sc.Scan() {
		ns, _, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue // a line still being written
		}
		n, err := strconv.ParseInt(ns, 10, 64)
		if err != nil {
			continue
		}
		if at := time.Unix(0, n); at.After(t) {
			return at
		}
	}
	return time.Time{}
}
