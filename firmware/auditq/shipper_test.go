package auditq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/tools/logtest"
)

// fakeFleet is an in-memory fleet end: it dedups by sequence number,
// checks the chain, and can lose batches before or after committing them.
type fakeFleet struct {
	ship          *Shipper
	mu            sync.Mutex // guards the rest
	events        map[uint64]proto.AuditEvent
	head          uint64
	hash          []byte
	broken        bool // the connection died: the next Send fails
	chainProblems []string
	rng           *rand.Rand
	failPct       int // percent of calls that fail, half of them after committing
	status        *proto.AuditQueueStatus
	// refuse makes the fleet refuse batches with events (its disk or the
	// device's quota is full); refused counts them and refusedSizes says
	// how many events each carried.
	refuse       bool
	refused      int
	refusedSizes []int
}

// Send models one ordered stream: when a batch or its ack is lost, the
// connection is gone, and the next Send finds the tunnel down (the
// shipper then starts over on a new connection).
func (f *fakeFleet) Send(m proto.Message) error {
	f.mu.Lock()
	broken := f.broken
	f.broken = false
	f.mu.Unlock()
	if broken {
		return errors.New("tunnel down")
	}
	ack, err := f.handle(m)
	if err == nil && ack != nil {
		f.ship.Deliver(ack)
	}
	if errors.Is(err, errAckLost) {
		f.mu.Lock()
		f.broken = true
		f.mu.Unlock()
		return nil // the device cannot tell yet
	}
	return err
}

var errAckLost = errors.New("ack lost")

func (f *fakeFleet) handle(m proto.Message) (*proto.AuditAck, error) {
	b, ok := m.(*proto.AuditBatch)
	if !ok {
		return nil, fmt.Errorf("unexpected %s", m.Kind())
	}
	// Round-trip through the wire encoding, as the tunnel would.
	frame, err := proto.Marshal(b)
	if err != nil {
		return nil, err
	}
	if len(frame) > proto.MaxControlFrame {
		return nil, fmt.Errorf("frame of %d bytes", len(frame))
	}
	dm, err := proto.Unmarshal(frame, proto.MaxControlFrame)
	if err != nil {
		return nil, err
	}
	b = dm.(*proto.AuditBatch)
	f.mu.Lock()
	defer f.mu.Unlock()
	fail := f.rng.IntN(100) < f.failPct
	if fail && f.rng.IntN(2) == 0 {
		return nil, errAckLost // lost on the way in
	}
	f.status = b.Queue
	if f.refuse && len(b.Events) > 0 {
		f.refused++
		f.refusedSizes = append(f.refusedSizes, len(b.Events))
		return &proto.AuditAck{ID: b.ID, Err: proto.Errorf(proto.CodeUnavailable, "over quota")}, nil
	}
	for _, e := range b.Events {
		if _, dup := f.events[e.Seq]; dup {
			continue
		}
		prev := []byte(nil)
		if p, ok := f.events[e.Seq-1]; ok {
			prev = p.Hash
		} else if e.Seq != 1 {
			f.chainProblems = append(f.chainProblems, fmt.Sprintf("gap before %d", e.Seq))
		}
		if h, _ := proto.ChainHash(prev, &e); !bytes.Equal(h, e.Hash) {
			f.chainProblems = append(f.chainProblems, fmt.Sprintf("bad hash at %d", e.Seq))
		}
		f.events[e.Seq] = e
		if e.Seq > f.head {
			f.head, f.hash = e.Seq, e.Hash
		}
	}
	if fail {
		return nil, errAckLost // committed, but the ack is lost
	}
	return &proto.AuditAck{Through: f.head, Hash: f.hash, ID: b.ID}, nil
}

func (f *fakeFleet) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.events)
}

