package audit

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	bolt "go.etcd.io/bbolt"

	statestore "remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto"
)

// One trail per device on several replicas.
//
// Each fleetd replica keeps its own log (a bbolt file in its data dir:
// appends are local and fast, and no replica's disk is shared). A device's
// events are accepted only by the replica that holds its tunnel, since they
// arrive on its control stream; a device that moves between replicas
// leaves one stretch of its chain on each. The chain is not split, because
// the replicas agree, through the fleet's state store, where it stands
// (Config.Heads: the fleet-wide head, the last sequence number and hash
// any replica stored, and which replica): a replica that takes a batch
//
//   - skips the events the fleet already holds (sequence numbers up to the
//     fleet-wide head), wherever they are, so an event is stored once in
//     the fleet, not once per replica;
//   - when the fleet-wide head is past its own (the device was elsewhere
//     meanwhile), records a hand-off in its log: the chain continues from
//     that head's hash, held by that replica, so its own stretch verifies
//     with Verify on its own, like a pruned chain from its anchor;
//   - commits the events, then moves the fleet-wide head on (a
//     compare-and-swap), and only then acknowledges the batch. A replica
//     that cannot reach the store acknowledges nothing: the device keeps
//     its events and sends them again, there or to another replica.
//
// A crash between the commit and the head's move can leave a few events on
// two replicas, identical (same sequence numbers and hashes); the fleet's
// merged view (fleet/httpapi's searches across replicas) counts them once.
// Nothing is lost: an event leaves the device's queue only once a replica
// committed it and the fleet-wide head covers it.
//
// The fleet's own events (source "fleet") are chained per replica: each
// replica numbers and chains what it records itself.
//
// A device's event that names a session is checked against the fleet's
// session.start for it (claims.go), which is in the log of the replica
// that brokered the session: when it is not in this one, Config.Brokered
// asks the other replicas.

// Head is where a device's chain stands in the whole fleet.
type Head struct {
	Seq     uint64 `json:"seq"`
	Hash    []byte `json:"hash,omitempty"`
	Replica string `json:"replica,omitempty"`
}

// Heads keeps each device's fleet-wide head (fleetd keeps them in the
// state store).
type Heads interface {
	// Load returns the device's head; the zero Head when the fleet holds
	// none of its events.
	Load(ctx context.Context, device string) (Head, error)
	// Advance moves the device's head from from (as Load returned it) to
	// to; it fails when the head is no longer from.
	Advance(ctx context.Context, device string, from, to Head) error
}

// bucketHandoffs maps (source, 0, seq) to a hand-off: the device's chain
// continues after seq, whose hash and replica the value holds.
var bucketHandoffs = []byte("handoffs")

// handoff is where a device's chain left this replica's log and where it
// continues.
type handoff struct {
	// After is the last sequence number this log held before the hand-off
	// (0: none).
	After uint64 `cbor:"1,keyasint,omitempty"`
	// Seq and Hash are the fleet-wide head the chain continues from, held
	// by Replica.
	Seq     uint64 `cbor:"2,keyasint"`
	Hash    []byte `cbor:"3,keyasint,omitempty"`
	Replica string `cbor:"4,keyasint,omitempty"`
}

// putHandoff records that source's chain continues from g after local
// sequence number after.
func putHandoff(tx *bolt.Tx, source string, after uint64, g Head) error {
	b, err := encMode.Marshal(&handoff{After: after, Seq: g.Seq, Hash: g.Hash, Replica: g.Replica})
	if err != nil {
		return err
	}
	return tx.Bucket(bucketHandoffs).Put(ref(source, g.Seq), b)
}

// handoffsOf returns source's hand-offs by the sequence number they jump
// to (the head's).
func handoffsOf(tx *bolt.Tx, source string) map[uint64]handoff {
	out := map[uint64]handoff{}
	prefix := append([]byte(source), 0)
	c := tx.Bucket(bucketHandoffs).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if len(k) != len(prefix)+8 {
			continue
		}
		var h handoff
		if decMode.Unmarshal(v, &h) == nil {
			out[binary.BigEndian.Uint64(k[len(prefix):])] = h
		}
	}
	return out
}

// fleetHead loads source's fleet-wide head, or the zero Head on one fleetd.
func (l *Log) fleetHead(ctx context.Context, source string) (Head, error) {
	if l.cfg.Heads == nil {
		return Head{}, nil
	}
	g, err := l.cfg.Heads.Load(ctx, source)
	if err != nil {
		return Head{}, fmt.Errorf("audit: the fleet-wide head of %s: %w", source, err)
	}
	return g, nil
}

// maxRemoteLookups bounds the sessions of one batch looked up on other
// replicas.
const maxRemoteLookups = 64

// remoteStarts looks up, on the other replicas, the session.start of each
// session that events name and this log lacks. A session the lookup could
// not decide maps to an error, recorded as the reason its events did not
// verify.
func (l *Log) remoteStarts(ctx context.Context, device string, events []proto.AuditEvent) map[string]remoteStart {
	if l.cfg.Brokered == nil {
		return nil
	}
	var missing []string
	l.db.View(func(tx *bolt.Tx) error {
		seen := map[string]bool{}
		for i := range events {
			s := events[i].Session
			if s == "" || seen[s] || len(missing) == maxRemoteLookups {
				continue
			}
			seen[s] = true
			if findStart(tx, device, s) == nil {
				missing = append(missing, s)
			}
		}
		return nil
	})
	if len(missing) == 0 {
		return nil
	}
	out := make(map[string]remoteStart, len(missing))
	for _, s := range missing {
		start, err := l.cfg.Brokered(ctx, device, s)
		if errors.Is(err, ErrNotBrokered) {
			err = nil
		}
		out[s] = remoteStart{start: start, err: err}
	}
	return out
}

// remoteStart is another replica's answer about a session.
type remoteStart struct {
	start *proto.AuditEvent
	err   error // the lookup failed
}

// StoreHeads keeps the fleet-wide heads in the fleet's state store, as
// JSON under "audit/heads/DEVICE".
type StoreHeads struct {
	Store statestore.Store
}

const headsPrefix = "audit/heads/"

// Load implements Heads.
func (s StoreHeads) Load(ctx context.Context, device string) (Head, error) {
	b, err := s.Store.Get(ctx, headsPrefix+device)
	if errors.Is(err, statestore.ErrNotFound) {
		return Head{}, nil
	}
	if err != nil {
		return Head{}, err
	}
	var h Head
	if err := json.Unmarshal(b, &h); err != nil {
		return Head{}, fmt.Errorf("audit: decode the head of %s: %w", device, err)
	}
	return h, nil
}

// Advance implements Heads.
func (s StoreHeads) Advance(ctx context.Context, device string, from, to Head) error {
	next, _ := json.Marshal(&to)
	if from.Seq == 0 && from.Hash == nil && from.Replica == "" {
		return s.Store.Create(ctx, headsPrefix+device, next)
	}
	old, _ := json.Marshal(&from)
	return s.Store.CompareAndSwap(ctx, headsPrefix+device, old, next)
}

// EventHash returns the chain hash of source's event seq, if this log
// holds it (a replica's answer to another checking a hand-off).
func (l *Log) EventHash(source string, seq uint64) ([]byte, bool) {
	var h []byte
	l.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvents).Bucket([]byte(source))
		if b == nil {
			return nil
		}
		v := b.Get(seqKey(seq))
		if v == nil {
			return nil
		}
		if e, err := proto.UnmarshalEvent(v); err == nil && e.Seq == seq {
			h = e.Hash
		}
		return nil
	})
	return h, h != nil
}
