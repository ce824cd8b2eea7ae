package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/sso"
	"remoteler.dev/edge/fleet/ticket"
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/fleet/web/page"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// tshKind is the kind of tsh's single sign-on logins (sso.Service.Handle).
const tshKind = "tsh"

// ssoRoutes registers single sign-on: tsh's browser login, the provider's
// redirect back, ticket redemption, the connectors, and the headless
// login's device flow.
func (s *Server) ssoRoutes(mux *http.ServeMux) {
	mux.Handle("GET "+api.PathConnectors, s.admin(s.listConnectors))
	mux.Handle("PUT "+api.PathConnectors, s.admin(s.putConnector))
	mux.Handle("DELETE "+api.PathConnectors+"/{name}", s.admin(s.deleteConnector))
	mux.HandleFunc("POST "+api.PathSSORedeem, s.redeem)
	if s.SSO != nil {
		s.SSO.Handle(tshKind, s.finishTshLogin)
		mux.HandleFunc("GET "+api.PathSSOConnectors, s.publicConnectors)
		mux.HandleFunc("POST "+api.PathSSOLogin, s.startSSO)
		mux.Handle("GET "+api.PathSSOCallback, s.SSO.Callback())
	}
	if s.DeviceAuth != nil {
		s.DeviceAuth.Register(mux)
	}
}

// noSSO answers the connector endpoints of a fleet without single sign-on.
func (s *Server) noSSO(w http.ResponseWriter) bool {
	if s.SSO == nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "this fleet has no single sign-on")
		return true
	}
	return false
}

func (s *Server) listConnectors(w http.ResponseWriter, r *http.Request, c *caller) {
	if s.noSSO(w) {
		return
	}
	list, err := s.SSO.Connectors.List(r.Context())
	if err != nil {
		s.storeError(w, "list connectors", err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) putConnector(w http.ResponseWriter, r *http.Request, c *caller) {
	if s.noSSO(w) {
		return
	}
	var conn api.OIDCConnector
	if !readJSON(w, r, &conn) {
		return
	}
	created, err := s.SSO.Connectors.Put(r.Context(), conn)
	if err != nil {
		s.storeError(w, "put connector", err)
		return
	}
	s.SSO.Forget(conn.Metadata.Name)
	s.audit().Info("connector written", "event", proto.EventConnectorPut, "by", c.name(), "connector", conn.Metadata.Name, "issuer", conn.Spec.IssuerURL)
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventConnectorPut, User: c.name(), Addr: r.RemoteAddr,
		Fields: map[string]string{"connector": conn.Metadata.Name, "issuer": conn.Spec.IssuerURL, "client_id": conn.Spec.ClientID,
			"created": fmt.Sprint(created), "secret_changed": fmt.Sprint(conn.Spec.ClientSecret != "")}})
	status := http.StatusOK
	if created {
		status = http.StatusCreated
	}
	writeJSON(w, status, sso.Public(conn))
}

