// Package userframe frames what the fleet sends down an upgraded user
// connection (GET /v1/connect) to a client that asked for frames
// (api.HeaderFrames): the device's bytes travel in data frames, and when
// the fleet ends the session (a lock, access removed, an expired
// certificate) it sends an end frame with the reason, in order with the
// data, at once. The client shows the reason as it reads the frame, before
// any byte after it and before the connection closes: it never depends on
// the device writing it, nor on a question asked after the user's program
// (OpenSSH, which kills its ProxyCommand as it exits) has gone.
//
// A frame is one kind byte, the payload's length as an unsigned varint
// (encoding/binary), and the payload:
//
//	kind 1, data: 1 to MaxData bytes of the device's stream;
//	kind 2, end:  the reason, UTF-8, at most MaxReason bytes.
//
// After an end frame data frames may still follow (what the device said
// as it ended); then the fleet closes the connection. Any other kind, an
// empty or oversized payload, or a reason that is not UTF-8 is an error.
//
// proto/... imports neither firmware/ nor fleet/; tsh and fleetd import this.
package userframe

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
	"unicode/utf8"
)

// Frame kinds.
const (
	KindData byte = 1
	KindEnd  byte = 2
)

// Limits.
const (
	// MaxData is the largest data payload.
	MaxData = 64 << 10
	// MaxReason is the largest end reason.
	MaxReason = 1024
)

// Writer writes frames to an underlying writer. Its methods are safe for
// concurrent use: a frame is written whole, never interleaved.
type Writer struct {
	mu  sync.Mutex // guards w and buf
	w   io.Writer
	buf []byte
}

// NewWriter returns a Writer to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write writes p as data frames; it returns how much of p was written.
func (fw *Writer) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		chunk := p[:min(len(p), MaxData)]
		if err := fw.frame(KindData, chunk); err != nil {
			return n, err
		}
		n += len(chunk)
		p = p[len(chunk):]
	}
	return n, nil
}

// End writes an end frame with reason (cut to MaxReason bytes, at a rune
// boundary; an empty reason is sent as "ended by the fleet").
func (fw *Writer) End(reason string) error {
	if reason == "" {
		reason = "ended by the fleet"
	}
	reason = Truncate(reason, MaxReason)
	return fw.frame(KindEnd, []byte(reason))
}

func (fw *Writer) frame(kind byte, p []byte) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	fw.buf = append(fw.buf[:0], kind)
	fw.buf = binary.AppendUvarint(fw.buf, uint64(len(p)))
	fw.buf = append(fw.buf, p...)
	_, err := fw.w.Write(fw.buf)
	return err
}

// Truncate cuts s to at most n bytes at a rune boundary, and makes it
// valid UTF-8.
func Truncate(s string, n int) string {
	s = string([]rune(s)) // invalid bytes become U+FFFD
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// ErrFrame is wrapped by every error about a malformed frame.
var ErrFrame = errors.New("userframe: malformed frame")

// Reader reads the data of a framed stream. OnEnd, when set, is called with
// the reason of each end frame as Read meets it, before Read returns any
// byte that followed it.
type Reader struct {
	r     *bufio.Reader
	OnEnd func(reason string)
	left  int // data bytes of the current frame not yet read
	ended string
}

// NewReader returns a Reader of r.
func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReaderSize(r, 4096)} }

// Ended returns the reason of the last end frame read, or "".
func (fr *Reader) Ended() string { return fr.ended }

// Read reads data bytes. It returns io.EOF when the stream ends at a frame
// boundary, io.ErrUnexpectedEOF inside a frame, and an error wrapping
// ErrFrame for a malformed frame.
func (fr *Reader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for fr.left == 0 {
		kind, err := fr.r.ReadByte()
		if err != nil {
			return 0, err // io.EOF at a boundary, or the transport's error
		}
		size, err := binary.ReadUvarint(fr.r)
		if err != nil {
			return 0, eof(err)
		}
		switch kind {
		case KindData:
			if size == 0 || size > MaxData {
				return 0, fmt.Errorf("%w: data frame of %d bytes", ErrFrame, size)
			}
			fr.left = int(size)
		case KindEnd:
			if size > MaxReason {
				return 0, fmt.Errorf("%w: end frame of %d bytes", ErrFrame, size)
			}
			b := make([]byte, size)
			if _, err := io.ReadFull(fr.r, b); err != nil {
				return 0, eof(err)
			}
			if !utf8.Valid(b) {
				return 0, fmt.Errorf("%w: the end reason is not UTF-8", ErrFrame)
			}
			fr.ended = string(b)
			if fr.OnEnd != nil {
				fr.OnEnd(fr.ended)
			}
		default:
			return 0, fmt.Errorf("%w: unknown kind %d", ErrFrame, kind)
		}
	}
	n, err := fr.r.Read(p[:min(len(p), fr.left)])
	fr.left -= n
	if err != nil && fr.left > 0 {
		return n, eof(err)
	}
	return n, nil
}

// eof turns an io.EOF inside a frame into io.ErrUnexpectedEOF.
func eof(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
