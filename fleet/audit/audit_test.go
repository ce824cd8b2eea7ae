package audit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// verifyChains is Verify's chains.
func verifyChains(ctx context.Context, l *Log) ([]api.AuditChain, error) {
	v, err := l.Verify(ctx)
	if err != nil {
		return nil, err
	}
	return v.Chains, nil
}

func openLog(t *testing.T, now func() time.Time) (*Log, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.db")
	l, err := Open(Config{Path: path, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, path
}

// chain builds n chained device events starting at seq first after prev.
func chain(t *testing.T, first uint64, n int, prev []byte, mk func(i int) proto.AuditEvent) []proto.AuditEvent {
	t.Helper()
	var out []proto.AuditEvent
	for i := range n {
		e := mk(i)
		e.Seq = first + uint64(i)
		h, err := proto.ChainHash(prev, &e)
		if err != nil {
			t.Fatal(err)
		}
		e.Hash, prev = h, h
		out = append(out, e)
	}
	return out
}

func simple(i int) proto.AuditEvent {
	return proto.AuditEvent{Time: 1_700_000_000_000 + int64(i)*1000, Type: proto.EventExec, User: "alice", Session: fmt.Sprintf("s%d", i%3)}
}

func TestIngestDedupAndAck(t *testing.T) {
	l, _ := openLog(t, nil)
	ctx := context.Background()
	evs := chain(t, 1, 10, nil, simple)
	ack, err := l.Ingest(ctx, "dev-1", &proto.AuditBatch{Events: evs[:6], Queue: &proto.AuditQueueStatus{Pending: 10, Dropped: 2}})
	if err != nil || ack.Err != nil || ack.Through != 6 || !bytes.Equal(ack.Hash, evs[5].Hash) {
		t.Fatalf("first batch: %+v, %v", ack, err)
	}
	// The same events again (an ack was lost), overlapping the next ones.
	ack, err = l.Ingest(ctx, "dev-1", &proto.AuditBatch{Events: evs[3:]})
	if err != nil || ack.Through != 10 {
		t.Fatalf("second batch: %+v, %v", ack, err)
	}
	ack, _ = l.Ingest(ctx, "dev-1", &proto.AuditBatch{})
	if ack.Through != 10 || !bytes.Equal(ack.Hash, evs[9].Hash) {
		t.Errorf("head query = %+v, want 10", ack)
	}
	recs, _, err := l.Search(ctx, Query{Device: "dev-1"})
	if err != nil || len(recs) != 10 {
		t.Fatalf("search: %d records, %v; want 10", len(recs), err)
	}
	res, err := verifyChains(ctx, l)
	if err != nil || len(res) != 1 || !res[0].OK || res[0].Events != 10 {
		t.Fatalf("verify = %+v, %v", res, err)
	}
	if res[0].Queue == nil || res[0].Queue.Dropped != 2 {
		t.Errorf("queue status = %+v, want dropped 2", res[0].Queue)
	}
	st, ok := l.DeviceStatus("dev-1")
	if !ok || st.Head != 10 || st.Dropped != 2 {
		t.Errorf("device status = %+v", st)
	}
}

func TestIngestRefusesOtherDevicesEvents(t *testing.T) {
	l, _ := openLog(t, nil)
	evs := chain(t, 1, 1, nil, func(int) proto.AuditEvent { return proto.AuditEvent{Type: "x", Device: "dev-2"} })
	ack, err := l.Ingest(context.Background(), "dev-1", &proto.AuditBatch{Events: evs})
	if err != nil || ack.Err == nil || ack.Err.Code != proto.CodeForbidden {
		t.Errorf("ack = %+v, %v; want forbidden", ack, err)
	}
	if _, err := l.Ingest(context.Background(), api.SourceFleet, &proto.AuditBatch{}); err == nil {
		t.Error("a device called fleet was accepted")
	}
}

// TestIngestRefusesUnprintableNames: a device cannot put escape sequences
// in the fields of its events that name things; free text (a command the
// user ran) is kept as it is.
func TestIngestRefusesUnprintableNames(t *testing.T) {
	l, _ := openLog(t, nil)
	bad := chain(t, 1, 1, nil, func(int) proto.AuditEvent { return proto.AuditEvent{Type: "exec\x1b]52;c;AA\x07"} })
	ack, err := l.Ingest(context.Background(), "dev-1", &proto.AuditBatch{Events: bad})
	if err != nil || ack.Err == nil || ack.Err.Code != proto.CodeBadRequest || !strings.Contains(ack.Err.Message, `\x1b]52`) {
		t.Errorf("ack = %+v, %v; want a bad request naming the type, escaped", ack, err)
	}
	free := chain(t, 1, 1, nil, func(int) proto.AuditEvent {
		return proto.AuditEvent{Type: proto.EventExec, Fields: map[string]string{"command": "printf '\x1b[2J'"}}
	})
	if ack, err := l.Ingest(context.Background(), "dev-1", &proto.AuditBatch{Events: free}); err != nil || ack.Err != nil || ack.Through != 1 {
		t.Errorf("a command with escapes: ack = %+v, %v; want it stored", ack, err)
	}
}

func TestFleetAppendChains(t *testing.T) {
	l, _ := openLog(t, nil)
	for i := range 5 {
		if err := l.Append(context.Background(), &proto.AuditEvent{Type: proto.EventUserLogin, User: fmt.Sprint("u", i)}); err != nil {
			t.Fatal(err)
		}
	}
	seq, _, _ := l.Head(api.SourceFleet)
	if seq != 5 {
		t.Errorf("head = %d, want 5", seq)
	}
	res, _ := verifyChains(context.Background(), l)
	if len(res) != 1 || !res[0].OK || res[0].Source != api.SourceFleet {
		t.Errorf("verify = %+v", res)
	}
}

// broker records the fleet's session.start of session for user on
// device, as the fleet does before it opens the session's stream.
func broker(t *testing.T, l *Log, at int64, device, session, user string) {
	t.Helper()
	err := l.Append(context.Background(), &proto.AuditEvent{Time: at, Type: proto.EventSessionStart, User: user, Login: "root",
		Session: session, Device: device})
	if err != nil {
		t.Fatal(err)
	}
}

func TestSearch(t *testing.T) {
	l, _ := openLog(t, nil)
	ctx := context.Background()
	const base = 1_700_000_000_000
	owner := []string{"alice", "bob", "alice"} // of sessions s0, s1, s2
	for k, u := range owner {
		broker(t, l, base+int64(k)*3000-100, "dev-1", fmt.Sprint("s", k), u)
	}
	evs := chain(t, 1, 9, nil, func(i int) proto.AuditEvent {
		types := []string{proto.EventSessionStart, proto.EventExec, proto.EventSessionEnd}
		return proto.AuditEvent{Time: base + int64(i)*1000, Type: types[i%3], User: owner[i/3], Session: fmt.Sprint("s", i/3)}
	})
	l.Ingest(ctx, "dev-1", &proto.AuditBatch{Events: evs})
	l.Append(ctx, &proto.AuditEvent{Time: base + 500, Type: proto.EventAccessDenied, User: "bob", Device: "dev-1"})
	l.Append(ctx, &proto.AuditEvent{Time: base + 600, Type: proto.EventUserLogin, User: "carol"})
	at := func(i int) time.Time { return time.UnixMilli(base + int64(i)*1000) }
	tests := []struct {
		name string
		q    Query
		want int
		more bool
	}{
		{"all", Query{}, 14, false},
		{"device (with the fleet's events about it)", Query{Device: "dev-1"}, 13, false},
		{"user", Query{User: "bob"}, 5, false},
		{"session", Query{Session: "s1"}, 4, false},
		{"type", Query{Type: proto.EventExec}, 3, false},
		{"type prefix", Query{Type: "session.*"}, 9, false},
		{"since", Query{Since: at(5)}, 5, false},
		{"until", Query{Until: at(2)}, 5, false},
		{"since and until on the user index", Query{User: "alice", Since: at(2), Until: at(7)}, 3, false},
		{"user and type", Query{User: "alice", Type: "session.*"}, 6, false},
		{"limit", Query{Limit: 4}, 4, true},
		{"nothing", Query{User: "nobody"}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			recs, more, err := l.Search(ctx, tt.q)
			if err != nil {
				t.Fatal(err)
			}
			if len(recs) != tt.want || more != tt.more {
				t.Errorf("got %d (more %v), want %d (more %v)", len(recs), more, tt.want, tt.more)
			}
			for i := 1; i < len(recs); i++ {
				if recs[i].Event.Time < recs[i-1].Event.Time {
					t.Errorf("not in time order at %d", i)
				}
			}
			for _, r := range recs {
				if r.Unverified != "" {
					t.Errorf("event %s/%d unverified: %s", r.Source, r.Event.Seq, r.Unverified)
				}
			}
		})
	}
	recs, _, _ := l.Search(ctx, Query{Session: "s0", Limit: 2})
	x := Export(recs[1], map[string]string{"dev-1": "pi-1"})
	if x.Source != "dev-1" || x.Device != "dev-1" || x.DeviceName != "pi-1" || len(x.Hash) != 64 || x.Time.IsZero() || x.AssertedBy != "device:dev-1" {
		t.Errorf("export = %+v", x)
	}
	if x := Export(recs[0], nil); x.AssertedBy != api.SourceFleet {
		t.Errorf("the fleet's event exported as asserted by %q", x.AssertedBy)
	}
}

// TestDevicesCannotSpeakForUsers: a device's events that name a session
// the fleet did not broker to it, another user than the session's, or a
// user without a session are kept in its chain but marked unverified, and
// never show in a user's or a session's search.
func TestDevicesCannotSpeakForUsers(t *testing.T) {
	l, _ := openLog(t, nil)
	ctx := context.Background()
	const base = 1_700_000_000_000
	broker(t, l, base, "dev-1", "s-dev1", "alice")
	broker(t, l, base, "dev-2", "s-dev2", "bob")
	planted := []struct {
		name string
		e    proto.AuditEvent
		why  string // "" when the event verifies
	}{
		{"its own session, its user", proto.AuditEvent{Type: proto.EventExec, User: "bob", Login: "root", Session: "s-dev2"}, ""},
		{"its own event, no user", proto.AuditEvent{Type: proto.EventAgentStart}, ""},
		{"its own update step", proto.AuditEvent{Type: proto.EventUpdateRolledBack, Outcome: proto.OutcomeFailure, Message: "the new agent was not healthy in time",
			Fields: map[string]string{"rollout": "r-1", "version": "v2", "from": "v1"}}, ""},
		{"another device's session", proto.AuditEvent{Type: proto.EventExec, User: "alice", Login: "root", Session: "s-dev1"}, "did not broker"},
		{"a session never brokered", proto.AuditEvent{Type: proto.EventSessionStart, User: "alice", Session: "made-up"}, "did not broker"},
		{"its session, another user", proto.AuditEvent{Type: proto.EventExec, User: "alice", Session: "s-dev2"}, `brokered session "s-dev2" for "bob"`},
		{"its session, another login", proto.AuditEvent{Type: proto.EventExec, User: "bob", Login: "admin", Session: "s-dev2"}, "for login"},
		{"a user without a session", proto.AuditEvent{Type: proto.EventUserLogin, User: "alice"}, "cannot name a user"},
	}
	evs := chain(t, 1, len(planted), nil, func(i int) proto.AuditEvent {
		e := planted[i].e
		e.Time = base + int64(i+1)*1000
		return e
	})
	ack, err := l.Ingest(ctx, "dev-2", &proto.AuditBatch{Events: evs})
	if err != nil || ack.Err != nil || ack.Through != uint64(len(planted)) {
		t.Fatalf("ingest: %+v, %v; want every event taken (the chain stays whole)", ack, err)
	}
	recs, _, _ := l.Search(ctx, Query{Device: "dev-2"})
	bySeq := map[uint64]Record{}
	for _, r := range recs {
		if r.Source == "dev-2" {
			bySeq[r.Event.Seq] = r
		}
	}
	for i, p := range planted {
		t.Run(p.name, func(t *testing.T) {
			r, ok := bySeq[uint64(i+1)]
			switch {
			case !ok:
				t.Fatal("not stored")
			case p.why == "" && r.Unverified != "":
				t.Errorf("marked unverified: %s", r.Unverified)
			case p.why != "" && !strings.Contains(r.Unverified, p.why):
				t.Errorf("unverified = %q, want it to say %q", r.Unverified, p.why)
			}
			if x := Export(r, nil); x.AssertedBy != "device:dev-2" || x.Unverified != r.Unverified {
				t.Errorf("export: asserted by %q, unverified %q", x.AssertedBy, x.Unverified)
			}
		})
	}
	for _, q := range []Query{{User: "alice"}, {Session: "s-dev1"}, {Session: "made-up"}} {
		recs, _, _ := l.Search(ctx, q)
		for _, r := range recs {
			if r.Source != api.SourceFleet {
				t.Errorf("search %+v returned dev-2's event %d: %+v", q, r.Event.Seq, r.Event)
			}
		}
	}
	var fromDev []uint64
	bobs, _, _ := l.Search(ctx, Query{User: "bob"})
	for _, r := range bobs {
		if r.Source == "dev-2" {
			fromDev = append(fromDev, r.Event.Seq)
		}
	}
	if len(fromDev) != 1 || fromDev[0] != 1 {
		t.Errorf("bob's events from dev-2: %v, want the verified one (1)", fromDev)
	}
	if st, _ := l.DeviceStatus("dev-2"); st.Unverified != 5 {
		t.Errorf("dev-2's status counts %d unverified events, want 5", st.Unverified)
	}
	if res, _ := verifyChains(ctx, l); len(res) != 2 {
		t.Errorf("verify = %+v", res)
	} else {
		for _, c := range res {
			if !c.OK {
				t.Errorf("chain %s: %v (unverified claims do not break a chain)", c.Source, c.Problems)
			}
		}
	}
	if _, err := l.Brokered("dev-2", "s-dev1"); !errors.Is(err, ErrNotBrokered) {
		t.Errorf("Brokered(dev-2, s-dev1) = %v, want ErrNotBrokered", err)
	}
	if e, err := l.Brokered("dev-1", "s-dev1"); err != nil || e.User != "alice" {
		t.Errorf("Brokered(dev-1, s-dev1) = %+v, %v; want alice's session", e, err)
	}
}

// tamper opens the log's file directly, as an attacker with the disk would.
func tamper(t *testing.T, path string, f func(tx *bolt.Tx) error) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(f); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyDetectsTampering(t *testing.T) {
	tests := []struct {
		name   string
		change func(tx *bolt.Tx) error
		want   string
	}{
		{"edited event", func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketEvents).Bucket([]byte("dev-1"))
			e, _ := proto.UnmarshalEvent(b.Get(seqKey(4)))
			e.User = "mallory"
			v, _ := proto.MarshalEvent(e)
			return b.Put(seqKey(4), v)
		}, "event 4 was altered"},
		{"edited event with its hash recomputed", func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketEvents).Bucket([]byte("dev-1"))
			prev, _ := proto.UnmarshalEvent(b.Get(seqKey(3)))
			e, _ := proto.UnmarshalEvent(b.Get(seqKey(4)))
			e.User = "mallory"
			e.Hash, _ = proto.ChainHash(prev.Hash, e)
			v, _ := proto.MarshalEvent(e)
			return b.Put(seqKey(4), v)
		}, "event 5 was altered, or the chain broke"},
		{"deleted event", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketEvents).Bucket([]byte("dev-1")).Delete(seqKey(5))
		}, "event 5 is missing"},
		{"deleted last event", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketEvents).Bucket([]byte("dev-1")).Delete(seqKey(8))
		}, "events after 7 are missing"},
		{"garbage", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketEvents).Bucket([]byte("dev-1")).Put(seqKey(2), []byte{0xff, 0x00})
		}, "event 2 is unreadable"},
		{"fleet event deleted", func(tx *bolt.Tx) error {
			return tx.Bucket(bucketEvents).Bucket([]byte(api.SourceFleet)).Delete(seqKey(1))
		}, "event 1 is missing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, path := openLog(t, nil)
			ctx := context.Background()
			l.Ingest(ctx, "dev-1", &proto.AuditBatch{Events: chain(t, 1, 8, nil, simple)})
			l.Append(ctx, &proto.AuditEvent{Type: proto.EventUserLogin, User: "alice"})
			l.Append(ctx, &proto.AuditEvent{Type: proto.EventUserLogin, User: "bob"})
			l.Close()
			tamper(t, path, tt.change)
			l, err := Open(Config{Path: path})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			res, err := verifyChains(ctx, l)
			if err != nil {
				t.Fatal(err)
			}
			all := ""
			bad := 0
			for _, r := range res {
				all += strings.Join(r.Problems, "; ")
				if !r.OK {
					bad++
				}
			}
			if bad != 1 || !strings.Contains(all, tt.want) {
				t.Errorf("verify: %d bad chains, problems %q; want one mentioning %q", bad, all, tt.want)
			}
		})
	}
}

