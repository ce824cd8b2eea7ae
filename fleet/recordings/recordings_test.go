package recordings

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/asciicast"
)

// brokered is the fleet's record of the sessions it brokered in these
// tests: device -> session -> user.
var brokered = map[string]map[string]string{
	"dev-1": {"s1": "alice", "s2": "alice"},
	"dev-2": {"s9": "bob"},
}

func sessions(deviceID, session string) (Session, error) {
	u, ok := brokered[deviceID][session]
	if !ok {
		return Session{}, ErrNoSession
	}
	return Session{User: u, Login: "root", Cluster: "fleet"}, nil
}

func openStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(Config{Dir: t.TempDir(), Sessions: sessions})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func cast(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	clock := time.Unix(1700000000, 0)
	w, _ := asciicast.NewWriter(&b, asciicast.Header{Width: 80, Height: 24}, func() time.Time {
		clock = clock.Add(100 * time.Millisecond)
		return clock
	})
	for range 200 {
		w.Output([]byte("some output line\r\n"))
	}
	w.Flush()
	return b.Bytes()
}

func TestResumableUpload(t *testing.T) {
	s := openStore(t)
	data := cast(t)
	meta := &proto.RecordingMeta{Session: "s1", User: "alice", Login: "root", Start: 1700000000000, Kind: "shell"}
	ack := s.Chunk("dev-1", &proto.RecordingChunk{ID: "s1", Meta: meta})
	if ack.Err != nil || ack.Size != 0 || ack.Done {
		t.Fatalf("query = %+v", ack)
	}
	const chunk = 1000
	// Upload the first half, one chunk twice (its ack was lost).
	off := 0
	for off < len(data)/2 {
		end := min(off+chunk, len(data))
		ack = s.Chunk("dev-1", &proto.RecordingChunk{ID: "s1", Offset: uint64(off), Data: data[off:end]})
		if ack.Err != nil || ack.Size != uint64(end) {
			t.Fatalf("chunk at %d: %+v", off, ack)
		}
		again := s.Chunk("dev-1", &proto.RecordingChunk{ID: "s1", Offset: uint64(off), Data: data[off:end]})
		if again.Size != uint64(end) {
			t.Fatalf("a chunk sent twice was written twice: %+v", again)
		}
		off = end
	}
	// An outage: the device starts over, asks, and resumes.
	list, _ := s.List(nil)
	if len(list) != 1 || list[0].Complete || list[0].Size != int64(off) {
		t.Fatalf("partial listing = %+v", list)
	}
	ack = s.Chunk("dev-1", &proto.RecordingChunk{ID: "s1", Meta: meta})
	if ack.Size != uint64(off) {
		t.Fatalf("resume query = %+v, want size %d", ack, off)
	}
	// A wrong offset writes nothing and says where to go on.
	if ack := s.Chunk("dev-1", &proto.RecordingChunk{ID: "s1", Offset: 5, Data: []byte("xx")}); ack.Size != uint64(off) {
		t.Fatalf("wrong offset: %+v", ack)
	}
	for off < len(data) {
		end := min(off+chunk, len(data))
		ack = s.Chunk("dev-1", &proto.RecordingChunk{ID: "s1", Offset: uint64(off), Data: data[off:end], Final: end == len(data)})
		off = end
	}
	if !ack.Done || ack.Size != uint64(len(data)) {
		t.Fatalf("final ack = %+v", ack)
	}
	// Another device cannot touch it.
	if ack := s.Chunk("dev-2", &proto.RecordingChunk{ID: "s1"}); ack.Err == nil || ack.Err.Code != proto.CodeForbidden {
		t.Errorf("other device: %+v", ack)
	}
	rc, r, err := s.Read("s1")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, data) {
		t.Error("stored recording differs from the uploaded one")
	}
	if !r.Complete || r.User != "alice" || r.Device != "dev-1" || r.Duration < 19*time.Second {
		t.Errorf("description = %+v", r)
	}
	list, _ = s.List(func(r *api.Recording) bool { return r.User == "bob" })
	if len(list) != 0 {
		t.Errorf("filter: %+v", list)
	}
}

