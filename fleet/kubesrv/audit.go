package kubesrv

import (
	"log/slog"
	"time"
)

// Event types.
const (
	EventRequest      = "kube.request"       // one API request, when it ends
	EventSessionStart = "kube.session.start" // an upgrade (exec, attach, port-forward) began
	EventSessionEnd   = "kube.session.end"   // and ended
)

// Event is one audited Kubernetes request or upgraded session.
type Event struct {
	Type string
	Time time.Time // when the request arrived
	// User is the fleet user; KubeUser and KubeGroups whom they acted as.
	User       string
	KubeUser   string
	KubeGroups []string
	// Cluster is the device name (or the local cluster's); DeviceID is
	// empty for the local cluster.
	Cluster  string
	DeviceID string
	Method   string
	Path     string
	Request  RequestInfo
	// Code is the response status (101 for sessions).
	Code int
	// Duration is how long the request or session took (zero at start).
	Duration   time.Duration
	ClientAddr string
}

// LogEvent writes ev as one line on log, the audit logger, in the shape
// the rest of fleetd's audit lines have ("event" names the type). It is
// what Server does with events until the audit system takes them
// (Config.Audit).
func LogEvent(log *slog.Logger, ev Event) {
	ri := ev.Request
	attrs := []any{
		"event", ev.Type, "user", ev.User, "device", ev.Cluster, "kube_user", ev.KubeUser, "kube_groups", ev.KubeGroups,
		"verb", ri.Verb, "namespace", ri.Namespace, "resource", ri.Resource, "name", ri.Name,
		"code", ev.Code, "method", ev.Method, "path", ev.Path, "remote", ev.ClientAddr,
	}
	if ri.Subresource != "" {
		attrs = append(attrs, "subresource", ri.Subresource)
	}
	if ri.APIGroup != "" {
		attrs = append(attrs, "api_group", ri.APIGroup)
	}
	if ev.Type != EventSessionStart {
		attrs = append(attrs, "duration", ev.Duration.Round(time.Millisecond).String())
	}
	msg := "kubernetes request"
	switch ev.Type {
	case EventSessionStart:
		msg = "kubernetes session started"
	case EventSessionEnd:
		msg = "kubernetes session ended"
	}
	log.Info(msg, attrs...)
}
