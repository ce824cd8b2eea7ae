package proto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/fxamacker/cbor/v2"
)

// Frame size limits.
const (
	// MaxControlFrame bounds a frame on the control stream.
	MaxControlFrame = 64 << 10
	// MaxHeaderFrame bounds a StreamHeader or StreamAccept frame.
	MaxHeaderFrame = 16 << 10
)

// ErrFrameTooLarge is returned for a frame whose length exceeds the limit.
var ErrFrameTooLarge = errors.New("proto: frame too large")

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	encMode, err = cbor.CoreDetEncOptions().EncMode()
	if err != nil {
		panic(err)
	}
	decMode, err = cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:   8,
		MaxArrayElements:  1024,
		MaxMapPairs:       256,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// Marshal encodes m as a frame.
func Marshal(m Message) ([]byte, error) {
	body, err := encMode.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("proto: encode %s: %w", m.Kind(), err)
	}
	b := make([]byte, 0, 1+binary.MaxVarintLen64+len(body))
	b = append(b, byte(m.Kind()))
	b = binary.AppendUvarint(b, uint64(len(body)))
	return append(b, body...), nil
}

// WriteMsg writes m to w as one frame, with a single Write call.
func WriteMsg(w io.Writer, m Message) error {
	b, err := Marshal(m)
	if err != nil {
		return err
	}
	_, err = w.Write(b)
	return err
}

// ByteReader is what ReadMsg reads from: a reader that can also return single
// bytes, so that no bytes past the frame are consumed.
type ByteReader interface {
	io.Reader
	io.ByteReader
}

// ByteAtATime makes r a ByteReader that reads one byte at a time: ReadMsg
// then consumes nothing past its frame, for a stream on which bytes that
// are not frames follow it (a re-attached session's resume frames).
func ByteAtATime(r io.Reader) ByteReader { return byteAtATime{r} }

type byteAtATime struct{ io.Reader }

func (r byteAtATime) ReadByte() (byte, error) {
	var b [1]byte
	if _, err := io.ReadFull(r.Reader, b[:]); err != nil {
		return 0, err
	}
	return b[0], nil
}

// ReadMsg reads one frame of at most max body bytes and decodes it.
// It consumes exactly the frame's bytes from r.
func ReadMsg(r ByteReader, max int) (Message, error) {
	kb, err := r.ReadByte()
	if err != nil {
		return nil, err
	}
	k := Kind(kb)
	m := newMessage(k)
	if m == nil {
		return nil, fmt.Errorf("proto: unknown frame kind %d", kb)
	}
	n, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, fmt.Errorf("proto: read %s length: %w", k, unexpectedEOF(err))
	}
	if n > uint64(max) {
		return nil, fmt.Errorf("%w: %s of %d bytes, limit %d", ErrFrameTooLarge, k, n, max)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("proto: read %s body: %w", k, unexpectedEOF(err))
	}
	if err := decMode.Unmarshal(body, m); err != nil {
		return nil, fmt.Errorf("proto: decode %s: %w", k, err)
	}
	return m, nil
}

// Unmarshal decodes one whole frame from b; trailing bytes are an error.
func Unmarshal(b []byte, max int) (Message, error) {
	r := bytes.NewReader(b)
	m, err := ReadMsg(r, max)
	if err != nil {
		return nil, err
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("proto: %d trailing bytes after %s", r.Len(), m.Kind())
	}
	return m, nil
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// ReadHeader reads the StreamHeader that starts a fleet-opened stream.
func ReadHeader(r ByteReader) (*StreamHeader, error) {
	m, err := ReadMsg(r, MaxHeaderFrame)
	if err != nil {
		return nil, err
	}
	h, ok := m.(*StreamHeader)
	if !ok {
		return nil, fmt.Errorf("proto: stream starts with %s, want %s", m.Kind(), KindStreamHeader)
	}
	return h, nil
}

// ReadAccept reads the agent's StreamAccept and turns a refusal into *Error.
func ReadAccept(r ByteReader) error {
	m, err := ReadMsg(r, MaxHeaderFrame)
	if err != nil {
		return err
	}
	a, ok := m.(*StreamAccept)
	if !ok {
		return fmt.Errorf("proto: stream answered with %s, want %s", m.Kind(), KindStreamAccept)
	}
	if a.Code != CodeOK {
		return &Error{Code: a.Code, Message: a.Message}
	}
	return nil
}

// NewReader wraps r so ReadMsg can read from it. Bytes past a frame stay
// buffered in the returned reader, so use it for everything read afterwards.
func NewReader(r io.Reader) *bufio.Reader { return bufio.NewReaderSize(r, 4096) }
