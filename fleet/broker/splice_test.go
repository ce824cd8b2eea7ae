package broker

import (
	"bytes"
	"context"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/userframe"
)

// cutFixture is a live SSH session spliced between a user's connection
// and a device stream the test plays, with the broker's default grace:
// the registry ends it as a lock or a role change would.
type cutFixture struct {
	f      *fixture
	user   net.Conn // the user's side (what tsh reads and writes)
	dev    net.Conn // the device's side of its stream
	ended  chan struct{}
	result chan [2]int64
}

func newCutFixture(t *testing.T, framed bool, onSessionEnd func(dev net.Conn, m *proto.SessionEnd)) *cutFixture {
	t.Helper()
	f := newFixture(t)
	// The broker's own default grace, not the fixture's short one.
	f.b.cfg.EndGrace = New(Config{}).cfg.EndGrace
	ctx := context.Background()
	g, err := f.b.Authorize(ctx, ask(t, proto.ServiceSSH, "pi-1", "pi", "", north))
	if err != nil {
		t.Fatal(err)
	}
	s, err := f.b.Start(ctx, g, StartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	fleetDev, dev := net.Pipe()
	fleetUser, user := net.Pipe()
	c := &cutFixture{f: f, user: user, dev: dev, ended: make(chan struct{}), result: make(chan [2]int64, 1)}
	f.tun.onSend = func(m proto.Message) {
		if se, ok := m.(*proto.SessionEnd); ok && onSessionEnd != nil {
			go onSessionEnd(dev, se)
		}
	}
	t.Cleanup(func() { user.Close(); dev.Close() })
	s.OnEnd(func() { fleetDev.Close(); fleetUser.Close() })
	opt := SpliceOptions{}
	if framed {
		opt.Frames = userframe.NewWriter(fleetUser)
	}
	sp := NewSplicer(fleetUser, fleetDev, opt)
	s.OnCut(sp.Cut)
	go func() {
		up, down, _ := sp.Run()
		// As the connect handler does when the splice returns.
		fleetDev.Close()
		fleetUser.Close()
		s.Done(ctx, "", Stats{Up: up, Down: down})
		c.result <- [2]int64{up, down}
	}()
	return c
}

// end ends the session as the registry does for a lock.
func (c *cutFixture) end(t *testing.T, reason string) {
	t.Helper()
	if n := c.f.reg.End(func(*sessions.Session) bool { return true }, reason); n != 1 {
		t.Fatalf("ended %d sessions, want 1", n)
	}
}

// readAll reads the user's side until it closes.
func readAll(t *testing.T, r io.Reader) []byte {
	t.Helper()
	done := make(chan []byte, 1)
	go func() {
		b, _ := io.ReadAll(r)
		done <- b
	}()
	select {
	case b := <-done:
		return b
	case <-time.After(60 * time.Second):
		t.Fatal("the user's connection did not close")
		return nil
	}
}

// TestCutTellsAFramingClientAtOnce: a device that never answers the
// session-end (busy, or hostile); the framing client reads the reason as
// the first thing after the session's data, then the connection closes.
func TestCutTellsAFramingClientAtOnce(t *testing.T) {
	c := newCutFixture(t, true, nil) // the device says nothing
	go func() {
		c.dev.Write([]byte("$ "))
	}()
	fr := userframe.NewReader(c.user)
	var mu sync.Mutex
	var got []string
	fr.OnEnd = func(reason string) {
		mu.Lock()
		got = append(got, reason)
		mu.Unlock()
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(fr, buf); err != nil || string(buf) != "$ " {
		t.Fatalf("prompt %q, %v", buf, err)
	}
	const reason = "locked (lock 1 on user \"alice\"): laptop stolen"
	c.end(t, reason)
	rest := readAll(t, fr)
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0] != reason {
		t.Fatalf("end frames %q, want the reason %q", got, reason)
	}
	if len(rest) != 0 {
		t.Errorf("data after the cut %q, want none from a silent device", rest)
	}
}

// TestCutWaitsForABusyDevice: a device that takes a second to tell the
// user why (longer than the old 500 ms grace, as a busy device did): its
// message still reaches a client that reads raw bytes, before the close.
func TestCutWaitsForABusyDevice(t *testing.T) {
	c := newCutFixture(t, false, func(dev net.Conn, m *proto.SessionEnd) {
		time.Sleep(time.Second) // the busy device: the delay is the point of the test
		dev.Write([]byte("remoteler: " + m.Message + "\n"))
		dev.Close()
	})
	c.end(t, "access changed: no")
	got := readAll(t, c.user)
	if !bytes.Contains(got, []byte("remoteler: access changed: no")) {
		t.Errorf("the user read %q, want the device's message", got)
	}
}

// TestCutStopsInputAndBoundsOutput: after the cut nothing the user types
// reaches the device, and a device that floods the user is cut off after
// MaxDrain bytes.
func TestCutStopsInputAndBoundsOutput(t *testing.T) {
	var devGot bytes.Buffer
	var mu sync.Mutex
	c := newCutFixture(t, false, func(dev net.Conn, m *proto.SessionEnd) {
		chunk := bytes.Repeat([]byte("x"), 32<<10)
		for range 64 { // 2 MiB, far past MaxDrain
			if _, err := dev.Write(chunk); err != nil {
				return
			}
		}
	})
	devRead := make(chan struct{})
	go func() {
		defer close(devRead)
		buf := make([]byte, 4096)
		for {
			n, err := c.dev.Read(buf)
			mu.Lock()
			devGot.Write(buf[:n])
			mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	c.user.Write([]byte("before"))
	waitCond(t, func() bool { mu.Lock(); defer mu.Unlock(); return devGot.String() == "before" })
	c.end(t, "locked")
	// Typed after the cut: the pipe's write returns once the fleet's side
	// read it, or fails once it is closed.
	go c.user.Write([]byte("after"))
	got := readAll(t, c.user)
	if len(got) > DefaultMaxDrain {
		t.Errorf("the user got %d bytes after the cut, want at most %d", len(got), DefaultMaxDrain)
	}
	<-devRead
	mu.Lock()
	defer mu.Unlock()
	if strings.Contains(devGot.String(), "after") {
		t.Errorf("the device got input typed after the cut: %q", devGot.String())
	}
}

func waitCond(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 30s")
		}
		time.Sleep(time.Millisecond)
	}
}
