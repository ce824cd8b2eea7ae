package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"remoteler.dev/edge/proto"
)

// Kind is what holds an X.509 client certificate; it is the certificate's
// Subject OU.
type Kind string

// Kinds of client certificate.
const (
	KindUser   Kind = "user"   // a user, from tsh login
	KindDevice Kind = "device" // a device's agent, from join
	KindAdmin  Kind = "admin"  // the admin identity fleetctl uses
	KindApp    Kind = "app"    // a user's certificate for one web app, from tsh apps login
	// KindCluster is a leaf fleet's tunnel identity at its root (trusted
	// clusters): CN is the leaf's cluster name; the root issues it.
	KindCluster Kind = "cluster"
	// KindFleet is the fleet's own client identity, which it shows the
	// direct nodes it dials (proto.FleetOU); CN is the cluster name.
	KindFleet Kind = proto.FleetOU
	// KindReplica is a fleetd replica's certificate for the connections
	// between replicas (fleet/peer): client and server at once, its CN the
	// replica's ID. No endpoint for users or devices accepts it.
	KindReplica Kind = "replica"
)

// appURIScheme names the app of an app certificate in its URI SAN:
// app:APP--DEVICE.
const appURIScheme = "app"

// AdminName is the CN of the admin identity.
const AdminName = "fleetctl"

// Identity is who a verified client certificate names.
type Identity struct {
	Kind    Kind
	Name    string // user name, device ID or AdminName
	Expires time.Time
	// App is the app (APP--DEVICE) an app certificate is for.
	App string
}

// maxNameLen bounds the names put in certificates.
const maxNameLen = 255

// checkName refuses names that are empty, too long, not UTF-8 or hold
// control characters.
func checkName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case len(name) > maxNameLen:
		return fmt.Errorf("name longer than %d bytes", maxNameLen)
	case !utf8.ValidString(name):
		return errors.New("name is not UTF-8")
	case strings.IndexFunc(name, unicode.IsControl) >= 0:
		return errors.New("name holds a control character")
	}
	return nil
}

// checkLeafKey accepts the key types our clients generate: ECDSA on the NIST
// curves and Ed25519.
func checkLeafKey(pub any) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return fmt.Errorf("unsupported ECDSA curve %s", k.Curve.Params().Name)
	case ed25519.PublicKey:
		return nil
	}
	return fmt.Errorf("unsupported key type %T; use ECDSA P-256 or Ed25519", pub)
}

// issue signs a leaf certificate for pub with the active X.509 CA key.
// NotBefore is backdated by X509Backdate; NotAfter is now+ttl, capped by the
// CA's own NotAfter.
func (a *Authority) issue(pub crypto.PublicKey, subject pkix.Name, usage []x509.ExtKeyUsage, dns []string, ips []net.IP, ttl time.Duration, uris ...*url.URL) (*x509.Certificate, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("ttl %v is not positive", ttl)
	}
	ca := a.set(X509).active()
	serial, err := randSerial()
	if err != nil {
		return nil, err
	}
	now := a.now()
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	subject.Organization = []string{a.cluster}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		NotBefore:             now.Add(-X509Backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           usage,
		BasicConstraintsValid: true,
		DNSNames:              dns,
		IPAddresses:           ips,
		URIs:                  uris,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.signer)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// ServerCert issues the fleet's own TLS server certificate (HTTPS and QUIC)
// for hosts, which are DNS names or IP addresses, valid for ttl. The chain
// is [leaf, active CA]; the leaf key is a new ECDSA P-256 key.
func (a *Authority) ServerCert(hosts []string, ttl time.Duration) (tls.Certificate, error) {
	if len(hosts) == 0 {
		return tls.Certificate{}, errors.New("ca: server certificate: no hosts")
	}
	c, err := a.keyAndCert(pkix.Name{CommonName: hosts[0]}, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, hosts, ttl)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ca: server certificate: %w", err)
	}
	return c, nil
}

