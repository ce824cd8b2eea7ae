// Package recordings is the fleet's store of session recordings: asciicast
// v2 files that devices upload in chunks over their tunnel's control stream
// (proto.RecordingChunk), kept as files in a directory of the data dir with
// a small JSON description beside each.
//
// Uploads resume: a chunk is written only at the offset where the fleet's
// copy ends, fsync'd before it is acknowledged, and every answer says how
// much the fleet holds, so a device cut off mid-upload continues where the
// fleet's copy ends, and a chunk sent twice is written once. A recording is
// complete once its final chunk is in; until then it is listed as partial.
//
// A device cannot speak for users: a recording is accepted only for a
// session the fleet brokered to the uploading device (Config.Sessions, the
// fleet's own session.start record), its ID must be that session's ("ID" or
// "ID.N"), and the user, login and cluster it is filed under are the
// fleet's record of the session, never what the device says.
//
// Only fleet/... imports this package.
package recordings

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/asciicast"
)

// Config configures a Store. Dir is required.
type Config struct {
	// Dir holds the recordings, normally DATA_DIR/recordings. Required.
	Dir string
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Sessions returns the fleet's record of a session it brokered to a
	// device (fleetd: the audit log's session.start), or an error matching
	// ErrNoSession when it brokered no such session to that device (any
	// other error: the device tries again later). Nil refuses every new
	// recording.
	Sessions func(deviceID, session string) (Session, error)
	// Limits returns the retention and the devices' quota in force
	// (quota.go), read each time they apply; nil means none.
	Limits func() Limits
	// Room returns an error while devices' uploads must pause for lack of
	// disk space (fleet/diskfloor); nil never pauses them.
	Room func() error
	// OnPause is called when a device's uploads begin to pause, with why.
	// Optional.
	OnPause func(deviceID, why string)
}

// Session is what the fleet recorded of a session it brokered.
type Session struct {
	User, Login, Cluster string
}

// Store keeps recordings. Its methods are safe for concurrent use.
type Store struct {
	cfg Config
	log *slog.Logger
	mu  sync.Mutex // serialises writes (uploads are one chunk at a time per device anyway); guards usage, paused and writing

	usage  map[string]int64  // device ID -> bytes of its recordings held
	paused map[string]string // device ID -> why its uploads pause
	// writing holds the recordings the fleet is writing itself (Create):
	// no device chunk goes into them.
	writing map[string]bool
}

// ErrNotFound is returned for an unknown recording.
var ErrNotFound = errors.New("recordings: no such recording")

// ErrNoSession is what Config.Sessions returns for a session the fleet did
// not broker to the device.
var ErrNoSession = errors.New("recordings: the fleet brokered no such session to this device")

// validID matches the recording IDs a device may use: they become file
// names.
var validID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Open returns a store in cfg.Dir, creating the directory.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, errors.New("recordings: open: no directory")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("recordings: %w", err)
	}
	s := &Store{cfg: cfg, log: cfg.Logger.With("component", "recordings"), usage: map[string]int64{}, paused: map[string]string{}}
	all, err := s.List(nil)
	if err != nil {
		return nil, err
	}
	for _, r := range all {
		s.usage[r.Device] += r.Size
	}
	return s, nil
}

func (s *Store) path(id, ext string) string { return filepath.Join(s.cfg.Dir, id+ext) }

// parseMeta decodes a recording's description file.
func parseMeta(b []byte) (*api.Recording, error) {
	var r api.Recording
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("recordings: description: %w", err)
	}
	if !validID.MatchString(r.ID) {
		return nil, fmt.Errorf("recordings: description: bad id %q", r.ID)
	}
	return &r, nil
}

