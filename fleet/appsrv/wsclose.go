package appsrv

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"time"
	"unicode/utf8"
)

// A websocket that the fleet passes through ends, when the fleet ends its
// app session (a lock, a role change, a logout), with a close frame that
// says why (RFC 6455 section 5.5.1: status 1008, policy violation, and
// the session's end reason), rather than with a bare cut: the page or
// the client library then has the reason to show its user. The fleet
// passes the app's frames on as bytes; wsConn follows their boundaries
// so that its close frame goes between two of the app's frames, never
// into one (when the cut falls inside a frame, there is no close frame).

// statusPolicyViolation is the close status of a websocket the fleet
// ended (RFC 6455 section 7.4.1).
const statusPolicyViolation = 1008

// maxCloseReason is the most bytes of reason a close frame holds: a
// control frame's payload is at most 125 bytes, two of them the status.
const maxCloseReason = 123

// closeWriteTimeout bounds the write of the close frame to a client that
// does not read.
const closeWriteTimeout = 2 * time.Second

// closeFrame is a server's close frame (unmasked) with status and reason,
// the reason cut to what a frame holds, at a character's boundary.
func closeFrame(status uint16, reason string) []byte {
	if len(reason) > maxCloseReason {
		cut := maxCloseReason
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	f := make([]byte, 0, 4+len(reason))
	f = append(f, 0x88, byte(2+len(reason))) // FIN, opcode close; unmasked length
	f = binary.BigEndian.AppendUint16(f, status)
	return append(f, reason...)
}

// frameCursor follows the frames of a websocket byte stream (RFC 6455
// section 5.2) as it goes by, to know where one ends.
type frameCursor struct {
	hdr   [14]byte // the current frame's header, as far as it came
	n     int      // header bytes in hdr
	left  uint64   // payload bytes of the current frame still to come
	close bool     // a close frame went by
}

// headerLen is the length of the frame header that starts with h, or 0
// while h is too short to tell.
func headerLen(h []byte) int {
	if len(h) < 2 {
		return 0
	}
	n := 2
	switch h[1] & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if h[1]&0x80 != 0 { // masked
		n += 4
	}
	return n
}

// payloadLen is the payload length a whole header h gives.
func payloadLen(h []byte) uint64 {
	switch l := h[1] & 0x7f; l {
	case 126:
		return uint64(binary.BigEndian.Uint16(h[2:4]))
	case 127:
		return binary.BigEndian.Uint64(h[2:10])
	default:
		return uint64(l)
	}
}

// feed moves the cursor past p.
func (f *frameCursor) feed(p []byte) {
	for len(p) > 0 {
		if f.left > 0 {
			n := uint64(len(p))
			if n > f.left {
				n = f.left
			}
			f.left -= n
			p = p[n:]
			continue
		}
		f.hdr[f.n] = p[0]
		f.n++
		p = p[1:]
		if need := headerLen(f.hdr[:f.n]); need > 0 && f.n == need {
			f.left = payloadLen(f.hdr[:f.n])
			f.close = f.close || f.hdr[0]&0x0f == 0x8
			f.n = 0
		}
	}
}

// between reports whether the stream is between two frames.
func (f *frameCursor) between() bool { return f.n == 0 && f.left == 0 }

// wsConn is the user's side of a websocket the fleet passes through:
// before it closes, it tells the user why the fleet ended the session,
// if it did.
type wsConn struct {
	net.Conn
	// why says why the fleet ended the session; "" while it is live, or
	// when its end was the app's or the user's.
	why func() string

	mu     sync.Mutex // guards the fields below and serialises writes
	frames frameCursor
	said   bool // the close frame went, or will not
}

func (c *wsConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.Conn.Write(p)
	c.frames.feed(p[:n])
	return n, err
}

// sayWhy sends the close frame with the reason, once, if the fleet ended
// the session, the app has not closed the websocket itself and the
// stream is between frames. A write in flight (to a client that does
// not read, it may never end) is inside a frame: then it does not wait
// for it, and the close that follows cuts it.
func (c *wsConn) sayWhy() {
	if !c.mu.TryLock() {
		return
	}
	defer c.mu.Unlock()
	if c.said {
		return
	}
	c.said = true
	why := c.why()
	if why == "" || c.frames.close || !c.frames.between() {
		return
	}
	c.Conn.SetWriteDeadline(time.Now().Add(closeWriteTimeout))
	c.Conn.Write(closeFrame(statusPolicyViolation, why))
}

func (c *wsConn) Close() error {
	c.sayWhy()
	return c.Conn.Close()
}

// CloseWrite half-closes the connection where it can (the proxy does
// when the app's side ended).
func (c *wsConn) CloseWrite() error {
	c.sayWhy()
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}
