package kubewire

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"remoteler.dev/edge/proto"
)

// Event types.
const (
	// EventRequest is one API request and the cluster's answer, recorded
	// before the answer is passed on.
	EventRequest = "kube.request"
	// EventRequestStart is a request that changes the cluster, recorded
	// before it is forwarded.
	EventRequestStart = "kube.request.start"
	// EventSessionStart is a long-running request (a watch, a followed
	// log, an upgraded exec, attach or port-forward), recorded before it
	// is forwarded; EventSessionEnd is its end.
	EventSessionStart = "kube.session.start"
	EventSessionEnd   = "kube.session.end"
	// EventRecordingSkipped says a terminal session is not recorded, and
	// why.
	EventRecordingSkipped = "kube.recording.skipped"
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
	// Session and Kind name a session ("watch", "exec", ...).
	Session string
	Kind    string
	// Reason says why the fleet ended a session, or why it was not
	// recorded.
	Reason string
	// Recorded says the session's terminal was recorded (ID Session).
	Recorded bool
}

// AuditEvent is ev as an event of the audit trail (fleet/audit), the
// fleet's own: type, outcome, who, where, and the request in Fields.
func (ev Event) AuditEvent() *proto.AuditEvent {
	ri := ev.Request
	outcome := proto.OutcomeSuccess
	switch {
	case ev.Type == EventRecordingSkipped:
		outcome = proto.OutcomeFailure
	case ev.Code == http.StatusUnauthorized || ev.Code == http.StatusForbidden:
		outcome = proto.OutcomeDenied
	case ev.Code >= 400:
		outcome = proto.OutcomeFailure
	}
	f := map[string]string{
		"service": proto.ServiceKube, "device_name": ev.Cluster, "kube_user": ev.KubeUser, "kube_groups": strings.Join(ev.KubeGroups, ","),
		"verb": ri.Verb, "api_group": ri.APIGroup, "resource": ri.Resource, "subresource": ri.Subresource,
		"namespace": ri.Namespace, "name": ri.Name, "method": ev.Method, "path": ev.Path, "kind": ev.Kind,
	}
	if ev.Code != 0 {
		f["code"] = strconv.Itoa(ev.Code)
	}
	if ev.Type == EventRequest || ev.Type == EventSessionEnd {
		f["duration"] = ev.Duration.Round(time.Millisecond).String()
	}
	if ev.Recorded {
		f["recorded"] = "true"
	}
	for k, v := range f {
		if v == "" {
			delete(f, k)
		}
	}
	e := &proto.AuditEvent{Type: ev.Type, Outcome: outcome, User: ev.User, Session: ev.Session, Device: ev.DeviceID,
		Addr: ev.ClientAddr, Message: ev.Reason, Fields: f}
	if ev.Type != EventRequest && ev.Type != EventSessionEnd && !ev.Time.IsZero() {
		e.Time = ev.Time.UnixMilli()
	}
	return e
}
