package httpapi

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"golang.org/x/time/rate"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/lifecycle"
	"remoteler.dev/edge/fleet/locks"
	"remoteler.dev/edge/fleet/sourcelimit"
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// join answers POST /v1/join: the device lifecycle (fleet/lifecycle)
// joins the device.
func (s *Server) join(w http.ResponseWriter, r *http.Request) {
	var req api.JoinRequest
	if !readJSON(w, r, &req) {
		return
	}
	resp, err := s.lifecycle().Join(r.Context(), &req, r.RemoteAddr)
	s.joinAnswer(w, "join", resp, err)
}

// joinAnswer answers a join (a device's or a leaf cluster's): resp, a
// refusal (*lifecycle.JoinError) with its status, or the fleet's error.
func (s *Server) joinAnswer(w http.ResponseWriter, op string, resp any, err error) {
	var je *lifecycle.JoinError
	switch {
	case errors.As(err, &je):
		status := http.StatusBadRequest
		switch je.Code {
		case api.CodeConflict:
			status = http.StatusConflict
		case api.CodeUnauthorized:
			status = http.StatusUnauthorized
		}
		writeError(w, status, je.Code, je.Msg)
	case err != nil:
		s.storeError(w, op, err)
	default:
		writeJSON(w, http.StatusOK, resp)
	}
}

// The per-source login limit when Server.LoginLimit is nil: bursts of
// DefaultLoginBurst, then one every DefaultLoginEvery (10 a minute), from
// each IPv4 address or IPv6 /64.
const (
	DefaultLoginBurst = 10
	DefaultLoginEvery = 6 * time.Second
)

func (s *Server) loginLimit() *sourcelimit.Limiter {
	s.loginOnce.Do(func() {
		if s.LoginLimit == nil {
			s.LoginLimit = &sourcelimit.Limiter{Rate: rate.Every(DefaultLoginEvery), Burst: DefaultLoginBurst}
		}
	})
	return s.LoginLimit
}

// maxTarpit bounds how long a refused login is held before its answer.
const maxTarpit = 2 * time.Second

// tarpit holds a refused login for up to maxTarpit (d at most) before it
// is answered: a flood that sends its next request as soon as the last is
// answered then spends its connections waiting instead of the fleet's CPU
// on a stream of refusals.
func tarpit(ctx context.Context, d time.Duration) {
	t := time.NewTimer(min(d, maxTarpit))
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// retryAfter sets the Retry-After header to d, in whole seconds (at least 1).
func retryAfter(w http.ResponseWriter, d time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(d.Seconds())))))
}

// admit applies the per-source login limit to r (a login, or an open
// request that starts one and stores something for it). A refused source
// is marked, and its first refusal in a run is recorded: a flood must not
// write the audit log at its own rate.
func (s *Server) admit(r *http.Request) sourcelimit.Verdict {
	src := sourcelimit.Key(r.RemoteAddr)
	limit := s.loginLimit()
	v := limit.Allow(src)
	if !v.OK {
		limit.Mark(src)
		if v.First {
			s.audit().Warn("logins refused", "event", "user.login.failed", "source", src, "reason", "rate limited")
			s.record(r.Context(), &proto.AuditEvent{Type: proto.EventUserLoginFailed, Outcome: proto.OutcomeDenied, Addr: r.RemoteAddr,
				Message: "too many logins from this address: refused until the rate drops", Fields: map[string]string{"source": src}})
		}
	}
	return v
}

// AllowLogin is admit for other packages' open endpoints (the device
// flow's): it returns false and how long to wait when r must wait.
func (s *Server) AllowLogin(r *http.Request) (time.Duration, bool) {
	v := s.admit(r)
	return v.Wait, v.OK
}

