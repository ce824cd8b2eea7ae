package kubewire

import (
	"bytes"
	"strings"
	"testing"
)

// messages follows b (fed in pieces of size step) and returns the data
// messages it carried, and whether it ended on a boundary.
func messages(t *testing.T, b []byte, step int) ([]string, bool, error) {
	t.Helper()
	var msgs []string
	var cur []byte
	ws := &wsStream{
		data: func(start bool, p []byte) {
			if start {
				cur = cur[:0]
			}
			cur = append(cur, p...)
		},
		end: func() { msgs = append(msgs, string(cur)) },
	}
	var err error
	for len(b) > 0 && err == nil {
		n := min(step, len(b))
		err = ws.feed(b[:n])
		b = b[n:]
	}
	return msgs, ws.atBoundary(), err
}

// testMask masks the client's frames in these tests.
var testMask = &[4]byte{0x12, 0x34, 0x56, 0x78}

// wsFrame and clientFrame build a server's and a client's frames.
func wsFrame(op byte, payload []byte) []byte     { return Frame(op, payload, nil) }
func clientFrame(op byte, payload []byte) []byte { return Frame(op, payload, testMask) }

func frameWith(fin bool, op byte, payload []byte, masked bool) []byte {
	var b []byte
	if masked {
		b = clientFrame(op, payload)
	} else {
		b = wsFrame(op, payload)
	}
	if !fin {
		b[0] &^= 0x80
	}
	return b
}

func TestWSStream(t *testing.T) {
	long := strings.Repeat("x", 70000)
	mid := strings.Repeat("y", 300)
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name     string
		in       []byte
		want     []string
		boundary bool
		wantErr  string
	}{
		{"one frame", wsFrame(wsBinary, []byte("\x01hello")), []string{"\x01hello"}, true, ""},
		{"masked", clientFrame(wsBinary, []byte("\x00typed")), []string{"\x00typed"}, true, ""},
		{"16-bit length", clientFrame(wsBinary, []byte(mid)), []string{mid}, true, ""},
		{"64-bit length", wsFrame(wsBinary, []byte(long)), []string{long}, true, ""},
		{"empty message", wsFrame(wsText, nil), []string{""}, true, ""},
		{"fragments and a ping between", cat(frameWith(false, wsBinary, []byte("\x01ab"), true), clientFrame(0x9, []byte("ping")),
			frameWith(true, wsContinuation, []byte("cd"), true)), []string{"\x01abcd"}, true, ""},
		{"two messages", cat(wsFrame(wsBinary, []byte("a")), wsFrame(wsClose, []byte{3, 0xe8}), wsFrame(wsBinary, []byte("b"))), []string{"a", "b"}, true, ""},
		{"mid-frame", wsFrame(wsBinary, []byte("abc"))[:4], nil, false, ""},
		{"mid-message", frameWith(false, wsBinary, []byte("a"), false), nil, false, ""},
		{"reserved bits", []byte{0xc2, 0x00}, nil, false, "reserved bits"},
		{"reserved opcode", []byte{0x83, 0x00}, nil, false, "reserved opcode"},
		{"stray continuation", []byte{0x80, 0x00}, nil, false, "continuation frame outside"},
		{"new message inside one", cat(frameWith(false, wsBinary, []byte("a"), false), wsFrame(wsBinary, []byte("b"))), nil, false, "before the last one ended"},
		{"long control frame", append([]byte{0x89, 126, 0, 200}, make([]byte, 200)...), nil, false, "control frame"},
		{"huge length", []byte{0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0}, nil, false, "top bit"},
	}
	for _, tt := range tests {
		for _, step := range []int{1, 3, 1 << 20} {
			got, boundary, err := messages(t, tt.in, step)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("%s (step %d): got %v, want an error with %q", tt.name, step, err, tt.wantErr)
				}
				continue
			}
			if err != nil || strings.Join(got, "|") != strings.Join(tt.want, "|") || boundary != tt.boundary {
				t.Errorf("%s (step %d): got %d messages, boundary %v, err %v; want %d, %v", tt.name, step, len(got), boundary, err, len(tt.want), tt.boundary)
			}
		}
	}
}

func TestChannelTap(t *testing.T) {
	var out []string
	var size [2]int
	tap := NewChannelTap(func(ch int, p []byte) { out = append(out, string(rune('0'+ch))+":"+string(p)) },
		func(c, r int) { size = [2]int{c, r} })
	in := bytes.Join([][]byte{
		clientFrame(wsBinary, []byte("\x00ls\r")),
		clientFrame(wsBinary, append([]byte{ChResize}, `{"Width":120,"Height":50}`...)),
		frameWith(false, wsBinary, []byte{ChStdin}, true), // the channel byte alone, data in the next frame
		frameWith(true, wsContinuation, []byte("pwd\r"), true),
		clientFrame(wsBinary, append([]byte{ChResize}, `{"Width":-1}`...)), // ignored
	}, nil)
	if err := tap.Feed(in); err != nil {
		t.Fatal(err)
	}
	if strings.Join(out, "|") != "0:ls\r|0:pwd\r" || size != [2]int{120, 50} {
		t.Errorf("got %q and size %v, want the stdin pieces and 120x50", out, size)
	}
}

func FuzzWSStream(f *testing.F) {
	f.Add(wsFrame(wsBinary, []byte("\x01hello")))
	f.Add(clientFrame(wsBinary, []byte(strings.Repeat("z", 200))))
	f.Add(bytes.Join([][]byte{frameWith(false, wsBinary, []byte("\x04{"), true), clientFrame(0x9, nil),
		frameWith(true, wsContinuation, []byte(`"Width":1,"Height":2}`), true)}, nil))
	f.Add([]byte{0x82, 127, 0, 0, 0, 0, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		total := 0
		tap := NewChannelTap(func(ch int, p []byte) { total += len(p) }, func(c, r int) {
			if c <= 0 || r <= 0 {
				t.Fatalf("resize to %dx%d", c, r)
			}
		})
		tap.Feed(b)
		if total > len(b) {
			t.Fatalf("%d payload bytes out of %d input bytes", total, len(b))
		}
	})
}
