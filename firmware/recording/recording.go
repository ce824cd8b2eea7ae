// Package recording keeps the device's session recordings (asciicast v2
// files, written by the SSH server as a session's terminal output goes to
// the user) in a directory of the agent's data dir, and uploads them to the
// fleet over the tunnel's control stream, resumably: each upload starts by
// asking the fleet how much it holds and continues from there, so an
// upload cut by an outage or a restart completes later and a recording
// leaves the device only once the fleet holds all of it.
//
// A recording is written to ID.cast.part while its session runs and renamed
// to ID.cast when it ends; ID.json describes it. A recording still open
// when the agent died is closed out at the next start with what reached the
// disk. Only firmware/... imports this package.
package recording

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/asciicast"
)

// Config configures a Store. Dir is required.
type Config struct {
	// Dir holds the recordings, normally DATA_DIR/recordings. Required.
	Dir string
	// MaxBytes caps the recordings kept on the device, all together and
	// at every moment: a session that starts past it is not recorded, and
	// a recording that would pass it stops there (Recording.Truncated);
	// the agent says so in the audit. Default 256 MiB.
	MaxBytes int64
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock recordings are timed with; nil means time.Now.
	Now func() time.Time
}

// Store holds a device's recordings.
type Store struct {
	cfg     Config
	log     *slog.Logger
	changed chan struct{} // signalled when a recording is complete
	// usage is the bytes the recordings take: counted at Open, then kept
	// up to date as recordings are written and uploaded.
	usage atomic.Int64
	// full is set when a recording was cut at the cap, and cleared when an
	// upload frees space: no recording starts meanwhile.
	full atomic.Bool
}

// DefaultMaxBytes is Config.MaxBytes's default: 256 MiB.
const DefaultMaxBytes = 256 << 20

// ErrFull is returned by Start when the recordings use MaxBytes.
var ErrFull = errors.New("recording: the device's recordings are at their cap")

var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Open returns the store in cfg.Dir and closes out recordings left open by
// an agent that died.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("recording: open: no directory")
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = DefaultMaxBytes
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("recording: %w", err)
	}
	s := &Store{cfg: cfg, log: cfg.Logger.With("component", "recording"), changed: make(chan struct{}, 1)}
	parts, _ := filepath.Glob(filepath.Join(cfg.Dir, "*.cast.part"))
	for _, p := range parts {
		id := strings.TrimSuffix(filepath.Base(p), ".cast.part")
		if err := os.Rename(p, s.path(id, ".cast")); err == nil {
			s.log.Info("recording of a session cut short by a restart closed out", "recording", id)
		}
	}
	s.usage.Store(s.used())
	return s, nil
}

func (s *Store) path(id, ext string) string { return filepath.Join(s.cfg.Dir, id+ext) }

// remove deletes a recording's file and takes it off the usage.
func (s *Store) remove(id, ext string) {
	p := s.path(id, ext)
	if fi, err := os.Stat(p); err == nil && os.Remove(p) == nil {
		s.usage.Add(-fi.Size())
		s.full.Store(false)
	}
}

// used is the bytes the recordings take on disk.
func (s *Store) used() int64 {
	var n int64
	ents, _ := os.ReadDir(s.cfg.Dir)
	for _, e := range ents {
		if fi, err := e.Info(); err == nil {
			n += fi.Size()
		}
	}
	return n
}

// Recording is a session recording being written. Its methods are safe
// for concurrent use.
type Recording struct {
	*asciicast.Writer
	s    *Store
	id   string
	f    *capped
	once sync.Once
}

// ErrCap is the write error of a recording that reached the store's cap.
var ErrCap = errors.New("recording: the device's recordings reached their cap")

// capped is a recording's file, whose writes count against the store's
// cap: a write that would pass it is refused whole (so the recording
// stays well-formed, cut at an event).
type capped struct {
	*os.File
	s         *Store
	truncated atomic.Bool
}

