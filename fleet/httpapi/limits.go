package httpapi

import (
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"time"
)

// Request body limits. The HTTPS port cannot have one server-wide read
// timeout: brokered SSH connections (GET /v1/connect, upgraded) and
// Kubernetes watches and exec sessions live for hours. So every request
// body gets deadlines of its own instead: it must keep arriving (no pause
// longer than the idle timeout) and be complete within the total timeout.
// A request without a body gets none, and an authenticated Kubernetes
// request is released from them (its body streams to the device, which may
// be slow to take it).
const (
	// DefaultBodyIdleTimeout is the longest pause allowed inside a
	// request body.
	DefaultBodyIdleTimeout = 10 * time.Second
	// DefaultBodyTimeout is the longest a request body may take in all.
	DefaultBodyTimeout = time.Minute
)

// errBodyTimeout is what a body that stalls or takes too long reads as.
var errBodyTimeout = errors.New("the request body did not arrive in time")

func (s *Server) bodyIdle() time.Duration {
	if s.BodyIdleTimeout > 0 {
		return s.BodyIdleTimeout
	}
	return DefaultBodyIdleTimeout
}

func (s *Server) bodyTotal() time.Duration {
	if s.BodyTimeout > 0 {
		return s.BodyTimeout
	}
	return DefaultBodyTimeout
}

// limitBodies puts read deadlines on every request body (see the consts
// above).
func (s *Server) limitBodies(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
			h.ServeHTTP(w, r)
			return
		}
		now := time.Now() // deadlines are on the wall clock, not s.Now
		b := &deadlineBody{body: r.Body, rc: http.NewResponseController(w), idle: s.bodyIdle(), end: now.Add(s.bodyTotal())}
		if err := b.rc.SetReadDeadline(b.next(now)); err != nil {
			h.ServeHTTP(w, r) // not a real connection (a test recorder)
			return
		}
		r.Body = b
		h.ServeHTTP(w, r)
	})
}

// releaseBody lifts the body deadlines from a request that may stream
// (an authenticated Kubernetes request).
func releaseBody(r *http.Request) {
	if b, ok := r.Body.(*deadlineBody); ok {
		b.release()
	}
}

// deadlineBody moves the connection's read deadline along as the body
// arrives, and lifts it once the body is read (a deadline left on the
// connection would cancel the request while its handler works on).
type deadlineBody struct {
	body io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration
	end  time.Time

	mu       sync.Mutex // guards released
	released bool
}

func (b *deadlineBody) next(now time.Time) time.Time {
	d := now.Add(b.idle)
	if d.After(b.end) {
		d = b.end
	}
	return d
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.body.Read(p)
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case b.released:
	case err == io.EOF:
		b.released = true
		b.rc.SetReadDeadline(time.Time{})
	case errors.Is(err, os.ErrDeadlineExceeded):
		return n, errBodyTimeout
	case n > 0:
		b.rc.SetReadDeadline(b.next(time.Now()))
	}
	return n, err
}

func (b *deadlineBody) Close() error { return b.body.Close() }

func (b *deadlineBody) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.released {
		b.released = true
		b.rc.SetReadDeadline(time.Time{})
	}
}
