package kubesrv

import (
	"encoding/json"
	"io"
	"net/http"
)

// WriteStatus answers a refusal of r (whose URL is the cluster API path)
// with a Kubernetes Status object, which kubectl prints as "Error from
// server (Reason): message". Discovery and other non-resource requests get
// the message as text/plain instead: client-go reads only text from them,
// and kubectl's first requests are discovery, so this is how the user
// sees why.
func WriteStatus(w http.ResponseWriter, r *http.Request, code int, msg string) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if r != nil && !ParseRequest(r.Method, r.URL).IsResource {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(code)
		io.WriteString(w, msg+"\n")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]any{
		"kind": "Status", "apiVersion": "v1", "metadata": map[string]any{},
		"status": "Failure", "message": msg, "reason": statusReason(code), "code": code,
	})
}

// statusReason is the Kubernetes StatusReason for an HTTP status.
func statusReason(code int) string {
	switch code {
	case http.StatusUnauthorized:
		return "Unauthorized"
	case http.StatusForbidden:
		return "Forbidden"
	case http.StatusNotFound:
		return "NotFound"
	case http.StatusBadRequest:
		return "BadRequest"
	case http.StatusServiceUnavailable:
		return "ServiceUnavailable"
	case http.StatusGatewayTimeout:
		return "Timeout"
	default:
		return "InternalError"
	}
}
