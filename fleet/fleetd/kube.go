package fleetd

import (
	"errors"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"time"

	"remoteler.dev/edge/fleet/kubesrv"
	"remoteler.dev/edge/fleet/tunnelsrv"
)

// newKube builds the Kubernetes endpoint: devices' clusters down their
// tunnels, and the cluster fleetd runs in when it runs in one.
func newKube(cfg Config, tunnels *tunnelsrv.Server, audit, log *slog.Logger, now func() time.Time) *kubesrv.Server {
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
	return kubesrv.New(kubesrv.Config{
		Tunnels:  tunnels,
		Offline:  tunnelsrv.ErrOffline,
		Online:   tunnels.Online,
		Local:    local,
		AuditLog: audit,
		Logger:   log.With("component", "kube"),
		Now:      now,
	})
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
