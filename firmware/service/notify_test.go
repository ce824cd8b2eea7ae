package service

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"remoteler.dev/edge/tools/logtest"
)

// notifySocket listens on a unixgram socket in a temporary directory, points
// NOTIFY_SOCKET at it for the test, and returns a function that reads the
// next datagram (failing the test when none arrives within a generous
// bound: the wait ends as soon as a datagram is there).
func notifySocket(t *testing.T) (next func() string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatalf("listen on notify socket: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return func() string {
		t.Helper()
		buf := make([]byte, 4096)
		if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
			t.Fatalf("set read deadline: %v", err)
		}
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("read notify socket: %v", err)
		}
		return string(buf[:n])
	}
}

func TestNotifierStates(t *testing.T) {
	tests := []struct {
		name string
		send func(n *Notifier) error
		want string
	}{
		{"ready", (*Notifier).Ready, "READY=1"},
		{"stopping", (*Notifier).Stopping, "STOPPING=1"},
		{"status", func(n *Notifier) error { return n.Status("tunnel up to fleet.example:443") }, "STATUS=tunnel up to fleet.example:443"},
		{"status newlines flattened", func(n *Notifier) error { return n.Status("a\nREADY=1\r\nb") }, "STATUS=a READY=1  b"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := notifySocket(t)
			n := NewNotifier(logtest.Logger(t))
			if err := tt.send(n); err != nil {
				t.Fatalf("send: %v", err)
			}
			if got := next(); got != tt.want {
				t.Errorf("datagram = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestNotifierOutsideSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n := NewNotifier(nil)
	for name, f := range map[string]func() error{"Ready": n.Ready, "Stopping": n.Stopping, "Status": func() error { return n.Status("x") }} {
		if err := f(); err != nil {
			t.Errorf("%s without NOTIFY_SOCKET = %v, want nil", name, err)
		}
	}
}

func TestNotifierSocketGone(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "missing.sock"))
	if err := NewNotifier(logtest.Logger(t)).Ready(); err == nil {
		t.Fatal("Ready with a missing socket = nil, want an error")
	}
}

// fakeTicker replaces the watchdog's ticker: the test ticks it by hand.
type fakeTicker struct {
	c       chan time.Time
	period  chan time.Duration
	stopped chan struct{}
}

func newFakeTicker(n *Notifier) *fakeTicker {
	ft := &fakeTicker{c: make(chan time.Time), period: make(chan time.Duration, 1), stopped: make(chan struct{})}
	n.newTicker = func(d time.Duration) (<-chan time.Time, func()) {
		ft.period <- d
		return ft.c, func() { close(ft.stopped) }
	}
	return ft
}

func setWatchdog(t *testing.T, interval time.Duration, pid int) {
	t.Helper()
	t.Setenv("WATCHDOG_USEC", strconv.FormatInt(interval.Microseconds(), 10))
	t.Setenv("WATCHDOG_PID", strconv.Itoa(pid))
}

func TestRunWatchdogPingsOnlyWhileHealthy(t *testing.T) {
	next := notifySocket(t)
	setWatchdog(t, 30*time.Second, os.Getpid())
	n := NewNotifier(logtest.Logger(t))
	ft := newFakeTicker(n)

	// healthy answers from this channel, so each tick's answer is the
	// test's and the test knows when a tick has been looked at.
	answers := make(chan bool)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.RunWatchdog(ctx, func() bool { return <-answers })
	}()
	t.Cleanup(func() { cancel(); <-done })

	if got, want := <-ft.period, 15*time.Second; got != want {
		t.Errorf("ping period = %v, want %v (half of WatchdogSec)", got, want)
	}

	// First check happens at once.
	answers <- true
	if got := next(); got != "WATCHDOG=1" {
		t.Fatalf("first datagram = %q, want WATCHDOG=1", got)
	}

	// Two unhealthy ticks: nothing may be sent. The send-on-answers blocks
	// until the loop asked, and a following healthy tick proves the order:
	// the next datagram must be that tick's ping and nothing else.
	for range 2 {
		ft.c <- time.Time{}
		answers <- false
	}
	if err := n.Status("marker"); err != nil {
		t.Fatalf("status: %v", err)
	}
	if got := next(); got != "STATUS=marker" {
		t.Fatalf("after unhealthy ticks got %q, want no watchdog ping (STATUS=marker next)", got)
	}

	ft.c <- time.Time{}
	answers <- true
	if got := next(); got != "WATCHDOG=1" {
		t.Fatalf("after recovery got %q, want WATCHDOG=1", got)
	}

	cancel()
	<-done
	select {
	case <-ft.stopped:
	default:
		t.Error("ticker not stopped when RunWatchdog returned")
	}
}

func TestRunWatchdogOff(t *testing.T) {
	tests := []struct {
		name  string
		usec  string
		pid   string
		unset bool
	}{
		{name: "no WATCHDOG_USEC", unset: true},
		{name: "another process", usec: "30000000", pid: strconv.Itoa(os.Getpid() + 1)},
		{name: "malformed", usec: "soon", pid: strconv.Itoa(os.Getpid())},
		{name: "zero", usec: "0", pid: strconv.Itoa(os.Getpid())},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			next := notifySocket(t)
			if tt.unset {
				t.Setenv("WATCHDOG_USEC", "")
				os.Unsetenv("WATCHDOG_USEC")
			} else {
				t.Setenv("WATCHDOG_USEC", tt.usec)
				t.Setenv("WATCHDOG_PID", tt.pid)
			}
			n := NewNotifier(logtest.Logger(t))
			n.newTicker = func(time.Duration) (<-chan time.Time, func()) {
				t.Error("ticker started with the watchdog off")
				return nil, func() {}
			}
			// Returns at once (a hang fails by the test timeout), without
			// consulting healthy or sending anything.
			n.RunWatchdog(context.Background(), func() bool {
				t.Error("healthy called with the watchdog off")
				return true
			})
			if err := n.Status("marker"); err != nil {
				t.Fatalf("status: %v", err)
			}
			if got := next(); got != "STATUS=marker" {
				t.Errorf("first datagram = %q, want STATUS=marker (no ping)", got)
			}
		})
	}
}

// TestRunWatchdogRealTicker runs the watchdog with the real ticker and a
// tiny interval, waiting for pings as they arrive.
func TestRunWatchdogRealTicker(t *testing.T) {
	next := notifySocket(t)
	setWatchdog(t, 20*time.Millisecond, os.Getpid())
	n := NewNotifier(logtest.Logger(t))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.RunWatchdog(ctx, func() bool { return true })
	}()
	for i := range 3 {
		if got := next(); got != "WATCHDOG=1" {
			t.Fatalf("datagram %d = %q, want WATCHDOG=1", i, got)
		}
	}
	cancel()
	<-done
}

func TestNotifyErrorNamesOperation(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "missing.sock"))
	err := NewNotifier(nil).Stopping()
	var opErr *net.OpError
	if !errors.As(err, &opErr) {
		t.Fatalf("Stopping() = %v, want a wrapped *net.OpError", err)
	}
	if got, want := err.Error()[:len("service: notify")], "service: notify"; got != want {
		t.Errorf("error %q, want prefix %q", err, want)
	}
}
