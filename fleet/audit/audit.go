// Package audit is the fleet's audit log: every source's hash-chained
// events (each device's, shipped from its queue, and the fleet's own) in a
// bbolt file of their own in the data dir (audit.db), indexed by time,
// device, user, session and type.
//
// Devices' batches are committed before they are acknowledged and are
// deduplicated by (source, sequence number), so a batch sent again after a
// crash or an outage is stored once. The fleet's own events are numbered
// and chained here, in the same transaction that stores them. Verify walks
// every chain and reports gaps, edits, deletions and breaks; Prune drops a
// source's oldest events past the retention and keeps the last dropped
// event's hash as the chain's new anchor, so what remains still verifies.
//
// The audit log lives apart from the fleet's state store (fleet/store)
// because it is append-heavy and is read by range scans; a distributed
// deployment would implement the same methods on its own engine.
//
// Only fleet/... imports this package.
package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fxamacker/cbor/v2"
	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/auditexport"
)

// Config configures a Log. Path is required; every other zero value works.
type Config struct {
	// Path is the audit file, normally DATA_DIR/audit.db. Required.
	Path string
	// Retention is how long events are kept; zero keeps them forever.
	Retention time.Duration
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// CheckpointKey signs checkpoints of the chains' heads (checkpoint.go);
	// nil makes none, and Export refuses.
	CheckpointKey ed25519.PrivateKey
	// CheckpointEvery is how often Run signs a checkpoint (when heads
	// changed); default DefaultCheckpointEvery.
	CheckpointEvery time.Duration
	// Limits returns the retention and the devices' quota in force
	// (quota.go), read each time they apply; nil means Retention alone.
	Limits func() Limits
	// Room returns an error while devices' uploads must pause for lack of
	// disk space (fleet/diskfloor); nil never pauses them.
	Room func() error
	// OnStored, when set, is told of every event stored, once it is
	// committed: the fleet's own and those devices send (not the
	// duplicates). fleet/metrics counts them. It must not block.
	OnStored func(source string, e *proto.AuditEvent)
	// Heads keeps each device's fleet-wide head, for several replicas
	// (replicas.go); nil on one fleetd.
	Heads Heads
	// Replica is this replica's ID, recorded in the heads it moves.
	Replica string
	// Brokered looks up, on the other replicas, the fleet's session.start
	// of a session brokered to a device (an error matching ErrNotBrokered
	// when none has it); nil on one fleetd.
	Brokered func(ctx context.Context, deviceID, session string) (*proto.AuditEvent, error)
}

// Log is an open audit log. Its methods are safe for concurrent use.
type Log struct {
	cfg Config
	log *slog.Logger
	db  *bolt.DB
	mu  sync.Mutex // serialises the fleet's own appends (one chain)

	pausedMu sync.Mutex        // guards paused
	paused   map[string]string // device ID -> why its uploads pause
}

// Buckets. Events live in one sub-bucket per source, keyed by sequence
// number; each index key ends with the event's source and sequence number,
// so an index entry names its event.
var (
	bucketEvents  = []byte("events")
	bucketHeads   = []byte("heads")
	bucketTime    = []byte("by_time")
	bucketDevice  = []byte("by_device")
	bucketUser    = []byte("by_user")
	bucketSession = []byte("by_session")
	bucketType    = []byte("by_type")
)

// buckets are every top-level bucket Open makes.
var buckets = [][]byte{bucketEvents, bucketHeads, bucketTime, bucketDevice, bucketUser, bucketSession, bucketType, bucketUnverified,
	bucketCheckpoints, bucketSigned, bucketHandoffs}

// appendFill is the page fill for buckets written in key order: bbolt's
// default (half) suits random inserts and doubles the file for appends.
const appendFill = 0.95

