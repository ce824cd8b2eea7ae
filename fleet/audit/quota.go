package audit

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"remoteler.dev/edge/proto"
)

// No device can fill the fleet's disk.
//
// Each source's stored bytes are counted in its head. A device's batch
// that would take it past its quota (Limits.DeviceQuota), or that comes
// while the data dir's free space is under its floor (Config.Room), is not
// stored: the answer says why and the device keeps the events in its queue
// and sends them again later (firmware/auditq backs off and probes with
// one event at a time). A batch without new events (the head query every
// agent sends, duplicates) is always answered. The fleet's own events are
// never refused here: user logins and sessions go on.
//
// Retention drops each source's oldest events older than Limits.MaxAge,
// and then the oldest of all sources while they take more than
// Limits.MaxBytes; each chain keeps its anchor, so what remains verifies.

// Limits are the audit log's retention and quota; zero fields mean no
// limit.
type Limits struct {
	MaxAge      time.Duration
	MaxBytes    int64
	DeviceQuota int64
}

func (l *Log) limits() Limits {
	if l.cfg.Limits != nil {
		return l.cfg.Limits()
	}
	return Limits{MaxAge: l.cfg.Retention}
}

// errOverQuota aborts an ingestion transaction that would pass the quota.
type errOverQuota struct{ held, adding, quota int64 }

func (e *errOverQuota) Error() string {
	return fmt.Sprintf("over its audit quota: the fleet holds %d bytes of its events, the quota is %d", e.held, e.quota)
}

// newBytes returns the stored size of the events of b the source does not
// hold yet.
func newBytes(tx *bolt.Tx, source string, h *head, b *proto.AuditBatch) (int64, error) {
	evs := tx.Bucket(bucketEvents).Bucket([]byte(source))
	var n int64
	for i := range b.Events {
		e := &b.Events[i]
		if e.Seq <= h.AnchorSeq || (evs != nil && evs.Get(seqKey(e.Seq)) != nil) {
			continue
		}
		v, err := proto.MarshalEvent(e)
		if err != nil {
			return 0, err
		}
		n += int64(len(v))
	}
	return n, nil
}

// pause records that source's uploads pause for why ("" clears it), and
// records the fleet's own event when a pause begins.
func (l *Log) pause(source, why string) {
	l.pausedMu.Lock()
	was := l.paused[source]
	if why == "" {
		delete(l.paused, source)
	} else {
		if l.paused == nil {
			l.paused = map[string]string{}
		}
		l.paused[source] = why
	}
	l.pausedMu.Unlock()
	switch {
	case why != "" && was == "":
		l.log.Warn("device uploads paused", "device_id", source, "reason", why)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := l.Append(ctx, &proto.AuditEvent{Type: proto.EventUploadsPaused, Outcome: proto.OutcomeFailure, Device: source,
			Message: why, Fields: map[string]string{"what": "audit"}}); err != nil {
			l.log.Error("audit event not recorded", "type", proto.EventUploadsPaused, "err", err)
		}
	case why == "" && was != "":
		l.log.Info("device uploads resumed", "device_id", source)
	}
}

// Paused returns why source's uploads pause, or "".
func (l *Log) Paused(source string) string {
	l.pausedMu.Lock()
	defer l.pausedMu.Unlock()
	return l.paused[source]
}

// Usage returns the bytes every source's events take, and each source's.
func (l *Log) Usage() (total int64, bySource map[string]int64, err error) {
	bySource = map[string]int64{}
	err = l.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketHeads).ForEach(func(k, v []byte) error {
			h, err := decodeHead(v)
			if err != nil {
				return nil
			}
			bySource[string(k)] = int64(h.Bytes)
			total += int64(h.Bytes)
			return nil
		})
	})
	if err != nil {
		return 0, nil, fmt.Errorf("audit: usage: %w", err)
	}
	return total, bySource, nil
}

// countBytes fills in the stored bytes of heads written before they were
// counted.
func (l *Log) countBytes() error {
	return l.db.Update(func(tx *bolt.Tx) error {
		heads := tx.Bucket(bucketHeads)
		var fix [][]byte
		heads.ForEach(func(k, v []byte) error {
			if h, err := decodeHead(v); err == nil && h.Count > 0 && h.Bytes == 0 {
				fix = append(fix, bytes.Clone(k))
			}
			return nil
		})
		for _, k := range fix {
			h, _ := decodeHead(heads.Get(k))
			if b := tx.Bucket(bucketEvents).Bucket(k); b != nil {
				b.ForEach(func(_, v []byte) error { h.Bytes += uint64(len(v)); return nil })
			}
			if err := heads.Put(k, h.encode()); err != nil {
				return err
			}
		}
		return nil
	})
}

// PruneToSize drops the oldest events of all sources (each chain from its
// start, keeping its anchor) until they take at most maxBytes, and returns
// how many it dropped.
func (l *Log) PruneToSize(ctx context.Context, maxBytes int64) (int, error) {
	if maxBytes <= 0 {
		return 0, nil
	}
	total, _, err := l.Usage()
	if err != nil || total <= maxBytes {
		return 0, err
	}
	excess := total - maxBytes
	// The time before which the oldest events add up to the excess.
	var cut int64
	err = l.db.View(func(tx *bolt.Tx) error {
		events := tx.Bucket(bucketEvents)
		var sum int64
		c := tx.Bucket(bucketTime).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			if len(k) < 8+9 {
				continue
			}
			rest := k[8:]
			source, seq := rest[:len(rest)-9], rest[len(rest)-8:]
			if b := events.Bucket(source); b != nil {
				sum += int64(len(b.Get(seq)))
			}
			if sum >= excess {
				cut = binaryTime(k) + 1
				return nil
			}
		}
		return nil
	})
	if err != nil || cut == 0 {
		return 0, err
	}
	return l.Prune(ctx, time.UnixMilli(cut))
}

// binaryTime reads a timeKey back.
func binaryTime(k []byte) int64 { return int64(binary.BigEndian.Uint64(k[:8]) ^ (1 << 63)) }

// retain applies the retention: age first, then size.
func (l *Log) retain(ctx context.Context) {
	lim := l.limits()
	if lim.MaxAge > 0 {
		n, err := l.Prune(ctx, l.cfg.Now().Add(-lim.MaxAge))
		if err != nil && ctx.Err() == nil {
			l.log.Error("prune audit log", "err", err)
		} else if n > 0 {
			l.log.Info("audit events past the retention pruned", "events", n, "max_age", lim.MaxAge)
		}
	}
	if lim.MaxBytes > 0 {
		n, err := l.PruneToSize(ctx, lim.MaxBytes)
		if err != nil && ctx.Err() == nil {
			l.log.Error("prune audit log to its size", "err", err)
		} else if n > 0 {
			l.log.Info("oldest audit events pruned to keep the log under its size", "events", n, "max_bytes", lim.MaxBytes)
		}
	}
}

// refusal is the answer to a batch the fleet does not store now.
func refusal(id uint64, why string) *proto.AuditAck {
	return &proto.AuditAck{ID: id, Err: proto.Errorf(proto.CodeUnavailable,
		"the fleet takes no more events from this device for now (%s); keep them queued and send them again later", why)}
}

// isOverQuota reports whether err is an errOverQuota.
func isOverQuota(err error) (*errOverQuota, bool) {
	var q *errOverQuota
	ok := errors.As(err, &q)
	return q, ok
}
