package audit

import (
	"context"
	"errors"
	"strings"
	"testing"

	"remoteler.dev/edge/proto"
)

// TestDeviceQuota: a device that uploads without end is stopped at its
// quota; its refused batches are not stored, its head query is still
// answered, another device and the fleet's own events go on, and raising
// the quota lets the refused events in, none lost or doubled.
func TestDeviceQuota(t *testing.T) {
	ctx := context.Background()
	var quota int64 = 4000
	l, err := Open(Config{Path: t.TempDir() + "/audit.db", Limits: func() Limits { return Limits{DeviceQuota: quota} }})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	evs := chain(t, 1, 200, nil, func(i int) proto.AuditEvent {
		return proto.AuditEvent{Time: 1_700_000_000_000 + int64(i), Type: "test.generated", Message: strings.Repeat("x", 40)}
	})
	next := 0
	refused := 0
	for next < len(evs) && refused < 3 {
		end := min(next+10, len(evs))
		ack, err := l.Ingest(ctx, "flood", &proto.AuditBatch{ID: uint64(next), Events: evs[next:end]})
		if err != nil {
			t.Fatal(err)
		}
		if ack.Err != nil {
			if ack.Err.Code != proto.CodeUnavailable || !strings.Contains(ack.Err.Message, "quota") {
				t.Fatalf("refusal = %+v, want unavailable: over quota", ack.Err)
			}
			refused++
			continue
		}
		next = int(ack.Through)
	}
	st, _ := l.DeviceStatus("flood")
	if st.Stored > quota || st.Stored < quota/2 || !strings.Contains(st.Paused, "quota") {
		t.Errorf("flood's status = %+v, want at most %d bytes held and paused for its quota", st, quota)
	}
	if ack, _ := l.Ingest(ctx, "flood", &proto.AuditBatch{ID: 999}); ack.Err != nil || ack.Through != st.Head {
		t.Errorf("head query while paused: %+v, want answered", ack)
	}
	if ack, _ := l.Ingest(ctx, "other", &proto.AuditBatch{Events: chain(t, 1, 5, nil, simple)}); ack.Err != nil {
		t.Errorf("another device refused: %+v", ack.Err)
	}
	if err := l.Append(ctx, &proto.AuditEvent{Type: proto.EventUserLogin, User: "alice"}); err != nil {
		t.Errorf("the fleet's own event: %v", err)
	}
	recs, _, _ := l.Search(ctx, Query{Type: proto.EventUploadsPaused})
	if len(recs) != 1 || recs[0].Event.Device != "flood" {
		t.Errorf("uploads.paused events = %+v, want one for flood", recs)
	}

	quota = 1 << 20
	for next < len(evs) {
		ack, _ := l.Ingest(ctx, "flood", &proto.AuditBatch{Events: evs[next:min(next+10, len(evs))]})
		if ack.Err != nil {
			t.Fatalf("after the quota was raised: %+v", ack.Err)
		}
		next = int(ack.Through)
	}
	v, _ := verifyChains(ctx, l)
	for _, c := range v {
		if c.Source == "flood" && (!c.OK || c.Events != 200) {
			t.Errorf("flood's chain after resuming: %+v", c)
		}
	}
	if st, _ := l.DeviceStatus("flood"); st.Paused != "" {
		t.Errorf("still paused after resuming: %q", st.Paused)
	}
}

func TestFloorPausesDeviceUploadsOnly(t *testing.T) {
	ctx := context.Background()
	low := errors.New("the fleet's disk is nearly full")
	var room error = low
	l, err := Open(Config{Path: t.TempDir() + "/audit.db", Room: func() error { return room }})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	evs := chain(t, 1, 5, nil, simple)
	ack, _ := l.Ingest(ctx, "dev-1", &proto.AuditBatch{Events: evs})
	if ack.Err == nil || ack.Err.Code != proto.CodeUnavailable || !strings.Contains(ack.Err.Message, "nearly full") {
		t.Fatalf("under the floor: %+v, want unavailable", ack)
	}
	if err := l.Append(ctx, &proto.AuditEvent{Type: proto.EventUserLogin, User: "alice"}); err != nil {
		t.Errorf("the fleet's own event under the floor: %v", err)
	}
	room = nil
	if ack, _ := l.Ingest(ctx, "dev-1", &proto.AuditBatch{Events: evs}); ack.Err != nil || ack.Through != 5 {
		t.Errorf("with room again: %+v", ack)
	}
}

func TestPruneToSize(t *testing.T) {
	ctx := context.Background()
	l, _ := openLog(t, nil)
	for _, src := range []string{"dev-1", "dev-2"} {
		l.Ingest(ctx, src, &proto.AuditBatch{Events: chain(t, 1, 50, nil, simple)})
	}
	total, _, _ := l.Usage()
	n, err := l.PruneToSize(ctx, total/2)
	if err != nil || n == 0 {
		t.Fatalf("pruned %d, %v", n, err)
	}
	after, by, _ := l.Usage()
	if after > total/2 || after < total/3 {
		t.Errorf("%d bytes after pruning to %d (from %d): want at most the cap, not much less", after, total/2, total)
	}
	if by["dev-1"] == 0 || by["dev-2"] == 0 {
		t.Errorf("a whole source went: %v (both had events of the same times)", by)
	}
	v, _ := verifyChains(ctx, l)
	for _, c := range v {
		if !c.OK {
			t.Errorf("%s after pruning to size: %v", c.Source, c.Problems)
		}
	}
}