// head is what the log keeps per source next to its events.
type head struct {
	// Seq is the highest sequence number stored, Hash its chain hash.
	Seq  uint64 `cbor:"1,keyasint,omitempty"`
	Hash []byte `cbor:"2,keyasint,omitempty"`
	// Count is how many events are stored.
	Count uint64 `cbor:"3,keyasint,omitempty"`
	// AnchorSeq and AnchorHash are the last pruned event: the chain
	// continues from them.
	AnchorSeq  uint64 `cbor:"4,keyasint,omitempty"`
	AnchorHash []byte `cbor:"5,keyasint,omitempty"`
	// Queue is the device's last report on its queue, and Reported when
	// it came (Unix milliseconds).
	Queue    *proto.AuditQueueStatus `cbor:"6,keyasint,omitempty"`
	Reported int64                   `cbor:"7,keyasint,omitempty"`
	// Conflicts counts events sent again under a known sequence number
	// but with another hash.
	Conflicts uint64 `cbor:"8,keyasint,omitempty"`
	// Damaged and Dropped add up the device's audit.damaged events and
	// its audit.dropped markers' counts: a device whose queue lost its
	// own counters still shows them.
	Damaged uint64 `cbor:"9,keyasint,omitempty"`
	Dropped uint64 `cbor:"10,keyasint,omitempty"`
	// Unverified counts the device's events whose claims about a user or
	// session did not verify (claims.go).
	Unverified uint64 `cbor:"11,keyasint,omitempty"`
	// Bytes is what the stored events take (their encodings).
	Bytes uint64 `cbor:"12,keyasint,omitempty"`
}

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	if encMode, err = cbor.CoreDetEncOptions().EncMode(); err != nil {
		panic(err)
	}
	decMode, err = cbor.DecOptions{
		DupMapKey: cbor.DupMapKeyEnforcedAPF, MaxNestedLevels: 4, MaxArrayElements: 64, MaxMapPairs: 64,
		IndefLength: cbor.IndefLengthForbidden, TagsMd: cbor.TagsForbidden, ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

func decodeHead(b []byte) (*head, error) {
	var h head
	if b == nil {
		return &h, nil
	}
	if err := decMode.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("audit: decode head: %w", err)
	}
	return &h, nil
}

func (h *head) encode() []byte {
	b, err := encMode.Marshal(h)
	if err != nil {
		panic("audit: encode head: " + err.Error()) // plain struct: cannot fail
	}
	return b
}

// Open opens (or creates) the log at cfg.Path.
func Open(cfg Config) (*Log, error) {
	if cfg.Path == "" {
		return nil, errors.New("audit: open: no path")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	db, err := bolt.Open(cfg.Path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		if errors.Is(err, bolterrors.ErrTimeout) {
			return nil, fmt.Errorf("audit: %s is locked: is another fleetd running with this data dir?", cfg.Path)
		}
		return nil, fmt.Errorf("audit: open %s: %w", cfg.Path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range buckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("audit: open %s: %w", cfg.Path, err)
	}
	l := &Log{cfg: cfg, log: cfg.Logger.With("component", "audit"), db: db}
	if err := l.countBytes(); err != nil {
		db.Close()
		return nil, fmt.Errorf("audit: open %s: count bytes: %w", cfg.Path, err)
	}
	return l, nil
}

// Close closes the log.
func (l *Log) Close() error { return l.db.Close() }

func seqKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}

// ref is the tail of every index key: source, 0, seq.
func ref(source string, seq uint64) []byte {
	return append(append([]byte(source), 0), seqKey(seq)...)
}

func timeKey(ms int64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], uint64(ms)^(1<<63)) // order negatives first
	return k[:]
}

// indexKeys returns an event's index entries (bucket, key); without
// claims, not the user and session ones (an event whose claims did not
// verify is kept out of them).
func indexKeys(source string, e *proto.AuditEvent, claims bool) [][2][]byte {
	r := ref(source, e.Seq)
	tk := timeKey(e.Time)
	keyed := func(val string) []byte {
		k := append([]byte(val), 0)
		k = append(k, tk...)
		return append(k, r...)
	}
	out := [][2][]byte{{bucketTime, append(append([]byte{}, tk...), r...)}}
	out = append(out, [2][]byte{bucketDevice, keyed(deviceOf(source, e))})
	if e.User != "" && claims {
		out = append(out, [2][]byte{bucketUser, keyed(e.User)})
	}
	if e.Session != "" && claims {
		out = append(out, [2][]byte{bucketSession, keyed(e.Session)})
	}
	out = append(out, [2][]byte{bucketType, keyed(e.Type)})
	return out
}

// deviceOf is the device an event is about: its own Device, or its source
// when a device wrote it.
func deviceOf(source string, e *proto.AuditEvent) string {
	if e.Device != "" || source == api.SourceFleet {
		return e.Device
	}
	return source
}

