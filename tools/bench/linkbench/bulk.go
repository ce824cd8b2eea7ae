package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"sync"
	"time"
)

// Directions of a bulk transfer, as the link sees them.
const (
	dirUp   = "up"   // device → fleet: a download from the device
	dirDown = "down" // fleet → device: an upload to the device
)

// bulk is one transfer measured on one system.
type bulk struct {
	system  string
	profile string
	loss    float64
	dir     string
	bytes   int64         // bytes that arrived in the measured window
	took    time.Duration // the measured window
	capped  bool          // stopped by the time cap before the size
	redials int           // tunnel connections the device made meanwhile
	note    string
}

// setupAllowance bounds a transfer's connection set-up and end: a transfer
// is killed at cap plus this, whatever it has done.
const setupAllowance = time.Minute

// rate is in bytes per second; 0 when nothing was measured.
func (b bulk) rate() float64 {
	if b.took <= 0 {
		return 0
	}
	return float64(b.bytes) / b.took.Seconds()
}

// measureDownload has the device send size zero bytes (head -c) and times
// them at the user from the first byte to the last, or to the cap.
func measureDownload(ctx context.Context, sys system, size int64, limit time.Duration) (bulk, error) {
	r := bulk{system: sys.Name(), dir: dirUp}
	ctx, cancel := context.WithTimeout(ctx, limit+setupAllowance)
	defer cancel()
	cmd := sshCmd(ctx, sys, fmt.Sprintf("head -c %d /dev/zero", size))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return r, err
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return r, err
	}
	defer cmd.Wait()
	defer cancel()
	buf := make([]byte, 64<<10)
	var first, last time.Time
	var n int64
	for n < size {
		k, err := stdout.Read(buf)
		now := time.Now()
		if k > 0 {
			if first.IsZero() {
				first = now
			}
			n += int64(k)
			last = now
		}
		if err != nil {
			break
		}
		if !first.IsZero() && now.Sub(first) >= limit {
			r.capped = true
			break
		}
	}
	if first.IsZero() {
		return r, fmt.Errorf("%s: download: no bytes arrived: %s", sys.Name(), bytes.TrimSpace(stderr.Bytes()))
	}
	r.bytes, r.took = n, last.Sub(first)
	if n < size && !r.capped {
		r.note = fmt.Sprintf("ended after %d of %d bytes", n, size)
	}
	return r, nil
}

// ddRE matches GNU dd's progress and final lines ("N bytes (...) copied,
// S s, ...").
var ddRE = regexp.MustCompile(`^(\d+) bytes .*copied, ([0-9.]+) s`)

// measureUpload sends size zero bytes to dd on the device and times them
// at the device, from dd's own progress reports (once a second, and at
// the end), so bytes still queued on the way do not count.
func measureUpload(ctx context.Context, sys system, size int64, limit time.Duration) (bulk, error) {
	r := bulk{system: sys.Name(), dir: dirDown}
	ctx, cancel := context.WithTimeout(ctx, limit+setupAllowance)
	defer cancel()
	cmd := sshCmd(ctx, sys, "LC_ALL=C dd of=/dev/null bs=64k status=progress")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return r, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return r, err
	}
	if err := cmd.Start(); err != nil {
		return r, err
	}
	defer cmd.Wait()
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer stdin.Close()
		zeros := make([]byte, 32<<10)
		for left := size; left > 0 && ctx.Err() == nil; {
			k, err := stdin.Write(zeros[:min(int64(len(zeros)), left)])
			if err != nil {
				return
			}
			left -= int64(k)
		}
	}()
	type report struct {
		bytes int64
		secs  float64
	}
	var reports []report
	var other []string
	sc := bufio.NewScanner(stderr)
	sc.Split(splitCRLF)
	var firstAt time.Time
	for sc.Scan() {
		m := ddRE.FindStringSubmatch(sc.Text())
		if m == nil {
			other = append(other, sc.Text())
			continue
		}
		b, _ := strconv.ParseInt(m[1], 10, 64)
		s, _ := strconv.ParseFloat(m[2], 64)
		reports = append(reports, report{b, s})
		if firstAt.IsZero() {
			firstAt = time.Now()
		}
		if b >= size {
			break
		}
		if time.Since(firstAt) >= limit {
			r.capped = true
			break
		}
	}
	cancel()
	io.Copy(io.Discard, stderr)
	switch {
	case len(reports) == 0:
		return r, fmt.Errorf("%s: upload: dd reported nothing: %q", sys.Name(), other)
	case len(reports) == 1:
		// A transfer shorter than dd's first progress report: its total.
		r.bytes, r.took = reports[0].bytes, time.Duration(reports[0].secs*float64(time.Second))
	default:
		a, z := reports[0], reports[len(reports)-1]
		r.bytes, r.took = z.bytes-a.bytes, time.Duration((z.secs-a.secs)*float64(time.Second))
	}
	if last := reports[len(reports)-1].bytes; last < size && !r.capped {
		r.note = fmt.Sprintf("ended after %d of %d bytes", last, size)
	}
	return r, nil
}

// splitCRLF splits on \n and on \r (dd rewrites its progress line).
func splitCRLF(data []byte, atEOF bool) (advance int, token []byte, err error) {
	for i, c := range data {
		if c == '\n' || c == '\r' {
			return i + 1, data[:i], nil
		}
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}
