package httpapi

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/lifecycle"
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
		s.storeError(w, "join", err)
	default:
		writeJSON(w, http.StatusOK, resp)
	}
}

func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	var req api.LoginRequest
	if !readJSON(w, r, &req) {
		return
	}
	log := s.audit().With("event", "user.login", "user", req.User, "remote", r.RemoteAddr)
	u, err := s.Users.Authenticate(r.Context(), req.User, req.Password, req.TOTP)
	switch {
	case err == nil:
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
	sshPub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(req.SSHPublicKey))
	if err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "bad ssh_public_key: "+err.Error())
		return
	}
	checker, err := s.checker(r.Context(), u)
	if err != nil {
		s.storeError(w, "login", err)
		return
	}
	ttl := checker.MaxTTL(s.userTTL())
	if req.TTL > 0 && req.TTL < ttl {
		ttl = req.TTL
	}
	logins := checker.AllLogins()
	resp := api.LoginResponse{User: u.Name, Roles: u.Roles, Logins: logins, Cluster: s.Cluster, Expires: s.now().Add(ttl).UTC()}
	if len(logins) > 0 {
		sshCert, err := s.CA.SignUserSSH(sshPub, u.Name, logins, ttl)
		if err != nil {
			s.storeError(w, "login", err)
			return
		}
		resp.SSHCert = string(ssh.MarshalAuthorizedKey(sshCert))
	}
	cert, err := s.CA.SignUserX509(req.CSR, u.Name, ttl)
	if err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	resp.Cert = cert
	resp.CACerts = derCerts(s.CA.CACerts())
	for _, k := range s.CA.HostCAKeys() {
		resp.HostCAKeys = append(resp.HostCAKeys, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k))))
	}
	log.Info("user logged in", "roles", u.Roles, "logins", logins, "ttl", ttl.String())
	s.audit().Info("certificate issued", "event", "cert.issued", "user", u.Name, "expires", resp.Expires)
	if s.record(r.Context(), &proto.AuditEvent{Type: proto.EventUserLogin, User: u.Name, Addr: r.RemoteAddr,
		Fields: map[string]string{"roles": strings.Join(u.Roles, ","), "logins": strings.Join(logins, ","), "ttl": ttl.String()}}) != nil {
		errAuditDown(w)
		return
	}
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventCertIssued, User: u.Name, Addr: r.RemoteAddr,
		Fields: map[string]string{"kind": "user", "expires": resp.Expires.Format(time.RFC3339)}})
	writeJSON(w, http.StatusOK, resp)
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request, c *caller) {
	resp := api.Whoami{User: c.name(), Expires: c.id.Expires}
	if c.checker != nil {
		resp.Roles, resp.Logins = c.user.Roles, c.checker.AllLogins()
	}
	writeJSON(w, http.StatusOK, resp)
}
