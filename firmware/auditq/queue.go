// Package auditq is the device's audit queue: audit events are written to a
// bbolt file in the agent's data dir, and fsync'd, before the action they
// record goes ahead; they leave it only once the fleet has committed them.
//
// Appends are group-committed: one writer goroutine takes every append
// waiting when it becomes free and commits them in one transaction, so one
// fsync covers many events under load while a lone event still commits at
// once. Each event gets the next sequence number and the hash that chains
// it to the one before (proto.ChainHash), so the fleet can prove that it
// holds every event of the device, once, unchanged.
//
// The queue has a size cap (Config.MaxBytes). When it is full, or the disk
// is, new events are dropped, never silently: the drops are counted (in the
// file, when the disk allows), reported in Status, which the device sends
// with every batch, and, as soon as there is room, described by an
// audit.dropped marker event in the chain itself. The action an event
// describes may still go ahead; callers that would rather refuse it see
// ErrFull from Append.
//
// When the queue is empty the file is compacted if it grew large, so a long
// outage does not leave a large file behind. A file that is damaged
// (truncated, corrupted) is moved aside and read without bbolt, page by
// page; every readable event is kept in a new file, and an audit.damaged
// event says what happened. The agent starts either way.
//
// A Shipper sends the queue's events to the fleet over the tunnel's control
// stream. Only firmware/... imports this package.
package auditq

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"remoteler.dev/edge/proto"
)

// Config configures a Queue. Path is required; every other zero value
// works.
type Config struct {
	// Path is the queue file, normally DATA_DIR/audit.db. Required.
	Path string
	// Source is the device ID the events belong to. When it changes (the
	// device joined again under a new ID) the queued events start a new
	// chain, based on the fleet's head at the next sync.
	Source string
	// MaxBytes caps the encoded events held; default 64 MiB. Past it new
	// events are dropped and counted (see the package doc).
	MaxBytes int64
	// CompactAbove is the file size above which an emptied queue is
	// compacted; default 1 MiB.
	CompactAbove int64
	// LockTimeout bounds the wait for another process's lock on the file;
	// default 5s.
	LockTimeout time.Duration
	// Logger receives the queue's logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock events are stamped with when they have no time;
	// nil means time.Now.
	Now func() time.Time

	// failCommit, when set, is called before each commit; an error fails
	// the commit as a full disk would. Tests set it.
	failCommit func() error
}

// DefaultMaxBytes is Config.MaxBytes's default: 64 MiB.
const DefaultMaxBytes = 64 << 20

func (c *Config) setDefaults() {
	if c.MaxBytes <= 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	if c.CompactAbove <= 0 {
		c.CompactAbove = 1 << 20
	}
	if c.LockTimeout <= 0 {
		c.LockTimeout = 5 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// ErrFull is returned (wrapped) by Append when the event was dropped
// because the queue is at its cap or the disk is full. The drop is counted
// and will be reported.
var ErrFull = errors.New("auditq: queue full")

// ErrClosed is returned by calls on a closed queue.
var ErrClosed = errors.New("auditq: queue closed")

var (
	eventsBucket = []byte("events")
	metaBucket   = []byte("meta")
	stateKey     = []byte("state")
)

// markerReserve is the room kept for a marker event past which drops
// still pile up rather than markers.
const markerReserve = 1024

// appendFill is the page fill for buckets written in key order: bbolt's
// default (half) suits random inserts and doubles the file for appends.
const appendFill = 0.95

// maxGroup bounds the operations committed in one transaction.
const maxGroup = 1024

// Queue is an open audit queue. Its methods are safe for concurrent use.
type Queue struct {
	cfg Config
	log *slog.Logger

	dbmu sync.RWMutex // guards db: readers RLock, compaction Lock
	db   *bolt.DB

	mu      sync.Mutex // guards st and lastErr
	st      state
	lastErr string

	ops     chan *op
	stop    chan struct{}
	done    chan struct{}
	closeMu sync.Once
	changed chan struct{} // signalled after events are added
}

type opKind int

const (
	opAppend opKind = iota
	opAck
	opSync
	opAttr
	opSettle
)

type op struct {
	kind    opKind
	ev      *proto.AuditEvent
	through uint64
	hash    []byte
	key     string
	val     string
	res     chan result // buffered; nil for fire-and-forget
}

type result struct {
	seq uint64
	old string
	err error
}

// Open opens (or creates) the queue at cfg.Path. A damaged file is
// salvaged (see the package doc); only a lock held by another process, or
// a file that cannot be created, is an error.
func Open(cfg Config) (*Queue, error) {
	if cfg.Path == "" {
		return nil, errors.New("auditq: open: no path")
	}
	cfg.setDefaults()
	q := &Queue{
		cfg: cfg, log: cfg.Logger.With("component", "auditq"),
		ops: make(chan *op, maxGroup), stop: make(chan struct{}), done: make(chan struct{}),
		changed: make(chan struct{}, 1),
	}
	_, statErr := os.Stat(cfg.Path)
	fresh := errors.Is(statErr, os.ErrNotExist)
	damage := ""
	if !fresh {
		if err := checkFile(cfg.Path); err != nil {
			damage = err.Error()
		}
	}
	if damage == "" {
		db, err := q.openDB()
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("auditq: %s is locked: is another edge-agent running with this data dir?", cfg.Path)
		}
		if err == nil {
			q.db = db
			if err := q.load(fresh); err != nil {
				damage = err.Error()
				db.Close()
				q.db = nil
			}
		} else {
			damage = err.Error()
		}
	}
	if damage != "" {
		if err := q.rebuild(damage); err != nil {
			return nil, err
		}
	}
	go q.writer()
	if damage != "" {
		q.reportDamage(damage)
	}
	return q, nil
}

func (q *Queue) openDB() (db *bolt.DB, err error) {
	// A fault reading the memory-mapped file (a damage checkFile missed)
	// is a panic here, not the end of the process.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("open: %v", r)
		}
	}()
	return bolt.Open(q.cfg.Path, 0o600, &bolt.Options{Timeout: q.cfg.LockTimeout})
}

