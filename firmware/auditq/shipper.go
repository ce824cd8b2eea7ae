package auditq

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"sync/atomic"
	"time"

	"remoteler.dev/edge/proto"
)

// Sender sends a message on the control stream without waiting for an
// answer; *tunnel.Client implements it. The fleet's AuditAcks come back
// through the tunnel's OnMessage, which hands them to Shipper.Deliver.
type Sender interface {
	Send(m proto.Message) error
}

// Shipper sends a queue's events to the fleet in batches over the control
// stream and lets the queue forget them once the fleet has acknowledged
// committing them. Several batches are in flight at once (the fleet
// answers them in order), so a long backlog drains at the link's rate
// rather than one batch per round trip. Create it with NewShipper, run Run,
// and pass it the fleet's acks with Deliver.
type Shipper struct {
	q    *Queue
	link Sender
	cfg  ShipperConfig
	log  *slog.Logger

	acks    chan *proto.AuditAck
	wake    chan struct{}
	resync  atomic.Bool
	nextID  uint64 // only Run touches it
	refused int    // refusals from the fleet in a row; only Run touches it
	events  atomic.Int64
	bytes   atomic.Int64
	batches atomic.Int64
}

// ShipperConfig configures a Shipper; the zero value works.
type ShipperConfig struct {
	// BatchEvents bounds the events per batch; default and most
	// proto.MaxAuditBatch.
	BatchEvents int
	// BatchBytes bounds the encoded events per batch; default 48 KiB, which
	// keeps a batch inside one control frame.
	BatchBytes int
	// Window is how many batches may wait for their ack at once; default 4.
	Window int
	// Retry is how long to wait after a failure before trying again
	// (jittered); default 2s. A Wake (the tunnel came back) cuts it short.
	Retry time.Duration
	// MaxRetry bounds the wait after refusals in a row (the fleet takes
	// no more events for now: its disk or this device's quota is full):
	// each doubles the wait from Retry, up to MaxRetry; default 1m. While
	// refused, the shipper sends one event at a time, so a refused try
	// costs a few hundred bytes; the events stay queued.
	MaxRetry time.Duration
	// AckTimeout is how long an ack may take before the shipper starts
	// over from the fleet's head; default 30s.
	AckTimeout time.Duration
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
}