// TestPlantedRecordingsRefused: a device cannot file a recording under a
// session the fleet did not broker to it, nor under another user than the
// session's.
func TestPlantedRecordingsRefused(t *testing.T) {
	s := openStore(t)
	data := cast(t)
	tests := []struct {
		name, device, id string
		meta             *proto.RecordingMeta
		code             proto.ErrorCode // 0: accepted
		user             string
	}{
		{"another device's session", "dev-2", "s1", &proto.RecordingMeta{Session: "s1", User: "alice"}, proto.CodeForbidden, ""},
		{"a session never brokered", "dev-2", "made-up", &proto.RecordingMeta{Session: "made-up", User: "alice"}, proto.CodeForbidden, ""},
		{"meta naming another session", "dev-2", "s9", &proto.RecordingMeta{Session: "s1", User: "alice"}, proto.CodeForbidden, ""},
		{"not a session's id", "dev-1", "s1.x", nil, proto.CodeBadRequest, ""},
		{"its session, another user claimed", "dev-2", "s9", &proto.RecordingMeta{Session: "s9", User: "alice", Login: "admin"}, 0, "bob"},
		{"a second recording of its session", "dev-1", "s2.2", &proto.RecordingMeta{Session: "s2", User: "mallory"}, 0, "alice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ack := s.Chunk(tt.device, &proto.RecordingChunk{ID: tt.id, Data: data, Final: true, Meta: tt.meta})
			if tt.code != 0 {
				if ack.Err == nil || ack.Err.Code != tt.code {
					t.Fatalf("ack = %+v, want code %v", ack, tt.code)
				}
				if _, err := s.Get(tt.id); err == nil {
					t.Errorf("refused recording %s is stored", tt.id)
				}
				return
			}
			if ack.Err != nil || !ack.Done {
				t.Fatalf("ack = %+v, want done", ack)
			}
			r, err := s.Get(tt.id)
			if err != nil || r.User != tt.user || r.Login != "root" || r.Session != sessionOf(tt.id) {
				t.Errorf("stored as %+v, %v; want the fleet's user %s and login root", r, err, tt.user)
			}
		})
	}
	for _, r := range mustList(t, s) {
		if r.User == "alice" && r.Device != "dev-1" {
			t.Errorf("a recording filed under alice from %s: %+v", r.Device, r)
		}
	}
}

func mustList(t *testing.T, s *Store) []api.Recording {
	t.Helper()
	list, err := s.List(nil)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

func TestBadChunks(t *testing.T) {
	s := openStore(t)
	tests := []struct {
		name string
		c    proto.RecordingChunk
		code proto.ErrorCode
	}{
		{"path in id", proto.RecordingChunk{ID: "../etc/passwd"}, proto.CodeBadRequest},
		{"empty id", proto.RecordingChunk{ID: ""}, proto.CodeBadRequest},
		{"dot id", proto.RecordingChunk{ID: ".hidden"}, proto.CodeBadRequest},
		{"oversized", proto.RecordingChunk{ID: "x", Data: make([]byte, proto.MaxRecordingChunk+1)}, proto.CodeBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ack := s.Chunk("dev-1", &tt.c)
			if ack.Err == nil || ack.Err.Code != tt.code {
				t.Errorf("ack = %+v, want code %v", ack, tt.code)
			}
		})
	}
	if _, _, err := s.Read("../x"); err == nil {
		t.Error("Read of a bad id succeeded")
	}
}

