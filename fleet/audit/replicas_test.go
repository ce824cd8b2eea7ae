package audit

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	bolt "go.etcd.io/bbolt"

	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// memHeads is the fleet-wide heads in memory, as the store keeps them.
type memHeads struct {
	mu    sync.Mutex
	heads map[string]Head
	fail  error // Advance fails with it when set
}

func (m *memHeads) Load(_ context.Context, device string) (Head, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.heads[device], nil
}

func (m *memHeads) Advance(_ context.Context, device string, from, to Head) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.fail != nil {
		return m.fail
	}
	cur := m.heads[device]
	if cur.Seq != from.Seq || !bytes.Equal(cur.Hash, from.Hash) || cur.Replica != from.Replica {
		return errors.New("conflict")
	}
	m.heads[device] = to
	return nil
}

func openReplica(t *testing.T, heads Heads, id string) *Log {
	t.Helper()
	l, err := Open(Config{Path: filepath.Join(t.TempDir(), "audit.db"), Heads: heads, Replica: id})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func ingest(t *testing.T, l *Log, evs []proto.AuditEvent) *proto.AuditAck {
	t.Helper()
	ack, err := l.Ingest(context.Background(), "dev-1", &proto.AuditBatch{Events: evs})
	if err != nil || ack.Err != nil {
		t.Fatalf("ingest %d..%d: %+v, %v", evs[0].Seq, evs[len(evs)-1].Seq, ack, err)
	}
	return ack
}

func chainOf(t *testing.T, l *Log) api.AuditChain {
	t.Helper()
	chains, err := verifyChains(context.Background(), l)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range chains {
		if c.Source == "dev-1" {
			return c
		}
	}
	t.Fatalf("no chain of dev-1 in %+v", chains)
	return api.AuditChain{}
}

// TestOneChainOverReplicas: a device that moves a → b → a leaves its
// chain in stretches, each event stored once in the fleet, and each
// replica's log verifies on its own, with its hand-offs.
func TestOneChainOverReplicas(t *testing.T) {
	heads := &memHeads{heads: map[string]Head{}}
	a, b := openReplica(t, heads, "a"), openReplica(t, heads, "b")
	evs := chain(t, 1, 30, nil, simple)

	ingest(t, a, evs[0:10])
	// On b: the first batch overlaps what a holds (an ack lost in the
	// move); b stores only what the fleet does not have.
	if ack := ingest(t, b, evs[7:20]); ack.Through != 20 || !bytes.Equal(ack.Hash, evs[19].Hash) {
		t.Errorf("b's ack %+v, want through 20", ack)
	}
	// Back on a.
	if ack := ingest(t, a, evs[20:30]); ack.Through != 30 {
		t.Errorf("a's second ack %+v, want through 30", ack)
	}
	// A batch sent again to b after the device left it: all held.
	if ack := ingest(t, b, evs[25:30]); ack.Through != 30 {
		t.Errorf("b's ack of held events %+v, want through 30", ack)
	}

	ca, cb := chainOf(t, a), chainOf(t, b)
	if !ca.OK || !cb.OK {
		t.Fatalf("per-replica verification: a %+v; b %+v", ca, cb)
	}
	if ca.Events != 20 || cb.Events != 10 {
		t.Errorf("a holds %d events, b %d; want 20 and 10 (each once in the fleet)", ca.Events, cb.Events)
	}
	if len(ca.Handoffs) != 1 || ca.Handoffs[0].After != 10 || ca.Handoffs[0].Seq != 20 || ca.Handoffs[0].Replica != "b" {
		t.Errorf("a's hand-offs %+v, want one: after 10, continues from b's 20", ca.Handoffs)
	}
	if len(cb.Handoffs) != 1 || cb.Handoffs[0].After != 0 || cb.Handoffs[0].Seq != 10 || cb.Handoffs[0].Replica != "a" {
		t.Errorf("b's hand-offs %+v, want one: from a's 10", cb.Handoffs)
	}
	if h, _ := heads.Load(context.Background(), "dev-1"); h.Seq != 30 || h.Replica != "a" || !bytes.Equal(h.Hash, evs[29].Hash) {
		t.Errorf("fleet-wide head %+v, want 30 on a", h)
	}

	// A forged hand-off (another hash to continue from) shows.
	b.Close()
	tamper(t, b.cfg.Path, func(tx *bolt.Tx) error {
		return putHandoff(tx, "dev-1", 0, Head{Seq: 10, Hash: evs[8].Hash, Replica: "a"})
	})
	b2, err := Open(Config{Path: b.cfg.Path, Heads: heads, Replica: "b"})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if c := chainOf(t, b2); c.OK || !strings.Contains(strings.Join(c.Problems, ";"), "event 11 was altered, or the chain broke") {
		t.Errorf("b with a forged hand-off: %+v, want event 11's hash refused", c)
	}
}

// TestNoAckWithoutTheFleetHead: a replica that cannot move the fleet-wide
// head acknowledges nothing; once it can, the batch sent again is acked,
// stored once.
func TestNoAckWithoutTheFleetHead(t *testing.T) {
	heads := &memHeads{heads: map[string]Head{}, fail: errors.New("store unreachable")}
	a := openReplica(t, heads, "a")
	evs := chain(t, 1, 5, nil, simple)
	if ack, err := a.Ingest(context.Background(), "dev-1", &proto.AuditBatch{Events: evs}); err == nil {
		t.Fatalf("ingest without the store: ack %+v, want an error (no ack)", ack)
	}
	heads.mu.Lock()
	heads.fail = nil
	heads.mu.Unlock()
	if ack := ingest(t, a, evs); ack.Through != 5 {
		t.Errorf("ack after the store is back: %+v", ack)
	}
	if c := chainOf(t, a); !c.OK || c.Events != 5 {
		t.Errorf("chain %+v, want 5 events, OK", c)
	}
}

// TestClaimsCheckedOnOtherReplicas: a device's event naming a session
// another replica brokered verifies with that replica's record.
func TestClaimsCheckedOnOtherReplicas(t *testing.T) {
	heads := &memHeads{heads: map[string]Head{}}
	a := openReplica(t, heads, "a")
	b := openReplica(t, heads, "b")
	broker(t, a, 1_700_000_000_000, "dev-1", "s-on-a", "alice")
	b.cfg.Brokered = func(_ context.Context, device, session string) (*proto.AuditEvent, error) {
		return a.BrokeredHere(device, session)
	}
	evs := chain(t, 1, 2, nil, func(i int) proto.AuditEvent {
		e := proto.AuditEvent{Time: 1_700_000_001_000, Type: proto.EventExec, User: "alice", Session: "s-on-a"}
		if i == 1 {
			e.Session, e.User = "s-nowhere", "mallory"
		}
		return e
	})
	ingest(t, b, evs)
	recs, _, err := b.Search(context.Background(), Query{Device: "dev-1"})
	if err != nil || len(recs) != 2 {
		t.Fatalf("search: %d, %v", len(recs), err)
	}
	if recs[0].Unverified != "" {
		t.Errorf("the event of a's session: unverified %q, want verified by a's record", recs[0].Unverified)
	}
	if recs[1].Unverified == "" {
		t.Error("the event of a session nobody brokered verified")
	}
	if got, err := b.Brokered("dev-1", "s-on-a"); err != nil || got.User != "alice" {
		t.Errorf("b.Brokered(a's session) = %+v, %v", got, err)
	}
}

// TestStoreHeads: the heads in the state store move by compare-and-swap.
func TestStoreHeads(t *testing.T) {
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	h := StoreHeads{Store: st}
	ctx := context.Background()
	if g, err := h.Load(ctx, "dev-1"); err != nil || g.Seq != 0 {
		t.Fatalf("Load of a new device = %+v, %v", g, err)
	}
	one := Head{Seq: 5, Hash: []byte{1, 2}, Replica: "a"}
	if err := h.Advance(ctx, "dev-1", Head{}, one); err != nil {
		t.Fatal(err)
	}
	if err := h.Advance(ctx, "dev-1", Head{}, Head{Seq: 9, Replica: "b"}); err == nil {
		t.Error("a second first head was taken")
	}
	two := Head{Seq: 9, Hash: []byte{3}, Replica: "b"}
	if err := h.Advance(ctx, "dev-1", one, two); err != nil {
		t.Fatal(err)
	}
	if err := h.Advance(ctx, "dev-1", one, Head{Seq: 12}); err == nil {
		t.Error("a move from a stale head was taken")
	}
	if g, _ := h.Load(ctx, "dev-1"); g.Seq != 9 || g.Replica != "b" || !bytes.Equal(g.Hash, []byte{3}) {
		t.Errorf("head %+v, want 9 on b", g)
	}
	// Through a replica, end to end.
	a := openReplica(t, h, "a")
	ingest(t, a, chain(t, 1, 3, nil, simple)[2:]) // event 3: held (the fleet is at 9)
	if g, _ := h.Load(ctx, "dev-1"); g.Seq != 9 {
		t.Errorf("head after held events %+v, want unchanged", g)
	}
}

// TestHeadQueryMovesNothing: a batch without events (the device asking
// where the fleet stands, or reporting its queue) leaves the fleet-wide
// head alone.
func TestHeadQueryMovesNothing(t *testing.T) {
	heads := &memHeads{heads: map[string]Head{}}
	a := openReplica(t, heads, "a")
	evs := chain(t, 1, 3, nil, simple)
	ingest(t, a, evs)
	for range 2 {
		ack, err := a.Ingest(context.Background(), "dev-1", &proto.AuditBatch{Queue: &proto.AuditQueueStatus{Pending: 0}})
		if err != nil || ack.Through != 3 {
			t.Fatalf("head query: %+v, %v; want through 3", ack, err)
		}
	}
}
