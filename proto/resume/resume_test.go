package resume

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// pair returns two Conns attached over a fresh net.Pipe.
func pair(t *testing.T, cfg Config) (*Conn, *Conn) {
	t.Helper()
	a, b := New(cfg), New(cfg)
	reattach(t, a, b, nil)
	return a, b
}

// reattach does what the tunnel does after a reconnect: detach both sides,
// swap received counts and attach a new transport. wrap, when set, wraps
// each side's end of the new pipe.
func reattach(t *testing.T, a, b *Conn, wrap func(net.Conn) io.ReadWriteCloser) {
	t.Helper()
	if err := tryReattach(a, b, wrap); err != nil {
		t.Fatal(err)
	}
}

// tryReattach is reattach returning the error; io.EOF means a side has
// finished.
func tryReattach(a, b *Conn, wrap func(net.Conn) io.ReadWriteCloser) error {
	a.Detach()
	b.Detach()
	pa, pb := net.Pipe()
	var ta, tb io.ReadWriteCloser = pa, pb
	if wrap != nil {
		ta, tb = wrap(pa), wrap(pb)
	}
	ra, rb := a.Received(), b.Received()
	errA, errB := a.Attach(ta, rb), b.Attach(tb, ra)
	if errA != nil {
		return errA
	}
	return errB
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// transfer writes data on w (then CloseWrite) while reading r to EOF, and
// returns what was read.
func transfer(w, r *Conn, data []byte) <-chan []byte {
	out := make(chan []byte, 1)
	go func() {
		for p := data; len(p) > 0; {
			n := min(len(p), 1+len(p)%7919)
			if _, err := w.Write(p[:n]); err != nil {
				break
			}
			p = p[n:]
		}
		w.CloseWrite()
	}()
	go func() {
		got, _ := io.ReadAll(r)
		out <- got
	}()
	return out
}

func TestBothWays(t *testing.T) {
	a, b := pair(t, Config{Buffer: 64 << 10})
	up, down := randBytes(1, 3<<20), randBytes(2, 2<<20)
	gotUp, gotDown := transfer(a, b, up), transfer(b, a, down)
	if got := <-gotUp; !bytes.Equal(got, up) {
		t.Errorf("a→b: got %d bytes, want %d identical", len(got), len(up))
	}
	if got := <-gotDown; !bytes.Equal(got, down) {
		t.Errorf("b→a: got %d bytes, want %d identical", len(got), len(down))
	}
}

// dying is a transport that fails after a number of bytes written.
type dying struct {
	net.Conn
	mu   sync.Mutex
	left int
}

func (d *dying) Write(p []byte) (int, error) {
	d.mu.Lock()
	if d.left <= 0 {
		d.mu.Unlock()
		d.Conn.Close()
		return 0, io.ErrClosedPipe
	}
	k := min(len(p), d.left)
	d.left -= k
	d.mu.Unlock()
	n, err := d.Conn.Write(p[:k])
	if err == nil && k < len(p) {
		d.Conn.Close() // cut mid-frame
		return n, io.ErrClosedPipe
	}
	return n, err
}

// TestTransportDeaths cuts the transport again and again, mid-frame, and
// checks that every byte arrives once and in order.
func TestTransportDeaths(t *testing.T) {
	tests := []struct {
		name   string
		seed   uint64
		buffer int
		size   int
	}{
		{"small buffer", 1, 16 << 10, 1 << 20},
		{"default buffer", 2, 0, 4 << 20},
		{"tiny writes", 3, 4 << 10, 200 << 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := pair(t, Config{Buffer: tt.buffer})
			up, down := randBytes(tt.seed, tt.size), randBytes(tt.seed+100, tt.size/2)
			gotUp, gotDown := transfer(a, b, up), transfer(b, a, down)
			r := rand.New(rand.NewPCG(tt.seed, 7))
			var resultUp, resultDown []byte
			for cuts := 0; resultUp == nil || resultDown == nil; cuts++ {
				select {
				case resultUp = <-gotUp:
					gotUp = nil
					continue
				case resultDown = <-gotDown:
					gotDown = nil
					continue
				default:
				}
				if cuts > 10000 {
					t.Fatal("transfer did not finish")
				}
				n := 1 + r.IntN(100<<10)
				err := tryReattach(a, b, func(c net.Conn) io.ReadWriteCloser { return &dying{Conn: c, left: n} })
				if errors.Is(err, io.EOF) {
					// One side has finished; the other finishes on the
					// transport it has.
					continue
				}
				if err != nil {
					t.Fatal(err)
				}
				// Let the new transport carry something, or fail, before the next cut.
				waitDetached(a, b, 50*time.Millisecond)
			}
			if !bytes.Equal(resultUp, up) || !bytes.Equal(resultDown, down) {
				t.Fatalf("data differs after cuts: up %d/%d, down %d/%d (sha %x vs %x)",
					len(resultUp), len(up), len(resultDown), len(down), sha256.Sum256(resultUp), sha256.Sum256(up))
			}
		})
	}
}

