// Package resume makes a byte stream outlive the transport under it. A Conn
// is a net.Conn to the application (the SSH server on the device, the
// user's leg on the fleet) that rides on a sequence of transports (QUIC
// streams, one per tunnel connection). Each side numbers the bytes it
// sends, keeps those the peer has not acknowledged in a bounded replay
// buffer, and acknowledges what it receives. When a transport dies the Conn
// detaches and waits, for at most the hold time, to be attached to a new
// one; both sides then say how much they received and replay the rest, so
// no byte is lost, duplicated or reordered.
//
// On a transport, a Conn sends frames: a kind byte, then
//
//	data: uvarint length, bytes
//	ack:  uvarint total bytes received (a fin counts as one byte)
//	fin:  nothing; the sender will write no more
//
// Who re-attaches, and how the two sides learn each other's received
// counts, is the caller's business (the tunnel does it with a resume header
// bound to the device's mTLS identity and a per-session secret).
//
// Package resume imports neither firmware/ nor fleet/; both use it.
package resume

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// Defaults for Config.
const (
	DefaultBuffer = 4 << 20
	DefaultHold   = 10 * time.Minute
	maxFrame      = 32 << 10
	// ackDelay bounds how long received bytes go unacknowledged.
	ackDelay = 200 * time.Millisecond
	// readBuffer is the read loop's buffer for frame headers.
	readBuffer = 4 << 10
	// budgetPoll is how often a Write blocked on a shared Budget (not on
	// its own buffer) looks again.
	budgetPoll = 10 * time.Millisecond
)

// Frame kinds on a transport.
const (
	frameData byte = 1
	frameAck  byte = 2
	frameFin  byte = 3
)

// Errors a Conn returns.
var (
	// ErrHoldExpired: the transport was gone for longer than the hold time.
	ErrHoldExpired = errors.New("resume: the link did not come back within the hold time; session ended")
	// ErrClosed: the Conn was closed locally.
	ErrClosed = errors.New("resume: connection closed")
	// ErrProtocol: the peer sent bytes that break the protocol.
	ErrProtocol = errors.New("resume: protocol error")
)

// Config configures a Conn. The zero value works.
type Config struct {
	// Buffer bounds the replay buffer (bytes written but not yet
	// acknowledged) and the receive buffer (bytes received but not yet
	// read); default 4 MiB each. Writes block while the replay buffer is
	// full.
	Buffer int
	// Hold is how long a detached Conn waits for a new transport before it
	// fails with ErrHoldExpired; default 10 minutes.
	Hold time.Duration
	// Budget, when set, bounds the replay buffers of all Conns sharing it.
	Budget *Budget
	// OnDone is called once when the Conn is finished: both sides closed
	// and everything acknowledged, or failed. err is nil for a clean end.
	OnDone func(err error)
	// OnDetach, when set, is called (on a goroutine of its own) each time
	// the transport fails and the Conn starts waiting for a new one; not
	// on Detach, nor when the Conn fails or finishes. The side that
	// re-attaches (a client that dials again) starts from it.
	OnDetach func()
	// LocalAddr and RemoteAddr are reported by the Conn's methods.
	LocalAddr, RemoteAddr net.Addr
}

// Conn is a resumable stream. It is safe for one reader and one writer at a
// time, plus Attach, Detach and Close from other goroutines.
type Conn struct {
	cfg  Config
	mu   sync.Mutex // guards everything below
	cond *sync.Cond

	// Send side. out holds bytes from offset outBase (acknowledged by the
	// peer up to there) to written; sent marks how far the current
	// transport has been given them.
	out      ring
	outBase  uint64
	written  uint64
	sent     uint64
	finWrite bool // the application closed its write side
	finSent  bool // the fin went on the current transport
	// waitFrom is when this side started waiting for an ack of bytes it
	// sent on the current transport (zero: nothing outstanding).
	waitFrom time.Time

	// Receive side.
	in       ring
	recvd    uint64 // bytes (and fin) received in order
	acked    uint64 // what we last acknowledged on the current transport
	ackDue   bool   // the ack delay passed with bytes unacknowledged
	ackTimer *time.Timer
	finRecvd bool
	// skip is how many of the bytes (and fin) arriving on the current
	// transport this side already has: the peer replays from an earlier
	// point it guessed (AttachFrom).
	skip uint64
	// lastRecv is when data last arrived; burst counts the bytes of the
	// current run of arrivals with no gap over burstGap (see Receiving).
	lastRecv time.Time
	burst    uint64

	// Transport.
	tr       io.ReadWriteCloser
	gen      int            // bumps on every attach and detach
	wg       sync.WaitGroup // the current transport's goroutines
	holdT    *time.Timer
	err      error // terminal
	closed   bool  // Close was called
	done     bool  // OnDone was called
	rdl, wdl time.Time
	dlTimer  [2]*time.Timer
	trimT    *time.Timer // frees emptied ring buffers (trimSoonLocked)
}

