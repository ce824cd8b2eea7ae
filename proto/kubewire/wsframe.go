package kubewire

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// WebSocket framing (RFC 6455 section 5), as kubectl exec, attach and
// port-forward speak it over an upgraded connection. The fleet and the
// agent follow the frames each way to record terminal sessions and to end
// a session with a message at a frame boundary.

// WebSocket opcodes.
const (
	wsContinuation = 0x0
	wsText         = 0x1
	wsBinary       = 0x2
	wsClose        = 0x8
)

// maxWSHeader is the longest frame header: 2 bytes, 8 of extended length,
// 4 of mask.
const maxWSHeader = 14

// wsStream follows the WebSocket frames of one direction of a connection.
// Fed the bytes as they pass (feed), it hands the (unmasked) payload of
// data messages to data, in order, with start set on the first piece of
// each message, and calls end when a message is complete. Control frames
// are skipped. After a framing error it follows nothing more: err says
// why.
type wsStream struct {
	data func(start bool, p []byte)
	end  func()

	hdr       [maxWSHeader]byte
	hdrN      int    // header bytes held
	remaining uint64 // payload bytes left in the current frame
	inFrame   bool   // between a header and the end of its payload
	control   bool   // the current frame is a control frame
	fin       bool   // the current frame ends its message
	masked    bool
	key       [4]byte
	keyPos    int
	inMessage bool // a data message has started and not ended
	startNext bool // the next payload piece starts a message
	buf       []byte
	err       error
}

// atBoundary reports whether the bytes so far end on a frame boundary (and
// no framing error happened), so a frame can be inserted here.
func (w *wsStream) atBoundary() bool {
	return w.err == nil && !w.inFrame && w.hdrN == 0 && !w.inMessage
}

// feed follows p. It returns the framing error, if any (also kept in err).
func (w *wsStream) feed(p []byte) error {
	for len(p) > 0 && w.err == nil {
		if !w.inFrame {
			p = w.header(p)
			continue
		}
		n := uint64(len(p))
		if n > w.remaining {
			n = w.remaining
		}
		chunk := p[:n]
		p = p[n:]
		w.remaining -= n
		if !w.control && len(chunk) > 0 {
			if w.masked {
				w.buf = append(w.buf[:0], chunk...)
				for i := range w.buf {
					w.buf[i] ^= w.key[w.keyPos]
					w.keyPos = (w.keyPos + 1) & 3
				}
				chunk = w.buf
			}
			if w.data != nil {
				w.data(w.startNext, chunk)
			}
			w.startNext = false
		}
		if w.remaining == 0 {
			w.frameDone()
		}
	}
	return w.err
}

// header consumes header bytes from p and returns the rest.
func (w *wsStream) header(p []byte) []byte {
	need := 2
	if w.hdrN >= 2 {
		need = wsHeaderLen(w.hdr[0], w.hdr[1])
	}
	for w.hdrN < need && len(p) > 0 {
		w.hdr[w.hdrN] = p[0]
		w.hdrN++
		p = p[1:]
		if w.hdrN == 2 {
			need = wsHeaderLen(w.hdr[0], w.hdr[1])
		}
	}
	if w.hdrN < need {
		return p
	}
	w.err = w.parseHeader()
	w.hdrN = 0
	if w.err == nil && w.remaining == 0 {
		w.frameDone()
	}
	return p
}

// wsHeaderLen is the length of a frame header that starts with b0, b1.
func wsHeaderLen(b0, b1 byte) int {
	n := 2
	switch b1 & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b1&0x80 != 0 {
		n += 4
	}
	return n
}

// parseHeader reads the complete header in w.hdr.
func (w *wsStream) parseHeader() error {
	b0, b1 := w.hdr[0], w.hdr[1]
	if b0&0x70 != 0 {
		return errors.New("kubewire: websocket: reserved bits set (no extension was agreed)")
	}
	op := b0 & 0x0f
	w.fin = b0&0x80 != 0
	w.masked = b1&0x80 != 0
	i := 2
	length := uint64(b1 & 0x7f)
	switch length {
	case 126:
		length = uint64(binary.BigEndian.Uint16(w.hdr[2:4]))
		i = 4
	case 127:
		length = binary.BigEndian.Uint64(w.hdr[2:10])
		if length>>63 != 0 {
			return errors.New("kubewire: websocket: frame length with the top bit set")
		}
		i = 10
	}
	if w.masked {
		copy(w.key[:], w.hdr[i:i+4])
	}
	w.keyPos = 0
	w.control = op >= 0x8
	switch {
	case w.control:
		if op > 0xa {
			return fmt.Errorf("kubewire: websocket: reserved opcode %#x", op)
		}
		if !w.fin || length > 125 {
			return errors.New("kubewire: websocket: fragmented or long control frame")
		}
	case op == wsContinuation:
		if !w.inMessage {
			return errors.New("kubewire: websocket: continuation frame outside a message")
		}
	case op == wsText || op == wsBinary:
		if w.inMessage {
			return errors.New("kubewire: websocket: new message before the last one ended")
		}
		w.inMessage, w.startNext = true, true
	default:
		return fmt.Errorf("kubewire: websocket: reserved opcode %#x", op)
	}
	w.remaining = length
	w.inFrame = true
	return nil
}

// frameDone ends the current frame.
func (w *wsStream) frameDone() {
	w.inFrame = false
	if w.control || !w.fin {
		return
	}
	if w.startNext && w.data != nil {
		// An empty message: its start is still news.
		w.data(true, nil)
	}
	w.inMessage, w.startNext = false, false
	if w.end != nil {
		w.end()
	}
}

// WebSocket opcodes of data and close frames, for Frame.
const (
	OpBinary = wsBinary
	OpClose  = wsClose
)

// Frame builds one final frame of opcode op: unmasked (server to client)
// when mask is nil, else masked with it (client to server).
func Frame(op byte, payload []byte, mask *[4]byte) []byte {
	b := []byte{0x80 | op}
	bit := byte(0)
	if mask != nil {
		bit = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, bit|byte(n))
	case n <= 0xffff:
		b = append(b, bit|126, byte(n>>8), byte(n))
	default:
		b = append(b, bit|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if mask == nil {
		return append(b, payload...)
	}
	b = append(b, mask[:]...)
	for i, c := range payload {
		b = append(b, c^mask[i%4])
	}
	return b
}