func (c *capped) Write(p []byte) (int, error) {
	n := int64(len(p))
	if c.s.usage.Add(n) > c.s.cfg.MaxBytes {
		c.s.usage.Add(-n)
		c.truncated.Store(true)
		c.s.full.Store(true)
		return 0, ErrCap
	}
	w, err := c.File.Write(p)
	if w < len(p) {
		c.s.usage.Add(int64(w) - n)
	}
	return w, err
}

// Start creates recording id (new) described by meta, with header h.
func (s *Store) Start(id string, meta proto.RecordingMeta, h asciicast.Header) (*Recording, error) {
	if !validID.MatchString(id) {
		return nil, fmt.Errorf("recording: bad id %q", id)
	}
	if s.full.Load() || s.usage.Load() >= s.cfg.MaxBytes {
		return nil, fmt.Errorf("%w (%d bytes)", ErrFull, s.cfg.MaxBytes)
	}
	if meta.Start == 0 {
		meta.Start = s.cfg.Now().UnixMilli()
	}
	b, _ := json.Marshal(&meta)
	if err := writeSynced(s.path(id, ".json"), b); err != nil {
		return nil, fmt.Errorf("recording: start %s: %w", id, err)
	}
	s.usage.Add(int64(len(b)))
	f, err := os.OpenFile(s.path(id, ".cast.part"), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("recording: start %s: %w", id, err)
	}
	cf := &capped{File: f, s: s}
	w, err := asciicast.NewWriter(cf, h, s.cfg.Now)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("recording: start %s: %w", id, err)
	}
	return &Recording{Writer: w, s: s, id: id, f: cf}, nil
}

// Cap is the store's cap (Config.MaxBytes, defaults applied).
func (s *Store) Cap() int64 { return s.cfg.MaxBytes }

// Truncated reports whether the recording stopped at the store's cap.
func (r *Recording) Truncated() bool { return r.f.truncated.Load() }

// ID is the recording's ID.
func (r *Recording) ID() string { return r.id }

// Close ends the recording, syncs it to disk and hands it to the uploader.
func (r *Recording) Close() error {
	var err error
	r.once.Do(func() {
		err = r.Writer.Flush()
		if errors.Is(err, ErrCap) {
			err = nil // what fitted is kept; Truncated says so
		}
		if serr := r.f.Sync(); err == nil {
			err = serr
		}
		if cerr := r.f.Close(); err == nil {
			err = cerr
		}
		if rerr := os.Rename(r.s.path(r.id, ".cast.part"), r.s.path(r.id, ".cast")); err == nil {
			err = rerr
		}
		syncDir(r.s.cfg.Dir)
		select {
		case r.s.changed <- struct{}{}:
		default:
		}
	})
	if err != nil {
		return fmt.Errorf("recording: close %s: %w", r.id, err)
	}
	return nil
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// parseMeta decodes a recording's description file.
func parseMeta(b []byte) (*proto.RecordingMeta, error) {
	var m proto.RecordingMeta
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("recording: description: %w", err)
	}
	return &m, nil
}

// complete lists the finished recordings, oldest first.
func (s *Store) complete() []string {
	ents, _ := os.ReadDir(s.cfg.Dir)
	type rec struct {
		id  string
		mod time.Time
	}
	var recs []rec
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".cast")
		if !ok || !validID.MatchString(id) {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		recs = append(recs, rec{id, fi.ModTime()})
	}
	slices.SortFunc(recs, func(a, b rec) int { return a.mod.Compare(b.mod) })
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.id
	}
	return out
}

// Pending is how many finished recordings wait for upload.
func (s *Store) Pending() int { return len(s.complete()) }

// Caller sends a message on the control stream and waits for the answer of
// kind want; *tunnel.Client implements it.
type Caller interface {
	Call(ctx context.Context, m proto.Message, want proto.Kind) (proto.Message, error)
}

// Uploader uploads a store's finished recordings. Create it with
// NewUploader and run Run.
type Uploader struct {
	s     *Store
	link  Caller
	retry time.Duration
	wake  chan struct{}
}