// trimAfter is how long a ring's large buffer outlives its last byte.
const trimAfter = time.Second

// trimSoonLocked frees the rings' large buffers trimAfter from now if they
// are empty then: an idle session keeps no megabytes, a busy one does not
// reallocate them.
func (c *Conn) trimSoonLocked() {
	if c.trimT != nil || !c.in.big() && !c.out.big() {
		return
	}
	c.trimT = time.AfterFunc(trimAfter, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.trimT = nil
		c.in.release()
		c.out.release()
	})
}

// New returns a detached Conn; Attach gives it its first transport. Its
// hold timer starts at once.
func New(cfg Config) *Conn {
	if cfg.Buffer <= 0 {
		cfg.Buffer = DefaultBuffer
	}
	if cfg.Hold <= 0 {
		cfg.Hold = DefaultHold
	}
	c := &Conn{cfg: cfg}
	c.cond = sync.NewCond(&c.mu)
	c.mu.Lock()
	c.startHoldLocked()
	c.mu.Unlock()
	return c
}

// Received returns how many bytes (a fin counts as one) this side has
// received in order. Call it after Detach, to tell the peer where to
// replay from.
func (c *Conn) Received() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.recvd
}

// Stalled returns how long the Conn has been waiting for the peer to
// acknowledge bytes it sent on its transport without any progress; zero
// when nothing is outstanding or it is detached. The peer acknowledges
// within 200 ms of receiving, so much more than that plus a round trip
// means the link is not carrying bytes.
func (c *Conn) Stalled() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tr == nil || c.waitFrom.IsZero() {
		return 0
	}
	return time.Since(c.waitFrom)
}

// Progress counts the bytes the peer has acknowledged plus the bytes this
// side has received. It only grows: when it grows, the session is moving,
// in one direction or the other.
func (c *Conn) Progress() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.outBase + c.recvd
}

// burstGap ends a run of arrivals (see Receiving).
const burstGap = 250 * time.Millisecond

// noteRecvLocked counts n bytes arriving now.
func (c *Conn) noteRecvLocked(n int) {
	now := time.Now()
	if now.Sub(c.lastRecv) > burstGap {
		c.burst = 0
	}
	c.lastRecv = now
	c.burst += uint64(n)
}

// Receiving returns when data last arrived, and how many bytes arrived in
// the run of arrivals that ended then (no gap over 250 ms): a large run
// that stopped means a bulk transfer toward this side stopped.
func (c *Conn) Receiving() (last time.Time, burst uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastRecv, c.burst
}

// AckDelay is the most a Conn waits before acknowledging received bytes.
const AckDelay = ackDelay

// CanReplayFrom reports whether this side still holds its bytes from n on
// (n is at least what the peer has acknowledged and at most what was
// written), so that Attach(tr, n) can replay from there.
func (c *Conn) CanReplayFrom(n uint64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	end := c.written
	if c.finWrite {
		end++
	}
	return c.err == nil && n >= c.outBase && n <= end
}

// Attached reports whether the Conn has a transport.
func (c *Conn) Attached() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.tr != nil
}

// Err returns the terminal error, if the Conn has failed.
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Attach makes tr the Conn's transport. peerRecvd is how much the peer says
// it has received; everything after it is sent again. Detach first if the
// Conn has a transport.
func (c *Conn) Attach(tr io.ReadWriteCloser, peerRecvd uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.attachLocked(tr, peerRecvd, c.recvd)
}