// load checks an open file and reads its state. Any damage is an error.
func (q *Queue) load(fresh bool) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("read: %v", r)
		}
	}()
	if err := q.db.Update(func(tx *bolt.Tx) error {
		if _, err := tx.CreateBucketIfNotExists(eventsBucket); err != nil {
			return err
		}
		m, err := tx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return err
		}
		if m.Get(stateKey) == nil {
			if !fresh && tx.Bucket(eventsBucket).Stats().KeyN > 0 {
				return errors.New("events without state")
			}
			st := state{Next: 1, Owner: q.cfg.Source}
			return m.Put(stateKey, st.marshal())
		}
		return nil
	}); err != nil {
		return err
	}
	return q.db.View(func(tx *bolt.Tx) error {
		for cerr := range tx.Check() {
			if err == nil {
				err = cerr
			}
		}
		if err != nil {
			return fmt.Errorf("check: %w", err)
		}
		st, err := unmarshalState(tx.Bucket(metaBucket).Get(stateKey))
		if err != nil {
			return fmt.Errorf("state: %w", err)
		}
		var n, size uint64
		var last uint64
		if err := tx.Bucket(eventsBucket).ForEach(func(k, v []byte) error {
			e, err := proto.UnmarshalEvent(v)
			if err != nil || len(k) != 8 || e.Seq != binary.BigEndian.Uint64(k) {
				return fmt.Errorf("event %x unreadable", k)
			}
			n++
			size += uint64(len(v) + len(k))
			last = e.Seq
			return nil
		}); err != nil {
			return err
		}
		if n > 0 && last >= st.Next {
			return fmt.Errorf("event %d is past the next sequence number %d", last, st.Next)
		}
		st.Count, st.Bytes = n, size
		q.st = *st
		return nil
	})
}

