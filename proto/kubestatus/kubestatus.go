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
	json.NewEncoder(w).Encode(map[string]any{
		"kind": "Status", "apiVersion": "v1", "metadata": map[string]any{},
		"status": "Failure", "message": msg, "reason": Reason(code), "code": code,
	})
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
