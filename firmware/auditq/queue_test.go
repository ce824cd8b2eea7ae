package auditq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/tools/logtest"
)

func openQueue(t testing.TB, cfg Config) *Queue {
	t.Helper()
	if cfg.Path == "" {
		cfg.Path = filepath.Join(t.TempDir(), "audit.db")
	}
	if cfg.Source == "" {
		cfg.Source = "dev-1"
	}
	if cfg.Logger == nil {
		cfg.Logger = logtest.Logger(t)
	}
	q, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	return q
}

func appendN(t testing.TB, q *Queue, n int, typ string) []uint64 {
	t.Helper()
	var seqs []uint64
	for i := range n {
		seq, err := q.Append(context.Background(), &proto.AuditEvent{Type: typ, Fields: map[string]string{"i": strconv.Itoa(i)}})
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		seqs = append(seqs, seq)
	}
	return seqs
}

// appendConcurrently appends n events made by mk from 16 goroutines, so
// that they are group-committed (and the test is fast).
func appendConcurrently(t testing.TB, q *Queue, n int, mk func(i int) *proto.AuditEvent) {
	t.Helper()
	var wg sync.WaitGroup
	var next atomic.Int64
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if _, err := q.Append(context.Background(), mk(i)); err != nil {
					t.Errorf("append %d: %v", i, err)
				}
			}
		})
	}
	wg.Wait()
}

// checkChain verifies evs are consecutive from first and chained from prev.
func checkChain(t testing.TB, evs []proto.AuditEvent, first uint64, prev []byte) []byte {
	t.Helper()
	for i, e := range evs {
		if e.Seq != first+uint64(i) {
			t.Fatalf("event %d has seq %d, want %d", i, e.Seq, first+uint64(i))
		}
		h, err := proto.ChainHash(prev, &e)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(h, e.Hash) {
			t.Fatalf("event %d: hash %x, want %x", e.Seq, e.Hash, h)
		}
		prev = e.Hash
	}
	return prev
}