func (s *Store) loadMeta(id string) (*api.Recording, error) {
	b, err := os.ReadFile(s.path(id, ".json"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("recordings: %w", err)
	}
	return parseMeta(b)
}

func (s *Store) saveMeta(r *api.Recording) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := s.path(r.ID, ".json.tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, s.path(r.ID, ".json")); err != nil {
		return err
	}
	syncDir(s.cfg.Dir)
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// size is how many bytes of the recording are held.
func (s *Store) size(r *api.Recording) int64 {
	name := s.path(r.ID, ".cast.part")
	if r.Complete {
		name = s.path(r.ID, ".cast")
	}
	fi, err := os.Stat(name)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// Chunk stores one chunk from deviceID and returns the answer for it.
func (s *Store) Chunk(deviceID string, c *proto.RecordingChunk) *proto.RecordingAck {
	ack, err := s.chunk(deviceID, c)
	if err != nil {
		pe := &proto.Error{Code: proto.CodeInternal, Message: err.Error()}
		errors.As(err, &pe)
		if pe.Code == proto.CodeInternal {
			s.log.Error("store recording chunk", "device_id", deviceID, "recording", c.ID, "err", err)
		}
		return &proto.RecordingAck{ID: c.ID, Err: pe}
	}
	return ack
}

func (s *Store) chunk(deviceID string, c *proto.RecordingChunk) (*proto.RecordingAck, error) {
	if !validID.MatchString(c.ID) {
		return nil, proto.Errorf(proto.CodeBadRequest, "bad recording id %q", c.ID)
	}
	if len(c.Data) > proto.MaxRecordingChunk {
		return nil, proto.Errorf(proto.CodeBadRequest, "chunk of %d bytes, the most is %d", len(c.Data), proto.MaxRecordingChunk)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, err := s.loadMeta(c.ID)
	if err == nil && r.Device == deviceID && r.Complete {
		return &proto.RecordingAck{ID: c.ID, Size: uint64(s.size(r)), Done: true}, nil
	}
	if err == nil || errors.Is(err, ErrNotFound) {
		if why := s.refuseLocked(deviceID, len(c.Data)); why != "" {
			return nil, proto.Errorf(proto.CodeUnavailable,
				"the fleet takes no more recordings from this device for now (%s); keep them and send them again later", why)
		}
	}
	switch {
	case errors.Is(err, ErrNotFound):
		session, err := s.brokered(deviceID, c)
		if err != nil {
			return nil, err
		}
		r = &api.Recording{ID: c.ID, Session: sessionOf(c.ID), Device: deviceID, Updated: s.cfg.Now().UTC(),
			User: session.User, Login: session.Login, Cluster: session.Cluster}
		if m := c.Meta; m != nil {
			r.Kind, r.Command = m.Kind, m.Command
			if m.Start != 0 {
				r.Start = time.UnixMilli(m.Start).UTC()
			}
		}
		if r.Start.IsZero() {
			r.Start = r.Updated
		}
		if err := s.saveMeta(r); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, err
	case r.Device != deviceID || s.writing[c.ID]:
		return nil, proto.Errorf(proto.CodeForbidden, "recording %s belongs to another device", c.ID)
	}
	size := s.size(r)
	if r.Complete {
		return &proto.RecordingAck{ID: c.ID, Size: uint64(size), Done: true}, nil
	}
	if len(c.Data) > 0 && c.Offset == uint64(size) {
		f, err := os.OpenFile(s.path(c.ID, ".cast.part"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			return nil, err
		}
		_, err = f.Write(c.Data)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, err
		}
		size += int64(len(c.Data))
		s.usage[deviceID] += int64(len(c.Data))
		s.resumeLocked(deviceID)
	}
	if c.Final && c.Offset+uint64(len(c.Data)) == uint64(size) {
		if err := s.complete(r); err != nil {
			return nil, err
		}
		return &proto.RecordingAck{ID: c.ID, Size: uint64(size), Done: true}, nil
	}
	return &proto.RecordingAck{ID: c.ID, Size: uint64(size)}, nil
}

// sessionOf is the session a recording ID names: "ID" or "ID.N" (a
// session's second and later recordings).
func sessionOf(id string) string {
	if i := strings.IndexByte(id, '.'); i > 0 {
		return id[:i]
	}
	return id
}

// brokered checks that a new recording is of a session the fleet brokered
// to deviceID, and returns the fleet's record of that session.
func (s *Store) brokered(deviceID string, c *proto.RecordingChunk) (Session, error) {
	session := sessionOf(c.ID)
	if rest := strings.TrimPrefix(c.ID, session); rest != "" {
		if n, err := strconv.Atoi(rest[1:]); err != nil || n < 2 || rest[1] == '0' {
			return Session{}, proto.Errorf(proto.CodeBadRequest, "recording id %q is neither a session's ID nor ID.N", c.ID)
		}
	}
	if c.Meta != nil && c.Meta.Session != "" && c.Meta.Session != session {
		return Session{}, proto.Errorf(proto.CodeForbidden, "recording %s says it is of session %s", c.ID, c.Meta.Session)
	}
	if s.cfg.Sessions == nil {
		return Session{}, proto.Errorf(proto.CodeForbidden, "this fleet takes no recordings")
	}
	rec, err := s.cfg.Sessions(deviceID, session)
	if err != nil && !errors.Is(err, ErrNoSession) {
		return Session{}, proto.Errorf(proto.CodeUnavailable, "the fleet cannot check the session now; send it again later")
	}
	if err != nil {
		s.log.Warn("recording refused: not of a session brokered to the device", "device_id", deviceID, "recording", c.ID, "err", err)
		return Session{}, proto.Errorf(proto.CodeForbidden, "recording %s is not of a session the fleet brokered to this device", c.ID)
	}
	return rec, nil
}

// complete moves a fully uploaded recording into place.
func (s *Store) complete(r *api.Recording) error {
	part := s.path(r.ID, ".cast.part")
	if _, err := os.Stat(part); errors.Is(err, os.ErrNotExist) {
		// An empty recording: nothing was written.
		if err := os.WriteFile(part, nil, 0o600); err != nil {
			return err
		}
	}
	if err := os.Rename(part, s.path(r.ID, ".cast")); err != nil {
		return err
	}
	syncDir(s.cfg.Dir)
	r.Complete = true
	r.Updated = s.cfg.Now().UTC()
	if f, err := os.Open(s.path(r.ID, ".cast")); err == nil {
		if sum, err := asciicast.ReadAll(f); err == nil {
			r.Duration = sum.Duration
		} else {
			s.log.Warn("uploaded recording does not parse", "recording", r.ID, "err", err)
		}
		f.Close()
	}
	s.log.Info("session recording complete", "recording", r.ID, "device_id", r.Device, "user", r.User)
	return s.saveMeta(r)
}

// List returns the recordings for which keep returns true (all when keep
// is nil), newest first.
func (s *Store) List(keep func(*api.Recording) bool) ([]api.Recording, error) {
	ents, err := os.ReadDir(s.cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("recordings: list: %w", err)
	}
	out := []api.Recording{}
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || !validID.MatchString(id) {
			continue
		}
		r, err := s.loadMeta(id)
		if err != nil {
			s.log.Warn("unreadable recording description", "recording", id, "err", err)
			continue
		}
		if keep != nil && !keep(r) {
			continue
		}
		r.Size = s.size(r)
		out = append(out, *r)
	}
	slices.SortFunc(out, func(a, b api.Recording) int { return b.Start.Compare(a.Start) })
	return out, nil
}

// Get returns a recording's description.
func (s *Store) Get(id string) (*api.Recording, error) {
	if !validID.MatchString(id) {
		return nil, ErrNotFound
	}
	r, err := s.loadMeta(id)
	if err != nil {
		return nil, err
	}
	r.Size = s.size(r)
	return r, nil
}

// Read opens a recording's file (what is held so far, for a partial one).
func (s *Store) Read(id string) (io.ReadCloser, *api.Recording, error) {
	r, err := s.Get(id)
	if err != nil {
		return nil, nil, err
	}
	name := s.path(id, ".cast.part")
	if r.Complete {
		name = s.path(id, ".cast")
	}
	f, err := os.Open(name)
	if errors.Is(err, os.ErrNotExist) {
		return io.NopCloser(strings.NewReader("")), r, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("recordings: %w", err)
	}
	return f, r, nil
}
