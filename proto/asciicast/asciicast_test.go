package asciicast

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"time"
)

// fakeClock advances one step per call.
type fakeClock struct {
	t    time.Time
	step time.Duration
}

func (c *fakeClock) now() time.Time {
	c.t = c.t.Add(c.step)
	return c.t
}

func TestWriterRoundTrip(t *testing.T) {
	tests := []struct {
		name   string
		writes []string
		want   string
	}{
		{"ascii", []string{"hello ", "world\r\n"}, "hello world\r\n"},
		{"split multibyte", []string{"caf\xc3", "\xa9 \xe2\x82", "\xac!"}, "café €!"},
		{"emoji split every byte", []string{"\xf0", "\x9f", "\x98", "\x80"}, "😀"},
		{"escapes and quotes", []string{"\x1b[1m\"<b>\"\\\x1b[0m\t\x00"}, "\x1b[1m\"<b>\"\\\x1b[0m\t\x00"},
		{"invalid byte", []string{"a\xffb"}, "a\uFFFDb"},
		{"truncated at the end", []string{"x\xe2\x82"}, "x\uFFFD\uFFFD"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			clk := &fakeClock{t: time.Unix(1700000000, 0), step: 250 * time.Millisecond}
			w, err := NewWriter(&buf, Header{Width: 80, Height: 24, Env: map[string]string{"TERM": "xterm"}}, clk.now)
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range tt.writes {
				w.Output([]byte(s))
			}
			w.Resize(100, 40)
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			s, err := ReadAll(bytes.NewReader(buf.Bytes()))
			if err != nil {
				t.Fatalf("read back: %v\n%s", err, buf.String())
			}
			if got := string(s.Output); got != tt.want {
				t.Errorf("output = %q, want %q", got, tt.want)
			}
			if s.Header.Width != 80 || s.Header.Height != 24 || s.Header.Version != 2 || s.Header.Env["TERM"] != "xterm" {
				t.Errorf("header = %+v", s.Header)
			}
			if s.Duration <= 0 {
				t.Errorf("duration = %v, want > 0", s.Duration)
			}
			if !strings.Contains(buf.String(), `"r", "100x40"]`) {
				t.Errorf("no resize event in:\n%s", buf.String())
			}
		})
	}
}

func TestReaderErrors(t *testing.T) {
	const hdr = `{"version": 2, "width": 80, "height": 24}` + "\n"
	tests := []struct {
		name, in, want string
	}{
		{"empty", "", "empty"},
		{"not json", "hello\n", "header"},
		{"version 1", `{"version": 1}` + "\n", "version"},
		{"bad event", hdr + `[1, "o"]` + "\n", "elements"},
		{"negative time", hdr + `[-1, "o", "x"]` + "\n", "time"},
		{"time goes back", hdr + `[2, "o", "x"]` + "\n" + `[1, "o", "y"]` + "\n", "goes back"},
		{"data not a string", hdr + `[1, "o", 5]` + "\n", "data"},
		{"long line", hdr + `[1, "o", "` + strings.Repeat("a", MaxLine) + `"]` + "\n", "too long"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ReadAll(strings.NewReader(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := []struct {
		in         string
		cols, rows int
		ok         bool
	}{
		{"80x24", 80, 24, true},
		{"0x0", 0, 0, true},
		{"80", 0, 0, false},
		{"x24", 0, 0, false},
		{"-1x5", 0, 0, false},
		{"99999x5", 0, 0, false},
	}
	for _, tt := range tests {
		c, r, err := ParseSize(tt.in)
		if (err == nil) != tt.ok || c != tt.cols || r != tt.rows {
			t.Errorf("ParseSize(%q) = %d, %d, %v", tt.in, c, r, err)
		}
	}
}

type failWriter struct{ n int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.n == 0 {
		return 0, errors.New("disk full")
	}
	f.n--
	return len(p), nil
}

func TestWriterKeepsFirstError(t *testing.T) {
	w, err := NewWriter(&failWriter{n: 1}, Header{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	w.Output([]byte("a"))
	w.Output([]byte("b"))
	if err := w.Flush(); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("Flush = %v, want the disk full error", err)
	}
	if w.OutputBytes() != 2 {
		t.Errorf("OutputBytes = %d, want 2", w.OutputBytes())
	}
}

func FuzzReader(f *testing.F) {
	var buf bytes.Buffer
	w, _ := NewWriter(&buf, Header{Width: 80, Height: 24}, nil)
	w.Output([]byte("hi\r\n"))
	w.Resize(10, 5)
	f.Add(buf.Bytes())
	f.Add([]byte(`{"version":2}` + "\n" + `[0.5,"o","x"]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := NewReader(bytes.NewReader(b))
		if err != nil {
			return
		}
		for range 10000 {
			e, err := r.Next()
			if err != nil {
				if err != io.EOF && e != (Event{}) {
					t.Fatalf("error %v with a non-zero event", err)
				}
				return
			}
			// Whatever reads must write back and read again the same.
			line := AppendEvent(nil, e)
			e2, err := parseEvent(bytes.TrimSpace(line))
			if err != nil || e2.Type != e.Type || e2.Data != strings.ToValidUTF8(e.Data, "\uFFFD") {
				t.Fatalf("round trip of %+v: %+v, %v", e, e2, err)
			}
		}
	})
}
