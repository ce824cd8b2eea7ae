// Package logtest gives tests a *slog.Logger that writes to the test's
// log, and a recorder that also keeps the lines for assertions.
//
// Lines logged after the test has ended (by a goroutine that outlived it)
// are dropped rather than making testing panic. Only tests import it.
package logtest

import (
	"bytes"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// Logger returns a logger that writes text lines at debug level and above
// to t's log.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(Writer(t), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Writer returns a writer that logs each write to t, without its trailing
// newline.
func Writer(t testing.TB) io.Writer {
	return NewRecorder(t)
}

// Recorder is a writer that logs each write to a test and keeps
// everything written.
type Recorder struct {
	t testing.TB

	mu   sync.Mutex // guards buf and done
	buf  bytes.Buffer
	done bool // the test has ended: t.Log would panic
}

// NewRecorder returns a Recorder logging to t.
func NewRecorder(t testing.TB) *Recorder {
	r := &Recorder{t: t}
	t.Cleanup(func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.done = true
	})
	return r
}

// Write logs p to the test and keeps it.
func (r *Recorder) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.buf.Write(p)
	if !r.done {
		r.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

// String returns everything written so far.
func (r *Recorder) String() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.buf.String()
}

// Logger returns a logger writing text lines at debug level and above to
// r.
func (r *Recorder) Logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(r, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
