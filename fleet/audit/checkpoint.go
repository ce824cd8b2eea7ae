package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/auditexport"
)

// Signed checkpoints (see package proto/auditexport): the log signs the
// heads that changed since its last checkpoint with Config.CheckpointKey,
// every Config.CheckpointEvery and when fleetd stops, and Verify checks
// every chain against the newest checkpoint that names it. A chain
// rewritten consistently in the file (every hash after the edit
// recomputed) no longer matches its signed head.

// DefaultCheckpointEvery is how often the log signs a checkpoint when
// Config.CheckpointEvery is zero.
const DefaultCheckpointEvery = 5 * time.Minute

var (
	// bucketCheckpoints holds the checkpoints by number.
	bucketCheckpoints = []byte("checkpoints")
	// bucketSigned holds, per source, the head the last checkpoint signed
	// (8-byte seq, then hash), to find what changed since.
	bucketSigned = []byte("signed_heads")
)

// Checkpoint signs the chain heads that changed since the last checkpoint
// and stores the checkpoint. It returns nil, nil when nothing changed, and
// an error when the log has no key.
func (l *Log) Checkpoint(ctx context.Context) (*auditexport.Checkpoint, error) {
	if l.cfg.CheckpointKey == nil {
		return nil, errors.New("audit: checkpoint: no key")
	}
	var cp *auditexport.Checkpoint
	err := l.db.Update(func(tx *bolt.Tx) error {
		cp = nil
		signed := tx.Bucket(bucketSigned)
		var changed []auditexport.Head
		err := tx.Bucket(bucketHeads).ForEach(func(k, v []byte) error {
			h, err := decodeHead(v)
			if err != nil || h.Seq == 0 {
				return nil // Verify reports an unreadable head
			}
			if old := signed.Get(k); len(old) >= 8 && binary.BigEndian.Uint64(old) == h.Seq && bytes.Equal(old[8:], h.Hash) {
				return nil
			}
			changed = append(changed, auditexport.Head{Source: string(k), Seq: h.Seq, Hash: h.Hash})
			return nil
		})
		if err != nil || len(changed) == 0 {
			return err
		}
		cps := tx.Bucket(bucketCheckpoints)
		c := &auditexport.Checkpoint{N: 1, Time: l.cfg.Now().UnixMilli(), Heads: changed}
		if k, v := cps.Cursor().Last(); k != nil {
			last, err := auditexport.DecodeCheckpoint(v)
			if err != nil {
				return fmt.Errorf("the last checkpoint is unreadable: %w", err)
			}
			c.N, c.Prev = last.N+1, last.Digest()
		}
		c.Sign(l.cfg.CheckpointKey)
		if err := cps.Put(seqKey(c.N), c.Encode()); err != nil {
			return err
		}
		for _, h := range changed {
			if err := signed.Put([]byte(h.Source), append(seqKey(h.Seq), h.Hash...)); err != nil {
				return err
			}
		}
		cp = c
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit: checkpoint: %w", err)
	}
	return cp, nil
}

// CheckpointKey returns the public key checkpoints are signed with, or nil.
func (l *Log) CheckpointKey() ed25519.PublicKey {
	if l.cfg.CheckpointKey == nil {
		return nil
	}
	return l.cfg.CheckpointKey.Public().(ed25519.PublicKey)
}

// checkpoints reads every stored checkpoint, oldest first; ones that do not
// decode are reported as problems.
func checkpoints(tx *bolt.Tx) ([]*auditexport.Checkpoint, []string) {
	var out []*auditexport.Checkpoint
	var problems []string
	tx.Bucket(bucketCheckpoints).ForEach(func(k, v []byte) error {
		c, err := auditexport.DecodeCheckpoint(v)
		switch {
		case err != nil:
			problems = append(problems, fmt.Sprintf("checkpoint %x is unreadable (altered): %v", k, err))
		case len(k) != 8 || binary.BigEndian.Uint64(k) != c.N:
			problems = append(problems, fmt.Sprintf("checkpoint %d is stored under another number", c.N))
		default:
			out = append(out, c)
		}
		return nil
	})
	return out, problems
}

// CheckpointStatus is what Verify found of the checkpoints.
type CheckpointStatus struct {
	Key      ed25519.PublicKey
	Count    int
	Last     time.Time
	Problems []string
	// expect holds, per source, the newest signed head.
	expect auditexport.Expect
}

// verifyCheckpoints checks the stored checkpoints' signatures and links,
// and returns the newest head each signed for every source.
func (l *Log) verifyCheckpoints(tx *bolt.Tx) *CheckpointStatus {
	st := &CheckpointStatus{Key: l.CheckpointKey(), expect: auditexport.Expect{}}
	cps, problems := checkpoints(tx)
	st.Problems = problems
	st.Count = len(cps)
	if len(cps) > 0 {
		st.Last = time.UnixMilli(cps[len(cps)-1].Time).UTC()
	}
	if st.Key == nil {
		if len(cps) > 0 {
			st.Problems = append(st.Problems, "the log holds checkpoints but fleetd has no key to check them")
		}
		return st
	}
	x, problems := auditexport.CheckChain(cps, st.Key)
	st.Problems = append(st.Problems, problems...)
	st.expect = x.Latest()
	return st
}

// checkSigned checks source's chain against the newest head a checkpoint
// signed for it.
func checkSigned(tx *bolt.Tx, source string, h *head, want map[uint64]auditexport.Want) []string {
	var out []string
	b := tx.Bucket(bucketEvents).Bucket([]byte(source))
	for seq, w := range want {
		var stored []byte
		if b != nil {
			if v := b.Get(seqKey(seq)); v != nil {
				if e, err := proto.UnmarshalEvent(v); err == nil {
					stored = e.Hash
				} else {
					stored = []byte{} // there, but unreadable: not the signed event
				}
			}
		}
		if p := auditexport.Check(source, seq, w, stored, h.AnchorSeq, h.AnchorHash); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// Export writes the log in the export format (proto/auditexport): the
// header, every checkpoint, then every source's events in sequence order
// (unless checkpointsOnly). Events are read in short transactions, so a
// long export does not hold up ingestion; events added meanwhile may or may
// not be in it.
func (l *Log) Export(ctx context.Context, w io.Writer, cluster string, checkpointsOnly bool) error {
	if l.cfg.CheckpointKey == nil {
		return errors.New("audit: export: no checkpoint key")
	}
	ew := auditexport.NewWriter(w)
	hdr := &auditexport.Header{Version: auditexport.Version, Cluster: cluster, Exported: l.cfg.Now().UTC(),
		Key: auditexport.KeyString(l.CheckpointKey()), CheckpointsOnly: checkpointsOnly}
	var cps []*auditexport.Checkpoint
	err := l.db.View(func(tx *bolt.Tx) error {
		cps, _ = checkpoints(tx)
		return tx.Bucket(bucketHeads).ForEach(func(k, v []byte) error {
			h, err := decodeHead(v)
			if err != nil {
				return nil
			}
			hdr.Sources = append(hdr.Sources, auditexport.Source{Source: string(k), AnchorSeq: h.AnchorSeq, AnchorHash: h.AnchorHash})
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("audit: export: %w", err)
	}
	if err := ew.WriteHeader(hdr); err != nil {
		return fmt.Errorf("audit: export: %w", err)
	}
	for _, c := range cps {
		if err := ew.WriteCheckpoint(c); err != nil {
			return fmt.Errorf("audit: export: %w", err)
		}
	}
	if !checkpointsOnly {
		for _, s := range hdr.Sources {
			if err := l.exportSource(ctx, ew, s.Source); err != nil {
				return err
			}
		}
	}
	if err := ew.Close(); err != nil {
		return fmt.Errorf("audit: export: %w", err)
	}
	return nil
}

// exportBatch is how many events one read transaction of Export takes.
const exportBatch = 5000

func (l *Log) exportSource(ctx context.Context, ew *auditexport.Writer, source string) error {
	from := uint64(0)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		type item struct {
			seq      uint64
			raw      []byte
			readable api.AuditEvent
		}
		var items []item
		err := l.db.View(func(tx *bolt.Tx) error {
			b := tx.Bucket(bucketEvents).Bucket([]byte(source))
			if b == nil {
				return nil
			}
			c := b.Cursor()
			for k, v := c.Seek(seqKey(from)); k != nil && len(items) < exportBatch; k, v = c.Next() {
				seq := binary.BigEndian.Uint64(k)
				it := item{seq: seq, raw: slices.Clone(v)}
				if e, err := proto.UnmarshalEvent(v); err == nil {
					it.readable = Export(Record{Source: source, Event: *e, Unverified: unverified(tx, source, seq)}, nil)
				}
				items = append(items, it)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("audit: export %s: %w", source, err)
		}
		for i := range items {
			var readable *api.AuditEvent
			if items[i].readable.Seq != 0 {
				readable = &items[i].readable
			}
			if err := ew.WriteEvent(source, items[i].seq, items[i].raw, readable); err != nil {
				return fmt.Errorf("audit: export: %w", err)
			}
		}
		if len(items) < exportBatch {
			return nil
		}
		from = items[len(items)-1].seq + 1
	}
}