func readAll(t testing.TB, q *Queue) []proto.AuditEvent {
	t.Helper()
	evs, err := q.Read(0, 1<<30, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

func TestAppendReadAckReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	q := openQueue(t, Config{Path: path})
	seqs := appendN(t, q, 10, proto.EventExec)
	if seqs[0] != 1 || seqs[9] != 10 {
		t.Fatalf("seqs = %v, want 1..10", seqs)
	}
	evs := readAll(t, q)
	head := checkChain(t, evs, 1, nil)
	if got := q.Status(); got.Pending != 10 || got.Head != 10 || got.Bytes == 0 {
		t.Errorf("status = %+v, want 10 pending, head 10", got)
	}
	part, _ := q.Read(3, 4, 1<<20)
	if len(part) != 4 || part[0].Seq != 4 {
		t.Errorf("Read(3, 4) = %d events from %d, want 4 from 4", len(part), part[0].Seq)
	}
	q.Ack(6, evs[5].Hash)
	q.Close()

	q = openQueue(t, Config{Path: path})
	evs = readAll(t, q)
	if len(evs) != 4 || evs[0].Seq != 7 {
		t.Fatalf("after ack and reopen: %d events from %d, want 4 from 7", len(evs), evs[0].Seq)
	}
	seqs = appendN(t, q, 1, proto.EventExec)
	if seqs[0] != 11 {
		t.Errorf("next seq after reopen = %d, want 11", seqs[0])
	}
	evs = readAll(t, q)
	if last := evs[len(evs)-1]; true {
		want, _ := proto.ChainHash(head, &last)
		if !bytes.Equal(want, last.Hash) {
			t.Error("the chain does not continue across a reopen")
		}
	}
}

func TestGroupCommit(t *testing.T) {
	var commits atomic.Int64
	q := openQueue(t, Config{failCommit: func() error { commits.Add(1); return nil }})
	const writers, each = 32, 20
	var wg sync.WaitGroup
	for range writers {
		wg.Go(func() { appendN(t, q, each, "test") })
	}
	wg.Wait()
	evs := readAll(t, q)
	if len(evs) != writers*each {
		t.Fatalf("%d events, want %d", len(evs), writers*each)
	}
	checkChain(t, evs, 1, nil)
	if c := commits.Load(); c >= writers*each {
		t.Errorf("%d commits for %d events: appends were not grouped", c, writers*each)
	}
	t.Logf("%d events in %d commits", writers*each, commits.Load())
}

func TestFullQueueDropsVisibly(t *testing.T) {
	q := openQueue(t, Config{MaxBytes: 4096})
	ctx := context.Background()
	var kept, dropped int
	for i := range 100 {
		_, err := q.Append(ctx, &proto.AuditEvent{Type: "test", Fields: map[string]string{"i": strconv.Itoa(i)}})
		switch {
		case err == nil:
			kept++
		case errors.Is(err, ErrFull):
			dropped++
		default:
			t.Fatal(err)
		}
	}
	if dropped == 0 || kept == 0 {
		t.Fatalf("kept %d, dropped %d: want both", kept, dropped)
	}
	st := q.Status()
	if st.Dropped != uint64(dropped) || st.LastError == "" {
		t.Errorf("status = %+v, want %d dropped and an error", st, dropped)
	}
	// The fleet takes everything; the next event brings the marker.
	evs := readAll(t, q)
	q.Ack(evs[len(evs)-1].Seq, evs[len(evs)-1].Hash)
	if _, err := q.Append(ctx, &proto.AuditEvent{Type: "after"}); err != nil {
		t.Fatal(err)
	}
	rest := readAll(t, q)
	if len(rest) != 2 || rest[0].Type != proto.EventAuditDropped || rest[1].Type != "after" {
		t.Fatalf("after room came back: %+v, want the marker then the event", rest)
	}
	if rest[0].Fields["count"] != strconv.Itoa(dropped) || rest[0].Fields["reason"] == "" {
		t.Errorf("marker fields = %v, want count %d and a reason", rest[0].Fields, dropped)
	}
	checkChain(t, append(evs, rest...), 1, nil)
}

func TestDiskFullDropsVisibly(t *testing.T) {
	var full atomic.Bool
	q := openQueue(t, Config{failCommit: func() error {
		if full.Load() {
			return &os.PathError{Op: "write", Path: "audit.db", Err: syscall.ENOSPC}
		}
		return nil
	}})
	appendN(t, q, 2, "before")
	full.Store(true)
	for range 3 {
		if _, err := q.Append(context.Background(), &proto.AuditEvent{Type: "lost"}); !errors.Is(err, ErrFull) {
			t.Fatalf("append on a full disk: %v, want ErrFull", err)
		}
	}
	if st := q.Status(); st.Dropped != 3 || st.LastError == "" {
		t.Errorf("status = %+v, want 3 dropped and the error", st)
	}
	full.Store(false)
	appendN(t, q, 1, "after")
	evs := readAll(t, q)
	if len(evs) != 4 || evs[2].Type != proto.EventAuditDropped || evs[2].Fields["count"] != "3" {
		t.Fatalf("events = %+v, want before, before, the marker (3), after", evs)
	}
	checkChain(t, evs, 1, nil)
}

func TestSync(t *testing.T) {
	fleetHash := bytes.Repeat([]byte{7}, proto.HashSize)
	tests := []struct {
		name     string
		prepare  func(t *testing.T, q *Queue)
		head     uint64
		wantSeqs []uint64
		wantNext uint64
	}{
		{"new queue, empty fleet", nil, 0, []uint64{1, 2, 3}, 4},
		{"new queue renumbered onto the fleet's head", nil, 50, []uint64{51, 52, 53}, 54},
		{"based queue drops what the fleet holds", func(t *testing.T, q *Queue) {
			q.Sync(context.Background(), 0, nil)
		}, 2, []uint64{3}, 4},
		{"based queue behind the fleet continues after it", func(t *testing.T, q *Queue) {
			q.Sync(context.Background(), 0, nil)
		}, 10, nil, 11},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := openQueue(t, Config{})
			if tt.prepare != nil {
				tt.prepare(t, q)
			}
			appendN(t, q, 3, "test")
			if err := q.Sync(context.Background(), tt.head, fleetHash); err != nil {
				t.Fatal(err)
			}
			evs := readAll(t, q)
			var seqs []uint64
			for _, e := range evs {
				seqs = append(seqs, e.Seq)
			}
			if fmt.Sprint(seqs) != fmt.Sprint(tt.wantSeqs) {
				t.Errorf("seqs = %v, want %v", seqs, tt.wantSeqs)
			}
			if tt.prepare == nil && len(evs) > 0 {
				prev := fleetHash
				if tt.head == 0 {
					prev = nil // an empty fleet's chain starts from zero
				}
				checkChain(t, evs, tt.head+1, prev)
			}
			seq, _ := q.Append(context.Background(), &proto.AuditEvent{Type: "next"})
			if seq != tt.wantNext {
				t.Errorf("next seq = %d, want %d", seq, tt.wantNext)
			}
		})
	}
}

