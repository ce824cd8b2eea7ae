package fleetd

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"time"

	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/kubesrv"
	"remoteler.dev/edge/fleet/recordings"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/proto"
)

// newKube builds the Kubernetes endpoint: devices' clusters down their
// tunnels, and the cluster fleetd runs in when it runs in one. Its events
// go to the audit trail (and the audit logger), its long-running requests
// to the session registry, and its terminal sessions to the recordings.
func newKube(cfg Config, tunnels *tunnelsrv.Server, audit, log *slog.Logger, now func() time.Time,
	events *audit.Log, recs *recordings.Store, reg *sessions.Registry) *kubesrv.Server {
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
		Tunnels:  tunnels,
		Offline:  tunnelsrv.ErrOffline,
		Online:   tunnels.Online,
		Local:    local,
		AuditLog: audit,
		Sessions: reg,
		Logger:   log.With("component", "kube"),
		Now:      now,
	}
	if events != nil {
		kcfg.Audit = func(ev kubesrv.Event) error {
			kubesrv.LogEvent(audit, ev)
			e := ev.AuditEvent()
			e.Cluster = cfg.Cluster
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return events.Append(ctx, e)
		}
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

var serviceRE = regexp.MustCompile(`^[a-z0-9-]{1,32}$`)

// cleanServices keeps the well-formed service names of a hello, at most
// 16, sorted.
func cleanServices(in []string) []string {
	var out []string
	for _, s := range in {
		if serviceRE.MatchString(s) && !slices.Contains(out, s) && len(out) < 16 {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}