// store writes e (whose Seq is set) and its index entries; it reports false
// when the source already has that sequence number (a duplicate). A device
// event's claims are checked with claims (nil for the fleet's own events).
func store(tx *bolt.Tx, source string, e *proto.AuditEvent, h *head, claims *claimChecker) (bool, error) {
	evs, err := tx.Bucket(bucketEvents).CreateBucketIfNotExists([]byte(source))
	if err != nil {
		return false, err
	}
	evs.FillPercent = appendFill // written in sequence order
	k := seqKey(e.Seq)
	if old := evs.Get(k); old != nil || e.Seq <= h.AnchorSeq {
		if old != nil {
			if oe, err := proto.UnmarshalEvent(old); err == nil && !bytes.Equal(oe.Hash, e.Hash) {
				h.Conflicts++
			}
		}
		return false, nil
	}
	v, err := proto.MarshalEvent(e)
	if err != nil {
		return false, err
	}
	if err := evs.Put(k, v); err != nil {
		return false, err
	}
	why := ""
	if claims != nil {
		why = claims.check(e)
	}
	if why != "" {
		if err := tx.Bucket(bucketUnverified).Put(ref(source, e.Seq), []byte(why)); err != nil {
			return false, err
		}
		h.Unverified++
	}
	for _, ik := range indexKeys(source, e, why == "") {
		if err := tx.Bucket(ik[0]).Put(ik[1], nil); err != nil {
			return false, err
		}
	}
	h.Count++
	h.Bytes += uint64(len(v))
	switch e.Type {
	case proto.EventAuditDamaged:
		h.Damaged++
	case proto.EventAuditDropped:
		if n, err := strconv.ParseUint(e.Fields["count"], 10, 64); err == nil {
			h.Dropped += n
		}
	}
	if e.Seq > h.Seq {
		h.Seq, h.Hash = e.Seq, e.Hash
	}
	return true, nil
}