// setState changes q's state on disk and in memory, as a damaged file's
// rebuild may leave it.
func setState(t *testing.T, q *Queue, f func(st *state)) {
	t.Helper()
	q.mu.Lock()
	defer q.mu.Unlock()
	f(&q.st)
	if err := q.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(metaBucket).Put(stateKey, q.st.marshal())
	}); err != nil {
		t.Fatal(err)
	}
}

func TestSyncAfterSalvageWithoutState(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name     string
		head     uint64
		wantSeqs []uint64
	}{
		// Salvaged 1..5, then 2 new events 6 and 7.
		{"the fleet is behind the salvaged events: numbers kept", 3, []uint64{4, 5, 6, 7}},
		{"the fleet holds the salvaged events: new ones move past its head", 9, []uint64{10, 11}},
		{"the fleet holds exactly the salvaged events", 5, []uint64{6, 7}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := openQueue(t, Config{})
			q.Sync(ctx, 0, nil)
			appendN(t, q, 5, "salvaged")
			setState(t, q, func(st *state) { st.Salvaged = 5 })
			appendN(t, q, 2, "new")
			if err := q.Sync(ctx, tt.head, bytes.Repeat([]byte{1}, 32)); err != nil {
				t.Fatal(err)
			}
			var seqs []uint64
			var newOnes int
			for _, e := range readAll(t, q) {
				seqs = append(seqs, e.Seq)
				if e.Type == "new" {
					newOnes++
				}
			}
			if fmt.Sprint(seqs) != fmt.Sprint(tt.wantSeqs) || newOnes != 2 {
				t.Errorf("seqs = %v (%d new), want %v with both new events", seqs, newOnes, tt.wantSeqs)
			}
		})
	}
}

func TestOwnerChangeRebases(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	q := openQueue(t, Config{Path: path, Source: "old"})
	q.Sync(context.Background(), 0, nil)
	appendN(t, q, 2, "test")
	q.Close()
	q = openQueue(t, Config{Path: path, Source: "new"})
	if err := q.Sync(context.Background(), 0, nil); err != nil {
		t.Fatal(err)
	}
	evs := readAll(t, q)
	if len(evs) != 2 || evs[0].Seq != 1 {
		t.Fatalf("events = %+v", evs)
	}
	checkChain(t, evs, 1, nil)
}

