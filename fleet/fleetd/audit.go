package fleetd

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/diskfloor"
	"remoteler.dev/edge/fleet/recordings"
	"remoteler.dev/edge/fleet/retention"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// storage is what bounds the audit trail on disk: the policy (retention
// and quotas, changed with fleetctl retention set) and the free-space floor
// under the data dir.
type storage struct {
	policy *retention.Service
	floor  *diskfloor.Floor
}

func newStorage(cfg Config, st store.Store, now func() time.Time) *storage {
	defaults := api.DefaultRetention()
	if cfg.AuditRetention > 0 { // the config file's (or flag's) default
		defaults.AuditMaxAge = time.Duration(cfg.AuditRetention)
	}
	s := &storage{policy: &retention.Service{Store: st, Defaults: &defaults, Now: now}}
	s.floor = &diskfloor.Floor{Dir: cfg.DataDir, Min: func() int64 { return s.policy.Current().MinFreeBytes }}
	return s
}

func (s *storage) auditLimits() audit.Limits {
	r := s.policy.Current()
	return audit.Limits{MaxAge: r.AuditMaxAge, MaxBytes: r.AuditMaxBytes, DeviceQuota: r.AuditDeviceQuota}
}

func (s *storage) recordingLimits() recordings.Limits {
	r := s.policy.Current()
	return recordings.Limits{MaxAge: r.RecordingsMaxAge, MaxBytes: r.RecordingsMaxBytes, DeviceQuota: r.RecordingsDeviceQuota}
}

// auditReplicas is what the audit log needs on several replicas (see
// fleet/audit's replicas.go); the zero value is one fleetd.
type auditReplicas struct {
	heads    audit.Heads
	replica  string
	brokered func(ctx context.Context, deviceID, session string) (*proto.AuditEvent, error)
}

// openAudit opens the audit log (DATA_DIR/audit.db), signing checkpoints
// with key, and the session recordings (DATA_DIR/recordings), both bounded
// by sto.
func openAudit(cfg Config, key ed25519.PrivateKey, sto *storage, reps auditReplicas, onStored func(string, *proto.AuditEvent), log *slog.Logger, now func() time.Time) (*audit.Log, *recordings.Store, error) {
	events, err := audit.Open(audit.Config{
		Path: filepath.Join(cfg.DataDir, "audit.db"), Logger: log, Now: now,
		CheckpointKey: key, CheckpointEvery: time.Duration(cfg.AuditCheckpointEvery),
		Limits: sto.auditLimits, Room: sto.floor.Check, OnStored: onStored,
		Heads: reps.heads, Replica: reps.replica, Brokered: reps.brokered,
	})
	if err != nil {
		return nil, nil, err
	}
	recs, err := recordings.Open(recordings.Config{Dir: filepath.Join(cfg.DataDir, "recordings"), Logger: log, Now: now,
		Sessions: func(deviceID, session string) (recordings.Session, error) {
			start, err := events.Brokered(deviceID, session)
			if errors.Is(err, audit.ErrNotBrokered) {
				return recordings.Session{}, fmt.Errorf("%w: %w", recordings.ErrNoSession, err)
			}
			if err != nil {
				return recordings.Session{}, err
			}
			return recordings.Session{User: start.User, Login: start.Login, Cluster: start.Cluster}, nil
		},
		Limits: sto.recordingLimits, Room: sto.floor.Check,
		OnPause: func(deviceID, why string) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := events.Append(ctx, &proto.AuditEvent{Type: proto.EventUploadsPaused, Outcome: proto.OutcomeFailure, Device: deviceID,
				Message: why, Fields: map[string]string{"what": "recordings"}}); err != nil {
				log.Error("audit event not recorded", "type", proto.EventUploadsPaused, "err", err)
			}
		},
	})
	if err != nil {
		events.Close()
		return nil, nil, err
	}
	return events, recs, nil
}

// checkpointKeyKey is where the store keeps the audit checkpoint key.
const checkpointKeyKey = "fleet/audit-checkpoint-key"

// loadCheckpointKey returns the key fleetd signs its audit checkpoints
// with, creating it on first start. It lives in the state store, apart
// from the audit file whose chains it vouches for (and, with a
// distributed store, on other machines).
func loadCheckpointKey(ctx context.Context, st store.Store) (ed25519.PrivateKey, error) {
	var k struct {
		Seed []byte `json:"seed"`
	}
	b, err := st.Get(ctx, checkpointKeyKey)
	if err == nil {
		if err := json.Unmarshal(b, &k); err != nil || len(k.Seed) != ed25519.SeedSize {
			return nil, fmt.Errorf("audit checkpoint key: stored key is malformed")
		}
		return ed25519.NewKeyFromSeed(k.Seed), nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("audit checkpoint key: %w", err)
	}
	k.Seed = make([]byte, ed25519.SeedSize)
	rand.Read(k.Seed)
	b, _ = json.Marshal(&k)
	if err := st.Create(ctx, checkpointKeyKey, b); errors.Is(err, store.ErrExists) {
		return loadCheckpointKey(ctx, st) // another replica won
	} else if err != nil {
		return nil, fmt.Errorf("audit checkpoint key: %w", err)
	}
	return ed25519.NewKeyFromSeed(k.Seed), nil
}

// finalCheckpoint signs the heads as fleetd stops, once nothing writes to
// the audit log any more.
func finalCheckpoint(events *audit.Log, log *slog.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := events.Checkpoint(ctx)
	switch {
	case err != nil:
		log.Error("last audit checkpoint not signed", "err", err)
	case c != nil:
		log.Info("audit checkpoint signed", "n", c.N, "heads", len(c.Heads))
	}
}

// auditMessages answers the audit batches and recording chunks devices send
// on their control streams (tunnelsrv.Config.OnMessage), and hands other
// messages to next (nil: they are refused). A batch is acknowledged only
// once committed; a failure to commit is answered with an error in the ack,
// and the device sends the batch again later.
func auditMessages(events *audit.Log, recs *recordings.Store, log *slog.Logger,
	next func(ctx context.Context, deviceID string, m proto.Message) (proto.Message, error),
) func(ctx context.Context, deviceID string, m proto.Message) (proto.Message, error) {
	return func(ctx context.Context, deviceID string, m proto.Message) (proto.Message, error) {
		switch m := m.(type) {
		case *proto.AuditBatch:
			ack, err := events.Ingest(ctx, deviceID, m)
			if err != nil {
				log.Error("audit batch not committed", "device_id", deviceID, "err", err)
				return &proto.AuditAck{ID: m.ID, Err: proto.Errorf(proto.CodeUnavailable, "the fleet could not commit the batch; send it again later")}, nil
			}
			return ack, nil
		case *proto.RecordingChunk:
			return recs.Chunk(deviceID, m), nil
		}
		if next != nil {
			return next(ctx, deviceID, m)
		}
		return nil, proto.Errorf(proto.CodeBadRequest, "unexpected %s on the control stream", m.Kind())
	}
}