func FuzzParseMeta(f *testing.F) {
	f.Add([]byte(`{"id":"s1","session":"s1","device":"d","start":"2026-01-01T00:00:00Z","size":0,"complete":true,"updated":"2026-01-01T00:00:00Z"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := parseMeta(b)
		if err == nil && !validID.MatchString(r.ID) {
			t.Fatalf("accepted id %q", r.ID)
		}
	})
}

// upload sends a whole recording in one chunk and returns the answer.
func upload(s *Store, device, id string, data []byte) *proto.RecordingAck {
	if ack := s.Chunk(device, &proto.RecordingChunk{ID: id}); ack.Err != nil {
		return ack
	}
	return s.Chunk(device, &proto.RecordingChunk{ID: id, Data: data, Final: true})
}

func TestRecordingQuotaAndFloor(t *testing.T) {
	data := cast(t)
	quota := int64(proto.MaxRecordingChunk + len(data) + len(data)/2)
	var room error
	paused := make(chan string, 4)
	s, err := Open(Config{Dir: t.TempDir(), Sessions: sessions,
		Limits:  func() Limits { return Limits{DeviceQuota: quota} },
		Room:    func() error { return room },
		OnPause: func(dev, why string) { paused <- dev + ": " + why }})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"s1", "s1.2"} {
		if ack := upload(s, "dev-1", id, data); ack.Err != nil || !ack.Done {
			t.Fatalf("%s within the quota: %+v", id, ack)
		}
	}
	ack := upload(s, "dev-1", "s1.3", data)
	if ack.Err == nil || ack.Err.Code != proto.CodeUnavailable || !strings.Contains(ack.Err.Message, "quota") {
		t.Fatalf("past the quota: %+v, want unavailable", ack)
	}
	if _, err := s.Get("s1.3"); err == nil {
		t.Error("the refused recording was stored")
	}
	if why := <-paused; !strings.Contains(why, "dev-1: over its recordings quota") {
		t.Errorf("OnPause said %q", why)
	}
	if ack := upload(s, "dev-2", "s9", data); ack.Err != nil {
		t.Errorf("another device refused: %+v", ack.Err)
	}
	quota *= 4
	if ack := upload(s, "dev-1", "s1.3", data); ack.Err != nil || !ack.Done {
		t.Errorf("after the quota was raised: %+v", ack)
	}
	if s.Paused("dev-1") != "" {
		t.Errorf("dev-1 still paused: %q", s.Paused("dev-1"))
	}
	room = errors.New("the fleet's disk is nearly full")
	if ack := upload(s, "dev-1", "s2", data); ack.Err == nil || !strings.Contains(ack.Err.Message, "nearly full") {
		t.Errorf("under the floor: %+v", ack)
	}
	// A complete recording is still answered (the device may forget it).
	if ack := s.Chunk("dev-1", &proto.RecordingChunk{ID: "s1"}); ack.Err != nil || !ack.Done {
		t.Errorf("query of a complete recording under the floor: %+v", ack)
	}
	total, by := s.Usage()
	if total != int64(4*len(data)) || by["dev-1"] != int64(3*len(data)) {
		t.Errorf("usage = %d, %v", total, by)
	}
}

func TestRecordingRetention(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	data := cast(t)
	var lim Limits
	s, err := Open(Config{Dir: t.TempDir(), Sessions: sessions, Now: func() time.Time { return now }, Limits: func() Limits { return lim }})
	if err != nil {
		t.Fatal(err)
	}
	for i, id := range []string{"s1", "s1.2", "s2"} {
		now = now.Add(time.Duration(i) * 24 * time.Hour)
		s.Chunk("dev-1", &proto.RecordingChunk{ID: id, Meta: &proto.RecordingMeta{Start: now.UnixMilli()}})
		if ack := s.Chunk("dev-1", &proto.RecordingChunk{ID: id, Data: data, Final: true}); !ack.Done {
			t.Fatalf("%s: %+v", id, ack)
		}
	}
	lim = Limits{MaxBytes: int64(2 * len(data))}
	if n, err := s.Prune(context.Background()); err != nil || n != 1 {
		t.Fatalf("pruned to size: %d, %v; want the oldest", n, err)
	}
	if _, err := s.Get("s1"); err == nil {
		t.Error("the oldest recording survived pruning to size")
	}
	now = now.Add(48 * time.Hour)
	lim = Limits{MaxAge: 60 * time.Hour}
	if n, err := s.Prune(context.Background()); err != nil || n != 1 {
		t.Fatalf("pruned by age: %d, %v", n, err)
	}
	list := mustList(t, s)
	if len(list) != 1 || list[0].ID != "s2" {
		t.Errorf("left: %+v, want s2", list)
	}
	if total, _ := s.Usage(); total != int64(len(data)) {
		t.Errorf("usage %d after pruning, want %d", total, len(data))
	}
}

func TestFleetWrittenRecording(t *testing.T) {
	s := openStore(t)
	data := cast(t)
	w, err := s.Create("dev-1", "k1", proto.RecordingMeta{Session: "k1", User: "alice", Login: "alice", Kind: "kube.exec", Command: "sh", Start: 1700000000000})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create("dev-1", "k1", proto.RecordingMeta{}); err == nil {
		t.Error("a second Create of the same recording worked")
	}
	half := len(data) / 2
	w.Write(data[:half])
	if r, err := s.Get("k1"); err != nil || r.Complete || r.Size != int64(half) {
		t.Errorf("while written: %+v %v, want partial with %d bytes", r, err, half)
	}
	if ack := s.Chunk("dev-1", &proto.RecordingChunk{ID: "k1", Offset: uint64(half), Data: []byte("planted")}); ack.Err == nil {
		t.Errorf("the device wrote into the recording the fleet is writing: %+v", ack)
	}
	w.Write(data[half:])
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	list, _ := s.List(func(r *api.Recording) bool { return r.User == "alice" })
	if len(list) != 1 || !list[0].Complete || list[0].Kind != "kube.exec" || list[0].Device != "dev-1" || list[0].Duration == 0 {
		t.Fatalf("list = %+v, want alice's complete kube.exec recording with its duration", list)
	}
	rc, _, err := s.Read("k1")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	if got, _ := io.ReadAll(rc); !bytes.Equal(got, data) {
		t.Errorf("read back %d bytes, want the %d written", len(got), len(data))
	}
	// A device cannot add to a recording the fleet wrote for it.
	if ack := s.Chunk("dev-2", &proto.RecordingChunk{ID: "k1", Offset: uint64(len(data)), Data: []byte("x")}); ack.Err == nil {
		t.Errorf("another device wrote to the fleet's recording: %+v", ack)
	}
}