// Ingest commits a device's batch (source is the device's ID, from its
// certificate) and returns the ack to send it. Events already held are
// skipped. A batch without events just reports the head.
func (l *Log) Ingest(ctx context.Context, source string, b *proto.AuditBatch) (*proto.AuditAck, error) {
	if source == "" || source == api.SourceFleet {
		return nil, fmt.Errorf("audit: ingest: bad source %q", source)
	}
	for i := range b.Events {
		e := &b.Events[i]
		if e.Seq == 0 {
			return &proto.AuditAck{ID: b.ID, Err: proto.Errorf(proto.CodeBadRequest, "event %d has no sequence number", i)}, nil
		}
		if e.Device != "" && e.Device != source {
			return &proto.AuditAck{ID: b.ID, Err: proto.Errorf(proto.CodeForbidden, "event %d names device %q; a device writes only its own events", e.Seq, e.Device)}, nil
		}
		if err := e.CheckDevice(); err != nil {
			return &proto.AuditAck{ID: b.ID, Err: proto.Errorf(proto.CodeBadRequest, "event %d: %v", e.Seq, err)}, nil
		}
	}
	ack := proto.AuditAck{ID: b.ID}
	added := 0
	var stored []int // indices of the events stored (not duplicates)
	var fleet Head   // the fleet-wide head, on several replicas
	var remote map[string]remoteStart
	if len(b.Events) > 0 {
		var err error
		if fleet, err = l.fleetHead(ctx, source); err != nil {
			return nil, err
		}
		remote = l.remoteStarts(ctx, source, b.Events)
	}
	var moved Head // where this batch leaves the fleet-wide head
	lim := l.limits()
	room := error(nil)
	if l.cfg.Room != nil && len(b.Events) > 0 {
		room = l.cfg.Room()
	}
	err := l.db.Update(func(tx *bolt.Tx) error {
		heads := tx.Bucket(bucketHeads)
		h, err := decodeHead(heads.Get([]byte(source)))
		if err != nil {
			return err
		}
		if room != nil || lim.DeviceQuota > 0 {
			n, err := newBytes(tx, source, h, b)
			switch {
			case err != nil:
				return err
			case n > 0 && room != nil:
				return room
			case n > 0 && lim.DeviceQuota > 0 && int64(h.Bytes)+n > lim.DeviceQuota:
				return &errOverQuota{held: int64(h.Bytes), adding: n, quota: lim.DeviceQuota}
			}
		}
		added = 0
		stored = stored[:0]
		claims := &claimChecker{tx: tx, device: source, remote: remote}
		handedOff := false
		for i := range b.Events {
			e := &b.Events[i]
			if e.Seq <= fleet.Seq {
				continue // the fleet holds it, on this replica or another
			}
			if fleet.Seq > h.Seq && !handedOff {
				// The device was on another replica since this log's last
				// event: the chain continues from the fleet's head.
				if err := putHandoff(tx, source, h.Seq, fleet); err != nil {
					return err
				}
				h.Seq, h.Hash, handedOff = fleet.Seq, fleet.Hash, true
			}
			ok, err := store(tx, source, e, h, claims)
			if err != nil {
				return err
			}
			if ok {
				added++
				stored = append(stored, i)
			}
		}
		if b.Queue != nil {
			q := *b.Queue
			h.Queue, h.Reported = &q, l.cfg.Now().UnixMilli()
		}
		ack.Through, ack.Hash = h.Seq, h.Hash
		if fleet.Seq > h.Seq {
			ack.Through, ack.Hash = fleet.Seq, fleet.Hash
		}
		moved = Head{Seq: h.Seq, Hash: h.Hash, Replica: l.cfg.Replica}
		if len(b.Events) == 0 && b.Queue == nil {
			return nil
		}
		return heads.Put([]byte(source), h.encode())
	})
	if q, ok := isOverQuota(err); ok {
		l.pause(source, q.Error())
		return refusal(b.ID, q.Error()), nil
	}
	if room != nil && errors.Is(err, room) {
		l.pause(source, room.Error())
		return refusal(b.ID, room.Error()), nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit: ingest from %s: %w", source, err)
	}
	if l.cfg.Heads != nil && len(b.Events) > 0 && moved.Seq > fleet.Seq {
		// Committed here; acknowledged only once the fleet-wide head
		// covers it, or another replica could skip it as held.
		if err := l.cfg.Heads.Advance(ctx, source, fleet, moved); err != nil {
			return nil, fmt.Errorf("audit: ingest from %s: move the fleet-wide head to %d: %w", source, moved.Seq, err)
		}
	}
	if added > 0 {
		l.pause(source, "")
	}
	if l.cfg.OnStored != nil {
		for _, i := range stored {
			l.cfg.OnStored(source, &b.Events[i])
		}
	}
	if added < len(b.Events) {
		l.log.Debug("duplicate audit events skipped", "device_id", source, "sent", len(b.Events), "stored", added)
	}
	return &ack, nil
}

// Append numbers, chains and stores one of the fleet's own events, and
// returns once it is committed. The event's Time defaults to now.
func (l *Log) Append(ctx context.Context, e *proto.AuditEvent) error {
	return l.AppendMany(ctx, []*proto.AuditEvent{e})
}

// AppendMany is Append for several events, in order, in one commit (one
// fsync): Recorder gathers concurrent events into one call.
func (l *Log) AppendMany(ctx context.Context, events []*proto.AuditEvent) error {
	now := l.cfg.Now().UnixMilli()
	cs := make([]proto.AuditEvent, len(events))
	for i, e := range events {
		cs[i] = *e
		if cs[i].Time == 0 {
			cs[i].Time = now
		}
		cs[i].Sanitize()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.db.Update(func(tx *bolt.Tx) error {
		heads := tx.Bucket(bucketHeads)
		h, err := decodeHead(heads.Get([]byte(api.SourceFleet)))
		if err != nil {
			return err
		}
		for i := range cs {
			c := &cs[i]
			c.Seq = h.Seq + 1
			c.Hash = nil
			prev := h.Hash
			if h.Seq == 0 {
				prev = h.AnchorHash
			}
			if c.Hash, err = proto.ChainHash(prev, c); err != nil {
				return err
			}
			if _, err := store(tx, api.SourceFleet, c, h, nil); err != nil {
				return err
			}
		}
		return heads.Put([]byte(api.SourceFleet), h.encode())
	})
	if err != nil {
		return fmt.Errorf("audit: append %s: %w", events[0].Type, err)
	}
	if l.cfg.OnStored != nil {
		for i := range cs {
			l.cfg.OnStored(api.SourceFleet, &cs[i])
		}
	}
	return nil
}

// Backlog adds up what the devices last reported waiting in their audit
// queues: events not yet delivered to the fleet.
func (l *Log) Backlog() (events uint64, err error) {
	err = l.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketHeads).ForEach(func(k, v []byte) error {
			if string(k) == api.SourceFleet {
				return nil
			}
			h, err := decodeHead(v)
			if err == nil && h.Queue != nil {
				events += h.Queue.Pending
			}
			return nil
		})
	})
	if err != nil {
		return 0, fmt.Errorf("audit: backlog: %w", err)
	}
	return events, nil
}

