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
// be slow to take it). An admin's release upload (fleetctl releases add:
// tens of megabytes, maybe over a slow link) keeps the idle timeout but
// not the total one.
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

// liftBodyTotal lifts the total deadline from a request whose body may be
// large (an authenticated admin's release upload), keeping the idle one: the
// body must keep arriving, however long it takes.
func liftBodyTotal(r *http.Request) {
	if b, ok := r.Body.(*deadlineBody); ok {
		b.liftTotal()
	}
}

// deadlineBody moves the connection's read deadline along as the body
// arrives, and lifts it once the body is read (a deadline left on the
// connection would cancel the request while its handler works on).
type deadlineBody struct {
	body io.ReadCloser
	rc   *http.ResponseController
	idle time.Duration

	mu       sync.Mutex // guards end and released
	end      time.Time  // zero: no total deadline (liftTotal)
	released bool
}

// next is the read deadline after a read at now; b.mu must be held once b
// is shared.
func (b *deadlineBody) next(now time.Time) time.Time {
	d := now.Add(b.idle)
	if !b.end.IsZero() && d.After(b.end) {
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

func (b *deadlineBody) liftTotal() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.released {
		b.end = time.Time{}
		b.rc.SetReadDeadline(b.next(time.Now()))
	}
}

func (b *deadlineBody) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.released {
		b.released = true
		b.rc.SetReadDeadline(time.Time{})
	}
}
