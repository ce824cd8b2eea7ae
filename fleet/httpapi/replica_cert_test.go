package httpapi

import (
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto/api"
)

// TestReplicaCertificateRefused: a replica's certificate, which its peers
// take, opens none of the endpoints of users and admins; the admin's, on
// the same server, does (so the refusal is the certificate's kind).
func TestReplicaCertificateRefused(t *testing.T) {
	s, _ := newTestServer(t)
	srv := httptest.NewUnstartedServer(s.Handler())
	srv.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	replica, err := s.CA.ReplicaCert("r-a", []string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	admin := adminCert(t, s)
	tests := []struct {
		name       string
		cert       tls.Certificate
		path       string
		want       int
		wantInBody string
	}{
		{"replica: users", replica, api.PathUsers, http.StatusUnauthorized, "a replica certificate cannot call this endpoint"},
		{"replica: devices", replica, api.PathDevices, http.StatusUnauthorized, "a replica certificate cannot call this endpoint"},
		{"admin: users", admin, api.PathUsers, http.StatusOK, "alice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{tt.cert}}}}
			defer c.CloseIdleConnections()
			resp, err := c.Get(srv.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.want || !strings.Contains(string(body), tt.wantInBody) {
				t.Errorf("GET %s: %d %s, want %d with %q", tt.path, resp.StatusCode, body, tt.want, tt.wantInBody)
			}
		})
	}
}

// adminCert is an admin's client certificate from s's CA.
func adminCert(t *testing.T, s *Server) tls.Certificate {
	t.Helper()
	certPEM, keyPEM, err := s.CA.AdminIdentity(time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return admin
}