// ReplicaCert issues a fleetd replica's certificate for the connections
// between replicas: Kind KindReplica with the replica's ID as CN, usable as
// client and server, valid for hosts (where other replicas reach it) and
// ttl. The chain is [leaf, active CA]; the leaf key is a new ECDSA P-256
// key.
func (a *Authority) ReplicaCert(id string, hosts []string, ttl time.Duration) (tls.Certificate, error) {
	if err := checkName(id); err != nil {
		return tls.Certificate{}, fmt.Errorf("ca: replica certificate: %w", err)
	}
	c, err := a.keyAndCert(clientSubject(KindReplica, id), []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, hosts, ttl)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ca: replica certificate for %q: %w", id, err)
	}
	return c, nil
}

// keyAndCert makes a new ECDSA P-256 key and a certificate for it with
// subject, usages and hosts (DNS names or IP addresses) as SANs.
func (a *Authority) keyAndCert(subject pkix.Name, usage []x509.ExtKeyUsage, hosts []string, ttl time.Duration) (tls.Certificate, error) {
	var dns []string
	var ips []net.IP
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			ips = append(ips, ip)
			continue
		}
		if h == "" || strings.ContainsAny(h, " /:") {
			return tls.Certificate{}, fmt.Errorf("bad host %q", h)
		}
		dns = append(dns, h)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	leaf, err := a.issue(key.Public(), subject, usage, dns, ips, ttl)
	if err != nil {
		return tls.Certificate{}, err
	}
	ca := a.set(X509).active().cert
	return tls.Certificate{
		Certificate: [][]byte{leaf.Raw, ca.Raw},
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}

// SignUserX509 issues a user's client certificate (DER) for the key in
// csrDER, a DER PKCS#10 request whose signature must verify. The request's
// subject and extensions are ignored: the fleet names the holder.
func (a *Authority) SignUserX509(csrDER []byte, user string, ttl time.Duration) ([]byte, error) {
	der, err := a.signCSR(csrDER, KindUser, user, ttl)
	if err != nil {
		return nil, fmt.Errorf("ca: sign user certificate for %q: %w", user, err)
	}
	return der, nil
}

// SignDeviceX509 issues a device's client certificate (DER) for the key in
// csrDER, as SignUserX509 does for users.
func (a *Authority) SignDeviceX509(csrDER []byte, deviceID string, ttl time.Duration) ([]byte, error) {
	der, err := a.signCSR(csrDER, KindDevice, deviceID, ttl)
	if err != nil {
		return nil, fmt.Errorf("ca: sign device certificate for %q: %w", deviceID, err)
	}
	return der, nil
}

// SignClusterX509 issues a leaf fleet's tunnel certificate (DER) for the
// key in csrDER: Kind KindCluster, the leaf's cluster name as CN.
func (a *Authority) SignClusterX509(csrDER []byte, cluster string, ttl time.Duration) ([]byte, error) {
	der, err := a.signCSR(csrDER, KindCluster, cluster, ttl)
	if err != nil {
		return nil, fmt.Errorf("ca: sign cluster certificate for %q: %w", cluster, err)
	}
	return der, nil
}

// FleetClientCert makes the fleet's client identity for dialling direct
// nodes: a new ECDSA P-256 key and its certificate (Kind KindFleet, the
// cluster as CN), valid for ttl, with the active CA in its chain.
func (a *Authority) FleetClientCert(ttl time.Duration) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ca: fleet client certificate: %w", err)
	}
	leaf, err := a.issue(key.Public(), clientSubject(KindFleet, a.cluster), []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, nil, ttl)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("ca: fleet client certificate: %w", err)
	}
	return tls.Certificate{
		Certificate: [][]byte{leaf.Raw, a.set(X509).active().cert.Raw},
		PrivateKey:  key,
		Leaf:        leaf,
	}, nil
}

