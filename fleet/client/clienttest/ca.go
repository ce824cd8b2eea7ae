// Package clienttest holds test doubles for the tests of fleet/client, tsh
// and fleetctl: a throwaway X.509 CA and Fleet, an in-process fake of
// fleetd's HTTPS API served by httptest over TLS. The fake is not fleetd: it
// keeps state in maps and checks only what client tests need. Only tests
// import this package; it does not import "testing" (it takes a TB).
package clienttest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"sync/atomic"
	"time"

	"remoteler.dev/edge/fleet/client"
)

// TB is the part of testing.TB the helpers use.
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
	Logf(format string, args ...any)
}

// CA is a throwaway X.509 CA.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

var serial atomic.Int64

func nextSerial() *big.Int { return big.NewInt(serial.Add(1) + 1) }

// NewCA returns a new self-signed CA named name.
func NewCA(t TB, name string) *CA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("clienttest: CA key: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatalf("clienttest: CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("clienttest: parse CA certificate: %v", err)
	}
	return &CA{Cert: cert, Key: key}
}

// Sign issues a certificate for pub. Server certificates carry hosts as IP
// or DNS names.
func (ca *CA) Sign(t TB, pub crypto.PublicKey, name string, server bool, notAfter time.Time, hosts ...string) *x509.Certificate {
	t.Helper()
	cert, err := ca.sign(pub, name, server, notAfter, hosts...)
	if err != nil {
		t.Fatalf("clienttest: %v", err)
	}
	return cert
}

func (ca *CA) sign(pub crypto.PublicKey, name string, server bool, notAfter time.Time, hosts ...string) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	return x509.ParseCertificate(der)
}

// KeyPair issues a new key and certificate: a server certificate for hosts,
// or a client certificate named name when hosts is empty.
func (ca *CA) KeyPair(t TB, name string, notAfter time.Time, hosts ...string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("clienttest: key: %v", err)
	}
	cert := ca.Sign(t, key.Public(), name, len(hosts) > 0, notAfter, hosts...)
	return tls.Certificate{Certificate: [][]byte{cert.Raw, ca.Cert.Raw}, PrivateKey: key, Leaf: cert}
}

// Identity issues a client identity (as in fleetd's admin identity.pem)
// named name.
func (ca *CA) Identity(t TB, name string, notAfter time.Time) *client.Identity {
	t.Helper()
	kp := ca.KeyPair(t, name, notAfter)
	kp.Certificate = kp.Certificate[:1]
	return &client.Identity{Cert: kp, CACerts: []*x509.Certificate{ca.Cert}}
}
