package client

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// Identity is a client identity: a certificate issued by the fleet's X.509
// CA, its private key, and the fleet CA certificate(s) to trust.
//
// Its file format (the admin identity fleetd keeps at
// DATADIR/admin/identity.pem, and files passed to fleetctl -i) is PEM:
// CERTIFICATE blocks, the leaf first and then the fleet's CA certificate(s),
// and one PRIVATE KEY block (PKCS#8). Other block types are refused.
type Identity struct {
	Cert    tls.Certificate // leaf and key; Leaf is set
	CACerts []*x509.Certificate
}

// ParseIdentity parses an identity file. It checks that the key belongs to
// the leaf and that there is at least one CA certificate, and nothing else
// (not expiry: the client reports that when it is used).
func ParseIdentity(data []byte) (*Identity, error) {
	var (
		certs []*x509.Certificate
		key   crypto.Signer
	)
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		switch b.Type {
		case "CERTIFICATE":
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("identity: parse certificate %d: %w", len(certs)+1, err)
			}
			certs = append(certs, c)
		case "PRIVATE KEY":
			if key != nil {
				return nil, errors.New("identity: more than one PRIVATE KEY block")
			}
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("identity: parse PKCS#8 private key: %w", err)
			}
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("identity: private key of type %T cannot sign", k)
			}
			key = s
		default:
			return nil, fmt.Errorf("identity: unexpected PEM block %q (want CERTIFICATE and PRIVATE KEY)", b.Type)
		}
	}
	switch {
	case len(certs) == 0:
		return nil, errors.New("identity: no CERTIFICATE block")
	case key == nil:
		return nil, errors.New("identity: no PRIVATE KEY block")
	case len(certs) == 1:
		return nil, errors.New("identity: no CA certificate after the leaf")
	}
	leaf := certs[0]
	pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(key.Public()) {
		return nil, errors.New("identity: the private key does not belong to the first certificate")
	}
	return &Identity{
		Cert:    tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf},
		CACerts: certs[1:],
	}, nil
}

// Encode returns the identity in its file format.
func (id *Identity) Encode() ([]byte, error) {
	if len(id.Cert.Certificate) == 0 {
		return nil, errors.New("identity: no certificate")
	}
	der, err := x509.MarshalPKCS8PrivateKey(id.Cert.PrivateKey)
	if err != nil {
		return nil, fmt.Errorf("identity: encode private key: %w", err)
	}
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: id.Cert.Certificate[0]})
	out = append(out, EncodeCertsPEM(id.CACerts...)...)
	out = append(out, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})...)
	return out, nil
}
