package kubewire

import (
	"io"
	"net/http"

	"remoteler.dev/edge/proto/kubestatus"
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
	kubestatus.Write(w, code, msg)
}
