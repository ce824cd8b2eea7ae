// Package pin computes and checks CA pins: "sha256:" followed by the hex
// SHA-256 of a CA certificate's SubjectPublicKeyInfo. Agents and clients that
// know only a pin use it to verify the fleet's TLS certificate chain on first
// contact, the way kubeadm's discovery hash works. It also parses join
// strings, which carry a join token and a pin together.
package pin

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

const prefix = "sha256:"

// Of returns the pin of a CA certificate.
func Of(ca *x509.Certificate) string {
	sum := sha256.Sum256(ca.RawSubjectPublicKeyInfo)
	return prefix + hex.EncodeToString(sum[:])
}

// Parse checks that s is a well-formed pin and returns it in canonical form.
func Parse(s string) (string, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	h, ok := strings.CutPrefix(s, prefix)
	if !ok {
		return "", fmt.Errorf("pin: %q does not start with %q", s, prefix)
	}
	if b, err := hex.DecodeString(h); err != nil || len(b) != sha256.Size {
		return "", fmt.Errorf("pin: %q is not sha256: and 64 hex digits", s)
	}
	return s, nil
}

// ErrMismatch is returned when no certificate in a chain has the pin.
var ErrMismatch = errors.New("pin: the server's CA does not match the pin; check --ca-pin, or someone is in the middle")

// Verify checks a TLS peer chain: some certificate in rawCerts must be a CA
// whose pin is want, and the leaf must be valid for serverName (when not
// empty) under that CA. It returns the pinned CA.
func Verify(rawCerts [][]byte, want, serverName string) (*x509.Certificate, error) {
	return VerifyAt(rawCerts, want, serverName, time.Time{})
}

// VerifyAt is Verify with validity checked at the time at instead of now
// (zero means now), for devices whose clock is not yet set.
func VerifyAt(rawCerts [][]byte, want, serverName string, at time.Time) (*x509.Certificate, error) {
	if len(rawCerts) == 0 {
		return nil, errors.New("pin: the server sent no certificate")
	}
	certs := make([]*x509.Certificate, 0, len(rawCerts))
	for _, raw := range rawCerts {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return nil, fmt.Errorf("pin: parse server certificate: %w", err)
		}
		certs = append(certs, c)
	}
	var ca *x509.Certificate
	for _, c := range certs {
		if c.IsCA && subtle.ConstantTimeCompare([]byte(Of(c)), []byte(want)) == 1 {
			ca = c
			break
		}
	}
	if ca == nil {
		return nil, ErrMismatch
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		DNSName:       serverName,
		Roots:         roots,
		Intermediates: inter,
		CurrentTime:   at,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("pin: verify server certificate: %w", err)
	}
	return ca, nil
}

// ClientConfig returns a TLS client config that trusts the server only when
// its chain carries the pinned CA. ServerName is still sent (SNI) and, when it
// is a name or IP the server's certificate must hold, checked.
func ClientConfig(want, serverName string) *tls.Config {
	return &tls.Config{
		ServerName: serverName,
		// Chain verification is done by VerifyPeerCertificate against the
		// pinned CA instead of system roots.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(rawCerts [][]byte, _ [][]*x509.Certificate) error {
			_, err := Verify(rawCerts, want, serverName)
			return err
		},
		MinVersion: tls.VersionTLS13,
	}
}

// JoinString joins a token and a pin as "TOKEN@sha256:HEX".
func JoinString(token, pin string) string { return token + "@" + pin }

// JoinCommand is the command that joins a device to the fleet at fleet
// (HOST:PORT as the devices reach it) with a join string: what fleetctl
// tokens add and the dashboard show.
func JoinCommand(fleet, joinString string) string {
	return "edge-agent start --fleet=" + fleet + " --token=" + joinString
}

// ParseJoin splits a join string. A bare token (no "@") returns an empty pin.
func ParseJoin(s string) (token, pin string, err error) {
	token, p, ok := strings.Cut(strings.TrimSpace(s), "@")
	if token == "" {
		return "", "", errors.New("pin: empty join token")
	}
	if !ok {
		return token, "", nil
	}
	pin, err = Parse(p)
	return token, pin, err
}