// rebuild moves a damaged file aside, salvages what it can read and writes
// it to a new file.
func (q *Queue) rebuild(damage string) error {
	q.log.Error("audit queue file is damaged; keeping what is readable", "path", q.cfg.Path, "damage", damage)
	data, err := os.ReadFile(q.cfg.Path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		q.log.Warn("read damaged audit queue", "err", err)
	}
	var sal salvaged
	func() {
		defer func() {
			if r := recover(); r != nil {
				q.log.Error("salvage failed", "panic", r)
			}
		}()
		sal = scan(data)
	}()
	aside := q.cfg.Path + ".damaged"
	os.Remove(aside) // keep only the latest damaged file
	if err := os.Rename(q.cfg.Path, aside); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("auditq: move damaged %s aside: %w", q.cfg.Path, err)
	}
	db, err := q.openDB()
	if err != nil {
		return fmt.Errorf("auditq: create %s: %w", q.cfg.Path, err)
	}
	q.db = db
	st := state{Next: 1, Owner: q.cfg.Source}
	if sal.state != nil {
		st = sal.state.clone()
	}
	// Keep only events the fleet has not confirmed and that the state
	// (when known) says were written.
	var keep []*proto.AuditEvent
	for _, e := range sal.events {
		if e.Seq <= st.Acked || (sal.state != nil && e.Seq >= sal.state.Next) {
			continue
		}
		keep = append(keep, e)
	}
	if sal.state == nil && len(keep) > 0 {
		// Keep the salvaged numbers, so gaps stay visible to the fleet;
		// the next sync sorts out numbers the fleet already holds.
		last := keep[len(keep)-1]
		st.Next, st.Head, st.Salvaged, st.Based = last.Seq+1, last.Hash, last.Seq, true
	}
	st.Damaged++
	st.Count, st.Bytes = 0, 0
	lost := uint64(0)
	if sal.state != nil && sal.state.Count > uint64(len(keep)) {
		lost = sal.state.Count - uint64(len(keep))
	}
	if st.Attrs == nil {
		st.Attrs = map[string]string{}
	}
	if sal.state != nil {
		st.Attrs[attrDamage] = fmt.Sprintf("%s; kept %d events, lost %d", damage, len(keep), lost)
	} else {
		st.Attrs[attrDamage] = fmt.Sprintf("%s; kept %d events; how many were lost is unknown: the queue's state was lost too", damage, len(keep))
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(eventsBucket)
		if err != nil {
			return err
		}
		m, err := tx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return err
		}
		for _, e := range keep {
			v, err := proto.MarshalEvent(e)
			if err != nil {
				continue
			}
			if err := b.Put(seqKey(e.Seq), v); err != nil {
				return err
			}
			st.Count++
			st.Bytes += uint64(len(v) + 8)
		}
		st.Gen++
		return m.Put(stateKey, st.marshal())
	})
	if err != nil {
		db.Close()
		return fmt.Errorf("auditq: rebuild %s: %w", q.cfg.Path, err)
	}
	q.st = st
	return nil
}

const attrDamage = "auditq.damage"

// reportDamage appends the audit.damaged event for a rebuilt file.
func (q *Queue) reportDamage(damage string) {
	q.mu.Lock()
	detail := q.st.Attrs[attrDamage]
	q.mu.Unlock()
	ev := &proto.AuditEvent{
		Type: proto.EventAuditDamaged, Outcome: proto.OutcomeFailure,
		Message: "the audit queue file was damaged: " + detail,
		Fields:  map[string]string{"damage": damage, "moved_to": filepath.Base(q.cfg.Path) + ".damaged"},
	}
	if _, err := q.Append(context.Background(), ev); err != nil {
		q.log.Error("record audit queue damage", "err", err)
	}
}

// Close stops the writer (after committing what is pending) and closes
// the file.
func (q *Queue) Close() error {
	q.closeMu.Do(func() { close(q.stop) })
	<-q.done
	q.dbmu.Lock()
	defer q.dbmu.Unlock()
	return q.db.Close()
}

func seqKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}

// submit hands o to the writer and waits for its result.
func (q *Queue) submit(ctx context.Context, o *op) result {
	o.res = make(chan result, 1)
	select {
	case q.ops <- o:
	case <-q.stop:
		return result{err: ErrClosed}
	case <-ctx.Done():
		return result{err: ctx.Err()}
	}
	select {
	case r := <-o.res:
		return r
	case <-ctx.Done():
		// The writer still commits it; the caller stops waiting.
		return result{err: ctx.Err()}
	}
}

// Append writes ev (which it does not change) to the queue, fsync'd, and
// returns its sequence number. An event without a time gets the clock's.
// When the queue or the disk is full the event is dropped and counted, and
// the error wraps ErrFull.
func (q *Queue) Append(ctx context.Context, ev *proto.AuditEvent) (uint64, error) {
	c := *ev
	c.Hash = nil
	if c.Time == 0 {
		c.Time = q.cfg.Now().UnixMilli()
	}
	c.Sanitize()
	r := q.submit(ctx, &op{kind: opAppend, ev: &c})
	return r.seq, r.err
}

// Ack tells the queue the fleet has committed every event up to through,
// whose chain hash is hash; they are deleted in the background.
func (q *Queue) Ack(through uint64, hash []byte) {
	select {
	case q.ops <- &op{kind: opAck, through: through, hash: hash}:
	case <-q.stop:
	}
}

