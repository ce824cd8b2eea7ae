// Package asciicast writes and reads terminal session recordings in the
// asciicast v2 format (a JSON header line, then one JSON array per event:
// [seconds, "o", data] for output, [seconds, "r", "COLSxROWS"] for a
// resize, [seconds, "i", data] for input), so that common players read
// them. The agent records sessions with Writer; the fleet and tsh read them
// with Reader.
//
// Data is text: asciicast stores each event's data as a JSON (UTF-8) string.
// Writer never splits a UTF-8 sequence across events, so output that is
// valid UTF-8 plays back byte for byte; bytes that are not valid UTF-8 are
// stored as U+FFFD, as a terminal would show them.
//
// It imports only the standard library; firmware/ and fleet/ both import it.
package asciicast

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Event types.
const (
	Output = "o"
	Input  = "i"
	Resize = "r"
	Marker = "m"
)

// Header is the first line of a recording.
type Header struct {
	Version   int               `json:"version"`
	Width     int               `json:"width"`
	Height    int               `json:"height"`
	Timestamp int64             `json:"timestamp,omitempty"` // Unix seconds
	Command   string            `json:"command,omitempty"`
	Title     string            `json:"title,omitempty"`
	Env       map[string]string `json:"env,omitempty"`
}

// Writer appends events to a recording. It is safe for concurrent use.
type Writer struct {
	now   func() time.Time
	start time.Time

	mu      sync.Mutex // guards w, partial, err, outN
	w       io.Writer
	partial []byte // an incomplete UTF-8 sequence held for the next Output
	err     error
	outN    int64
}

// NewWriter writes h (Version 2 is set) to w and returns a Writer whose
// event times count from now. A nil now means time.Now.
func NewWriter(w io.Writer, h Header, now func() time.Time) (*Writer, error) {
	if now == nil {
		now = time.Now
	}
	h.Version = 2
	start := now()
	if h.Timestamp == 0 {
		h.Timestamp = start.Unix()
	}
	b, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("asciicast: header: %w", err)
	}
	if _, err := w.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("asciicast: write header: %w", err)
	}
	return &Writer{w: w, now: now, start: start}, nil
}

// Output records bytes the terminal showed. It never fails: the first
// write error is kept for Err, and later events are not written.
func (w *Writer) Output(p []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.outN += int64(len(p))
	data := p
	if len(w.partial) > 0 {
		data = append(w.partial, p...)
		w.partial = nil
	}
	// Hold back an incomplete sequence at the end for the next write.
	cut := len(data)
	for i := len(data) - 1; i >= 0 && i >= len(data)-utf8.UTFMax; i-- {
		if utf8.RuneStart(data[i]) {
			if !utf8.FullRune(data[i:]) {
				cut = i
			}
			break
		}
	}
	if cut < len(data) {
		w.partial = append([]byte(nil), data[cut:]...)
		data = data[:cut]
	}
	if len(data) > 0 {
		w.eventLocked(Output, string(data))
	}
}

// Input records bytes the user typed.
func (w *Writer) Input(p []byte) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.eventLocked(Input, string(p))
}

// Resize records a new terminal size.
func (w *Writer) Resize(cols, rows int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.flushLocked()
	w.eventLocked(Resize, fmt.Sprintf("%dx%d", cols, rows))
}

// Flush writes out any held-back incomplete UTF-8 sequence (as U+FFFD);
// call it when the output ends.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.flushLocked()
	return w.err
}

// OutputBytes is how many output bytes were recorded.
func (w *Writer) OutputBytes() int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.outN
}

// Err is the first write error, if any.
func (w *Writer) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func (w *Writer) flushLocked() {
	if len(w.partial) > 0 {
		p := w.partial
		w.partial = nil
		w.eventLocked(Output, string(p))
	}
}

func (w *Writer) eventLocked(typ, data string) {
	if w.err != nil {
		return
	}
	t := w.now().Sub(w.start).Seconds()
	if t < 0 {
		t = 0
	}
	line := AppendEvent(nil, Event{Time: t, Type: typ, Data: data})
	if _, err := w.w.Write(line); err != nil {
		w.err = fmt.Errorf("asciicast: write event: %w", err)
	}
}

// Event is one event of a recording.
type Event struct {
	Time float64 // seconds since the start
	Type string  // Output, Input, Resize, Marker or another type
	Data string
}

