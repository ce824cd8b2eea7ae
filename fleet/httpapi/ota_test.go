package httpapi

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/releases"
	"remoteler.dev/edge/fleet/rollouts"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/ota"
)

// TestReleaseUploadOutlivesTheBodyTimeout: an admin's artefact upload
// (fleetctl releases add) that takes longer than the total body timeout
// but keeps arriving is taken; one that stops is still cut at the idle
// timeout.
func TestReleaseUploadOutlivesTheBodyTimeout(t *testing.T) {
	s, _ := newTestServer(t)
	st := memstore.New()
	rels, err := releases.New(releases.Config{Store: st, Dir: t.TempDir(), Keys: func() ota.Keys { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	ro, err := rollouts.New(rollouts.Config{Store: st, Releases: rels, Devices: s.Devices,
		Send: func(string, proto.Message) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	s.Releases, s.Rollouts = rels, ro
	s.BodyIdleTimeout, s.BodyTimeout = 3*time.Second, 300*time.Millisecond
	srv := httptest.NewUnstartedServer(s.Handler())
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	admin := adminCert(t, s)
	const chunk, chunks = 16 << 10, 20
	tests := []struct {
		name  string
		send  int // chunks sent before the body stops (chunks: all of it)
		pause time.Duration
		want  string
	}{
		// 20 chunks 50 ms apart: about 1 s, three times the total timeout.
		{"slow but steady", chunks, 50 * time.Millisecond, "204"},
		{"stalled", 2, 50 * time.Millisecond, "408"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			blob := []byte(strings.Repeat(tt.name, chunk*chunks/len(tt.name)+1)[:chunk*chunks])
			sum := sha256.Sum256(blob)
			c, err := tls.Dial("tcp", srv.Listener.Addr().String(), &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{admin}})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			fmt.Fprintf(c, "PUT %s/%s HTTP/1.1\r\nHost: fleet\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n",
				api.PathReleaseBlobs, hex.EncodeToString(sum[:]), len(blob))
			answered := statusLine(c)
			for i := range tt.send {
				if _, err := c.Write(blob[i*chunk : (i+1)*chunk]); err != nil {
					t.Fatalf("write chunk %d: %v", i, err)
				}
				time.Sleep(tt.pause) // pacing the upload, not waiting for the server
			}
			line := <-answered
			took := time.Since(start)
			if !strings.Contains(line, tt.want) {
				t.Errorf("answer %q after %v, want %s", line, took, tt.want)
			}
			if tt.want == "204" && took < s.BodyTimeout {
				t.Errorf("the upload took %v, less than the %v body timeout: the test proves nothing", took, s.BodyTimeout)
			}
		})
	}
}
