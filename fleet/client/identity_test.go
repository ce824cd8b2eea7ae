package client_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/clienttest"
)

func TestIdentity(t *testing.T) {
	ca := clienttest.NewCA(t, "fleet CA")
	id := ca.Identity(t, "admin", time.Now().Add(time.Hour))
	good, err := id.Encode()
	if err != nil {
		t.Fatal(err)
	}
	blocks := splitPEM(t, good) // leaf, CA, key
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherDER, _ := x509.MarshalPKCS8PrivateKey(otherKey)
	otherKeyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: otherDER})
	tests := []struct {
		name    string
		data    []byte
		wantErr string
	}{
		{"good", good, ""},
		{"key first", join(blocks[2], blocks[0], blocks[1]), ""},
		{"empty", nil, "no CERTIFICATE block"},
		{"no key", join(blocks[0], blocks[1]), "no PRIVATE KEY block"},
		{"no CA", join(blocks[0], blocks[2]), "no CA certificate"},
		{"two keys", join(blocks[0], blocks[1], blocks[2], blocks[2]), "more than one PRIVATE KEY"},
		{"wrong key", join(blocks[0], blocks[1], otherKeyPEM), "does not belong"},
		{"EC key block", join(blocks[0], blocks[1], []byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n")), `unexpected PEM block "EC PRIVATE KEY"`},
		{"garbage cert", join([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), blocks[2]), "parse certificate 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := client.ParseIdentity(tt.data)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got error %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Cert.Leaf.Subject.CommonName != "admin" || len(got.CACerts) != 1 || !got.CACerts[0].Equal(ca.Cert) {
				t.Errorf("got leaf %q and %d CAs, want admin and the CA", got.Cert.Leaf.Subject.CommonName, len(got.CACerts))
			}
		})
	}
}

func splitPEM(t *testing.T, data []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for {
		b, rest := pem.Decode(data)
		if b == nil {
			return out
		}
		out = append(out, pem.EncodeToMemory(b))
		data = rest
	}
}

func join(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func FuzzParseIdentity(f *testing.F) {
	ca := clienttest.NewCA(f, "fleet CA")
	good, err := ca.Identity(f, "admin", time.Now().Add(time.Hour)).Encode()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\n\n-----END CERTIFICATE-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		id, err := client.ParseIdentity(data)
		if err != nil {
			return
		}
		if id.Cert.Leaf == nil || len(id.CACerts) == 0 || id.Cert.PrivateKey == nil {
			t.Fatalf("parsed an incomplete identity without error")
		}
		if _, err := id.Encode(); err != nil {
			t.Fatalf("cannot encode a parsed identity: %v", err)
		}
	})
}

func FuzzParseCertsPEM(f *testing.F) {
	ca := clienttest.NewCA(f, "fleet CA")
	f.Add(client.EncodeCertsPEM(ca.Cert, ca.Cert))
	f.Add([]byte("junk"))
	f.Fuzz(func(t *testing.T, data []byte) {
		certs, err := client.ParseCertsPEM(data)
		if err == nil && len(certs) == 0 {
			t.Fatal("no certificates and no error")
		}
	})
}