func TestShipperExactlyOnceOverALossyLink(t *testing.T) {
	q := openQueue(t, Config{})
	fleet := &fakeFleet{events: map[uint64]proto.AuditEvent{}, rng: rand.New(rand.NewPCG(1, 2)), failPct: 30}
	s := NewShipper(q, fleet, ShipperConfig{Retry: time.Millisecond, AckTimeout: 20 * time.Millisecond, BatchEvents: 7, Logger: logtest.Logger(t)})
	fleet.ship = s
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	const n = 500
	appendConcurrently(t, q, n, func(i int) *proto.AuditEvent {
		return &proto.AuditEvent{Type: "test", Fields: map[string]string{"i": fmt.Sprint(i)}}
	})
	deadline := time.Now().Add(20 * time.Second)
	for fleet.count() < n || q.Status().Pending > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("fleet has %d of %d events; %d pending", fleet.count(), n, q.Status().Pending)
		}
		s.Wake()
		<-time.After(5 * time.Millisecond)
	}
	fleet.mu.Lock()
	defer fleet.mu.Unlock()
	if len(fleet.chainProblems) > 0 {
		t.Errorf("chain problems: %v", fleet.chainProblems)
	}
	seen := map[string]bool{}
	for seq := uint64(1); seq <= n; seq++ {
		e, ok := fleet.events[seq]
		if !ok {
			t.Fatalf("event %d missing", seq)
		}
		if seen[e.Fields["i"]] {
			t.Errorf("event i=%s delivered twice", e.Fields["i"])
		}
		seen[e.Fields["i"]] = true
	}
	if len(fleet.events) != n || len(seen) != n {
		t.Errorf("fleet holds %d events (%d distinct), want %d", len(fleet.events), len(seen), n)
	}
	if fleet.status == nil || fleet.status.Head != n {
		t.Errorf("queue status at the fleet = %+v, want head %d", fleet.status, n)
	}
	st := s.Stats()
	t.Logf("%d batches, %d events, %d bytes (%.0f bytes/event)", st.Batches, st.Events, st.Bytes, float64(st.Bytes)/float64(st.Events))
}

// TestShipperPausesWhileRefusedAndLosesNothing: while the fleet refuses
// (its disk or this device's quota full), the shipper backs off and probes
// with one event at a time; the events stay queued, and once the fleet
// takes them again every one arrives, once.
func TestShipperPausesWhileRefusedAndLosesNothing(t *testing.T) {
	q := openQueue(t, Config{})
	fleet := &fakeFleet{events: map[uint64]proto.AuditEvent{}, rng: rand.New(rand.NewPCG(5, 6)), refuse: true}
	s := NewShipper(q, fleet, ShipperConfig{Retry: time.Millisecond, MaxRetry: 20 * time.Millisecond, AckTimeout: time.Second, Logger: logtest.Logger(t)})
	fleet.ship = s
	const n = 300
	appendConcurrently(t, q, n, func(i int) *proto.AuditEvent {
		return &proto.AuditEvent{Type: "test", Fields: map[string]string{"i": fmt.Sprint(i)}}
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		fleet.mu.Lock()
		refused := fleet.refused
		fleet.mu.Unlock()
		if refused >= 8 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d refusals", refused)
		}
		<-time.After(5 * time.Millisecond)
	}
	fleet.mu.Lock()
	sizes := append([]int(nil), fleet.refusedSizes...)
	fleet.refuse = false
	fleet.mu.Unlock()
	// The first refused try may carry full batches (the window); after
	// that, one event per try.
	for i, n := range sizes[4:] {
		if n != 1 {
			t.Errorf("refused try %d carried %d events, want 1 (sizes %v)", i+5, n, sizes)
		}
	}
	if st := q.Status(); st.Pending != n {
		t.Errorf("%d events queued while refused, want all %d", st.Pending, n)
	}
	for deadline := time.Now().Add(30 * time.Second); fleet.count() < n || q.Status().Pending > 0; {
		if time.Now().After(deadline) {
			t.Fatalf("fleet has %d of %d after it took events again; %d pending", fleet.count(), n, q.Status().Pending)
		}
		s.Wake()
		<-time.After(5 * time.Millisecond)
	}
	fleet.mu.Lock()
	defer fleet.mu.Unlock()
	if len(fleet.chainProblems) > 0 || len(fleet.events) != n {
		t.Errorf("after resuming: %d events, chain problems %v", len(fleet.events), fleet.chainProblems)
	}
}

func TestShipperBackoff(t *testing.T) {
	s := NewShipper(nil, nil, ShipperConfig{Retry: time.Second, MaxRetry: 10 * time.Second})
	want := []time.Duration{time.Second, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second}
	for refused, w := range want {
		s.refused = refused
		if got := s.backoff(); got != w {
			t.Errorf("after %d refusals: %v, want %v", refused, got, w)
		}
	}
	if d := NewShipper(nil, nil, ShipperConfig{}); d.cfg.MaxRetry != time.Minute {
		t.Errorf("default MaxRetry = %v, want 1m", d.cfg.MaxRetry)
	}
}
