// Package kubewire is what the fleet and the agent both read of Kubernetes
// API traffic as it passes through them: which request it is
// (ParseRequest), whether it is a session (a watch, a followed log, an
// exec, attach or port-forward: SessionKind) or changes the cluster
// (Mutating), how it is audited (Event), and, on an upgraded remote
// command WebSocket, the terminal's channels (ChannelTap) and a way to end
// it with a message the user's kubectl prints (TapConn).
//
// The fleet's Kubernetes endpoint (fleet/kubesrv) uses it for the requests
// it forwards; the agent's (firmware/kubeproxy) for the requests of a
// stream whose bytes the fleet only relays (a session that the user's tsh
// holds, which survives the loss of the fleet replica it crossed). It
// never changes the bytes that pass.
package kubewire

import "net/http"

// SessionKind says whether a request is long-running, and what it is: an
// upgrade ("exec", "attach", "portforward", or "upgrade" for others), a
// "watch" or a followed "log"; "" for others. Those are sessions: audited
// at start and end.
func SessionKind(r *http.Request, info RequestInfo) string {
	switch {
	case r.Header.Get("Upgrade") != "":
		switch info.Subresource {
		case "exec", "attach", "portforward":
			return info.Subresource
		}
		return "upgrade"
	case info.Verb == "watch":
		return "watch"
	case info.Subresource == "log" && r.URL.Query().Get("follow") == "true":
		return "log"
	}
	return ""
}

// Mutating reports whether a request changes the cluster: its event is
// committed before it is forwarded.
func Mutating(info RequestInfo) bool {
	switch info.Verb {
	case "create", "update", "patch", "delete", "deletecollection":
		return true
	}
	return false
}
