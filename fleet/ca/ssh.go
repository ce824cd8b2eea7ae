package ca

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"time"

	"golang.org/x/crypto/ssh"
)

// userExtensions are the permissions of a user certificate: a terminal and
// port forwarding (kube and app brokering rely on it); no agent or X11
// forwarding.
var userExtensions = map[string]string{
	"permit-pty":             "",
	"permit-port-forwarding": "",
}

// SignUserSSH issues an SSH user certificate for pub: KeyId user,
// principals logins (at least one), extensions permit-pty and
// permit-port-forwarding, valid from SSHBackdate ago for ttl.
func (a *Authority) SignUserSSH(pub ssh.PublicKey, user string, logins []string, ttl time.Duration) (*ssh.Certificate, error) {
	c, err := a.signSSH(SSHUser, ssh.UserCert, pub, user, logins, ttl, userExtensions)
	if err != nil {
		return nil, fmt.Errorf("ca: sign user ssh certificate for %q: %w", user, err)
	}
	return c, nil
}

// SignHostSSH issues an SSH host certificate for a device's host key pub:
// KeyId deviceID, the given principals (at least one: names clients dial
// the device by), valid from SSHBackdate ago for ttl.
func (a *Authority) SignHostSSH(pub ssh.PublicKey, deviceID string, principals []string, ttl time.Duration) (*ssh.Certificate, error) {
	c, err := a.signSSH(SSHHost, ssh.HostCert, pub, deviceID, principals, ttl, nil)
	if err != nil {
		return nil, fmt.Errorf("ca: sign host ssh certificate for %q: %w", deviceID, err)
	}
	return c, nil
}

func (a *Authority) signSSH(t Type, certType uint32, pub ssh.PublicKey, id string, principals []string, ttl time.Duration, ext map[string]string) (*ssh.Certificate, error) {
	if pub == nil {
		return nil, errors.New("no public key")
	}
	if _, ok := pub.(*ssh.Certificate); ok {
		return nil, errors.New("the public key is a certificate")
	}
	if err := checkName(id); err != nil {
		return nil, err
	}
	// OpenSSH reads an empty principal list as "any principal".
	if len(principals) == 0 {
		return nil, errors.New("no principals")
	}
	for _, p := range principals {
		if err := checkName(p); err != nil {
			return nil, fmt.Errorf("principal %q: %w", p, err)
		}
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("ttl %v is not positive", ttl)
	}
	var serial [8]byte
	if _, err := rand.Read(serial[:]); err != nil {
		return nil, err
	}
	now := a.now()
	c := &ssh.Certificate{
		Key:             pub,
		Serial:          binary.BigEndian.Uint64(serial[:]),
		CertType:        certType,
		KeyId:           id,
		ValidPrincipals: append([]string(nil), principals...),
		ValidAfter:      unixSeconds(now.Add(-SSHBackdate)),
		ValidBefore:     unixSeconds(now.Add(ttl)),
	}
	c.Permissions.Extensions = maps.Clone(ext)
	if err := c.SignCert(rand.Reader, a.set(t).active().ssh); err != nil {
		return nil, err
	}
	return c, nil
}

// unixSeconds converts t for an SSH certificate, where times before 1970
// (a device clock gone wrong) clamp to 0.
func unixSeconds(t time.Time) uint64 {
	if s := t.Unix(); s > 0 {
		return uint64(s)
	}
	return 0
}