// Sync aligns the queue with the fleet's head for the device: events the
// fleet holds are deleted, and a queue that is not based on the fleet's
// chain (new, rebuilt without its state, or of another device ID) is
// renumbered to continue it.
func (q *Queue) Sync(ctx context.Context, head uint64, hash []byte) error {
	return q.submit(ctx, &op{kind: opSync, through: head, hash: hash}).err
}

// Remember stores value under key in the queue's file and returns the
// value it had (the agent keeps its config fingerprint there).
func (q *Queue) Remember(ctx context.Context, key, value string) (old string, err error) {
	r := q.submit(ctx, &op{kind: opAttr, key: key, val: value})
	return r.old, r.err
}

// Settle returns once the operations submitted before it (Acks) are
// applied, so that Status reflects them.
func (q *Queue) Settle(ctx context.Context) error {
	return q.submit(ctx, &op{kind: opSettle}).err
}

// Changed is signalled after events are added.
func (q *Queue) Changed() <-chan struct{} { return q.changed }

// Status reports the queue's state for the fleet.
func (q *Queue) Status() proto.AuditQueueStatus {
	q.mu.Lock()
	defer q.mu.Unlock()
	return proto.AuditQueueStatus{
		Pending: q.st.Count, Bytes: q.st.Bytes, Cap: uint64(q.cfg.MaxBytes),
		Dropped: q.st.DroppedTotal, Damaged: q.st.Damaged, LastError: q.lastErr, Head: q.st.Next - 1,
	}
}

