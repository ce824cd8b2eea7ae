// Package identity keeps a device's identity in bbolt in the agent's data
// dir: its device ID and name, its TLS key and client certificate, its SSH
// host key and host certificate, and what it trusts (the fleet's X.509 CAs
// and SSH user CA keys). It also learns the fleet's clock, for devices that
// boot without a real-time clock.
//
// Only firmware/... imports this package.
package identity

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
	"golang.org/x/crypto/ssh"
)

// Identity is what a joined device knows about itself and the fleet.
type Identity struct {
	DeviceID string `json:"device_id"`
	Name     string `json:"name"`
	Cluster  string `json:"cluster"`
	Fleet    string `json:"fleet"` // host:port it joined
	CAPin    string `json:"ca_pin"`

	TLSKey      []byte   `json:"tls_key"`       // PKCS#8 DER
	Cert        []byte   `json:"cert"`          // DER
	CACerts     [][]byte `json:"ca_certs"`      // DER
	SSHKey      []byte   `json:"ssh_key"`       // OpenSSH PEM private key
	SSHHostCert []byte   `json:"ssh_host_cert"` // SSH wire format
	UserCAKeys  [][]byte `json:"user_ca_keys"`  // SSH wire format

	// ClockOffset is the fleet's clock minus the device's, as last seen.
	ClockOffset time.Duration `json:"clock_offset"`
}

// ErrNotJoined is returned by Load when the device has not joined yet.
var ErrNotJoined = errors.New("identity: this device has not joined a fleet yet")

var (
	bucket = []byte("identity")
	key    = []byte("current")
)

// Store is the agent's bbolt database.
type Store struct {
	db *bolt.DB
}

// Open opens (or creates) the database at path. It fails after timeout
// when another agent holds it, instead of waiting forever.
func Open(path string, timeout time.Duration) (*Store, error) {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("identity: %s is locked: is another edge-agent running with this data dir?", path)
		}
		return nil, fmt.Errorf("identity: open %s: %w", path, err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucket)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("identity: %w", err)
	}
	return &Store{db: db}, nil
}

// DB returns the underlying database, for other agent state.
func (s *Store) DB() *bolt.DB { return s.db }

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Load returns the stored identity, or ErrNotJoined.
func (s *Store) Load() (*Identity, error) {
	var id *Identity
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket).Get(key)
		if b == nil {
			return ErrNotJoined
		}
		var v Identity
		if err := json.Unmarshal(b, &v); err != nil {
			return fmt.Errorf("identity: stored identity is damaged (%v): remove the data dir and join again", err)
		}
		id = &v
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := id.check(); err != nil {
		return nil, fmt.Errorf("identity: stored identity is damaged (%v): remove the data dir and join again", err)
	}
	return id, nil
}

// Save stores id, replacing what was there, and syncs it to disk.
func (s *Store) Save(id *Identity) error {
	if err := id.check(); err != nil {
		return fmt.Errorf("identity: save: %w", err)
	}
	b, err := json.Marshal(id)
	if err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put(key, b) })
}

// check makes sure every key and certificate parses.
func (id *Identity) check() error {
	if id.DeviceID == "" || id.Name == "" {
		return errors.New("no device ID or name")
	}
	if _, err := id.TLSCertificate(); err != nil {
		return err
	}
	if _, err := id.CertPool(); err != nil {
		return err
	}
	if _, err := id.HostSigner(); err != nil {
		return err
	}
	_, err := id.UserCAs()
	return err
}

// TLSCertificate returns the device's client certificate and key.
func (id *Identity) TLSCertificate() (tls.Certificate, error) {
	key, err := x509.ParsePKCS8PrivateKey(id.TLSKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tls key: %w", err)
	}
	leaf, err := x509.ParseCertificate(id.Cert)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certificate: %w", err)
	}
	return tls.Certificate{Certificate: [][]byte{id.Cert}, PrivateKey: key, Leaf: leaf}, nil
}

// CertPool returns the fleet CAs the device trusts.
func (id *Identity) CertPool() (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	for _, der := range id.CACerts {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("ca certificate: %w", err)
		}
		pool.AddCert(c)
	}
	if len(id.CACerts) == 0 {
		return nil, errors.New("no fleet CA certificate")
	}
	return pool, nil
}

// HostSigner returns the SSH host certificate signer.
func (id *Identity) HostSigner() (ssh.Signer, error) {
	signer, err := ssh.ParsePrivateKey(id.SSHKey)
	if err != nil {
		return nil, fmt.Errorf("ssh host key: %w", err)
	}
	pub, err := ssh.ParsePublicKey(id.SSHHostCert)
	if err != nil {
		return nil, fmt.Errorf("ssh host certificate: %w", err)
	}
	cert, ok := pub.(*ssh.Certificate)
	if !ok {
		return nil, errors.New("ssh host certificate is a plain key")
	}
	return ssh.NewCertSigner(cert, signer)
}

// UserCAs returns the fleet's SSH user CA keys.
func (id *Identity) UserCAs() ([]ssh.PublicKey, error) {
	var keys []ssh.PublicKey
	for _, b := range id.UserCAKeys {
		k, err := ssh.ParsePublicKey(b)
		if err != nil {
			return nil, fmt.Errorf("ssh user ca key: %w", err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("no ssh user CA key")
	}
	return keys, nil
}

// CertExpiry returns when the earlier of the two certificates expires and
// when it was issued.
func (id *Identity) CertExpiry() (issued, expires time.Time) {
	if c, err := x509.ParseCertificate(id.Cert); err == nil {
		issued, expires = c.NotBefore, c.NotAfter
	}
	if pub, err := ssh.ParsePublicKey(id.SSHHostCert); err == nil {
		if c, ok := pub.(*ssh.Certificate); ok && c.ValidBefore < uint64(1<<63-1) {
			if e := time.Unix(int64(c.ValidBefore), 0); e.Before(expires) {
				expires = e
			}
		}
	}
	return issued, expires
}

// Keys is a fresh key pair set, with the CSR that proves possession.
type Keys struct {
	TLSKey    []byte // PKCS#8 DER
	CSR       []byte // DER
	SSHKey    []byte // OpenSSH PEM
	SSHPublic ssh.PublicKey
}

// NewKeys makes a new ECDSA P-256 TLS key with a CSR for name, and a new
// Ed25519 SSH host key.
func NewKeys(name string) (*Keys, error) {
	tlsKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(tlsKey)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, tlsKey)
	if err != nil {
		return nil, err
	}
	sshPub, sshPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(sshPriv, "edge-agent host key")
	if err != nil {
		return nil, err
	}
	pub, err := ssh.NewPublicKey(sshPub)
	if err != nil {
		return nil, err
	}
	return &Keys{TLSKey: der, CSR: csr, SSHKey: pem.EncodeToMemory(block), SSHPublic: pub}, nil
}