// waitDetached waits until one side lost its transport, or d passes.
func waitDetached(a, b *Conn, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && a.Attached() && b.Attached() {
		time.Sleep(time.Millisecond)
	}
}

func TestHoldExpires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		done := make(chan error, 1)
		a, b := pair(t, Config{Hold: 10 * time.Minute, OnDone: func(err error) { done <- err }})
		a.Write([]byte("hello"))
		buf := make([]byte, 5)
		io.ReadFull(b, buf)
		a.Detach()
		b.Detach()
		start := time.Now()
		_, err := a.Read(buf)
		if !errors.Is(err, ErrHoldExpired) {
			t.Fatalf("read after hold: %v, want ErrHoldExpired", err)
		}
		if held := time.Since(start); held != 10*time.Minute {
			t.Errorf("held %v, want 10m", held)
		}
		if err := <-done; !errors.Is(err, ErrHoldExpired) {
			t.Errorf("OnDone(%v), want ErrHoldExpired", err)
		}
		if err := a.Attach(nopTransport{}, 0); !errors.Is(err, ErrHoldExpired) {
			t.Errorf("attach after expiry: %v", err)
		}
	})
}

func TestResumeJustBeforeHoldExpires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := pair(t, Config{Hold: time.Minute})
		defer a.Abort(ErrClosed)
		defer b.Abort(ErrClosed)
		a.Detach()
		b.Detach()
		time.Sleep(59 * time.Second)
		reattach(t, a, b, nil)
		time.Sleep(2 * time.Minute) // attached: no expiry
		got := transfer(a, b, []byte("still here"))
		if s := <-got; string(s) != "still here" {
			t.Fatalf("got %q", s)
		}
	})
}

type nopTransport struct{}

func (nopTransport) Read([]byte) (int, error)    { select {} }
func (nopTransport) Write(p []byte) (int, error) { return len(p), nil }
func (nopTransport) Close() error                { return nil }

// TestIdleSessionFreesItsBuffers: after a bulk transfer the rings keep
// their buffers for a second (a busy stream refills them), then free the
// large ones.
func TestIdleSessionFreesItsBuffers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := pair(t, Config{})
		defer a.Abort(ErrClosed)
		defer b.Abort(ErrClosed)
		go a.Write(make([]byte, 4<<20))
		if _, err := io.ReadFull(b, make([]byte, 4<<20)); err != nil {
			t.Fatal(err)
		}
		// The last bytes are acknowledged within ackDelay (at once only if
		// a quarter of the buffer was unacknowledged, which depends on how
		// the reads fell), and the writer's ring empties then.
		time.Sleep(ackDelay + 10*time.Millisecond)
		synctest.Wait()
		// largest is the largest buffer of the four rings. An empty ring
		// may keep up to keepEmpty (a small stream's buffer); only larger
		// ones are freed.
		largest := func() int {
			a.mu.Lock()
			defer a.mu.Unlock()
			b.mu.Lock()
			defer b.mu.Unlock()
			return max(len(a.out.buf), len(a.in.buf), len(b.out.buf), len(b.in.buf))
		}
		if n := largest(); n <= keepEmpty {
			t.Errorf("just after the transfer the largest ring buffer is %d bytes; want a large one kept for a while", n)
		}
		time.Sleep(trimAfter)
		synctest.Wait()
		if n := largest(); n > keepEmpty {
			t.Errorf("%v after the transfer a ring still holds a %d-byte buffer, want ≤ %d", trimAfter, n, keepEmpty)
		}
	})
}

func TestReplayBufferBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		a, b := pair(t, Config{Buffer: 64 << 10})
		a.Detach()
		b.Detach()
		wrote := make(chan int, 1)
		go func() {
			n, _ := a.Write(make([]byte, 1<<20))
			wrote <- n
		}()
		synctest.Wait() // the writer is blocked on the full buffer
		a.mu.Lock()
		held := a.out.Len()
		a.mu.Unlock()
		if held != 64<<10 {
			t.Errorf("replay buffer holds %d bytes, want 64 KiB", held)
		}
		select {
		case n := <-wrote:
			t.Fatalf("write of 1 MiB returned (%d) while detached", n)
		default:
		}
		a.Abort(ErrClosed)
		b.Abort(ErrClosed)
		<-wrote
	})
}

func TestBudgetBoundsAllConns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		budget := NewBudget(100 << 10)
		var conns []*Conn
		for range 4 {
			a, b := pair(t, Config{Buffer: 64 << 10, Budget: budget})
			a.Detach()
			b.Detach()
			conns = append(conns, a, b)
			go a.Write(make([]byte, 64<<10))
		}
		synctest.Wait()
		if used := budget.Used(); used > 100<<10 || used < 64<<10 {
			t.Errorf("budget used = %d, want between 64 KiB and 100 KiB", used)
		}
		for _, c := range conns {
			c.Abort(ErrClosed)
		}
		synctest.Wait()
		if used := budget.Used(); used != 0 {
			t.Errorf("budget used after abort = %d, want 0", used)
		}
	})
}

func TestCleanCloseCallsDone(t *testing.T) {
	done := make(chan error, 2)
	a, b := pair(t, Config{OnDone: func(err error) { done <- err }})
	ga, gb := transfer(a, b, []byte("ping")), transfer(b, a, []byte("pong"))
	if s := <-ga; string(s) != "ping" {
		t.Errorf("a→b %q", s)
	}
	if s := <-gb; string(s) != "pong" {
		t.Errorf("b→a %q", s)
	}
	for range 2 {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("OnDone(%v), want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("OnDone not called after both sides closed")
		}
	}
}

func TestAttachRejectsImpossibleOffsets(t *testing.T) {
	a := New(Config{})
	defer a.Abort(ErrClosed)
	if err := a.Attach(nopTransport{}, 5); !errors.Is(err, ErrProtocol) {
		t.Errorf("attach claiming 5 bytes received of 0 sent: %v, want ErrProtocol", err)
	}
}

func TestGarbageFailsConn(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
	}{
		{"unknown kind", []byte{9}},
		{"zero-length data", []byte{frameData, 0}},
		{"oversized data", []byte{frameData, 0xff, 0xff, 0x7f}},
		{"ack beyond sent", []byte{frameAck, 10}},
		{"data after fin", []byte{frameFin, frameData, 1, 'x'}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(Config{})
			pa, pb := net.Pipe()
			if err := c.Attach(pa, 0); err != nil {
				t.Fatal(err)
			}
			go func() {
				pb.Write(tt.in)
				io.Copy(io.Discard, pb)
			}()
			go io.Copy(io.Discard, c)
			if !eventuallyErr(c, 5*time.Second) || !errors.Is(c.Err(), ErrProtocol) {
				t.Errorf("err = %v, want ErrProtocol", c.Err())
			}
			pb.Close()
		})
	}
}

func eventuallyErr(c *Conn, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for c.Err() == nil && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	return c.Err() != nil
}