// login checks a password (and one-time code) and issues certificates.
// Before any password is checked, the source address must be within its
// rate (LoginLimit), or it is answered 429 after a pause (tarpit); a source
// that failed or was refused lately waits for a password check behind
// everyone else (users.WithLowPriority), so that a flood from many
// addresses cannot crowd out real users.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	src := sourcelimit.Key(r.RemoteAddr)
	limit := s.loginLimit()
	v := s.admit(r)
	if !v.OK {
		tarpit(r.Context(), v.Wait)
		retryAfter(w, v.Wait)
		writeError(w, http.StatusTooManyRequests, api.CodeRateLimited,
			fmt.Sprintf("too many logins from your address; try again in %s", v.Wait.Round(time.Second)))
		return
	}
	var req api.LoginRequest
	if !readJSON(w, r, &req) {
		return
	}
	log := s.audit().With("event", "user.login", "user", req.User, "remote", r.RemoteAddr)
	ctx := r.Context()
	if v.Marked {
		ctx = users.WithLowPriority(ctx)
	}
	u, err := s.Users.Authenticate(ctx, req.User, req.Password, req.TOTP)
	if errors.Is(err, users.ErrBadCredentials) || errors.Is(err, users.ErrLocked) {
		limit.Mark(src)
	}
	switch {
	case err == nil:
	case errors.Is(err, users.ErrBusy):
		// Nothing was checked: not a failed login.
		log.Debug("login refused", "reason", "busy")
		if v.Marked {
			tarpit(r.Context(), time.Second)
		}
		retryAfter(w, time.Second)
		writeError(w, http.StatusServiceUnavailable, api.CodeBusy, users.ErrBusy.Error())
		return
	case errors.Is(err, users.ErrTOTPRequired):
		writeError(w, http.StatusUnauthorized, api.CodeTOTPRequired, "enter the code from your authenticator app")
		return
	case errors.Is(err, users.ErrBadCredentials):
		log.Warn("login failed", "reason", "bad credentials")
		s.record(r.Context(), &proto.AuditEvent{Type: proto.EventUserLoginFailed, Outcome: proto.OutcomeFailure, User: req.User, Addr: r.RemoteAddr, Message: "bad credentials"})
		writeError(w, http.StatusUnauthorized, api.CodeUnauthorized, "wrong user name, password or code")
		return
	case errors.Is(err, users.ErrLocked):
		log.Warn("login failed", "reason", "locked")
		s.record(r.Context(), &proto.AuditEvent{Type: proto.EventUserLoginFailed, Outcome: proto.OutcomeFailure, User: req.User, Addr: r.RemoteAddr, Message: err.Error()})
		writeError(w, http.StatusTooManyRequests, api.CodeUnauthorized, err.Error())
		return
	default:
		s.storeError(w, "login", err)
		return
	}
	resp, ttl, status, err := s.issueUserCerts(r.Context(), u, req.SSHPublicKey, req.CSR, req.TTL, r.RemoteAddr, "password")
	if err != nil {
		s.issueError(w, "login", status, err)
		return
	}
	log.Info("user logged in", "roles", u.Roles, "logins", resp.Logins, "ttl", ttl.String())
	s.audit().Info("certificate issued", "event", "cert.issued", "user", u.Name, "expires", resp.Expires)
	if s.record(r.Context(), &proto.AuditEvent{Type: proto.EventUserLogin, User: u.Name, Addr: r.RemoteAddr,
		Fields: map[string]string{"roles": strings.Join(u.Roles, ","), "logins": strings.Join(resp.Logins, ","), "ttl": ttl.String()}}) != nil {
		errAuditDown(w)
		return
	}
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventCertIssued, User: u.Name, Addr: r.RemoteAddr,
		Fields: map[string]string{"kind": "user", "expires": resp.Expires.Format(time.RFC3339)}})
	writeJSON(w, http.StatusOK, resp)
}

// issueError answers a failed issueUserCerts.
func (s *Server) issueError(w http.ResponseWriter, op string, status int, err error) {
	switch status {
	case http.StatusBadRequest:
		writeError(w, status, api.CodeBadRequest, err.Error())
		return
	case http.StatusForbidden:
		writeError(w, status, api.CodeForbidden, err.Error())
		return
	}
	s.storeError(w, op, err)
}

// issueUserCerts issues u's SSH certificate (when their roles give logins)
// and X.509 certificate for the keys of a login, for the lifetime asked
// (ttl; zero: the most allowed), capped by the fleet's default and the
// roles' max_session_ttl; it returns the lifetime given. A bad key or
// request is status 400; a lock on the user or one of their roles is 403,
// recorded as a failed login (by method, from addr) naming the lock; other
// errors are internal.
func (s *Server) issueUserCerts(ctx context.Context, u api.User, sshKey string, csr []byte, ttl time.Duration, addr, method string) (*api.LoginResponse, time.Duration, int, error) {
	sshPub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(sshKey))
	if err != nil {
		return nil, 0, http.StatusBadRequest, fmt.Errorf("bad ssh_public_key: %w", err)
	}
	var l *locks.Locked
	if err := s.Locks.Check(locks.Subject{User: u.Name, Roles: u.Roles}); errors.As(err, &l) {
		f := l.AuditFields()
		f["method"] = method
		s.audit().Warn("login refused", "event", proto.EventUserLoginFailed, "user", u.Name, "lock", l.Lock.ID)
		s.record(ctx, &proto.AuditEvent{Type: proto.EventUserLoginFailed, Outcome: proto.OutcomeDenied, User: u.Name, Addr: addr,
			Message: l.Error(), Fields: f})
		return nil, 0, http.StatusForbidden, l
	}
	checker, err := s.checker(ctx, u)
	if err != nil {
		return nil, 0, http.StatusInternalServerError, err
	}
	max := checker.MaxTTL(s.userTTL())
	if ttl <= 0 || ttl > max {
		ttl = max
	}
	logins := checker.AllLogins()
	resp := api.LoginResponse{User: u.Name, Roles: u.Roles, Logins: logins, Cluster: s.Cluster, Expires: s.now().Add(ttl).UTC()}
	if len(logins) > 0 {
		sshCert, err := s.CA.SignUserSSH(sshPub, u.Name, logins, ttl)
		if err != nil {
			return nil, 0, http.StatusInternalServerError, err
		}
		resp.SSHCert = string(ssh.MarshalAuthorizedKey(sshCert))
	}
	cert, err := s.CA.SignUserX509(csr, u.Name, ttl)
	if err != nil {
		return nil, 0, http.StatusBadRequest, err
	}
	resp.Cert = cert
	resp.CACerts = derCerts(s.CA.CACerts())
	for _, k := range s.CA.HostCAKeys() {
		resp.HostCAKeys = append(resp.HostCAKeys, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))))
	}
	return &resp, ttl, http.StatusOK, nil
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request, c *caller) {
	resp := api.Whoami{User: c.name(), Expires: c.id.Expires}
	if c.checker != nil {
		resp.Roles, resp.Logins = c.user.Roles, c.checker.AllLogins()
	}
	writeJSON(w, http.StatusOK, resp)
}