func TestPruneKeepsTheChainVerifiable(t *testing.T) {
	now := time.UnixMilli(1_700_000_100_000)
	l, _ := openLog(t, func() time.Time { return now })
	ctx := context.Background()
	l.Ingest(ctx, "dev-1", &proto.AuditBatch{Events: chain(t, 1, 10, nil, simple)})
	n, err := l.Prune(ctx, time.UnixMilli(1_700_000_004_500))
	if err != nil || n != 5 {
		t.Fatalf("pruned %d, %v; want 5", n, err)
	}
	res, _ := verifyChains(ctx, l)
	if len(res) != 1 || !res[0].OK || res[0].Events != 5 || res[0].First != 6 {
		t.Errorf("verify after prune = %+v", res)
	}
	if recs, _, _ := l.Search(ctx, Query{}); len(recs) != 5 {
		t.Errorf("search after prune: %d, want 5", len(recs))
	}
	// A pruned event sent again is not stored again.
	l.Ingest(ctx, "dev-1", &proto.AuditBatch{Events: chain(t, 1, 2, nil, simple)})
	if recs, _, _ := l.Search(ctx, Query{}); len(recs) != 5 {
		t.Errorf("pruned events came back: %d, want 5", len(recs))
	}
	// The fleet's own chain survives pruning too.
	l.Append(ctx, &proto.AuditEvent{Time: 1, Type: "old"})
	l.Prune(ctx, time.UnixMilli(2))
	l.Append(ctx, &proto.AuditEvent{Type: "new"})
	res, _ = verifyChains(ctx, l)
	for _, r := range res {
		if !r.OK {
			t.Errorf("%s: %v", r.Source, r.Problems)
		}
	}
}

