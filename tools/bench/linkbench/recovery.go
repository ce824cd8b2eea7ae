package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"time"
)

// keystroke is how often the interactive stream sends a byte.
const keystroke = 100 * time.Millisecond

// echoStream is an interactive session: a byte every 100 ms into cat on
// the device, echoed back; every byte sent and received is timed.
type echoStream struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	stop  chan struct{}
	wrote chan struct{} // closed when write returns
	wg    sync.WaitGroup

	mu      sync.Mutex // guards the fields below
	sent    []byte
	got     []byte
	gotAt   []time.Time
	readErr error // set when stdout ends
	changed chan struct{}
}

// startEcho starts the stream and waits for the first echo.
func startEcho(ctx context.Context, sys system) (*echoStream, error) {
	cmd := sshCmd(ctx, sys, "cat")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: start ssh: %w", sys.Name(), err)
	}
	e := &echoStream{cmd: cmd, stdin: stdin, stop: make(chan struct{}), wrote: make(chan struct{}), changed: make(chan struct{})}
	e.wg.Add(2)
	go e.write()
	go e.read(stdout)
	if _, err := e.firstAfter(ctx, time.Time{}, time.Minute); err != nil {
		e.close()
		return nil, fmt.Errorf("%s: interactive session: %w", sys.Name(), err)
	}
	return e, nil
}

func (e *echoStream) write() {
	defer e.wg.Done()
	defer close(e.wrote)
	t := time.NewTicker(keystroke)
	defer t.Stop()
	for n := 0; ; n++ {
		select {
		case <-e.stop:
			return
		case <-t.C:
		}
		b := byte('a' + n%26)
		if _, err := e.stdin.Write([]byte{b}); err != nil {
			return
		}
		e.mu.Lock()
		e.sent = append(e.sent, b)
		e.mu.Unlock()
	}
}

func (e *echoStream) read(r io.Reader) {
	defer e.wg.Done()
	buf := make([]byte, 4096)
	for {
		n, err := r.Read(buf)
		now := time.Now()
		e.mu.Lock()
		for _, b := range buf[:n] {
			e.got = append(e.got, b)
			e.gotAt = append(e.gotAt, now)
		}
		if err != nil {
			e.readErr = err
		}
		close(e.changed)
		e.changed = make(chan struct{})
		e.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// errSessionEnded says the session closed before an echo came.
var errSessionEnded = errors.New("the session ended")

// firstAfter waits for the first echo received after t.
func (e *echoStream) firstAfter(ctx context.Context, t time.Time, timeout time.Duration) (time.Time, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for i := 0; ; {
		e.mu.Lock()
		at, rerr, ch := e.gotAt, e.readErr, e.changed
		e.mu.Unlock()
		for ; i < len(at); i++ {
			if at[i].After(t) {
				return at[i], nil
			}
		}
		if rerr != nil {
			return time.Time{}, errSessionEnded
		}
		select {
		case <-ch:
		case <-deadline.C:
			return time.Time{}, fmt.Errorf("no echo within %s", timeout)
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

// close stops sending, waits for the echoes still on their way, ends the
// session and says whether every byte came back once and in order.
func (e *echoStream) close() (intact bool, detail string) {
	close(e.stop)
	<-e.wrote // a keystroke the ticker fired as it stopped counts too
	// Everything sent should come back; give it a few seconds.
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		e.mu.Lock()
		done := len(e.got) >= len(e.sent) || e.readErr != nil
		e.mu.Unlock()
		if done {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.stdin.Close()
	waited := make(chan struct{})
	go func() {
		e.cmd.Wait()
		close(waited)
	}()
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		e.cmd.Cancel()
		<-waited
	}
	e.wg.Wait()
	e.mu.Lock()
	defer e.mu.Unlock()
	if string(e.got) == string(e.sent) {
		return true, fmt.Sprintf("%d bytes echoed intact", len(e.sent))
	}
	return false, fmt.Sprintf("sent %d bytes, got %d back, not the same", len(e.sent), len(e.got))
}

// recovery is one blackout measured on one system.
type recovery struct {
	system   string
	blackout time.Duration
	rtt      time.Duration
	// after is from the link's return to the first echo; zero when none.
	after   time.Duration
	intact  bool
	redials int // tunnel connections the device made from the blackout on
	note    string
}

// RTTs is after in round trips of the link.
func (r recovery) RTTs() float64 { return r.after.Seconds() / r.rtt.Seconds() }

// measureRecovery runs an interactive stream through sys, blacks the link
// out and times the first echo after the link returns.
func measureRecovery(ctx context.Context, sys system, blackout, wait time.Duration) (recovery, error) {
	r := recovery{system: sys.Name(), blackout: blackout, rtt: linkRTT(sys.Link())}
	e, err := startEcho(ctx, sys)
	if err != nil {
		return r, err
	}
	// A few seconds of typing first, so the connection is in its steady
	// state (congestion window, RTT estimate).
	select {
	case <-ctx.Done():
		e.close()
		return r, ctx.Err()
	case <-time.After(2 * time.Second):
	}
	before := sys.Connects()
	start := time.Now()
	sys.Link().Blackout(blackout)
	back := start.Add(blackout)
	first, err := e.firstAfter(ctx, back, blackout+wait)
	switch {
	case errors.Is(err, errSessionEnded):
		r.note = "session lost"
	case err != nil:
		r.note = err.Error()
	default:
		r.after = first.Sub(back)
		// Keep typing a little to see the stream flows on.
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
	r.redials = sys.Connects() - before
	var detail string
	r.intact, detail = e.close()
	if r.note == "" && !r.intact {
		r.note = detail
	}
	return r, ctx.Err()
}