func TestCompaction(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	q := openQueue(t, Config{Path: path, CompactAbove: 256 << 10})
	big := string(bytes.Repeat([]byte("x"), 1500))
	appendConcurrently(t, q, 1000, func(i int) *proto.AuditEvent {
		return &proto.AuditEvent{Type: "big", Message: big + strconv.Itoa(i)}
	})
	fi, _ := os.Stat(path)
	grown := fi.Size()
	evs := readAll(t, q)
	q.Ack(evs[len(evs)-1].Seq, evs[len(evs)-1].Hash)
	// The ack is applied by the writer; a call after it waits for it.
	q.Remember(context.Background(), "x", "y")
	appendN(t, q, 1, "small")
	q.Close()
	fi, _ = os.Stat(path)
	if fi.Size() >= grown/4 {
		t.Errorf("file is %d bytes after draining, was %d: not compacted", fi.Size(), grown)
	}
	q = openQueue(t, Config{Path: path})
	if evs := readAll(t, q); len(evs) != 1 || evs[0].Seq != 1001 {
		t.Errorf("after compaction: %+v, want event 1001", evs)
	}
}

// damage functions for TestDamagedFile: each changes a closed queue file.
var damages = []struct {
	name   string
	damage func(t *testing.T, path string)
	// wantKept is the least number of the 300 events that must survive.
	wantKept int
}{
	{"truncated to half", func(t *testing.T, path string) {
		fi, _ := os.Stat(path)
		os.Truncate(path, fi.Size()/2)
	}, 1},
	{"truncated to 100 bytes", func(t *testing.T, path string) { os.Truncate(path, 100) }, 0},
	{"empty", func(t *testing.T, path string) { os.Truncate(path, 0) }, 0},
	{"meta pages zeroed", func(t *testing.T, path string) {
		f, _ := os.OpenFile(path, os.O_RDWR, 0)
		f.WriteAt(make([]byte, 2*os.Getpagesize()), 0)
		f.Close()
	}, 250},
	{"garbage in a page of events", func(t *testing.T, path string) {
		// Overwrite the middle of a leaf page of events the file still uses:
		// bbolt copies pages on write, so the file also holds stale copies
		// that are free, and junk in one of those would be no damage.
		ps := os.Getpagesize()
		off := liveLeafPage(t, path) * ps
		junk := bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, ps/8)
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		// Right after the page header: the element headers, which every
		// read of the page uses (junk in unused space would be no damage).
		if _, err := f.WriteAt(junk, int64(off+16)); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}, 100},
	{"garbage in the free list", func(t *testing.T, path string) {
		// A free list page that says it lists far more pages than it
		// holds: bbolt copies that many ids when it opens the file, out
		// of its memory map (a fatal fault, before this was checked).
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		ps := os.Getpagesize()
		meta := b[pageHeaderSize:]
		if other := b[ps+pageHeaderSize:]; native.Uint64(other[48:]) > native.Uint64(meta[48:]) {
			meta = other // the newer meta page names the free list in use
		}
		off := int(native.Uint64(meta[32:])) * ps
		native.PutUint16(b[off+10:], 0xFFFF) // the count is in the next 8 bytes
		native.PutUint64(b[off+pageHeaderSize:], 1<<40)
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}, 250},
	{"not a database", func(t *testing.T, path string) {
		os.WriteFile(path, bytes.Repeat([]byte("not bolt "), 10000), 0o600)
	}, 0},
}

// liveLeafPage returns the number of the first page of the closed queue file
// at path that is a leaf of more than three events and not free.
func liveLeafPage(t *testing.T, path string) int {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	page := -1
	db.View(func(tx *bolt.Tx) error {
		for id := 2; ; id++ {
			info, err := tx.Page(id)
			if err != nil || info == nil {
				return err
			}
			if info.Type == "leaf" && info.Count > 3 {
				page = id
				return nil
			}
		}
	})
	if page < 0 {
		t.Fatal("no leaf page of events found")
	}
	return page
}