// NewUploader returns an uploader of s's recordings over link; retry is
// the pause after a failure (default 5s, jittered).
func NewUploader(s *Store, link Caller, retry time.Duration) *Uploader {
	if retry <= 0 {
		retry = 5 * time.Second
	}
	return &Uploader{s: s, link: link, retry: retry, wake: make(chan struct{}, 1)}
}

// Wake tells the uploader the link is up.
func (u *Uploader) Wake() {
	select {
	case u.wake <- struct{}{}:
	default:
	}
}

// maxRetry bounds the pause after failures in a row: each doubles it from
// the uploader's retry (the fleet may take no recordings for a while, its
// disk or this device's quota full; the recordings wait on the device).
const maxRetry = time.Minute

// Run uploads until ctx is done.
func (u *Uploader) Run(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		ids := u.s.complete()
		var err error
		for _, id := range ids {
			if err = u.upload(ctx, id); err != nil {
				break
			}
		}
		if err != nil {
			failures++
			wait := u.retry
			for i := 1; i < failures && wait < maxRetry; i++ {
				wait *= 2
			}
			wait = min(wait, max(maxRetry, u.retry))
			u.s.log.Debug("recording upload paused", "err", err, "for", wait)
			t := time.NewTimer(wait/2 + mrand.N(wait))
			select {
			case <-ctx.Done():
			case <-t.C:
			case <-u.wake:
			}
			t.Stop()
			continue
		}
		failures = 0
		select {
		case <-ctx.Done():
		case <-u.s.changed:
		case <-u.wake:
		}
	}
}

// upload sends one recording from where the fleet's copy ends.
func (u *Uploader) upload(ctx context.Context, id string) error {
	var meta *proto.RecordingMeta
	if b, err := os.ReadFile(u.s.path(id, ".json")); err == nil {
		meta, _ = parseMeta(b)
	}
	f, err := os.Open(u.s.path(id, ".cast"))
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	size := uint64(fi.Size())
	ack, err := u.call(ctx, &proto.RecordingChunk{ID: id, Meta: meta})
	buf := make([]byte, proto.MaxRecordingChunk)
	for err == nil && !ack.Done {
		off := ack.Size
		if off > size {
			err = fmt.Errorf("the fleet holds %d bytes of %s, more than its %d", off, id, size)
			break
		}
		n, rerr := f.ReadAt(buf[:min(uint64(len(buf)), size-off)], int64(off))
		if rerr != nil && rerr != io.EOF {
			return rerr
		}
		ack, err = u.call(ctx, &proto.RecordingChunk{ID: id, Offset: off, Data: buf[:n], Final: off+uint64(n) == size})
		if err == nil && !ack.Done && ack.Size == off && n == 0 {
			err = fmt.Errorf("the fleet took none of %s at %d", id, off)
		}
	}
	var pe *proto.Error
	if errors.As(err, &pe) && (pe.Code == proto.CodeBadRequest || pe.Code == proto.CodeForbidden) {
		// The fleet will never take it: keep it aside, do not retry.
		u.s.log.Error("the fleet refused a recording; kept on the device", "recording", id, "err", err)
		os.Rename(u.s.path(id, ".cast"), u.s.path(id, ".cast.refused"))
		return nil
	}
	if err != nil {
		return err
	}
	u.s.log.Info("session recording uploaded", "recording", id, "bytes", size)
	u.s.remove(id, ".cast")
	u.s.remove(id, ".json")
	return nil
}

func (u *Uploader) call(ctx context.Context, c *proto.RecordingChunk) (*proto.RecordingAck, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	m, err := u.link.Call(cctx, c, proto.KindRecordingAck)
	if err != nil {
		return nil, fmt.Errorf("recording: upload %s: %w", c.ID, err)
	}
	ack, ok := m.(*proto.RecordingAck)
	if !ok {
		return nil, fmt.Errorf("recording: upload %s: fleet answered %s", c.ID, m.Kind())
	}
	if ack.Err != nil {
		return nil, fmt.Errorf("recording: upload %s: %w", c.ID, ack.Err)
	}
	if ack.ID != c.ID {
		return nil, fmt.Errorf("recording: upload %s: answer is for %s", c.ID, ack.ID)
	}
	return ack, nil
}