// Head returns the highest sequence number held for source and its hash.
func (l *Log) Head(source string) (uint64, []byte, error) {
	var h *head
	err := l.db.View(func(tx *bolt.Tx) error {
		var err error
		h, err = decodeHead(tx.Bucket(bucketHeads).Get([]byte(source)))
		return err
	})
	if err != nil {
		return 0, nil, err
	}
	return h.Seq, h.Hash, nil
}

// DeviceStatus returns what the fleet knows of a device's audit: its head
// and its queue's last report.
func (l *Log) DeviceStatus(deviceID string) (*api.DeviceAudit, bool) {
	var h *head
	l.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketHeads).Get([]byte(deviceID))
		if b != nil {
			h, _ = decodeHead(b)
		}
		return nil
	})
	if h == nil {
		return nil, false
	}
	out := deviceAudit(h)
	out.Paused = l.Paused(deviceID)
	return out, true
}

func deviceAudit(h *head) *api.DeviceAudit {
	out := &api.DeviceAudit{Head: h.Seq, Dropped: h.Dropped, Damaged: h.Damaged, Unverified: h.Unverified, Stored: int64(h.Bytes)}
	if h.Queue != nil {
		out.Pending, out.Bytes, out.Cap = h.Queue.Pending, h.Queue.Bytes, h.Queue.Cap
		out.Dropped, out.Damaged = max(out.Dropped, h.Queue.Dropped), max(out.Damaged, h.Queue.Damaged)
		out.LastError = h.Queue.LastError
		out.Reported = time.UnixMilli(h.Reported).UTC()
	}
	return out
}

// Record is one stored event and its source.
type Record struct {
	Source string
	Event  proto.AuditEvent
	// Unverified says why the event's claims about a user or session did
	// not verify; empty when they did, or it made none.
	Unverified string
}

// Query selects events. Zero fields match everything.
type Query struct {
	Since, Until time.Time // Until is exclusive
	Device       string    // device ID
	User         string
	Session      string
	// Type is an event type, or a prefix ending in "*" ("session.*").
	Type string
	// Limit bounds the answer; default api.DefaultAuditLimit, at most
	// api.MaxAuditLimit.
	Limit int
}

func (q *Query) typeMatches(t string) bool {
	if q.Type == "" {
		return true
	}
	if p, ok := strings.CutSuffix(q.Type, "*"); ok {
		return strings.HasPrefix(t, p)
	}
	return t == q.Type
}

// Search returns the events q selects, oldest first, and whether more
// matched than q.Limit.
func (l *Log) Search(ctx context.Context, q Query) ([]Record, bool, error) {
	p, err := l.SearchPage(ctx, q, false, "")
	if err != nil {
		return nil, false, err
	}
	return p.Records, p.Next != "", nil
}

// Page is a page of search results: Next, when not empty, is the cursor
// of the page that follows.
type Page struct {
	Records []Record
	Next    string
}

// ErrCursor is returned for a cursor SearchPage did not make.
var ErrCursor = errors.New("audit: bad page cursor")

