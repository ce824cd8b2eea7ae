package sshd

import (
	"bytes"
	"fmt"
	"log/slog"
	"math"
	"net"
	"slices"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/proto"
)

// authenticator checks the public keys one client offers. It lives for one
// handshake, which calls it from a single goroutine.
type authenticator struct {
	s      *Server
	id     proto.Identity
	log    *slog.Logger
	remote net.Addr

	// checked is set once the checks that do not depend on the key have
	// run; loginErr is their outcome and acct the account they found.
	checked  bool
	loginErr *refusal
	acct     *account
	// bannered is set once a refusal has been explained to the client.
	bannered bool
	// refused is set when any key was refused; reason says why.
	refused bool
	reason  string
	// cert is the certificate that was accepted.
	cert *ssh.Certificate
}

// refusal is why a login was refused. reason goes to the log; tell, when
// set, is also shown to the user.
type refusal struct {
	reason string
	tell   string
}

func (r *refusal) Error() string { return "sshd: login refused: " + r.reason }

// publicKey is the ssh.ServerConfig.PublicKeyCallback.
func (a *authenticator) publicKey(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
	login := meta.User()
	log := a.log.With("requested_login", login, "key_type", key.Type(), "fingerprint", ssh.FingerprintSHA256(key))
	if !a.checked {
		a.checked = true
		a.loginErr = a.checkLogin(login)
	}
	r := a.loginErr
	var cert *ssh.Certificate
	if r == nil {
		cert, r = a.s.checkCert(key, login, a.id)
	}
	if cert != nil {
		log = log.With("serial", cert.Serial, "key_id", cert.KeyId)
	}
	if r != nil {
		a.refused, a.reason = true, r.reason
		log.Warn("sshd: login refused", "reason", r.reason)
		if r.tell != "" && !a.bannered {
			a.bannered = true
			return nil, &ssh.BannerError{Err: r, Message: "remoteler: " + r.tell + "\r\n"}
		}
		return nil, r
	}
	log.Info("sshd: login accepted", "ca_fingerprint", ssh.FingerprintSHA256(cert.SignatureKey))
	a.cert = cert
	return &ssh.Permissions{
		CriticalOptions: cert.CriticalOptions,
		Extensions:      cert.Extensions,
	}, nil
}

// checkLogin checks what does not depend on the key: that the stream has a
// fleet identity, that the requested login is the one the fleet authorised,
// and that this agent can serve it. It sets a.acct.
func (a *authenticator) checkLogin(login string) *refusal {
	switch {
	case a.id.User == "" || a.id.Login == "":
		return &refusal{reason: "the stream carries no fleet identity"}
	case login != a.id.Login:
		return &refusal{
			reason: fmt.Sprintf("login %q is not the login the fleet authorised (%q)", login, a.id.Login),
			tell:   fmt.Sprintf("the fleet authorised login %q for this connection, not %q", a.id.Login, login),
		}
	}
	acct, err := a.s.lookupAccount(login)
	if err != nil {
		return &refusal{reason: err.Error(), tell: err.Error()}
	}
	a.acct = acct
	return nil
}

// checkCert checks that key is a user certificate from one of the fleet's
// user CAs (or, for a user of a root fleet the fleet trusts, from one of
// the root's user CAs the stream names) that is valid now (within the
// clock skew), names login as a principal and has the fleet user id.User
// as its key ID. It returns the certificate when key is one, even when it
// refuses it.
func (s *Server) checkCert(key ssh.PublicKey, login string, id proto.Identity) (*ssh.Certificate, *refusal) {
	cert, ok := key.(*ssh.Certificate)
	if !ok {
		return nil, &refusal{reason: "plain key: only fleet-issued user certificates are accepted"}
	}
	if cert.CertType != ssh.UserCert {
		return cert, &refusal{reason: "host certificate offered as a user certificate"}
	}
	cas := append(slices.Clone(s.cfg.UserCAKeys()), streamCAs(id)...)
	if !slices.ContainsFunc(cas, func(ca ssh.PublicKey) bool { return sameKey(ca, cert.SignatureKey) }) {
		return cert, &refusal{reason: "certificate signed by an unknown authority"}
	}
	if !slices.Contains(cert.ValidPrincipals, login) {
		return cert, &refusal{
			reason: fmt.Sprintf("login %q is not a principal of the certificate %q", login, cert.ValidPrincipals),
			tell:   fmt.Sprintf("your certificate does not allow login %q", login),
		}
	}
	if cert.KeyId != id.User {
		return cert, &refusal{reason: fmt.Sprintf("certificate key id %q is not the fleet user %q", cert.KeyId, id.User)}
	}
	now := s.cfg.Now()
	at, r := validAt(cert, now, s.cfg.ClockSkew)
	if r != nil {
		return cert, r
	}
	checker := &ssh.CertChecker{
		// The server itself enforces source-address against the
		// connection's remote address.
		SupportedCriticalOptions: []string{"source-address"},
		Clock:                    func() time.Time { return at },
	}
	if err := checker.CheckCert(login, cert); err != nil {
		return cert, &refusal{reason: "certificate: " + err.Error()}
	}
	return cert, nil
}

// maxStreamCAs bounds the user CA keys a stream may name.
const maxStreamCAs = 16

// streamCAs parses the user CA keys a stream's identity names: those of
// a root fleet whose user this is (trusted clusters). The fleet's tunnel
// vouches for them as for the rest of the identity; keys that do not
// parse are left out.
func streamCAs(id proto.Identity) []ssh.PublicKey {
	var out []ssh.PublicKey
	for _, b := range id.UserCAKeys[:min(len(id.UserCAKeys), maxStreamCAs)] {
		if k, err := ssh.ParsePublicKey(b); err == nil {
			out = append(out, k)
		}
	}
	return out
}

// validAt checks that cert is valid at now give or take skew, and returns
// the instant nearest to now at which it is valid, for the CertChecker's
// clock. Validity times past the range of int64 mean "forever".
func validAt(cert *ssh.Certificate, now time.Time, skew time.Duration) (time.Time, *refusal) {
	after := int64(math.MaxInt64)
	if cert.ValidAfter <= math.MaxInt64 {
		after = int64(cert.ValidAfter)
	}
	before := int64(math.MaxInt64)
	if cert.ValidBefore <= math.MaxInt64 {
		before = int64(cert.ValidBefore)
	}
	if after >= before {
		return time.Time{}, &refusal{reason: "certificate is never valid"}
	}
	n := now.Unix()
	s := int64(skew / time.Second)
	switch {
	case n+s < after:
		return time.Time{}, &refusal{
			reason: fmt.Sprintf("certificate not valid until %v, device clock says %v", time.Unix(after, 0).UTC(), now.UTC()),
			tell:   "your certificate is not valid yet; the device clock may be wrong",
		}
	case before != math.MaxInt64 && n-s >= before:
		return time.Time{}, &refusal{
			reason: fmt.Sprintf("certificate expired at %v, device clock says %v", time.Unix(before, 0).UTC(), now.UTC()),
			tell:   "your certificate has expired; log in to the fleet again",
		}
	}
	n = max(n, after)
	if before != math.MaxInt64 {
		n = min(n, before-1)
	}
	return time.Unix(n, 0), nil
}

// sameKey reports whether a and b are the same public key.
func sameKey(a, b ssh.PublicKey) bool {
	return a != nil && b != nil && bytes.Equal(a.Marshal(), b.Marshal())
}