func FuzzDecodeHead(f *testing.F) {
	h := &head{Seq: 3, Hash: []byte{1}, Count: 3, Queue: &proto.AuditQueueStatus{Dropped: 1}}
	f.Add(h.encode())
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeHead(b)
		if err != nil {
			return
		}
		h2, err := decodeHead(h.encode())
		if err != nil || !bytes.Equal(h2.encode(), h.encode()) {
			t.Fatalf("head does not round-trip: %v", err)
		}
	})
}

// TestSearchPage pages through events both ways, with several in one
// millisecond (a cursor is an event, not a time), and with a filter.
func TestSearchPage(t *testing.T) {
	l, _ := openLog(t, nil)
	ctx := context.Background()
	var want []string
	for i := range 10 {
		user := "alice"
		if i%3 == 0 {
			user = "bob"
		}
		// Three events share each millisecond.
		e := &proto.AuditEvent{Time: 1_700_000_000_000 + int64(i/3), Type: proto.EventUserLogin, User: user, Message: fmt.Sprint(i)}
		if err := l.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
		want = append(want, fmt.Sprint(i))
	}
	collect := func(t *testing.T, q Query, newest bool) []string {
		t.Helper()
		var got []string
		cursor := ""
		for range 20 {
			p, err := l.SearchPage(ctx, q, newest, cursor)
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Records) > q.Limit {
				t.Fatalf("page of %d, limit %d", len(p.Records), q.Limit)
			}
			for _, r := range p.Records {
				got = append(got, r.Event.Message)
			}
			if p.Next == "" {
				return got
			}
			cursor = p.Next
		}
		t.Fatal("paging did not end")
		return nil
	}
	reversed := slices.Clone(want)
	slices.Reverse(reversed)
	if got := collect(t, Query{Limit: 4}, false); !slices.Equal(got, want) {
		t.Errorf("oldest first: %v, want %v", got, want)
	}
	if got := collect(t, Query{Limit: 4}, true); !slices.Equal(got, reversed) {
		t.Errorf("newest first: %v, want %v", got, reversed)
	}
	if got := collect(t, Query{Limit: 2, User: "bob"}, true); !slices.Equal(got, []string{"9", "6", "3", "0"}) {
		t.Errorf("bob's, newest first: %v", got)
	}
	if got := collect(t, Query{Limit: 1, Until: time.UnixMilli(1_700_000_000_002)}, true); !slices.Equal(got, []string{"5", "4", "3", "2", "1", "0"}) {
		t.Errorf("before the third millisecond, newest first: %v", got)
	}
	for _, bad := range []string{"zz", "00", strings.Repeat("ab", 5000)} {
		if _, err := l.SearchPage(ctx, Query{}, true, bad); !errors.Is(err, ErrCursor) {
			t.Errorf("cursor %.20q: got %v, want ErrCursor", bad, err)
		}
	}
}