// AttachFrom is Attach for a peer that replays from peerFrom without having
// heard how much this side has: the bytes up to this side's count are
// dropped as they arrive. peerFrom beyond that count would leave a gap,
// and is a protocol error.
func (c *Conn) AttachFrom(tr io.ReadWriteCloser, peerRecvd, peerFrom uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if peerFrom > c.recvd {
		return fmt.Errorf("%w: peer replays from %d, but this side has only %d", ErrProtocol, peerFrom, c.recvd)
	}
	return c.attachLocked(tr, peerRecvd, peerFrom)
}

func (c *Conn) attachLocked(tr io.ReadWriteCloser, peerRecvd, peerFrom uint64) error {
	if c.err != nil {
		return c.err
	}
	if c.tr != nil {
		return errors.New("resume: attach: already attached")
	}
	end := c.written
	if c.finWrite {
		end++
	}
	if peerRecvd < c.outBase || peerRecvd > end {
		return fmt.Errorf("%w: peer received %d, but this side kept %d..%d", ErrProtocol, peerRecvd, c.outBase, end)
	}
	c.ackLocked(peerRecvd)
	if c.checkFinishedLocked(); c.err != nil {
		tr.Close() // the peer's count was the last ack this side needed
		return c.err
	}
	c.sent = peerRecvd
	c.finSent = c.finWrite && peerRecvd == end
	if c.holdT != nil {
		c.holdT.Stop()
		c.holdT = nil
	}
	c.tr = tr
	c.gen++
	gen := c.gen
	c.acked = c.recvd // the peer learnt it in the resume handshake
	c.skip = c.recvd - peerFrom
	c.waitFrom = time.Time{}
	c.wg.Add(2)
	go c.readLoop(tr, gen)
	go c.writeLoop(tr, gen)
	c.cond.Broadcast()
	return nil
}

// Detach drops the current transport (closing it) and waits until nothing
// more will be read from it. The Conn then waits for Attach.
func (c *Conn) Detach() {
	c.mu.Lock()
	c.detachLocked()
	c.mu.Unlock()
	c.wg.Wait()
}

// abortTransport drops tr at once; a graceful Close does not wake a write
// blocked on flow control, and the Conn replays whatever was lost anyway.
func abortTransport(tr io.ReadWriteCloser) {
	if a, ok := tr.(interface{ Abort() }); ok {
		a.Abort()
	}
	tr.Close()
}

func (c *Conn) detachLocked() {
	if c.tr == nil {
		return
	}
	abortTransport(c.tr)
	c.tr = nil
	c.gen++
	if c.err == nil && !c.finishedLocked() {
		c.startHoldLocked()
	}
	c.cond.Broadcast()
}

// lostLocked detaches a transport that failed, and says so (OnDetach)
// when the Conn waits for another.
func (c *Conn) lostLocked() {
	c.detachLocked()
	if c.cfg.OnDetach != nil && c.err == nil && c.holdT != nil {
		go c.cfg.OnDetach()
	}
}

func (c *Conn) startHoldLocked() {
	if c.holdT != nil {
		c.holdT.Stop()
	}
	gen := c.gen
	c.holdT = time.AfterFunc(c.cfg.Hold, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.tr == nil && c.gen == gen {
			c.failLocked(ErrHoldExpired)
		}
	})
}

// failLocked ends the Conn with err.
func (c *Conn) failLocked(err error) {
	if c.err != nil {
		return
	}
	c.err = err
	if c.tr != nil {
		abortTransport(c.tr)
		c.tr = nil
		c.gen++
	}
	c.releaseLocked(uint64(c.out.Len()))
	c.out.reset()
	c.cond.Broadcast()
	c.doneLocked(err)
}

func (c *Conn) doneLocked(err error) {
	if c.done {
		return
	}
	c.done = true
	for _, t := range []*time.Timer{c.holdT, c.ackTimer, c.dlTimer[0], c.dlTimer[1]} {
		if t != nil {
			t.Stop()
		}
	}
	if c.cfg.OnDone != nil {
		go c.cfg.OnDone(err)
	}
}

// finishedLocked reports whether both sides closed and all is acknowledged.
func (c *Conn) finishedLocked() bool {
	return c.finWrite && c.finRecvd && c.outBase == c.written+1
}

