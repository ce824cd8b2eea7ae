package fleetd

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"

	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/recordings"
	"remoteler.dev/edge/proto"
)

// openAudit opens the audit log (DATA_DIR/audit.db) and the session
// recordings (DATA_DIR/recordings).
func openAudit(cfg Config, log *slog.Logger, now func() time.Time) (*audit.Log, *recordings.Store, error) {
	events, err := audit.Open(audit.Config{
		Path: filepath.Join(cfg.DataDir, "audit.db"), Retention: time.Duration(cfg.AuditRetention), Logger: log, Now: now,
	})
	if err != nil {
		return nil, nil, err
	}
	recs, err := recordings.Open(recordings.Config{Dir: filepath.Join(cfg.DataDir, "recordings"), Logger: log, Now: now})
	if err != nil {
		events.Close()
		return nil, nil, err
	}
	return events, recs, nil
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