// SearchPage returns a page of the events q selects: oldest first, or
// newest first (a dashboard's order) when newest is set, starting after
// cursor ("" for the first page; a page's Next for the one after it).
func (l *Log) SearchPage(ctx context.Context, q Query, newest bool, cursor string) (Page, error) {
	if q.Limit <= 0 {
		q.Limit = api.DefaultAuditLimit
	}
	q.Limit = min(q.Limit, api.MaxAuditLimit)
	// The most selective index that the query names.
	bucket, prefix := bucketTime, []byte(nil)
	switch {
	case q.Session != "":
		bucket, prefix = bucketSession, append([]byte(q.Session), 0)
	case q.User != "":
		bucket, prefix = bucketUser, append([]byte(q.User), 0)
	case q.Device != "":
		bucket, prefix = bucketDevice, append([]byte(q.Device), 0)
	case q.Type != "" && !strings.HasSuffix(q.Type, "*"):
		bucket, prefix = bucketType, append([]byte(q.Type), 0)
	}
	lo := append(append([]byte{}, prefix...), timeKey(-1<<62)...)
	if !q.Since.IsZero() {
		lo = append(append([]byte{}, prefix...), timeKey(q.Since.UnixMilli())...)
	}
	var hi []byte // exclusive
	if !q.Until.IsZero() {
		hi = append(append([]byte{}, prefix...), timeKey(q.Until.UnixMilli())...)
	}
	var after []byte // the cursor: the last index key of the page before
	if cursor != "" {
		b, err := hex.DecodeString(cursor)
		if err != nil || !bytes.HasPrefix(b, prefix) || len(b) < len(prefix)+8+9 || len(b) > 4096 {
			return Page{}, ErrCursor
		}
		after = b
	}
	var out Page
	err := l.db.View(func(tx *bolt.Tx) error {
		events := tx.Bucket(bucketEvents)
		c := tx.Bucket(bucket).Cursor()
		// The first key and the step, in the page's order.
		var k []byte
		next := c.Next
		switch {
		case !newest && after != nil:
			k, _ = c.Seek(after)
			if bytes.Equal(k, after) {
				k, _ = c.Next()
			}
		case !newest:
			k, _ = c.Seek(lo)
		default:
			next = c.Prev
			end := hi
			if after != nil && (end == nil || bytes.Compare(after, end) < 0) {
				end = after
			}
			if end == nil {
				// Past every key with the prefix.
				end = append(append([]byte{}, prefix...), bytes.Repeat([]byte{0xff}, 9)...)
			}
			if k, _ = c.Seek(end); k == nil {
				k, _ = c.Last()
			} else {
				k, _ = c.Prev()
			}
		}
		var lastKey []byte
		for ; k != nil && bytes.HasPrefix(k, prefix); k, _ = next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			if !newest && hi != nil && bytes.Compare(k, hi) >= 0 {
				break
			}
			if newest && bytes.Compare(k, lo) < 0 {
				break
			}
			rec, ok := l.lookup(tx, events, k, prefix, &q)
			if !ok {
				continue
			}
			if len(out.Records) == q.Limit {
				out.Next = hex.EncodeToString(lastKey)
				return nil
			}
			out.Records = append(out.Records, rec)
			lastKey = append(lastKey[:0], k...)
		}
		return nil
	})
	if err != nil {
		return Page{}, fmt.Errorf("audit: search: %w", err)
	}
	return out, nil
}

// lookup reads the event an index key names, if it matches q.
func (l *Log) lookup(tx *bolt.Tx, events *bolt.Bucket, k, prefix []byte, q *Query) (Record, bool) {
	rest := k[len(prefix)+8:] // source, 0, seq
	if len(rest) < 9 || rest[len(rest)-9] != 0 {
		return Record{}, false
	}
	source, sk := string(rest[:len(rest)-9]), rest[len(rest)-8:]
	sb := events.Bucket([]byte(source))
	if sb == nil {
		return Record{}, false
	}
	v := sb.Get(sk)
	if v == nil {
		return Record{}, false
	}
	e, err := proto.UnmarshalEvent(v)
	if err != nil {
		return Record{}, false
	}
	if (q.Device != "" && deviceOf(source, e) != q.Device) || (q.User != "" && e.User != q.User) ||
		(q.Session != "" && e.Session != q.Session) || !q.typeMatches(e.Type) {
		return Record{}, false
	}
	return Record{Source: source, Event: *e, Unverified: unverified(tx, source, e.Seq)}, true
}

// Export turns a record into the JSON export form. names maps device IDs
// to names (optional).
func Export(r Record, names map[string]string) api.AuditEvent {
	e := r.Event
	dev := deviceOf(r.Source, &e)
	return api.AuditEvent{
		Source: r.Source, Seq: e.Seq, Time: time.UnixMilli(e.Time).UTC(), Type: e.Type, Outcome: e.Outcome,
		User: e.User, Login: e.Login, Session: e.Session, Device: dev, DeviceName: names[dev],
		Cluster: e.Cluster, Addr: e.Addr, Message: e.Message, Fields: e.Fields, Hash: hex.EncodeToString(e.Hash),
		AssertedBy: AssertedBy(r.Source), Unverified: r.Unverified,
	}
}