// checkFinishedLocked ends a Conn whose both sides closed and whose bytes
// are all acknowledged. The write loop sends a last ack (for the peer's fin)
// and then closes the transport.
func (c *Conn) checkFinishedLocked() {
	if c.err == nil && c.finishedLocked() {
		c.err = io.EOF
		c.cond.Broadcast()
		c.doneLocked(nil)
	}
}

// ackLocked drops bytes the peer acknowledged up to n.
func (c *Conn) ackLocked(n uint64) {
	if n <= c.outBase {
		return
	}
	drop := min(n, c.written) - c.outBase
	c.out.drop(int(drop))
	c.trimSoonLocked()
	c.releaseLocked(drop)
	c.outBase = n
	if c.sent > c.outBase {
		c.waitFrom = time.Now() // progress; still waiting for the rest
	} else {
		c.waitFrom = time.Time{}
	}
	c.cond.Broadcast()
}

func (c *Conn) releaseLocked(n uint64) {
	if c.cfg.Budget != nil && n > 0 {
		c.cfg.Budget.release(int(n))
	}
}

// Read reads application bytes.
func (c *Conn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if c.closed {
			return 0, ErrClosed
		}
		if c.in.Len() > 0 {
			n := c.in.read(p)
			c.trimSoonLocked()
			c.cond.Broadcast()
			return n, nil
		}
		if c.finRecvd {
			return 0, io.EOF
		}
		if c.err != nil && c.err != io.EOF {
			return 0, c.err
		}
		if !c.rdl.IsZero() && !time.Now().Before(c.rdl) {
			return 0, os.ErrDeadlineExceeded
		}
		c.cond.Wait()
	}
}

// Write queues p for the peer; it blocks while the replay buffer is full.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for len(p) > 0 {
		if c.closed {
			return n, ErrClosed
		}
		if c.err != nil {
			return n, c.err
		}
		if c.finWrite {
			return n, errors.New("resume: write after CloseWrite")
		}
		if !c.wdl.IsZero() && !time.Now().Before(c.wdl) {
			return n, os.ErrDeadlineExceeded
		}
		room := c.cfg.Buffer - c.out.Len()
		if room <= 0 {
			c.cond.Wait()
			continue
		}
		if c.cfg.Budget != nil {
			if room = c.cfg.Budget.acquire(min(room, len(p))); room == 0 {
				t := time.AfterFunc(budgetPoll, c.cond.Broadcast)
				c.cond.Wait()
				t.Stop()
				continue
			}
		}
		k := min(room, len(p))
		c.out.push(p[:k])
		if c.cfg.Budget != nil && k < room {
			c.cfg.Budget.release(room - k)
		}
		c.written += uint64(k)
		p = p[k:]
		n += k
		c.cond.Broadcast()
	}
	return n, nil
}

// CloseWrite sends a fin after the bytes written so far.
func (c *Conn) CloseWrite() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.finWrite {
		c.finWrite = true
		c.cond.Broadcast()
	}
	return nil
}

// Close ends the application's use of the Conn: it closes the write side
// (bytes written are still delivered) and discards what arrives. The Conn
// finishes when the peer closes too, or fails when the hold time passes.
func (c *Conn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	c.closed = true
	c.finWrite = true
	c.in.reset()
	c.cond.Broadcast()
	return nil
}

// Abort fails the Conn at once with err, closing its transport.
func (c *Conn) Abort(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failLocked(err)
}

