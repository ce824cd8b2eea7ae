package e2e

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"
	bolt "go.etcd.io/bbolt"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/harness"
)

// rewriteChain rewrites a device's chain in the fleet's audit file the way
// someone with the disk can: it edits event seq, recomputes the hash of
// every event after it, and the head the fleet keeps for the chain, so the
// chain is whole again. With drop, it also deletes the signed checkpoints,
// so that fleetd signs the rewritten chain afresh at its next start.
func rewriteChain(t *testing.T, dataDir, deviceID string, seq uint64, drop bool) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dataDir, "audit.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	key := func(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("events")).Bucket([]byte(deviceID))
		prev, _ := proto.UnmarshalEvent(b.Get(key(seq - 1)))
		last := prev.Hash
		for n := seq; b.Get(key(n)) != nil; n++ {
			e, err := proto.UnmarshalEvent(b.Get(key(n)))
			if err != nil {
				return err
			}
			if n == seq {
				e.Message = "nothing to see here"
			}
			e.Hash, _ = proto.ChainHash(last, e)
			last = e.Hash
			v, _ := proto.MarshalEvent(e)
			if err := b.Put(key(n), v); err != nil {
				return err
			}
		}
		// The head record is CBOR with integer keys; key 2 is the hash.
		heads := tx.Bucket([]byte("heads"))
		var h map[uint64]any
		if err := cbor.Unmarshal(heads.Get([]byte(deviceID)), &h); err != nil {
			return err
		}
		h[2] = last
		em, _ := cbor.CoreDetEncOptions().EncMode()
		hb, _ := em.Marshal(h)
		if err := heads.Put([]byte(deviceID), hb); err != nil {
			return err
		}
		if drop {
			for _, name := range []string{"checkpoints", "signed_heads"} {
				if err := tx.DeleteBucket([]byte(name)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// waitCheckpoint waits for a signed checkpoint made after since.
func waitCheckpoint(t *testing.T, f *harness.Fleet, since time.Time) api.AuditVerify {
	t.Helper()
	var v api.AuditVerify
	if !harness.Eventually(60*time.Second, func() bool {
		v, _ = verify(t, f)
		return v.Checkpoints != nil && v.Checkpoints.Last.After(since)
	}) {
		t.Fatalf("no checkpoint signed after %v: %+v", since, v.Checkpoints)
	}
	return v
}

// TestAuditCheckpointsCatchARewrite: a device's chain rewritten
// consistently in the fleet's audit file (every hash recomputed) fails
// fleetctl audit verify against fleetd's signed checkpoints; and when the
// checkpoints are deleted too, so that fleetd signs the rewritten chain
// afresh, an export kept off the machine still catches it.
func TestAuditCheckpointsCatchARewrite(t *testing.T) {
	f := startFleetWith(t, "audit_checkpoint_every: 1s\n")
	f.StartAgent("pi-1", "site=north")
	alice := f.Login("alice", f.AddUser("alice", "access", "root"))
	began := time.Now()
	for _, cmd := range []string{"echo one", "echo two", "echo three"} {
		alice.Tsh("ssh", "root@pi-1", cmd)
	}
	c := waitDrained(t, f, "pi-1", began, 30*time.Second)
	v := waitCheckpoint(t, f, time.Now())
	if !v.OK || v.Checkpoints.Count == 0 || !strings.HasPrefix(v.Checkpoints.Key, "ed25519:") {
		t.Fatalf("verify before any tampering: %+v", v)
	}
	if !strings.Contains(f.Proc.Output(), "Audit checkpoint key: "+v.Checkpoints.Key) {
		t.Errorf("fleetd did not print its checkpoint key %s", v.Checkpoints.Key)
	}

	// Off the machine: the signed checkpoints, and a full export.
	dir := t.TempDir()
	early, full := filepath.Join(dir, "early.jsonl"), filepath.Join(dir, "full.jsonl")
	f.Ctl("", "audit", "export", "--checkpoints-only", "-o", early)
	f.Ctl("", "audit", "export", "-o", full)
	if out := f.Ctl("", "audit", "verify", "--export", full, "--key", v.Checkpoints.Key); !strings.Contains(out, "audit chains in the export verified") {
		t.Fatalf("the fresh export does not verify:\n%s", out)
	}
	b, _ := os.ReadFile(full)
	if !strings.Contains(string(b), `"kind":"checkpoint"`) || strings.Count(string(b), `"kind":"event"`) < int(c.Events) {
		t.Errorf("the export lacks checkpoints or events:\n%.2000s", b)
	}

	var id string
	for _, d := range f.Devices() {
		id = d.ID
	}

	// 1. Rewrite pi-1's chain consistently: the store's checkpoints
	// catch it.
	f.Proc.Stop()
	rewriteChain(t, f.DataDir, id, 3, false)
	f.Start()
	out, _, err := f.CtlErr("", "audit", "verify")
	if err == nil || !strings.Contains(out, "differs from the one signed in checkpoint") || !strings.Contains(out, "BROKEN") {
		t.Fatalf("audit verify after a consistent rewrite: %v\n%s", err, out)
	}
	var vj api.AuditVerify
	jout, _, _ := f.CtlErr("", "audit", "verify", "--format=json")
	json.Unmarshal([]byte(jout), &vj)
	if vj.OK {
		t.Error("audit verify --json says OK")
	}

	// 2. Rewrite again and delete the checkpoints: fleetd signs the
	// rewritten chain afresh, so its own verification passes, but the
	// checkpoints exported earlier do not match.
	f.Proc.Stop()
	rewriteChain(t, f.DataDir, id, 4, true)
	restarted := time.Now()
	f.Start()
	waitCheckpoint(t, f, restarted)
	out, errOut, err := f.CtlErr("", "audit", "verify", "--against", early)
	if err == nil || !strings.Contains(out, "differs from the one signed in checkpoint") {
		t.Fatalf("audit verify --against the earlier export: %v\n%s%s", err, out, errOut)
	}
	t.Logf("caught by the earlier export:\n%s", out)
}