// maxProblems bounds the problems Verify lists per source.
const maxProblems = 20

// Verification is what Verify found.
type Verification struct {
	Chains      []api.AuditChain
	Checkpoints *CheckpointStatus
}

// Verify checks every source's chain: sequence numbers without gaps from
// the anchor to the head, each event's hash recomputed from the one before
// it, the head matching the last event, and the newest head a signed
// checkpoint names for the source still there with the hash it signed. It
// also checks the checkpoints themselves: signatures, numbers, links.
func (l *Log) Verify(ctx context.Context) (*Verification, error) {
	out := &Verification{}
	err := l.db.View(func(tx *bolt.Tx) error {
		out.Checkpoints = l.verifyCheckpoints(tx)
		heads := tx.Bucket(bucketHeads)
		sources := map[string]bool{}
		heads.ForEach(func(k, _ []byte) error { sources[string(k)] = true; return nil })
		tx.Bucket(bucketEvents).ForEach(func(k, _ []byte) error { sources[string(k)] = true; return nil })
		for s := range out.Checkpoints.expect {
			sources[s] = true
		}
		names := make([]string, 0, len(sources))
		for s := range sources {
			names = append(names, s)
		}
		slices.Sort(names)
		for _, s := range names {
			if err := ctx.Err(); err != nil {
				return err
			}
			c := verifySource(tx, s, out.Checkpoints.expect[s])
			if c.Queue != nil {
				c.Queue.Paused = l.Paused(s)
			}
			out.Chains = append(out.Chains, c)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit: verify: %w", err)
	}
	return out, nil
}

func verifySource(tx *bolt.Tx, source string, signed map[uint64]auditexport.Want) api.AuditChain {
	r := api.AuditChain{Source: source}
	problem := func(format string, args ...any) {
		if len(r.Problems) < maxProblems {
			r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
		} else if len(r.Problems) == maxProblems {
			r.Problems = append(r.Problems, "more problems not listed")
		}
	}
	h, err := decodeHead(tx.Bucket(bucketHeads).Get([]byte(source)))
	if err != nil {
		problem("head record unreadable: %v", err)
		h = &head{}
	}
	if source != api.SourceFleet && (h.Queue != nil || h.Seq > 0) {
		r.Queue = deviceAudit(h)
	}
	expect := h.AnchorSeq + 1
	prev := h.AnchorHash
	var lastHash []byte
	handoffs := handoffsOf(tx, source)
	if b := tx.Bucket(bucketEvents).Bucket([]byte(source)); b != nil {
		b.ForEach(func(k, v []byte) error {
			if len(k) != 8 {
				problem("bad key %x", k)
				return nil
			}
			seq := binary.BigEndian.Uint64(k)
			r.Events++
			if r.First == 0 {
				r.First = seq
			}
			r.Last = seq
			if ho, ok := handoffs[seq-1]; ok && seq > expect && ho.After == expect-1 {
				// Events expect..seq-1 are on another replica: the chain
				// continues from the hash the hand-off recorded.
				r.Handoffs = append(r.Handoffs, api.AuditHandoff{After: ho.After, Seq: ho.Seq, Hash: hex.EncodeToString(ho.Hash), Replica: ho.Replica})
				expect, prev = seq, ho.Hash
			}
			if seq > expect {
				if seq == expect+1 {
					problem("event %d is missing", expect)
				} else {
					problem("events %d to %d are missing", expect, seq-1)
				}
				prev = nil // cannot check the event after a gap
			}
			expect = seq + 1
			e, err := proto.UnmarshalEvent(v)
			if err != nil {
				problem("event %d is unreadable (altered): %v", seq, err)
				prev, lastHash = nil, nil
				return nil
			}
			if e.Seq != seq {
				problem("event stored as %d says it is %d", seq, e.Seq)
			}
			want, err := proto.ChainHash(prev, e)
			switch {
			case err != nil:
				problem("event %d cannot be hashed: %v", seq, err)
			case prev == nil && seq != 1 && seq != h.AnchorSeq+1 && handoffs[seq-1].Seq == 0:
				// After a gap: the hash cannot be checked.
			case !bytes.Equal(want, e.Hash):
				problem("event %d was altered, or the chain broke before it (hash mismatch)", seq)
			}
			prev, lastHash = e.Hash, e.Hash
			return nil
		})
	}
	if r.Events != h.Count {
		problem("%d events stored, %d recorded as received: events were added or deleted", r.Events, h.Count)
	}
	if h.Seq > r.Last {
		problem("events after %d are missing: the last one received was %d", r.Last, h.Seq)
	} else if h.Seq == r.Last && h.Seq > 0 && !bytes.Equal(h.Hash, lastHash) {
		problem("the last event %d does not match the hash recorded when it was received", h.Seq)
	}
	if h.Conflicts > 0 {
		problem("%d events were sent again with other contents under known sequence numbers", h.Conflicts)
	}
	for _, p := range checkSigned(tx, source, h, signed) {
		problem("%s", p)
	}
	r.OK = len(r.Problems) == 0
	return r
}

// Prune drops, per source, the oldest events older than before (stopping
// at a source's first newer event, so the chain stays whole) and returns
// how many it dropped. The last dropped event becomes the chain's anchor.
func (l *Log) Prune(ctx context.Context, before time.Time) (int, error) {
	total := 0
	var sources [][]byte
	l.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEvents).ForEach(func(k, _ []byte) error {
			sources = append(sources, append([]byte{}, k...))
			return nil
		})
	})
	cut := before.UnixMilli()
	for _, s := range sources {
		for {
			if err := ctx.Err(); err != nil {
				return total, err
			}
			n, err := l.pruneSome(s, cut, 1000)
			total += n
			if err != nil {
				return total, err
			}
			if n < 1000 {
				break
			}
		}
	}
	return total, nil
}