// readLoop reads frames from tr until it fails.
func (c *Conn) readLoop(tr io.ReadWriteCloser, gen int) {
	defer c.wg.Done()
	// Small: data frames are read straight into buf past it, not copied
	// through it.
	br := bufio.NewReaderSize(tr, readBuffer)
	buf := make([]byte, maxFrame)
	err := func() error {
		for {
			kind, err := br.ReadByte()
			if err != nil {
				return err
			}
			switch kind {
			case frameData:
				n, err := binary.ReadUvarint(br)
				if err != nil {
					return err
				}
				if n == 0 || n > maxFrame {
					return fmt.Errorf("%w: data frame of %d bytes", ErrProtocol, n)
				}
				// Deliver as the bytes arrive, not once the frame is whole:
				// on a slow link (or a fresh congestion window after an
				// outage) a whole frame takes a while.
				for n > 0 {
					k, err := br.Read(buf[:n])
					if err != nil {
						if err == io.EOF {
							err = io.ErrUnexpectedEOF
						}
						return err
					}
					if err := c.deliver(gen, buf[:k]); err != nil {
						return err
					}
					n -= uint64(k)
				}
			case frameAck:
				n, err := binary.ReadUvarint(br)
				if err != nil {
					return err
				}
				if err := c.gotAck(gen, n); err != nil {
					return err
				}
			case frameFin:
				if err := c.gotFin(gen); err != nil {
					return err
				}
			default:
				return fmt.Errorf("%w: unknown frame kind %d", ErrProtocol, kind)
			}
		}
	}()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen == gen {
		if errors.Is(err, ErrProtocol) {
			c.failLocked(err)
			return
		}
		c.lostLocked()
	}
}

// deliver appends received bytes, waiting while the receive buffer is full.
func (c *Conn) deliver(gen int, b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if c.gen != gen {
			return net.ErrClosed
		}
		if c.skip > 0 { // replayed bytes this side has
			n := min(uint64(len(b)), c.skip)
			if c.finRecvd && n == c.skip {
				return fmt.Errorf("%w: data after fin", ErrProtocol)
			}
			c.skip -= n
			if b = b[n:]; len(b) == 0 {
				return nil
			}
		}
		if c.finRecvd {
			return fmt.Errorf("%w: data after fin", ErrProtocol)
		}
		c.noteRecvLocked(len(b))
		if c.closed { // discard
			c.recvd += uint64(len(b))
			c.ackSoonLocked()
			return nil
		}
		if c.in.Len() < c.cfg.Buffer {
			c.in.push(b)
			c.recvd += uint64(len(b))
			c.ackSoonLocked()
			c.cond.Broadcast()
			return nil
		}
		c.cond.Wait()
	}
}

func (c *Conn) gotAck(gen int, n uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return net.ErrClosed
	}
	end := c.written
	if c.finSent {
		end++
	}
	if n > end {
		return fmt.Errorf("%w: ack of %d beyond %d sent", ErrProtocol, n, end)
	}
	c.ackLocked(n)
	c.checkFinishedLocked()
	return nil
}

func (c *Conn) gotFin(gen int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.gen != gen {
		return net.ErrClosed
	}
	if c.skip > 0 { // a fin this side has
		if c.skip != 1 || !c.finRecvd {
			return fmt.Errorf("%w: fin %d bytes before where this side is", ErrProtocol, c.skip-1)
		}
		c.skip = 0
		return nil
	}
	if !c.finRecvd {
		c.finRecvd = true
		c.recvd++
	}
	c.ackDue = true // acknowledge the fin at once
	c.cond.Broadcast()
	c.checkFinishedLocked()
	return nil
}

// ackSoonLocked acknowledges at once when a quarter of the buffer is
// unacknowledged, else within a short delay.
func (c *Conn) ackSoonLocked() {
	if c.recvd-c.acked >= uint64(c.cfg.Buffer/4) {
		c.cond.Broadcast()
		return
	}
	if c.ackTimer == nil {
		c.ackTimer = time.AfterFunc(ackDelay, func() {
			c.mu.Lock()
			c.ackTimer = nil
			c.ackDue = true
			c.cond.Broadcast()
			c.mu.Unlock()
		})
	}
}

func (c *Conn) ackNeededLocked() bool {
	if c.recvd <= c.acked {
		return false
	}
	return c.ackDue || c.recvd-c.acked >= uint64(c.cfg.Buffer/4)
}

func (c *Conn) sendableLocked() bool {
	return c.sent < c.written || (c.finWrite && !c.finSent && c.sent == c.written) || c.ackNeededLocked()
}

