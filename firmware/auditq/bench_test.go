package auditq

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"

	"remoteler.dev/edge/proto"
)

// sampleEvent is a typical session event.
func sampleEvent() *proto.AuditEvent {
	return &proto.AuditEvent{
		Type: proto.EventExec, Outcome: proto.OutcomeSuccess, User: "alice", Login: "root",
		Session: "5f0c8e1d2a3b4c5d6e7f8091a2b3c4d5", Cluster: "fleet",
		Fields: map[string]string{"command": "systemctl status edge-agent", "pty": "false"},
	}
}

// BenchmarkAppend measures events written per second, each fsync'd
// before Append returns, with 1 to 256 concurrent writers sharing fsyncs.
func BenchmarkAppend(b *testing.B) {
	for _, writers := range []int{1, 16, 256} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			q := openQueue(b, Config{Logger: slog.New(slog.DiscardHandler), MaxBytes: 1 << 30})
			ev := sampleEvent()
			var left atomic.Int64
			left.Store(int64(b.N))
			b.ResetTimer()
			var wg sync.WaitGroup
			for range writers {
				wg.Go(func() {
					for left.Add(-1) >= 0 {
						if _, err := q.Append(context.Background(), ev); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