// Read returns up to max events after sequence number after, in order,
// stopping before maxBytes of encoded events (but returning at least one).
func (q *Queue) Read(after uint64, max, maxBytes int) ([]proto.AuditEvent, error) {
	q.dbmu.RLock()
	defer q.dbmu.RUnlock()
	var out []proto.AuditEvent
	size := 0
	err := q.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(eventsBucket).Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && len(out) < max; k, v = c.Next() {
			if len(out) > 0 && size+len(v) > maxBytes {
				break
			}
			e, err := proto.UnmarshalEvent(v)
			if err != nil {
				q.log.Error("unreadable audit event skipped", "key", fmt.Sprintf("%x", k), "err", err)
				continue
			}
			size += len(v)
			out = append(out, *e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("auditq: read: %w", err)
	}
	return out, nil
}

// writer commits operations in groups until Close.
func (q *Queue) writer() {
	defer close(q.done)
	for {
		var first *op
		select {
		case first = <-q.ops:
		case <-q.stop:
			// Commit what is already queued, then stop.
			for {
				select {
				case o := <-q.ops:
					q.commit([]*op{o})
				default:
					return
				}
			}
		}
		group := []*op{first}
	drain:
		for len(group) < maxGroup {
			select {
			case o := <-q.ops:
				group = append(group, o)
			default:
				break drain
			}
		}
		q.commit(group)
	}
}

// commit applies a group of operations in one transaction (one fsync).
func (q *Queue) commit(group []*op) {
	q.mu.Lock()
	st := q.st.clone()
	q.mu.Unlock()
	now := q.cfg.Now()
	results := make([]result, len(group))
	if !slices.ContainsFunc(group, func(o *op) bool { return o.kind != opSettle }) {
		for _, o := range group {
			o.res <- result{}
		}
		return
	}
	added := false
	var err error
	if q.cfg.failCommit != nil {
		err = q.cfg.failCommit()
	}
	if err == nil {
		q.dbmu.RLock()
		err = q.db.Update(func(tx *bolt.Tx) error {
			b := tx.Bucket(eventsBucket)
			b.FillPercent = appendFill
			for i, o := range group {
				var err error
				switch o.kind {
				case opAppend:
					results[i].seq, err = q.put(b, &st, o.ev, false, now)
					if errors.Is(err, ErrFull) {
						results[i].err = err
						continue
					}
					added = added || err == nil
				case opAck:
					err = deleteThrough(b, &st, o.through)
					st.Acked = max(st.Acked, o.through)
				case opSync:
					err = q.sync(b, &st, o.through, o.hash)
				case opAttr:
					if st.Attrs == nil {
						st.Attrs = map[string]string{}
					}
					results[i].old = st.Attrs[o.key]
					st.Attrs[o.key] = o.val
				}
				if err != nil {
					return err
				}
			}
			if st.DroppedPending > 0 && st.Bytes+markerReserve <= uint64(q.cfg.MaxBytes) {
				// Room again (acks, or a disk that took writes again).
				if err := q.putMarker(b, &st, now); err != nil {
					return err
				}
				added = true
			}
			st.Gen++
			return tx.Bucket(metaBucket).Put(stateKey, st.marshal())
		})
		q.dbmu.RUnlock()
	}
	if err != nil {
		// Nothing was written: the appends are dropped, and counted.
		q.mu.Lock()
		for _, o := range group {
			if o.kind == opAppend {
				q.countDrop(&q.st, "write failed: "+err.Error(), now)
			}
		}
		q.lastErr = err.Error()
		q.mu.Unlock()
		q.log.Error("audit queue write failed; events dropped and counted", "err", err)
		for i, o := range group {
			if o.kind == opAppend {
				results[i] = result{err: fmt.Errorf("%w: write failed: %v", ErrFull, err)}
			} else {
				results[i] = result{err: fmt.Errorf("auditq: write: %w", err)}
			}
		}
	} else {
		dropped := false
		for _, r := range results {
			dropped = dropped || errors.Is(r.err, ErrFull)
		}
		q.mu.Lock()
		q.st = st
		if !dropped {
			q.lastErr = ""
		}
		q.mu.Unlock()
	}
	for i, o := range group {
		if o.res != nil {
			o.res <- results[i]
		}
	}
	if added {
		select {
		case q.changed <- struct{}{}:
		default:
		}
	}
	if err == nil && st.Count == 0 {
		q.maybeCompact()
	}
}

// put assigns ev the next sequence number and chain hash and stores it.
// Unless force, an event past the cap is dropped (ErrFull).
func (q *Queue) put(b *bolt.Bucket, st *state, ev *proto.AuditEvent, force bool, now time.Time) (uint64, error) {
	e := *ev
	e.Seq = st.Next
	h, err := proto.ChainHash(st.Head, &e)
	if err != nil {
		return 0, err
	}
	e.Hash = h
	v, err := proto.MarshalEvent(&e)
	if err != nil {
		return 0, err
	}
	size := uint64(len(v) + 8)
	if !force && st.DroppedPending > 0 && st.Bytes+markerReserve+size <= uint64(q.cfg.MaxBytes) {
		// Report earlier drops before this event, then chain it anew.
		if err := q.putMarker(b, st, now); err != nil {
			return 0, err
		}
		return q.put(b, st, ev, force, now)
	}
	if !force && (st.Bytes+size > uint64(q.cfg.MaxBytes) || st.DroppedPending > 0) {
		// Full, or earlier drops are not reported yet (no room for the
		// marker): this event is dropped too.
		reason := fmt.Sprintf("queue full (%d of %d bytes)", st.Bytes, q.cfg.MaxBytes)
		q.countDrop(st, reason, now)
		q.mu.Lock()
		q.lastErr = reason
		q.mu.Unlock()
		return 0, fmt.Errorf("%w: %s", ErrFull, reason)
	}
	if err := b.Put(seqKey(e.Seq), v); err != nil {
		return 0, err
	}
	st.Next++
	st.Head = h
	st.Count++
	st.Bytes += size
	return e.Seq, nil
}

// countDrop counts one dropped event in st.
func (q *Queue) countDrop(st *state, reason string, now time.Time) {
	if st.DroppedPending == 0 {
		st.DropFirst = now.UnixMilli()
	}
	st.DroppedPending++
	st.DroppedTotal++
	st.DropReason = reason
	st.DropLast = now.UnixMilli()
}

// putMarker writes the audit.dropped event for the pending drops.
func (q *Queue) putMarker(b *bolt.Bucket, st *state, now time.Time) error {
	n := st.DroppedPending
	ev := &proto.AuditEvent{
		Time: now.UnixMilli(), Type: proto.EventAuditDropped, Outcome: proto.OutcomeFailure,
		Message: fmt.Sprintf("%d audit events were dropped: %s", n, st.DropReason),
		Fields: map[string]string{
			"count":  strconv.FormatUint(n, 10),
			"reason": st.DropReason,
			"first":  time.UnixMilli(st.DropFirst).UTC().Format(time.RFC3339Nano),
			"last":   time.UnixMilli(st.DropLast).UTC().Format(time.RFC3339Nano),
			"total":  strconv.FormatUint(st.DroppedTotal, 10),
		},
	}
	ev.Sanitize()
	st.DroppedPending = 0
	if _, err := q.put(b, st, ev, true, now); err != nil {
		return err
	}
	q.log.Warn("audit events were dropped; marker written", "count", n, "reason", st.DropReason)
	st.DropReason, st.DropFirst, st.DropLast = "", 0, 0
	return nil
}

// deleteThrough deletes the events up to seq through.
func deleteThrough(b *bolt.Bucket, st *state, through uint64) error {
	var keys [][]byte
	var size uint64
	c := b.Cursor()
	for k, v := c.First(); k != nil && binary.BigEndian.Uint64(k) <= through; k, v = c.Next() {
		keys = append(keys, k)
		size += uint64(len(k) + len(v))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	st.Count -= min(st.Count, uint64(len(keys)))
	st.Bytes -= min(st.Bytes, size)
	return nil
}

// sync implements Sync inside a transaction.
func (q *Queue) sync(b *bolt.Bucket, st *state, head uint64, hash []byte) error {
	if head == 0 {
		hash = nil // an empty chain starts from the zero hash
	}
	defer func() { st.Acked = max(st.Acked, head) }()
	switch {
	case !st.Based || st.Owner != q.cfg.Source:
		// A new queue (or another device ID's): renumber every queued
		// event onto the fleet's chain.
		if err := q.renumber(b, st, head, hash); err != nil {
			return err
		}
		st.Based, st.Owner = true, q.cfg.Source
		return nil
	case st.Salvaged > 0:
		// Rebuilt from a damaged file without its state: salvaged events
		// the fleet already holds are stale copies; events written since
		// may reuse numbers the fleet holds, and then move past its head.
		cut := min(head, st.Salvaged)
		if err := deleteThrough(b, st, cut); err != nil {
			return err
		}
		salvaged := st.Salvaged
		st.Salvaged = 0
		if head >= salvaged {
			return q.renumber(b, st, head, hash)
		}
		return nil
	case head >= st.Next:
		// The fleet holds more of this chain than the queue ever wrote
		// (the file was replaced by an older one): continue after it.
		q.log.Warn("the fleet holds more audit events than this queue wrote; continuing after them",
			"fleet_head", head, "queue_next", st.Next)
		if err := deleteThrough(b, st, head); err != nil {
			return err
		}
		st.Next, st.Head = head+1, append([]byte(nil), hash...)
		return nil
	default:
		return deleteThrough(b, st, head)
	}
}

// renumber moves every queued event onto the fleet's chain: numbered from
// head+1, chained from hash.
func (q *Queue) renumber(b *bolt.Bucket, st *state, head uint64, hash []byte) error {
	var evs []*proto.AuditEvent
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if e, err := proto.UnmarshalEvent(v); err == nil {
			evs = append(evs, e)
		}
	}
	if err := deleteThrough(b, st, ^uint64(0)); err != nil {
		return err
	}
	old := st.Next
	st.Next, st.Head = head+1, append([]byte(nil), hash...)
	for _, e := range evs {
		if _, err := q.put(b, st, e, true, time.Time{}); err != nil {
			return err
		}
	}
	if old != st.Next || head > 0 {
		q.log.Info("audit queue based on the fleet's chain", "fleet_head", head, "events", len(evs))
	}
	return nil
}

// maybeCompact rewrites an empty queue's file when it grew past
// CompactAbove, so a long outage's backlog does not keep the disk.
func (q *Queue) maybeCompact() {
	fi, err := os.Stat(q.cfg.Path)
	if err != nil || fi.Size() <= q.cfg.CompactAbove {
		return
	}
	if err := q.compact(); err != nil {
		q.log.Warn("compact audit queue", "err", err)
		return
	}
	if nfi, err := os.Stat(q.cfg.Path); err == nil {
		q.log.Info("audit queue compacted", "from_bytes", fi.Size(), "to_bytes", nfi.Size())
	}
}

func (q *Queue) compact() error {
	q.dbmu.Lock()
	defer q.dbmu.Unlock()
	tmp := q.cfg.Path + ".compact"
	os.Remove(tmp)
	dst, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: q.cfg.LockTimeout})
	if err != nil {
		return err
	}
	if err := bolt.Compact(dst, q.db, 1<<20); err != nil {
		dst.Close()
		os.Remove(tmp)
		return err
	}
	if err := dst.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	if err := q.db.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, q.cfg.Path); err != nil {
		os.Remove(tmp)
	} else {
		syncDir(filepath.Dir(q.cfg.Path))
	}
	db, err := bolt.Open(q.cfg.Path, 0o600, &bolt.Options{Timeout: q.cfg.LockTimeout})
	if err != nil {
		// Without a database the agent cannot keep events: a later
		// commit reports it and the events are counted as dropped.
		return fmt.Errorf("reopen after compaction: %w", err)
	}
	q.db = db
	return nil
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}
