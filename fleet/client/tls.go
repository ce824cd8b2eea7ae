package client

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"

	"remoteler.dev/edge/proto/pin"
)

// The TLS configs below differ only in whom they trust. Each sends the host
// of addr as SNI, requires TLS 1.3, and presents cert when it is not nil.

// PinnedTLS trusts the fleet at addr when its chain carries the CA whose pin
// ("sha256:HEX", see proto/pin) is caPin. It is for first contact, before
// the client holds the fleet's CA certificates.
func PinnedTLS(addr, caPin string, cert *tls.Certificate) (*tls.Config, error) {
	host, err := hostOf(addr)
	if err != nil {
		return nil, err
	}
	p, err := pin.Parse(caPin)
	if err != nil {
		return nil, fmt.Errorf("client: %w; the pin looks like sha256: and 64 hex digits (fleetctl status shows it)", err)
	}
	c := pin.ClientConfig(p, host)
	withCert(c, cert)
	return c, nil
}

// SystemTLS trusts the fleet at addr when the system's roots trust it (a
// fleet behind a public certificate).
func SystemTLS(addr string, cert *tls.Certificate) (*tls.Config, error) {
	host, err := hostOf(addr)
	if err != nil {
		return nil, err
	}
	c := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS13}
	withCert(c, cert)
	return c, nil
}

// CATLS trusts the fleet at addr when its certificate chains to one of cas,
// the fleet's CA certificates saved at login or held in an identity.
func CATLS(addr string, cas []*x509.Certificate, cert *tls.Certificate) (*tls.Config, error) {
	host, err := hostOf(addr)
	if err != nil {
		return nil, err
	}
	if len(cas) == 0 {
		return nil, errors.New("client: no fleet CA certificates to trust")
	}
	pool := x509.NewCertPool()
	for _, ca := range cas {
		pool.AddCert(ca)
	}
	c := &tls.Config{ServerName: host, RootCAs: pool, MinVersion: tls.VersionTLS13}
	withCert(c, cert)
	return c, nil
}

// InsecureTLS trusts whatever answers at addr. It is for development only
// and writes a warning saying so to warn (when not nil).
func InsecureTLS(addr string, warn io.Writer, cert *tls.Certificate) (*tls.Config, error) {
	host, err := hostOf(addr)
	if err != nil {
		return nil, err
	}
	if warn != nil {
		fmt.Fprintf(warn, "WARNING: --insecure: not verifying the certificate of %s.\n"+
			"WARNING: anyone on the network path can pose as the fleet and take your password.\n"+
			"WARNING: this is for development only; use --ca-pin=sha256:... instead.\n", addr)
	}
	c := &tls.Config{ServerName: host, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
	withCert(c, cert)
	return c, nil
}

func withCert(c *tls.Config, cert *tls.Certificate) {
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
}

func hostOf(addr string) (string, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return "", fmt.Errorf("client: fleet address %q is not HOST:PORT", addr)
	}
	return host, nil
}

// ParseCertsPEM parses every CERTIFICATE block in data, ignoring other block
// types. It fails when there is none.
func ParseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("client: parse certificate: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, errors.New("client: no CERTIFICATE block in PEM data")
	}
	return certs, nil
}

// EncodeCertsPEM encodes certificates as CERTIFICATE blocks.
func EncodeCertsPEM(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}
