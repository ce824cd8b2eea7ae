package userframe

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	big := bytes.Repeat([]byte("x"), MaxData+10)
	w.Write([]byte("hello "))
	w.Write(big)
	w.End("locked (lock 1): go away")
	w.Write([]byte("after"))
	w.End(strings.Repeat("é", MaxReason)) // cut at a rune boundary

	var ends []string
	var atEnd []int // data bytes read when each end frame was met
	r := NewReader(&buf)
	var got bytes.Buffer
	r.OnEnd = func(reason string) {
		ends = append(ends, reason)
		atEnd = append(atEnd, got.Len())
	}
	p := make([]byte, 1000)
	for {
		n, err := r.Read(p)
		got.Write(p[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
	}
	want := "hello " + string(big) + "after"
	if got.String() != want {
		t.Errorf("data %d bytes, want %d", got.Len(), len(want))
	}
	if len(ends) != 2 || ends[0] != "locked (lock 1): go away" || len(ends[1]) > MaxReason || !strings.HasPrefix(ends[1], "éé") {
		t.Fatalf("ends %q", ends)
	}
	if atEnd[0] != len("hello ")+len(big) {
		t.Errorf("the end frame was met after %d data bytes, want %d: it must come in order", atEnd[0], len("hello ")+len(big))
	}
	if r.Ended() != ends[1] {
		t.Errorf("Ended = %q", r.Ended())
	}
}

func TestBadFrames(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"unknown kind", []byte{9, 1, 'a'}, ErrFrame},
		{"empty data", []byte{KindData, 0}, ErrFrame},
		{"oversized data", []byte{KindData, 0x81, 0x80, 0x04}, ErrFrame},
		{"oversized reason", []byte{KindEnd, 0x81, 0x08}, ErrFrame},
		{"reason not utf-8", []byte{KindEnd, 1, 0xff}, ErrFrame},
		{"cut length", []byte{KindData}, io.ErrUnexpectedEOF},
		{"cut data", []byte{KindData, 5, 'a', 'b'}, io.ErrUnexpectedEOF},
		{"cut reason", []byte{KindEnd, 5, 'a'}, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := io.ReadAll(NewReader(bytes.NewReader(tt.in)))
			if !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

// FuzzReader feeds arbitrary bytes to the reader: errors, never a panic,
// and never more data than the input held.
func FuzzReader(f *testing.F) {
	var buf bytes.Buffer
	w := NewWriter(&buf)
	w.Write([]byte("some data"))
	w.End("a reason")
	w.Write([]byte("more"))
	f.Add(buf.Bytes())
	f.Add([]byte{KindEnd, 0})
	f.Add([]byte{KindData, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in))
		r.OnEnd = func(reason string) {
			if len(reason) > MaxReason {
				t.Fatalf("reason of %d bytes", len(reason))
			}
		}
		out, _ := io.ReadAll(r)
		if len(out) > len(in) {
			t.Fatalf("read %d data bytes from %d input bytes", len(out), len(in))
		}
	})
}
