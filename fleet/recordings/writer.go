package recordings

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// MaxFleetRecording bounds a recording the fleet writes itself; past it
// writes fail (the session goes on, unrecorded from there, and the writer
// says so).
const MaxFleetRecording = 256 << 20

// ErrTooLarge is returned by writes past MaxFleetRecording.
var ErrTooLarge = errors.New("recordings: the recording reached its size cap")

// Create starts a recording that the fleet writes itself (the terminal of
// a Kubernetes session, which passes through the fleet): recording id of
// a session on deviceID (empty for the fleet's own cluster), described by
// meta. Writes append to it as they come (the recording is listed as
// partial meanwhile); Close syncs it and completes it.
func (s *Store) Create(deviceID, id string, meta proto.RecordingMeta) (*Writer, error) {
	if !validID.MatchString(id) {
		return nil, fmt.Errorf("recordings: create: bad id %q", id)
	}
	now := s.cfg.Now().UTC()
	r := &api.Recording{ID: id, Session: meta.Session, Device: deviceID, User: meta.User, Login: meta.Login,
		Cluster: meta.Cluster, Kind: meta.Kind, Command: meta.Command, Start: now, Updated: now}
	if meta.Start != 0 {
		r.Start = time.UnixMilli(meta.Start).UTC()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.loadMeta(id); !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("recordings: create %s: it exists", id)
	}
	f, err := os.OpenFile(s.path(id, ".cast.part"), os.O_WRONLY|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("recordings: create %s: %w", id, err)
	}
	if err := s.saveMeta(r); err != nil {
		f.Close()
		os.Remove(s.path(id, ".cast.part"))
		return nil, fmt.Errorf("recordings: create %s: %w", id, err)
	}
	if s.writing == nil {
		s.writing = map[string]bool{}
	}
	s.writing[id] = true
	return &Writer{s: s, r: r, f: f}, nil
}

// Writer appends to a recording the fleet writes. Its methods are safe for
// concurrent use.
type Writer struct {
	s *Store
	r *api.Recording

	mu     sync.Mutex // guards f, n and closed
	f      *os.File
	n      int64
	closed bool
}

// Write appends p; past MaxFleetRecording it fails with ErrTooLarge.
func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, os.ErrClosed
	}
	if w.n+int64(len(p)) > MaxFleetRecording {
		return 0, ErrTooLarge
	}
	n, err := w.f.Write(p)
	w.n += int64(n)
	return n, err
}

// Close syncs the recording and completes it.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	err := w.f.Sync()
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	delete(w.s.writing, w.r.ID)
	if cerr := w.s.complete(w.r); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("recordings: close %s: %w", w.r.ID, err)
	}
	return nil
}