// FuzzFrames feeds arbitrary bytes from the peer: the Conn must fail with
// an error or deliver data, never panic or hang.
func FuzzFrames(f *testing.F) {
	f.Add([]byte{frameData, 3, 'a', 'b', 'c', frameAck, 0, frameFin})
	f.Add([]byte{frameData, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Add([]byte{frameAck, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, in []byte) {
		c := New(Config{Buffer: 1 << 20})
		defer c.Abort(ErrClosed)
		pa, pb := net.Pipe()
		c.Attach(pa, 0)
		go func() {
			pb.Write(in)
			pb.Close()
		}()
		go io.Copy(io.Discard, pb)
		go io.Copy(io.Discard, c)
		// The transport ends after the input: the Conn detaches (waiting
		// to resume) or fails; either way it stops reading.
		deadline := time.Now().Add(5 * time.Second)
		for c.Attached() {
			if time.Now().After(deadline) {
				t.Fatal("conn still reading a closed transport")
			}
			time.Sleep(100 * time.Microsecond)
		}
		c.Detach()
	})
}

// TestAttachFromReplaysFromAGuess re-attaches with the sender replaying from
// an earlier point than the receiver has (as after a link hurry, when the
// agent replays before the fleet's answer): the receiver drops what it
// already has, and every byte arrives once and in order, fin included.
func TestAttachFromReplaysFromAGuess(t *testing.T) {
	tests := []struct {
		name string
		back uint64 // how far before the receiver's count the sender replays
		fin  bool   // the receiver had the fin already
	}{
		{"from the exact point", 0, false},
		{"from 100 bytes back", 100, false},
		{"from the start", 1 << 62, false},
		{"fin already received", 10, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				a, b := New(Config{}), New(Config{})
				defer a.Abort(ErrClosed)
				defer b.Abort(ErrClosed)
				// b's acks are lost, as in an outage.
				pa, pb := net.Pipe()
				a.Attach(pa, 0)
				b.Attach(ackless{pb}, 0)
				data := randBytes(9, 5000)
				a.Write(data[:3000])
				if tt.fin {
					a.Write(data[3000:])
					a.CloseWrite()
				}
				synctest.Wait() // b has it all, a has had no ack yet
				a.Detach()
				b.Detach()
				from := b.Received() - min(tt.back, b.Received())
				if !a.CanReplayFrom(from) {
					t.Fatalf("a cannot replay from %d", from)
				}
				pa, pb = net.Pipe()
				if err := a.Attach(pa, from); err != nil {
					t.Fatal(err)
				}
				if err := b.AttachFrom(pb, a.Received(), from); err != nil {
					t.Fatal(err)
				}
				if !tt.fin {
					a.Write(data[3000:])
					a.CloseWrite()
				}
				got, err := io.ReadAll(b)
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("read %d bytes (%v), want the %d written, once each", len(got), err, len(data))
				}
			})
		})
	}
}

// ackless is a transport whose writes are lost.
type ackless struct{ net.Conn }

func (ackless) Write(p []byte) (int, error) { return len(p), nil }

func TestAttachFromRefusesAGap(t *testing.T) {
	a, b := pair(t, Config{})
	defer a.Abort(ErrClosed)
	defer b.Abort(ErrClosed)
	b.Detach()
	if err := b.AttachFrom(nopTransport{}, 0, 1); !errors.Is(err, ErrProtocol) {
		t.Errorf("attach with the peer replaying from 1 of 0 received: %v, want ErrProtocol", err)
	}
}

// TestDataDeliveredAsItArrives: a frame that arrives in pieces is readable
// piece by piece, not once whole (on a slow link a 32 KiB frame takes a
// while, and the first bytes after an outage are what matter).
func TestDataDeliveredAsItArrives(t *testing.T) {
	c := New(Config{})
	defer c.Abort(ErrClosed)
	pa, pb := net.Pipe()
	if err := c.Attach(pa, 0); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, pb)                           // c's acks
	go pb.Write([]byte{frameData, 0x80, 0x01, 'h', 'i'}) // a 128-byte frame, 2 bytes of it so far
	buf := make([]byte, 128)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(buf)
	if err != nil || string(buf[:n]) != "hi" {
		t.Fatalf("read %q, %v; want the 2 bytes that arrived", buf[:n], err)
	}
	pb.Close()
}

// TestOnDetachSaysWhenTheTransportFails: a failed transport calls OnDetach
// (the client that dials again starts from it); an explicit Detach, a
// clean finish and a failure do not.
func TestOnDetachSaysWhenTheTransportFails(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		detached := make(chan struct{}, 4)
		a := New(Config{OnDetach: func() { detached <- struct{}{} }})
		b := New(Config{})
		pa, pb := net.Pipe()
		if err := a.Attach(pa, 0); err != nil {
			t.Fatal(err)
		}
		if err := b.Attach(pb, 0); err != nil {
			t.Fatal(err)
		}
		a.Detach() // explicit: no call
		synctest.Wait()
		if len(detached) != 0 {
			t.Fatal("OnDetach called for an explicit Detach")
		}
		b.Detach()
		pa, pb = net.Pipe()
		a.Attach(pa, b.Received())
		b.Attach(pb, a.Received())
		pb.Close() // the transport dies under a
		synctest.Wait()
		if len(detached) != 1 {
			t.Fatalf("OnDetach called %d times after the transport died, want 1", len(detached))
		}
		if a.Attached() {
			t.Fatal("a still attached after its transport died")
		}
		a.Abort(errors.New("gone"))
		synctest.Wait()
		if len(detached) != 1 {
			t.Fatalf("OnDetach called %d times after Abort, want 1", len(detached))
		}
	})
}