// NewShipper returns a shipper of q's events over link.
func NewShipper(q *Queue, link Sender, cfg ShipperConfig) *Shipper {
	if cfg.BatchEvents <= 0 || cfg.BatchEvents > proto.MaxAuditBatch {
		cfg.BatchEvents = proto.MaxAuditBatch
	}
	if cfg.BatchBytes <= 0 {
		cfg.BatchBytes = 48 << 10
	}
	cfg.BatchBytes = min(cfg.BatchBytes, proto.MaxControlFrame-8<<10)
	if cfg.Window <= 0 {
		cfg.Window = 4
	}
	if cfg.Retry <= 0 {
		cfg.Retry = 2 * time.Second
	}
	if cfg.MaxRetry < cfg.Retry {
		cfg.MaxRetry = max(time.Minute, cfg.Retry)
	}
	if cfg.AckTimeout <= 0 {
		cfg.AckTimeout = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Shipper{
		q: q, link: link, cfg: cfg, log: cfg.Logger.With("component", "auditq"),
		acks: make(chan *proto.AuditAck, 4*cfg.Window), wake: make(chan struct{}, 1),
	}
	s.resync.Store(true)
	return s
}

// Wake tells the shipper the link came up: it syncs with the fleet and
// sends what is queued at once.
func (s *Shipper) Wake() {
	s.resync.Store(true)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Deliver hands the shipper an ack from the fleet. It never blocks: acks
// beyond what the shipper can have asked for are dropped.
func (s *Shipper) Deliver(ack *proto.AuditAck) {
	select {
	case s.acks <- ack:
	default:
	}
}

// Stats are a shipper's counters since it started.
type Stats struct {
	Batches int64 // batches with events the fleet acknowledged
	Events  int64 // events in them
	Bytes   int64 // their frames' bytes on the control stream
}

// Stats returns the shipper's counters.
func (s *Shipper) Stats() Stats {
	return Stats{Batches: s.batches.Load(), Events: s.events.Load(), Bytes: s.bytes.Load()}
}

// inflight is a batch waiting for its ack.
type inflight struct {
	id    uint64
	last  uint64 // its last event's sequence number (the one before, when empty)
	n     int
	bytes int
	sent  time.Time
}

// errStartOver means the shipper must sync with the fleet again.
var errStartOver = errors.New("auditq: ship: starting over from the fleet's head")

// Run ships events until ctx is done.
func (s *Shipper) Run(ctx context.Context) {
	var (
		sent     uint64 // every event up to here was sent
		flight   []inflight
		reported bool // the fleet has the queue's status as of its last drain
	)
	for ctx.Err() == nil {
		if s.resync.Swap(false) {
			head, err := s.syncHead(ctx)
			if err != nil {
				s.resync.Store(true)
				s.pause(ctx, err)
				continue
			}
			sent, flight, reported = head, nil, false
		}
		// Fill the window; while the fleet refuses, one event at a time.
		window, batch := s.cfg.Window, s.cfg.BatchEvents
		if s.refused > 0 {
			window, batch = 1, 1
		}
		var err error
		for len(flight) < window && err == nil {
			var evs []proto.AuditEvent
			evs, err = s.q.Read(sent, batch, s.cfg.BatchBytes)
			if err != nil || len(evs) == 0 {
				break
			}
			var f inflight
			if f, err = s.send(evs); err == nil {
				flight = append(flight, f)
				sent, reported = f.last, false
			}
		}
		if err == nil && len(flight) == 0 && !reported {
			// Drained: tell the fleet, so the device's status there
			// shows an empty queue.
			s.q.Settle(ctx)
			var f inflight
			if f, err = s.send(nil); err == nil {
				f.last = sent
				flight, reported = append(flight, f), true
			}
		}
		if err != nil {
			s.resync.Store(true)
			s.pause(ctx, err)
			continue
		}
		if len(flight) == 0 {
			select {
			case <-ctx.Done():
			case <-s.q.Changed():
			case <-s.wake:
			}
			continue
		}
		// Wait for the oldest batch's ack.
		t := time.NewTimer(time.Until(flight[0].sent.Add(s.cfg.AckTimeout)))
		select {
		case <-ctx.Done():
		case <-s.wake:
		case <-t.C:
			s.resync.Store(true)
			s.log.Warn("audit batch not acknowledged in time; starting over from the fleet's head", "timeout", s.cfg.AckTimeout)
		case ack := <-s.acks:
			flight, err = s.acked(ack, flight)
			if err != nil {
				s.resync.Store(true)
				s.pause(ctx, err)
			}
		}
		t.Stop()
	}
}

// acked applies an ack to the batches in flight and returns those left.
func (s *Shipper) acked(ack *proto.AuditAck, flight []inflight) ([]inflight, error) {
	i := 0
	for i < len(flight) && flight[i].id != ack.ID {
		i++
	}
	if i == len(flight) {
		return flight, nil // from before a resync
	}
	if ack.Err != nil {
		return nil, fmt.Errorf("auditq: ship: fleet refused a batch: %w", ack.Err)
	}
	// Acks come in order: the ones before this were lost with a
	// connection, or are this one's predecessors; either way the fleet's
	// head says what it holds.
	done := flight[i]
	if done.n > 0 {
		s.refused = 0
		s.batches.Add(1)
		s.events.Add(int64(done.n))
		s.bytes.Add(int64(done.bytes))
	}
	s.q.Ack(ack.Through, ack.Hash)
	if ack.Through < done.last {
		s.log.Warn("fleet acknowledged less than it was sent", "through", ack.Through, "sent_through", done.last)
		return nil, errStartOver
	}
	return flight[i+1:], nil
}

// syncHead asks the fleet for its head and aligns the queue with it.
func (s *Shipper) syncHead(ctx context.Context) (uint64, error) {
	f, err := s.send(nil)
	if err != nil {
		return 0, err
	}
	t := time.NewTimer(s.cfg.AckTimeout)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-t.C:
			return 0, errors.New("auditq: ship: the fleet did not answer")
		case ack := <-s.acks:
			if ack.ID != f.id {
				continue // from before
			}
			if ack.Err != nil {
				return 0, fmt.Errorf("auditq: ship: fleet refused: %w", ack.Err)
			}
			if err := s.q.Sync(ctx, ack.Through, ack.Hash); err != nil {
				return 0, err
			}
			return ack.Through, nil
		}
	}
}

// send sends one batch (with the queue's status) and returns it as in
// flight.
func (s *Shipper) send(evs []proto.AuditEvent) (inflight, error) {
	st := s.q.Status()
	s.nextID++
	b := &proto.AuditBatch{Events: evs, Queue: &st, ID: s.nextID}
	f := inflight{id: b.ID, n: len(evs), sent: time.Now()}
	if len(evs) > 0 {
		f.last = evs[len(evs)-1].Seq
	}
	if fr, err := proto.Marshal(b); err == nil {
		f.bytes = len(fr)
	}
	if err := s.link.Send(b); err != nil {
		return f, fmt.Errorf("auditq: ship: %w", err)
	}
	return f, nil
}

// backoff is the pause before the next try (before jitter): Retry, doubled
// for each refusal in a row after the first, up to MaxRetry.
func (s *Shipper) backoff() time.Duration {
	d := s.cfg.Retry
	for i := 1; i < s.refused && d < s.cfg.MaxRetry; i++ {
		d *= 2
	}
	return min(d, s.cfg.MaxRetry)
}

// pause waits before a retry, or until woken. After a refusal from the
// fleet the wait doubles with each refusal in a row, up to MaxRetry.
func (s *Shipper) pause(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return
	}
	var pe *proto.Error
	if errors.As(err, &pe) && pe.Code == proto.CodeUnavailable {
		s.refused++
		if s.refused == 1 {
			s.log.Warn("the fleet takes no more events for now; they stay queued", "reason", pe.Message)
		}
	}
	base := s.backoff()
	s.log.Debug("audit shipping paused", "err", err, "for", base)
	d := base/2 + mrand.N(base)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	case <-s.wake:
	}
}
