package recordings

import (
	"bytes"
	"io"
	"testing"
	"time"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/asciicast"
)

func openStore(t *testing.T) *Store {
	t.Helper()
	s, err := Open(Config{Dir: t.TempDir()})
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