func TestDamagedFile(t *testing.T) {
	for _, tt := range damages {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.db")
			q := openQueue(t, Config{Path: path})
			q.Sync(context.Background(), 0, nil)
			appendConcurrently(t, q, 300, func(i int) *proto.AuditEvent {
				return &proto.AuditEvent{Type: "test", Message: fmt.Sprintf("event %d %0100d", i, i)}
			})
			q.Close()
			tt.damage(t, path)

			q = openQueue(t, Config{Path: path})
			evs := readAll(t, q)
			if len(evs) == 0 || evs[len(evs)-1].Type != proto.EventAuditDamaged {
				t.Fatalf("no audit.damaged event at the end of %d events", len(evs))
			}
			kept := len(evs) - 1
			if kept < tt.wantKept {
				t.Errorf("kept %d events, want at least %d", kept, tt.wantKept)
			}
			// Whatever was kept is genuine: each event checks against
			// its own chain hash when its predecessor is there too.
			for i := 1; i < kept; i++ {
				if evs[i].Seq == evs[i-1].Seq+1 {
					h, _ := proto.ChainHash(evs[i-1].Hash, &evs[i])
					if !bytes.Equal(h, evs[i].Hash) {
						t.Errorf("kept event %d does not chain to %d", evs[i].Seq, evs[i-1].Seq)
					}
				}
			}
			if st := q.Status(); st.Damaged != 1 {
				t.Errorf("status = %+v, want damaged 1", st)
			}
			if _, err := os.Stat(path + ".damaged"); err != nil {
				t.Errorf("damaged file not kept aside: %v", err)
			}
			d := evs[len(evs)-1]
			t.Logf("kept %d; %s", kept, d.Message)
			// The queue works on.
			appendN(t, q, 1, "after")
			q.Close()
			q = openQueue(t, Config{Path: path})
			if st := q.Status(); st.Pending != uint64(len(evs)+1) {
				t.Errorf("after reopening the rebuilt file: %d pending, want %d", st.Pending, len(evs)+1)
			}
		})
	}
}

func TestLockedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	openQueue(t, Config{Path: path})
	_, err := Open(Config{Path: path, LockTimeout: 50 * time.Millisecond})
	if err == nil {
		t.Fatal("a second Open of a locked file succeeded")
	}
}

func TestRemember(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.db")
	q := openQueue(t, Config{Path: path})
	if old, err := q.Remember(context.Background(), "config", "a"); err != nil || old != "" {
		t.Fatalf("first Remember = %q, %v", old, err)
	}
	q.Close()
	q = openQueue(t, Config{Path: path})
	if old, _ := q.Remember(context.Background(), "config", "b"); old != "a" {
		t.Errorf("Remember after reopen = %q, want a", old)
	}
}

func FuzzScan(f *testing.F) {
	dir := f.TempDir()
	path := filepath.Join(dir, "audit.db")
	q, err := Open(Config{Path: path, Source: "d"})
	if err != nil {
		f.Fatal(err)
	}
	for i := range 20 {
		q.Append(context.Background(), &proto.AuditEvent{Type: "test", Message: strconv.Itoa(i)})
	}
	q.Close()
	b, _ := os.ReadFile(path)
	f.Add(b)
	f.Add(b[:len(b)/3])
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		s := scan(data)
		for i := 1; i < len(s.events); i++ {
			if s.events[i].Seq <= s.events[i-1].Seq {
				t.Fatalf("events out of order: %d then %d", s.events[i-1].Seq, s.events[i].Seq)
			}
		}
	})
}

func FuzzState(f *testing.F) {
	st := state{Gen: 3, Next: 9, Head: []byte{1}, Attrs: map[string]string{"a": "b"}}
	f.Add(st.marshal())
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := unmarshalState(b)
		if err != nil {
			return
		}
		s2, err := unmarshalState(s.marshal())
		if err != nil || !bytes.Equal(s2.marshal(), s.marshal()) {
			t.Fatalf("state does not round-trip: %v", err)
		}
	})
}
