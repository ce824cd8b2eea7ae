package fleetd

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"time"

	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/kubesrv"
	"remoteler.dev/edge/fleet/recordings"
	"remoteler.dev/edge/proto"
)

// newKube builds the Kubernetes endpoint: devices' clusters down their
// tunnels, and the cluster fleetd runs in when it runs in one. The broker
// opens its streams, records its events (the audit trail and the audit
// logger) and registers its long-running requests; its terminal sessions
// go to the recordings.
func newKube(cfg Config, brk *broker.Broker, log *slog.Logger, now func() time.Time, recs *recordings.Store) *kubesrv.Server {
	var local *kubesrv.Local
	dir := cfg.KubeServiceAccountDir
	if dir == "" {
		dir = kubesrv.DefaultServiceAccountDir
	}
	if dir != "off" {
		name := cfg.KubeClusterName
		if name == "" {
			name = cfg.Cluster
		}
		l, err := kubesrv.DetectLocal(dir, os.Getenv, name, cfg.KubeClusterLabels, now)
		switch {
		case err == nil:
			log.Info("offering the Kubernetes cluster fleetd runs in", "name", name, "server", l.Server())
			local = l
		case errors.Is(err, kubesrv.ErrNotInCluster):
			log.Debug("not running in Kubernetes", "service_account_dir", dir)
		default:
			log.Warn("running in Kubernetes, but its cluster cannot be offered", "err", err)
		}
	}
	kcfg := kubesrv.Config{
		Broker: brk,
		Local:  local,
		Logger: log.With("component", "kube"),
		Now:    now,
	}
	if recs != nil {
		kcfg.Recordings = recordingSink{recs}
	}
	return kubesrv.New(kcfg)
}

// recordingSink hands Kubernetes terminal recordings to the store.
type recordingSink struct{ s *recordings.Store }

func (r recordingSink) Create(deviceID, id string, meta proto.RecordingMeta) (io.WriteCloser, error) {
	return r.s.Create(deviceID, id, meta)
}
