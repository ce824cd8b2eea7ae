package kubewire

import (
	"bufio"
	"fmt"
	"mime"
	"net"
	"net/http"

	"remoteler.dev/edge/proto/kubestatus"
)

// ResponseTap passes a response on and keeps what a forwarder needs of
// it: its status, whether a JSON stream stands at an event boundary, and
// the upgraded connection, which Follow (when set) wraps before the
// reverse proxy copies through it.
type ResponseTap struct {
	http.ResponseWriter
	Follow func(net.Conn) net.Conn

	code int
	// last is the last byte written; a JSON watch stands between events
	// when it is a newline.
	last byte
	n    int64
}

func (t *ResponseTap) WriteHeader(code int) {
	if t.code == 0 && code >= 200 {
		t.code = code
	}
	t.ResponseWriter.WriteHeader(code)
}

func (t *ResponseTap) Write(b []byte) (int, error) {
	if t.code == 0 {
		t.code = http.StatusOK
	}
	n, err := t.ResponseWriter.Write(b)
	if n > 0 {
		t.last = b[n-1]
		t.n += int64(n)
	}
	return n, err
}

// Unwrap lets http.ResponseController reach Flush.
func (t *ResponseTap) Unwrap() http.ResponseWriter { return t.ResponseWriter }

// Hijack hands the upgraded connection to the proxy, through Follow.
func (t *ResponseTap) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(t.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	if t.Follow != nil {
		conn = t.Follow(conn)
	}
	return conn, brw, nil
}

// Status is the response's status so far (200 when none was written).
func (t *ResponseTap) Status() int {
	if t.code == 0 {
		return http.StatusOK
	}
	return t.code
}

// EndWatch ends a watch's response with an ERROR event for reason, as an
// API server ends a watch it cannot go on with, if the response is JSON
// and stands between events; it reports whether it did.
func (t *ResponseTap) EndWatch(reason string) bool {
	mt, _, _ := mime.ParseMediaType(t.Header().Get("Content-Type"))
	if t.code != http.StatusOK || mt != "application/json" || (t.n > 0 && t.last != '\n') {
		return false
	}
	ev := fmt.Sprintf(`{"type":"ERROR","object":%s}`+"\n", kubestatus.JSON(http.StatusForbidden, reason))
	if _, err := t.ResponseWriter.Write([]byte(ev)); err != nil {
		return false
	}
	http.NewResponseController(t.ResponseWriter).Flush()
	return true
}
