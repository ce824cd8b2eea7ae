package recording

import (
	"bytes"
	"context"
	"errors"

	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/recordings"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/asciicast"
)

// flakyFleet is the real fleet store behind a link that loses calls, before
// or after the fleet acted on them.
type flakyFleet struct {
	mu    sync.Mutex // guards rng and down
	store *recordings.Store
	rng   *rand.Rand
	loss  int // percent
	down  bool
}

func (f *flakyFleet) Call(ctx context.Context, m proto.Message, want proto.Kind) (proto.Message, error) {
	f.mu.Lock()
	lose, before, down := f.rng.IntN(100) < f.loss, f.rng.IntN(2) == 0, f.down
	f.mu.Unlock()
	if down || (lose && before) {
		return nil, errors.New("link lost")
	}
	ack := f.store.Chunk("dev-1", m.(*proto.RecordingChunk))
	if lose {
		return nil, errors.New("link lost after the fleet acted")
	}
	return ack, nil
}

func TestRecordAndUploadResumably(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(Config{Dir: filepath.Join(dir, "device")})
	if err != nil {
		t.Fatal(err)
	}
	// The fleet brokered session sess-1 to this device for alice.
	fs, err := recordings.Open(recordings.Config{Dir: filepath.Join(dir, "fleet"),
		Sessions: func(deviceID, session string) (recordings.Session, error) {
			if session != "sess-1" {
				return recordings.Session{}, recordings.ErrNoSession
			}
			return recordings.Session{User: "alice", Login: "root"}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.Start("sess-1", proto.RecordingMeta{Session: "sess-1", User: "alice", Login: "root", Kind: "shell"}, asciicast.Header{Width: 80, Height: 24})
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	for i := range 3000 {
		line := []byte(strings.Repeat("é", i%7) + " line\r\n")
		r.Output(line)
		want.Write(line)
	}
	r.Resize(120, 40)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}

	fleet := &flakyFleet{store: fs, rng: rand.New(rand.NewPCG(3, 4)), loss: 40}
	u := NewUploader(s, fleet, time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		u.Run(ctx)
	}()
	defer func() {
		cancel()
		<-done
	}()
	deadline := time.Now().Add(20 * time.Second)
	for s.Pending() > 0 {
		if time.Now().After(deadline) {
			t.Fatal("recording never uploaded")
		}
		u.Wake()
		<-time.After(5 * time.Millisecond)
	}
	rc, meta, err := fs.Read("sess-1")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if !meta.Complete || meta.User != "alice" {
		t.Errorf("fleet's description = %+v", meta)
	}
	sum, err := asciicast.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sum.Output, want.Bytes()) {
		t.Errorf("played back %d bytes, want the %d the session wrote", len(sum.Output), want.Len())
	}
	if _, err := os.Stat(filepath.Join(dir, "device", "sess-1.cast")); !os.IsNotExist(err) {
		t.Errorf("the device kept the uploaded recording: %v", err)
	}
}

func TestLeftoverPartIsClosedOut(t *testing.T) {
	dir := t.TempDir()
	s, _ := Open(Config{Dir: dir})
	r, err := s.Start("s2", proto.RecordingMeta{}, asciicast.Header{})
	if err != nil {
		t.Fatal(err)
	}
	r.Output([]byte("before the crash"))
	// The agent dies without Close.
	s, _ = Open(Config{Dir: dir})
	if s.Pending() != 1 {
		t.Fatalf("pending = %d, want the crashed session's recording", s.Pending())
	}
	f, _ := os.Open(filepath.Join(dir, "s2.cast"))
	defer f.Close()
	sum, err := asciicast.ReadAll(f)
	if err != nil || string(sum.Output) != "before the crash" {
		t.Errorf("closed-out recording: %q, %v", sum.Output, err)
	}
}

func TestCap(t *testing.T) {
	const limit = 4 << 10
	dir := t.TempDir()
	s, _ := Open(Config{Dir: dir, MaxBytes: limit})
	r, err := s.Start("a", proto.RecordingMeta{}, asciicast.Header{})
	if err != nil {
		t.Fatal(err)
	}
	// The cap holds during the session, not only at its start.
	for range 100 {
		r.Output(bytes.Repeat([]byte("x"), 1000))
	}
	if !r.Truncated() {
		t.Error("a recording past the cap is not marked truncated")
	}
	if err := r.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	var used int64
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		fi, _ := e.Info()
		used += fi.Size()
	}
	if used > limit {
		t.Errorf("recordings take %d bytes, over the cap of %d", used, limit)
	}
	f, _ := os.Open(filepath.Join(dir, "a.cast"))
	defer f.Close()
	if sum, err := asciicast.ReadAll(f); err != nil || len(sum.Output) == 0 {
		t.Errorf("the cut recording: %v, %d output bytes; want it well-formed with what fitted", err, len(sum.Output))
	}
	if _, err := s.Start("b", proto.RecordingMeta{}, asciicast.Header{}); !errors.Is(err, ErrFull) {
		t.Errorf("start past the cap: %v, want ErrFull", err)
	}
	if _, err := s.Start("../x", proto.RecordingMeta{}, asciicast.Header{}); err == nil {
		t.Error("bad id accepted")
	}
}

func FuzzParseMeta(f *testing.F) {
	f.Add([]byte(`{"Session":"s","User":"u","Start":5}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseMeta(b)
	})
}
