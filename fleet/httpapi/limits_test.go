package httpapi

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto/api"
)

// startTLS serves s's API on a real TLS listener (deadlines need a real
// connection) and returns its address.
func startTLS(t *testing.T, s *Server) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(s.Handler())
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// slowPost sends a POST whose body of size bytes arrives one byte per
// every pause, and returns the status line the server answered with (or
// the read error) and when.
func slowPost(t *testing.T, addr, path string, size int, pause time.Duration) (string, time.Duration) {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	fmt.Fprintf(c, "POST %s HTTP/1.1\r\nHost: fleet\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", path, size)
	answered := statusLine(c)
	for i := 0; i < size; i++ {
		select {
		case line := <-answered:
			return line, time.Since(start)
		case <-time.After(pause):
		}
		if _, err := c.Write([]byte{' '}); err != nil {
			break
		}
	}
	return <-answered, time.Since(start)
}

// statusLine reads the status line of the answer on c (or the read
// error), waiting at most a minute.
func statusLine(c net.Conn) <-chan string {
	answered := make(chan string, 1)
	go func() {
		c.SetReadDeadline(time.Now().Add(time.Minute))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			line = "read: " + err.Error()
		}
		answered <- strings.TrimSpace(line)
	}()
	return answered
}

func TestSlowBodiesAreCutOff(t *testing.T) {
	s, _ := newTestServer(t)
	s.BodyIdleTimeout, s.BodyTimeout = 300*time.Millisecond, 2*time.Second
	addr := startTLS(t, s)
	tests := []struct {
		name  string
		size  int
		pause time.Duration
	}{
		// A body that stops: cut at the idle timeout.
		{"stalled", 100, time.Hour},
		// A body that trickles within the idle timeout, forever: cut at the
		// total timeout.
		{"trickling", 1 << 20, 100 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line, took := slowPost(t, addr, api.PathLogin, tt.size, tt.pause)
			if !strings.Contains(line, "408") {
				t.Errorf("answer %q after %v, want 408 Request Timeout", line, took)
			}
			t.Logf("%s body cut after %v", tt.name, took.Round(time.Millisecond))
		})
	}
}

// TestBodyDeadlineDoesNotOutliveTheBody: a handler that works longer than
// the body timeouts after reading its body is not cut (a deadline left on
// the connection would cancel its request), and the connection serves the
// next request.
func TestBodyDeadlineDoesNotOutliveTheBody(t *testing.T) {
	s := &Server{BodyIdleTimeout: 100 * time.Millisecond, BodyTimeout: 200 * time.Millisecond}
	srv := httptest.NewUnstartedServer(s.limitBodies(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		select {
		case <-time.After(time.Second): // five times the total body timeout
		case <-r.Context().Done():
			return // the request was cancelled: the client sees no answer
		}
		fmt.Fprintf(w, "got %d", len(b))
	})))
	srv.StartTLS()
	defer srv.Close()
	c := srv.Client()
	for i := range 2 {
		resp, err := c.Post(srv.URL, "text/plain", strings.NewReader("hello"))
		if err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(b) != "got 5" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, b)
		}
	}
}