// writeLoop writes what is due to tr until it fails or is replaced.
func (c *Conn) writeLoop(tr io.ReadWriteCloser, gen int) {
	defer c.wg.Done()
	// fb holds the frame headers, acks and fins; the data goes to the
	// transport straight from the replay ring, not copied through here.
	// Its capacity is never outgrown (an ack, 4 data headers and a fin
	// take at most 28 bytes), so the pieces of it in out stay put. The
	// ring's bytes stay put too until the peer acknowledges them, which it
	// cannot do before the transport has taken them.
	fb := make([]byte, 0, 64)
	var out [][]byte
	for {
		c.mu.Lock()
		for c.gen == gen && c.err == nil && !c.sendableLocked() {
			c.cond.Wait()
		}
		if c.gen != gen {
			c.mu.Unlock()
			return
		}
		if c.err != nil { // finished: a last ack, then close
			fb = fb[:0]
			if c.recvd > c.acked {
				fb = append(fb, frameAck)
				fb = binary.AppendUvarint(fb, c.recvd)
			}
			c.tr, c.gen = nil, c.gen+1
			c.mu.Unlock()
			if len(fb) > 0 {
				tr.Write(fb)
			}
			tr.Close()
			return
		}
		fb, out = fb[:0], out[:0]
		mark := 0 // fb[mark:] is not in out yet
		flush := func() {
			if len(fb) > mark {
				out = append(out, fb[mark:])
				mark = len(fb)
			}
		}
		if c.ackNeededLocked() {
			fb = append(fb, frameAck)
			fb = binary.AppendUvarint(fb, c.recvd)
			c.acked, c.ackDue = c.recvd, false
		}
		if c.sent < c.written && c.waitFrom.IsZero() {
			c.waitFrom = time.Now()
		}
		for frames := 0; c.sent < c.written && frames < 4; frames++ {
			off := c.sent - c.outBase
			n := min(uint64(maxFrame), c.written-c.sent)
			fb = append(fb, frameData)
			fb = binary.AppendUvarint(fb, n)
			flush()
			a, b := c.out.segments(int(off), int(n))
			out = append(out, a)
			if len(b) > 0 {
				out = append(out, b)
			}
			c.sent += n
		}
		if c.finWrite && !c.finSent && c.sent == c.written {
			fb = append(fb, frameFin)
			c.finSent = true
		}
		flush()
		c.mu.Unlock()
		for _, p := range out {
			if _, err := tr.Write(p); err != nil {
				c.mu.Lock()
				if c.gen == gen {
					c.lostLocked()
				}
				c.mu.Unlock()
				return
			}
		}
	}
}

// LocalAddr returns Config.LocalAddr.
func (c *Conn) LocalAddr() net.Addr { return addrOr(c.cfg.LocalAddr) }

// RemoteAddr returns Config.RemoteAddr.
func (c *Conn) RemoteAddr() net.Addr { return addrOr(c.cfg.RemoteAddr) }

type noAddr struct{}

func (noAddr) Network() string { return "resume" }
func (noAddr) String() string  { return "resume" }

func addrOr(a net.Addr) net.Addr {
	if a == nil {
		return noAddr{}
	}
	return a
}

// SetDeadline sets the read and write deadlines.
func (c *Conn) SetDeadline(t time.Time) error {
	c.SetReadDeadline(t)
	return c.SetWriteDeadline(t)
}

// SetReadDeadline makes blocked and future Reads fail after t.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.setDeadline(0, t)
	return nil
}

// SetWriteDeadline makes blocked and future Writes fail after t.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.setDeadline(1, t)
	return nil
}

func (c *Conn) setDeadline(i int, t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i == 0 {
		c.rdl = t
	} else {
		c.wdl = t
	}
	if c.dlTimer[i] != nil {
		c.dlTimer[i].Stop()
		c.dlTimer[i] = nil
	}
	if !t.IsZero() {
		c.dlTimer[i] = time.AfterFunc(time.Until(t), c.cond.Broadcast)
	}
	c.cond.Broadcast()
}

// Budget bounds the replay buffers of many Conns together.
type Budget struct {
	mu   sync.Mutex // guards used
	max  int
	used int
}

// NewBudget returns a budget of max bytes.
func NewBudget(max int) *Budget { return &Budget{max: max} }

// Used returns the bytes held now.
func (b *Budget) Used() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}

// acquire takes up to n bytes and returns how many it got.
func (b *Budget) acquire(n int) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n = min(n, b.max-b.used)
	if n < 0 {
		n = 0
	}
	b.used += n
	return n
}

func (b *Budget) release(n int) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
}