// TestOnStoredAndBacklog: every event stored is told once, after it is
// committed (a batch sent again tells nothing); the backlog adds up the
// devices' queues.
func TestOnStoredAndBacklog(t *testing.T) {
	var mu sync.Mutex
	var told []string
	l, err := Open(Config{Path: filepath.Join(t.TempDir(), "audit.db"), OnStored: func(source string, e *proto.AuditEvent) {
		mu.Lock()
		defer mu.Unlock()
		told = append(told, source+":"+e.Type)
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	if err := l.Append(ctx, &proto.AuditEvent{Type: proto.EventUserLoginFailed}); err != nil {
		t.Fatal(err)
	}
	evs := chain(t, 1, 2, nil, simple)
	for range 2 { // the second time, duplicates
		if _, err := l.Ingest(ctx, "dev-1", &proto.AuditBatch{Events: evs, Queue: &proto.AuditQueueStatus{Pending: 7}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Ingest(ctx, "dev-2", &proto.AuditBatch{Queue: &proto.AuditQueueStatus{Pending: 5}}); err != nil {
		t.Fatal(err)
	}
	want := []string{api.SourceFleet + ":" + proto.EventUserLoginFailed, "dev-1:" + evs[0].Type, "dev-1:" + evs[1].Type}
	if !slices.Equal(told, want) {
		t.Errorf("told %v, want %v", told, want)
	}
	if n, err := l.Backlog(); err != nil || n != 12 {
		t.Errorf("backlog %d, %v; want 12", n, err)
	}
}
