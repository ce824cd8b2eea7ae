package main

import (
	"log/slog"

	"remoteler.dev/edge/firmware/agent"
	"remoteler.dev/edge/firmware/kubeproxy"
)

// kubeService offers the local Kubernetes cluster (service "kube") when its
// kubeconfig at path can be used, and returns the proxy to close at exit.
// "off" or "" turns it off. A missing default file (no k3s here) is normal
// and logged at debug level; a file named explicitly that cannot be used
// is a warning.
func kubeService(cfg *agent.Config, path string, explicit bool, log *slog.Logger) *kubeproxy.Proxy {
	if path == "" || path == "off" {
		return nil
	}
	p, err := kubeproxy.New(kubeproxy.Config{Kubeconfig: path, Logger: log.With("component", "kubeproxy")})
	if err != nil {
		if explicit {
			log.Warn("Kubernetes access not offered", "err", err)
		} else {
			log.Debug("Kubernetes access not offered", "err", err)
		}
		return nil
	}
	cfg.Services = append(cfg.Services, p)
	return p
}