// pruneSome drops up to max of source's oldest events older than cut in
// one transaction.
func (l *Log) pruneSome(source []byte, cut int64, max int) (int, error) {
	if bytes.Equal(source, []byte(api.SourceFleet)) {
		l.mu.Lock()
		defer l.mu.Unlock()
	}
	n := 0
	err := l.db.Update(func(tx *bolt.Tx) error {
		n = 0
		b := tx.Bucket(bucketEvents).Bucket(source)
		if b == nil {
			return nil
		}
		heads := tx.Bucket(bucketHeads)
		h, err := decodeHead(heads.Get(source))
		if err != nil {
			return err
		}
		var keys [][]byte
		c := b.Cursor()
		for k, v := c.First(); k != nil && len(keys) < max; k, v = c.Next() {
			e, err := proto.UnmarshalEvent(v)
			if err != nil || e.Time >= cut {
				break
			}
			for _, ik := range indexKeys(string(source), e, true) { // deleting a missing key does nothing
				tx.Bucket(ik[0]).Delete(ik[1])
			}
			tx.Bucket(bucketUnverified).Delete(ref(string(source), e.Seq))
			h.Bytes -= min(h.Bytes, uint64(len(v)))
			keys = append(keys, k)
			h.AnchorSeq, h.AnchorHash = e.Seq, e.Hash
		}
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		n = len(keys)
		if n == 0 {
			return nil
		}
		h.Count -= min(h.Count, uint64(n))
		return heads.Put(source, h.encode())
	})
	return n, err
}

// Run signs a checkpoint every CheckpointEvery (when it has a key and
// heads changed) and applies the retention (age, then size: quota.go) at
// once and every hour, until ctx is done. It signs no last checkpoint: the owner does that once
// nothing writes any more (Checkpoint).
func (l *Log) Run(ctx context.Context) {
	every := l.cfg.CheckpointEvery
	if every <= 0 {
		every = DefaultCheckpointEvery
	}
	checkpoint := time.NewTicker(every)
	defer checkpoint.Stop()
	prune := time.NewTicker(time.Hour)
	defer prune.Stop()
	l.retain(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-checkpoint.C:
			if l.cfg.CheckpointKey == nil {
				continue
			}
			if c, err := l.Checkpoint(ctx); err != nil {
				l.log.Error("audit checkpoint not signed", "err", err)
			} else if c != nil {
				l.log.Debug("audit checkpoint signed", "n", c.N, "heads", len(c.Heads))
			}
		case <-prune.C:
			l.retain(ctx)
		}
	}
}
