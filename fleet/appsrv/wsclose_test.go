package appsrv

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// frame is a server's frame (unmasked, or masked with a zero key) of
// opcode with a payload of n bytes.
func frame(opcode byte, n int, masked bool) []byte {
	f := []byte{0x80 | opcode}
	mask := byte(0)
	if masked {
		mask = 0x80
	}
	switch {
	case n < 126:
		f = append(f, mask|byte(n))
	case n < 1<<16:
		f = append(f, mask|126)
		f = binary.BigEndian.AppendUint16(f, uint16(n))
	default:
		f = append(f, mask|127)
		f = binary.BigEndian.AppendUint64(f, uint64(n))
	}
	if masked {
		f = append(f, 0, 0, 0, 0)
	}
	return append(f, bytes.Repeat([]byte{'x'}, n)...)
}

func TestFrameCursor(t *testing.T) {
	tests := []struct {
		name   string
		stream []byte
		// between and closed are the cursor's state after the stream.
		between, closed bool
	}{
		{"nothing", nil, true, false},
		{"a short frame", frame(0x1, 5, false), true, false},
		{"an empty frame", frame(0x2, 0, false), true, false},
		{"16-bit length", frame(0x2, 300, false), true, false},
		{"64-bit length", frame(0x2, 70000, false), true, false},
		{"masked", frame(0x1, 7, true), true, false},
		{"two frames", append(frame(0x1, 3, false), frame(0x9, 0, false)...), true, false},
		{"half a header", frame(0x2, 300, false)[:3], false, false},
		{"inside a payload", frame(0x1, 10, false)[:7], false, false},
		{"the app's close", append(frame(0x1, 3, false), frame(0x8, 2, false)...), true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, split := range []int{1, 2, 5, len(tt.stream) + 1} {
				var c frameCursor
				for p := tt.stream; len(p) > 0; p = p[min(split, len(p)):] {
					c.feed(p[:min(split, len(p))])
				}
				if c.between() != tt.between || c.close != tt.closed {
					t.Errorf("fed %d bytes at a time: between %v, close %v; want %v, %v", split, c.between(), c.close, tt.between, tt.closed)
				}
			}
		})
	}
}

func TestCloseFrame(t *testing.T) {
	long := strings.Repeat("é", 100) // 200 bytes
	f := closeFrame(statusPolicyViolation, long)
	if len(f) > 2+125 || f[0] != 0x88 || int(f[1]) != len(f)-2 {
		t.Fatalf("close frame header % x, length %d", f[:2], len(f))
	}
	if got := binary.BigEndian.Uint16(f[2:4]); got != statusPolicyViolation {
		t.Errorf("status %d", got)
	}
	if r := string(f[4:]); !strings.HasPrefix(long, r) || len(r) != 122 {
		t.Errorf("reason cut to %d bytes (%q), want 122, at a character's boundary", len(r), r)
	}
}

// TestWSConnSaysWhy: a websocket client (github.com/coder/websocket)
// behind a wsConn gets the fleet's close frame with the reason when the
// fleet ended the session between frames, and a bare cut otherwise.
func TestWSConnSaysWhy(t *testing.T) {
	tests := []struct {
		name string
		why  string
		tail []byte // written after the first frame, before the close
		want string // the close reason the client reads; "" for none
	}{
		{"the fleet ended the session", "locked (lock 1 on user \"alice\"): stolen", nil, "locked (lock 1 on user \"alice\"): stolen"},
		{"the session is live", "", nil, ""},
		{"cut inside a frame", "locked", frame(0x1, 10, false)[:5], ""},
		{"the app closed first", "locked", frame(0x8, 0, false), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				raw, brw, err := http.NewResponseController(w).Hijack()
				if err != nil {
					t.Error(err)
					return
				}
				sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
				fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: %s\r\n\r\n",
					base64.StdEncoding.EncodeToString(sum[:]))
				brw.Flush()
				c := &wsConn{Conn: raw, why: func() string { return tt.why }}
				c.Write(frame(0x1, 2, false))
				c.Write(tt.tail)
				c.Close()
			}))
			defer srv.Close()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			ws, _, err := websocket.Dial(ctx, "ws://"+strings.TrimPrefix(srv.URL, "http://"), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer ws.CloseNow()
			if _, got, err := ws.Read(ctx); err != nil || string(got) != "xx" {
				t.Fatalf("first message %q, %v", got, err)
			}
			_, _, err = ws.Read(ctx)
			var ce websocket.CloseError
			closed := errors.As(err, &ce)
			switch {
			case tt.want != "" && (!closed || ce.Code != statusPolicyViolation || ce.Reason != tt.want):
				t.Errorf("the client read %v, want a close %d %q", err, statusPolicyViolation, tt.want)
			case tt.want == "" && closed && ce.Code == statusPolicyViolation:
				t.Errorf("the client read the fleet's close %v, want none", err)
			}
		})
	}
}

// FuzzFrameCursor: the cursor's state after a stream does not depend on
// how the stream was cut into writes.
func FuzzFrameCursor(f *testing.F) {
	f.Add(frame(0x1, 5, false), 3)
	f.Add(append(frame(0x2, 300, true), frame(0x8, 2, false)...), 4)
	f.Add(frame(0x2, 70000, false)[:20], 9)
	f.Add([]byte{0x81, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1}, 2)
	f.Fuzz(func(t *testing.T, stream []byte, split int) {
		var whole, parts frameCursor
		whole.feed(stream)
		if split < 0 {
			split = -split
		}
		split = split%(len(stream)+1) + 1
		for p := stream; len(p) > 0; p = p[min(split, len(p)):] {
			parts.feed(p[:min(split, len(p))])
		}
		if whole != parts {
			t.Fatalf("whole %+v, in writes of %d %+v", whole, split, parts)
		}
	})
}
