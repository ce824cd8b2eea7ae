package audit

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/tools/logtest"
)

// TestRecorderGroupCommit records events from many goroutines at once,
// so that commits gather several: each is stored once, and the fleet's
// chain verifies.
func TestRecorderGroupCommit(t *testing.T) {
	l, _ := openLog(t, time.Now)
	r := &Recorder{Log: l, Cluster: "fleet", Logger: logtest.Logger(t)}
	const n = 200
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := r.Record(context.Background(), &proto.AuditEvent{Type: proto.EventAppRequest, User: "alice",
				Fields: map[string]string{"i": strconv.Itoa(i)}}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	recs, _, err := l.Search(context.Background(), Query{Type: proto.EventAppRequest, Limit: 1000})
	if err != nil || len(recs) != n {
		t.Fatalf("%d events stored (%v), want %d", len(recs), err, n)
	}
	seen := map[string]bool{}
	for _, rec := range recs {
		if seen[rec.Event.Fields["i"]] || rec.Event.Cluster != "fleet" || rec.Event.Outcome != proto.OutcomeSuccess {
			t.Fatalf("event %+v twice or incomplete", rec.Event)
		}
		seen[rec.Event.Fields["i"]] = true
	}
	v, err := l.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range v.Chains {
		if !c.OK || c.Events != n {
			t.Errorf("chain %s: %+v", c.Source, c)
		}
	}
}
