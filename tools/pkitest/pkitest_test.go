package pkitest

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
)

// A server and a client with certificates from one CA complete a mutual
// TLS handshake; a client of another CA is refused.
func TestMutualTLS(t *testing.T) {
	ca := NewCA(t)
	tests := []struct {
		name   string
		client tls.Certificate
		ok     bool
	}{
		{"same CA", ca.Client(t, "pi-1"), true},
		{"other CA", NewCA(t).Client(t, "pi-1"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, s := net.Pipe()
			srv := tls.Server(s, &tls.Config{Certificates: []tls.Certificate{ca.Server(t, "fleet")}, ClientCAs: ca.Pool, ClientAuth: tls.RequireAndVerifyClientCert})
			errc := make(chan error, 1)
			go func() { errc <- srv.Handshake(); s.Close() }()
			cli := tls.Client(c, &tls.Config{Certificates: []tls.Certificate{tt.client}, RootCAs: ca.Pool, ServerName: "127.0.0.1"})
			cerr := cli.Handshake()
			c.Close()
			serr := <-errc
			if ok := cerr == nil && serr == nil; ok != tt.ok {
				t.Errorf("handshake: client %v, server %v; want success %v", cerr, serr, tt.ok)
			}
		})
	}
}

func TestPEMRoundTrip(t *testing.T) {
	c := NewCA(t).Client(t, "system:admin")
	certPEM, keyPEM := PEM(t, c)
	got, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(got.Certificate[0])
	if err != nil || leaf.Subject.CommonName != "system:admin" {
		t.Errorf("PEM round trip: %v, %v", leaf, err)
	}
	if SSHSigner(t).PublicKey().Type() != "ssh-ed25519" {
		t.Error("SSHSigner is not ed25519")
	}
}
