package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/auditexport"
)

// rewriteConsistently changes dev-1's event seq in the file and recomputes
// every hash after it and the head: what someone who can write the file
// can do without leaving a broken chain.
func rewriteConsistently(t *testing.T, path string, seq uint64) {
	t.Helper()
	tamper(t, path, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvents).Bucket([]byte("dev-1"))
		var prev []byte
		if seq > 1 {
			e, _ := proto.UnmarshalEvent(b.Get(seqKey(seq - 1)))
			prev = e.Hash
		}
		for s := seq; ; s++ {
			v := b.Get(seqKey(s))
			if v == nil {
				break
			}
			e, _ := proto.UnmarshalEvent(v)
			if s == seq {
				e.User = "mallory"
			}
			e.Hash, _ = proto.ChainHash(prev, e)
			prev = e.Hash
			nv, _ := proto.MarshalEvent(e)
			if err := b.Put(seqKey(s), nv); err != nil {
				return err
			}
		}
		heads := tx.Bucket(bucketHeads)
		h, _ := decodeHead(heads.Get([]byte("dev-1")))
		h.Hash = prev
		return heads.Put([]byte("dev-1"), h.encode())
	})
}

func problemsOf(v *Verification) string {
	var all []string
	all = append(all, v.Checkpoints.Problems...)
	for _, c := range v.Chains {
		all = append(all, c.Problems...)
	}
	return strings.Join(all, "; ")
}

func TestCheckpointCatchesAConsistentRewrite(t *testing.T) {
	ctx := context.Background()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	for _, signed := range []bool{false, true} {
		name := map[bool]string{false: "without checkpoints the rewrite goes unseen", true: "with checkpoints it is caught"}[signed]
		t.Run(name, func(t *testing.T) {
			cfg := Config{Path: t.TempDir() + "/audit.db"}
			if signed {
				cfg.CheckpointKey = key
			}
			l, err := Open(cfg)
			if err != nil {
				t.Fatal(err)
			}
			l.Ingest(ctx, "dev-1", &proto.AuditBatch{Events: chain(t, 1, 10, nil, simple)})
			l.Append(ctx, &proto.AuditEvent{Type: proto.EventUserLogin, User: "alice"})
			if signed {
				c, err := l.Checkpoint(ctx)
				if err != nil || c == nil || c.N != 1 || len(c.Heads) != 2 {
					t.Fatalf("first checkpoint: %+v, %v; want number 1 naming 2 heads", c, err)
				}
				if c, err := l.Checkpoint(ctx); err != nil || c != nil {
					t.Fatalf("a checkpoint with nothing changed: %+v, %v", c, err)
				}
				var b bytes.Buffer
				if err := l.Export(ctx, &b, "fleet", false); err != nil {
					t.Fatal(err)
				}
				rep, err := auditexport.Verify(&b, auditexport.Options{Key: l.CheckpointKey()})
				if err != nil || !rep.OK {
					t.Fatalf("the export of an untouched log: %+v, %v", rep, err)
				}
			}
			if v, _ := l.Verify(ctx); problemsOf(v) != "" {
				t.Fatalf("the untouched log: %s", problemsOf(v))
			}
			l.Close()
			rewriteConsistently(t, cfg.Path, 4)
			l, err = Open(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			v, err := l.Verify(ctx)
			if err != nil {
				t.Fatal(err)
			}
			caught := strings.Contains(problemsOf(v), "differs from the one signed in checkpoint 1")
			if caught != signed {
				t.Errorf("problems after the rewrite: %q (checkpoints: %v)", problemsOf(v), signed)
			}
			if signed {
				for _, c := range v.Chains {
					if c.Source == "dev-1" && c.OK {
						t.Error("dev-1's rewritten chain is OK")
					}
				}
			}
		})
	}
}

func TestCheckpointsChainAndCatchRemovals(t *testing.T) {
	ctx := context.Background()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	l, path := openLog(t, nil)
	l.Close()
	l, err := Open(Config{Path: path, CheckpointKey: key})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		l.Append(ctx, &proto.AuditEvent{Type: "x", Message: string(rune('a' + i))})
		if c, err := l.Checkpoint(ctx); err != nil || c.N != uint64(i+1) {
			t.Fatalf("checkpoint %d: %+v, %v", i+1, c, err)
		}
	}
	l.Close()
	tamper(t, path, func(tx *bolt.Tx) error {
		if err := tx.Bucket(bucketCheckpoints).Delete(seqKey(2)); err != nil {
			return err
		}
		// And cut the fleet's chain below what checkpoint 3 signed.
		return tx.Bucket(bucketEvents).Bucket([]byte(api.SourceFleet)).Delete(seqKey(3))
	})
	l, err = Open(Config{Path: path, CheckpointKey: key})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	v, _ := l.Verify(ctx)
	all := problemsOf(v)
	for _, want := range []string{"checkpoints 2 to 2 are missing", "event 3, signed in checkpoint 3, is missing"} {
		if !strings.Contains(all, want) {
			t.Errorf("problems %q lack %q", all, want)
		}
	}
}
