package agent

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/tools/pkitest"
)

// TestVerifyFleetClient: a direct node accepts a connection only from the
// fleet's own client certificate, issued by the fleet's CA; a device's
// certificate from the same CA (another device dialling it), a fleet
// certificate from another CA, an expired one or none is refused.
func TestVerifyFleetClient(t *testing.T) {
	fleetCA, otherCA := pkitest.NewCA(t), pkitest.NewCA(t)
	pool := x509.NewCertPool()
	pool.AddCert(fleetCA.Cert)
	issue := func(ca *pkitest.CA, ou string, usage x509.ExtKeyUsage) [][]byte {
		c := ca.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: "fleetd", OrganizationalUnit: []string{ou}},
			ExtKeyUsage: []x509.ExtKeyUsage{usage}})
		return c.Certificate
	}
	now := func(*x509.Certificate) time.Time { return time.Now() }
	tests := []struct {
		name    string
		raw     [][]byte
		at      func(*x509.Certificate) time.Time
		wantErr string
	}{
		{"the fleet", issue(fleetCA, proto.FleetOU, x509.ExtKeyUsageClientAuth), now, ""},
		{"a device of the same fleet", issue(fleetCA, "device", x509.ExtKeyUsageClientAuth), now, "is not the fleet"},
		{"the fleet's OU from another CA", issue(otherCA, proto.FleetOU, x509.ExtKeyUsageClientAuth), now, "unknown authority"},
		{"a server certificate", issue(fleetCA, proto.FleetOU, x509.ExtKeyUsageServerAuth), now, "client certificate"},
		{"expired", issue(fleetCA, proto.FleetOU, x509.ExtKeyUsageClientAuth), func(*x509.Certificate) time.Time { return time.Now().Add(2 * time.Hour) }, "expired"},
		{"no certificate", nil, now, "no certificate"},
		{"garbage", [][]byte{[]byte("not a certificate")}, now, "client certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := verifyFleetClient(tt.raw, pool, tt.at)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("verifyFleetClient = %v; want an error with %q", err, tt.wantErr)
			}
		})
	}
}

// TestVerifyChain: the agent accepts the fleet's server certificate only
// for the fleet's name, from the pinned CAs, for server use, at the time
// the agent's clock gives (which may be the fleet's, on a device without a
// real-time clock).
func TestVerifyChain(t *testing.T) {
	fleetCA, otherCA := pkitest.NewCA(t), pkitest.NewCA(t)
	pool := x509.NewCertPool()
	pool.AddCert(fleetCA.Cert)
	issue := func(ca *pkitest.CA, name string, usage x509.ExtKeyUsage) [][]byte {
		c := ca.Issue(t, &x509.Certificate{Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
			ExtKeyUsage: []x509.ExtKeyUsage{usage}})
		return c.Certificate
	}
	now := func(*x509.Certificate) time.Time { return time.Now() }
	tests := []struct {
		name    string
		raw     [][]byte
		at      func(*x509.Certificate) time.Time
		wantErr string
	}{
		{"the fleet", issue(fleetCA, "fleet.test", x509.ExtKeyUsageServerAuth), now, ""},
		{"another name", issue(fleetCA, "elsewhere.test", x509.ExtKeyUsageServerAuth), now, "fleet.test"},
		{"another CA", issue(otherCA, "fleet.test", x509.ExtKeyUsageServerAuth), now, "unknown authority"},
		{"a client certificate", issue(fleetCA, "fleet.test", x509.ExtKeyUsageClientAuth), now, "verify fleet certificate"},
		{"expired by the agent's clock", issue(fleetCA, "fleet.test", x509.ExtKeyUsageServerAuth), func(*x509.Certificate) time.Time { return time.Now().Add(2 * time.Hour) }, "expired"},
		{"no certificate", nil, now, "the fleet sent no certificate"},
		{"garbage", [][]byte{[]byte("not a certificate")}, now, "fleet certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := verifyChain(tt.raw, pool, "fleet.test", tt.at)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("verifyChain = %v; want an error with %q", err, tt.wantErr)
			}
		})
	}
}