// SignAppX509 issues a user's client certificate for one web app (DER):
// Kind KindApp, the user as CN and the app's label (APP--DEVICE) in a URI
// SAN. The fleet accepts it on that app's address only.
func (a *Authority) SignAppX509(csrDER []byte, user, app string, ttl time.Duration) ([]byte, error) {
	if err := checkName(app); err != nil || strings.ContainsAny(app, ":/?#") {
		return nil, fmt.Errorf("ca: sign app certificate: bad app %q", app)
	}
	der, err := a.signCSR(csrDER, KindApp, user, ttl, &url.URL{Scheme: appURIScheme, Opaque: app})
	if err != nil {
		return nil, fmt.Errorf("ca: sign app certificate for %q: %w", user, err)
	}
	return der, nil
}

func (a *Authority) signCSR(csrDER []byte, kind Kind, name string, ttl time.Duration, uris ...*url.URL) ([]byte, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	csr, err := parseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	cert, err := a.issue(csr.PublicKey, clientSubject(kind, name), []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, nil, ttl, uris...)
	if err != nil {
		return nil, err
	}
	return cert.Raw, nil
}

// CheckCSR reports whether csrDER is a certificate request the CA would
// sign: well formed, signed by its key (proof of possession), with a key
// the CA accepts. A join checks it before it spends its token's use.
func CheckCSR(csrDER []byte) error {
	_, err := parseCSR(csrDER)
	return err
}

func parseCSR(csrDER []byte) (*x509.CertificateRequest, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("parse csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("csr signature (proof of key possession): %w", err)
	}
	if err := checkLeafKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("csr: %w", err)
	}
	return csr, nil
}

func clientSubject(kind Kind, name string) pkix.Name {
	return pkix.Name{CommonName: name, OrganizationalUnit: []string{string(kind)}}
}

// AdminIdentity makes the admin identity fleetctl uses: a new ECDSA P-256
// key (PEM "PRIVATE KEY", PKCS#8) and its client certificate (PEM
// "CERTIFICATE", CN AdminName, OU "admin"), valid for ttl. The CA
// certificates are not included: get them from CACerts.
func (a *Authority) AdminIdentity(ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: admin identity: %w", err)
	}
	cert, err := a.issue(key.Public(), clientSubject(KindAdmin, AdminName), []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, nil, ttl)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: admin identity: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("ca: admin identity: %w", err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	return certPEM, keyPEM, nil
}

// Identify verifies a client certificate against every trusted X.509 CA at
// the Authority's clock and returns who it names. Pass the leaf of a
// verified chain (tls.ConnectionState.VerifiedChains[0][0], with
// tls.Config.ClientCAs from CertPool); Identify checks it again, so a
// certificate from elsewhere is safe to pass too. It refuses certificates
// from other CAs, outside their validity, without client-auth usage, or
// whose OU is not exactly one known Kind.
func (a *Authority) Identify(cert *x509.Certificate) (Identity, error) {
	if cert == nil {
		return Identity{}, errors.New("ca: identify: no certificate")
	}
	_, err := cert.Verify(x509.VerifyOptions{
		Roots:       a.CertPool(),
		CurrentTime: a.now(),
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return Identity{}, fmt.Errorf("ca: identify %q: %w", cert.Subject.CommonName, err)
	}
	ous := cert.Subject.OrganizationalUnit
	if len(ous) != 1 {
		return Identity{}, fmt.Errorf("ca: identify %q: %d OUs, want 1", cert.Subject.CommonName, len(ous))
	}
	kind := Kind(ous[0])
	id := Identity{Kind: kind, Name: cert.Subject.CommonName, Expires: cert.NotAfter}
	switch kind {
	case KindUser, KindDevice, KindAdmin, KindCluster, KindFleet, KindReplica:
	case KindApp:
		if len(cert.URIs) != 1 || cert.URIs[0].Scheme != appURIScheme || cert.URIs[0].Opaque == "" {
			return Identity{}, fmt.Errorf("ca: identify %q: an app certificate must name one app", cert.Subject.CommonName)
		}
		id.App = cert.URIs[0].Opaque
	default:
		return Identity{}, fmt.Errorf("ca: identify %q: unknown kind %q", cert.Subject.CommonName, kind)
	}
	if err := checkName(cert.Subject.CommonName); err != nil {
		return Identity{}, fmt.Errorf("ca: identify: %w", err)
	}
	return id, nil
}