// AppendEvent appends e's line (with its newline) to b.
func AppendEvent(b []byte, e Event) []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	b = append(b, '[')
	b = strconv.AppendFloat(b, e.Time, 'f', 6, 64)
	b = append(b, ", "...)
	enc.Encode(e.Type)
	b = append(b, bytes.TrimSpace(buf.Bytes())...)
	b = append(b, ", "...)
	buf.Reset()
	enc.Encode(e.Data)
	b = append(b, bytes.TrimSuffix(buf.Bytes(), []byte("\n"))...)
	return append(b, "]\n"...)
}

// MaxLine bounds one line of a recording a Reader accepts.
const MaxLine = 1 << 20

// Reader reads a recording.
type Reader struct {
	Header Header
	sc     *bufio.Scanner
	line   int
	last   float64
}

// NewReader reads the header of the recording in r.
func NewReader(r io.Reader) (*Reader, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), MaxLine)
	rd := &Reader{sc: sc}
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("asciicast: read header: %w", err)
		}
		return nil, errors.New("asciicast: empty recording")
	}
	rd.line = 1
	dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
	if err := dec.Decode(&rd.Header); err != nil {
		return nil, fmt.Errorf("asciicast: header: %w", err)
	}
	if dec.More() {
		return nil, errors.New("asciicast: header: trailing data")
	}
	if rd.Header.Version != 2 {
		return nil, fmt.Errorf("asciicast: version %d, want 2", rd.Header.Version)
	}
	if rd.Header.Width < 0 || rd.Header.Height < 0 {
		return nil, errors.New("asciicast: header: negative size")
	}
	return rd, nil
}

// Next returns the next event, or io.EOF after the last one. Events must
// have finite, non-negative, non-decreasing times. Blank lines are skipped.
func (r *Reader) Next() (Event, error) {
	for r.sc.Scan() {
		r.line++
		b := bytes.TrimSpace(r.sc.Bytes())
		if len(b) == 0 {
			continue
		}
		e, err := parseEvent(b)
		if err != nil {
			return Event{}, fmt.Errorf("asciicast: line %d: %w", r.line, err)
		}
		if e.Time < r.last {
			return Event{}, fmt.Errorf("asciicast: line %d: time %v goes back from %v", r.line, e.Time, r.last)
		}
		r.last = e.Time
		return e, nil
	}
	if err := r.sc.Err(); err != nil {
		return Event{}, fmt.Errorf("asciicast: line %d: %w", r.line+1, err)
	}
	return Event{}, io.EOF
}

func parseEvent(b []byte) (Event, error) {
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return Event{}, err
	}
	if len(raw) != 3 {
		return Event{}, fmt.Errorf("event has %d elements, want 3", len(raw))
	}
	var e Event
	if err := json.Unmarshal(raw[0], &e.Time); err != nil {
		return Event{}, fmt.Errorf("event time: %w", err)
	}
	if math.IsNaN(e.Time) || math.IsInf(e.Time, 0) || e.Time < 0 {
		return Event{}, fmt.Errorf("bad event time %v", e.Time)
	}
	if err := json.Unmarshal(raw[1], &e.Type); err != nil {
		return Event{}, fmt.Errorf("event type: %w", err)
	}
	if err := json.Unmarshal(raw[2], &e.Data); err != nil {
		return Event{}, fmt.Errorf("event data: %w", err)
	}
	return e, nil
}

// ParseSize reads a resize event's "COLSxROWS".
func ParseSize(s string) (cols, rows int, err error) {
	c, r, ok := strings.Cut(s, "x")
	if ok {
		cols, err = strconv.Atoi(c)
		if err == nil {
			rows, err = strconv.Atoi(r)
		}
	}
	if !ok || err != nil || cols < 0 || rows < 0 || cols > 0xffff || rows > 0xffff {
		return 0, 0, fmt.Errorf("asciicast: bad size %q", s)
	}
	return cols, rows, nil
}

// Summary is what ReadAll learned of a recording.
type Summary struct {
	Header   Header
	Events   int
	Duration time.Duration // the last event's time
	Output   []byte        // every output event's data, in order
	Input    []byte        // every input event's data, in order
}

// ReadAll reads a whole recording and concatenates its output, and its
// input.
func ReadAll(r io.Reader) (*Summary, error) {
	rd, err := NewReader(r)
	if err != nil {
		return nil, err
	}
	s := &Summary{Header: rd.Header}
	for {
		e, err := rd.Next()
		if err == io.EOF {
			return s, nil
		}
		if err != nil {
			return nil, err
		}
		s.Events++
		s.Duration = time.Duration(e.Time * float64(time.Second))
		switch e.Type {
		case Output:
			s.Output = append(s.Output, e.Data...)
		case Input:
			s.Input = append(s.Input, e.Data...)
		}
	}
}