func (s *Server) deleteConnector(w http.ResponseWriter, r *http.Request, c *caller) {
	if s.noSSO(w) {
		return
	}
	name := r.PathValue("name")
	if err := s.SSO.Connectors.Delete(r.Context(), name); err != nil {
		s.storeError(w, "remove connector", err)
		return
	}
	s.SSO.Forget(name)
	s.audit().Info("connector removed", "event", proto.EventConnectorDelete, "by", c.name(), "connector", name)
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventConnectorDelete, User: c.name(), Addr: r.RemoteAddr, Fields: map[string]string{"connector": name}})
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) publicConnectors(w http.ResponseWriter, r *http.Request) {
	list, err := s.SSO.Public(r.Context())
	if err != nil {
		s.storeError(w, "list connectors", err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

// tshLogin is what a tsh browser login carries through the provider.
type tshLogin struct {
	Connector    string        `json:"connector"`
	CSR          []byte        `json:"csr"`
	SSHPublicKey string        `json:"ssh_public_key"`
	TTL          time.Duration `json:"ttl,omitempty"`
	RedirectURL  string        `json:"redirect_url"`
	Challenge    string        `json:"challenge"`
}

// checkLoopback accepts tsh's loopback addresses:
// http://127.0.0.1:PORT/..., http://[::1]:PORT/..., http://localhost:PORT/...
// The fleet sends browsers there and nowhere else, so a login link cannot
// be turned into a redirect to another site.
func checkLoopback(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme != "http" || u.User != nil || u.Fragment != "" || u.RawQuery != "" || u.Opaque != "" {
		return errors.New("redirect_url must be http://127.0.0.1:PORT/PATH (tsh's loopback address)")
	}
	host, port := u.Hostname(), u.Port()
	ip := net.ParseIP(host)
	if port == "" || (host != "localhost" && (ip == nil || !ip.IsLoopback())) {
		return errors.New("redirect_url must be on a loopback address with a port (tsh's loopback address)")
	}
	return nil
}

// checkKeys checks the keys a login certifies before anything is stored
// for it.
func checkKeys(sshKey string, csrDER []byte) error {
	if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(sshKey)); err != nil {
		return fmt.Errorf("bad ssh_public_key: %w", err)
	}
	if len(csrDER) == 0 || len(csrDER) > 8192 {
		return errors.New("bad csr: empty or over 8 KiB")
	}
	return nil
}

// limitSource applies the per-source login limit to an open endpoint that
// stores something; it answers and returns false when the source is over.
func (s *Server) limitSource(w http.ResponseWriter, r *http.Request) bool {
	if wait, ok := s.AllowLogin(r); !ok {
		tarpit(r.Context(), wait)
		retryAfter(w, wait)
		writeError(w, http.StatusTooManyRequests, api.CodeRateLimited,
			fmt.Sprintf("too many logins from your address; try again in %s", wait.Round(time.Second)))
		return false
	}
	return true
}

// startSSO starts tsh's browser login: it answers the provider's login
// address.
func (s *Server) startSSO(w http.ResponseWriter, r *http.Request) {
	if !s.limitSource(w, r) {
		return
	}
	var req api.SSOLoginRequest
	if !readJSON(w, r, &req) {
		return
	}
	if err := checkKeys(req.SSHPublicKey, req.CSR); err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	if err := checkLoopback(req.RedirectURL); err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	if err := ticket.CheckChallenge(req.CodeChallenge); err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	data, _ := json.Marshal(tshLogin{Connector: req.Connector, CSR: req.CSR, SSHPublicKey: req.SSHPublicKey, TTL: req.TTL,
		RedirectURL: req.RedirectURL, Challenge: req.CodeChallenge})
	authURL, expires, err := s.SSO.Start(r.Context(), sso.StartRequest{Connector: req.Connector, Kind: tshKind, Data: data, ClientAddr: r.RemoteAddr})
	var ref *sso.Refusal
	switch {
	case err == nil:
	case errors.Is(err, sso.ErrNotFound):
		msg := fmt.Sprintf("no single sign-on connector called %q", req.Connector)
		if list, err := s.SSO.Public(r.Context()); err == nil && len(list) > 0 {
			var names []string
			for _, c := range list {
				names = append(names, c.Name)
			}
			msg += "; this fleet has: " + strings.Join(names, ", ")
		} else {
			msg += "; this fleet has none: ask your fleet admin"
		}
		s.record(r.Context(), &proto.AuditEvent{Type: proto.EventUserLoginFailed, Outcome: proto.OutcomeDenied, Addr: r.RemoteAddr, Message: msg,
			Fields: map[string]string{"method": "sso", "connector": req.Connector, "reason": sso.ReasonConnector}})
		writeError(w, http.StatusNotFound, api.CodeNotFound, msg)
		return
	case errors.As(err, &ref):
		writeError(w, http.StatusBadGateway, api.CodeUnauthorized, ref.Message)
		return
	default:
		s.storeError(w, "single sign-on", err)
		return
	}
	writeJSON(w, http.StatusOK, api.SSOLoginResponse{AuthURL: authURL, Expires: expires})
}

// finishTshLogin ends tsh's browser login: it sends the browser to tsh's
// loopback address with a ticket, or with the refusal.
func (s *Server) finishTshLogin(w http.ResponseWriter, r *http.Request, res *sso.Result, err error) {
	var l tshLogin
	if json.Unmarshal(res.Data, &l) != nil || checkLoopback(l.RedirectURL) != nil {
		page.Message(w, http.StatusBadRequest, page.Text{Title: "Login failed", Message: "This login's way back to tsh is broken; run tsh login again."})
		return
	}
	back := func(key, value string) {
		page.Headers(w.Header(), "http://127.0.0.1:*", "http://[::1]:*", "http://localhost:*")
		http.Redirect(w, r, l.RedirectURL+"?"+url.Values{key: {value}}.Encode(), http.StatusSeeOther)
	}
	if err != nil {
		back(api.LoopbackError, err.Error())
		return
	}
	secret, err := s.Tickets.Issue(r.Context(), ticket.Ticket{User: res.User, Method: "sso", Connector: res.Connector,
		CSR: l.CSR, SSHPublicKey: l.SSHPublicKey, TTL: l.TTL, Challenge: l.Challenge})
	if err != nil {
		s.log().Error("single sign-on: issue ticket", "err", err)
		back(api.LoopbackError, "the fleet could not finish the login (see fleetd's log); run tsh login again")
		return
	}
	back(api.LoopbackTicket, secret)
}

// redeem answers a ticket and its verifier with certificates.
func (s *Server) redeem(w http.ResponseWriter, r *http.Request) {
	var req api.SSORedeemRequest
	if !readJSON(w, r, &req) {
		return
	}
	if s.Tickets == nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "this fleet has no single sign-on")
		return
	}
	t, err := s.Tickets.Redeem(r.Context(), req.Ticket, req.CodeVerifier)
	if errors.Is(err, ticket.ErrUnknown) || errors.Is(err, ticket.ErrVerifier) {
		s.record(r.Context(), &proto.AuditEvent{Type: proto.EventUserLoginFailed, Outcome: proto.OutcomeDenied, Addr: r.RemoteAddr,
			Message: err.Error(), Fields: map[string]string{"method": "ticket"}})
		writeError(w, http.StatusUnauthorized, api.CodeUnauthorized, err.Error())
		return
	}
	if err != nil {
		s.storeError(w, "redeem", err)
		return
	}
	u, err := s.Users.Get(r.Context(), t.User)
	if errors.Is(err, users.ErrNotFound) {
		writeError(w, http.StatusUnauthorized, api.CodeUnauthorized, fmt.Sprintf("the fleet user %q was removed during the login; ask your fleet admin", t.User))
		return
	}
	if err != nil {
		s.storeError(w, "redeem", err)
		return
	}
	resp, ttl, status, err := s.issueUserCerts(r.Context(), u, t.SSHPublicKey, t.CSR, t.TTL, r.RemoteAddr, t.Method)
	if err != nil {
		s.issueError(w, "redeem", status, err)
		return
	}
	if s.record(r.Context(), &proto.AuditEvent{Type: proto.EventCertIssued, User: u.Name, Addr: r.RemoteAddr,
		Fields: map[string]string{"kind": "user", "method": t.Method, "connector": t.Connector, "roles": strings.Join(u.Roles, ","),
			"logins": strings.Join(resp.Logins, ","), "ttl": ttl.String(), "expires": resp.Expires.Format(time.RFC3339)}}) != nil {
		errAuditDown(w)
		return
	}
	s.audit().Info("certificate issued", "event", "cert.issued", "user", u.Name, "method", t.Method, "expires", resp.Expires)
	writeJSON(w, http.StatusOK, resp)
}
