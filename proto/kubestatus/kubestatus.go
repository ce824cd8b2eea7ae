// Package kubestatus writes Kubernetes Status objects, the error bodies
// kubectl prints as "Error from server (Reason): message". The agent's
// Kubernetes proxy (firmware/kubeproxy) and the fleet's endpoint
// (fleet/kubesrv) both answer refusals with them; it imports neither.
package kubestatus

import (
	"encoding/json"
	"net/http"
)

// Write answers with a Status object for the HTTP status code and message.
func Write(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write(append(JSON(code, msg), '\n'))
}

// JSON is the Status object for the HTTP status code and message, as
// JSON (without a trailing newline).
func JSON(code int, msg string) []byte {
	b, _ := json.Marshal(map[string]any{
		"kind": "Status", "apiVersion": "v1", "metadata": map[string]any{},
		"status": "Failure", "message": msg, "reason": Reason(code), "code": code,
	})
	return b
}

// Reason is the Kubernetes StatusReason for an HTTP status code.
func Reason(code int) string {
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
