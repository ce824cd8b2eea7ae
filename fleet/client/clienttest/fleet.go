package clienttest

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/pin"
)

// User is a user of the fake fleet.
type User struct {
	Password string
	TOTP     string // the code login wants; empty: no TOTP
	Roles    []string
	Logins   []string
}

// Fleet is an in-process fake of fleetd's HTTPS API (proto/api) over TLS,
// with a server certificate for 127.0.0.1 issued by CA. It signs login
// certificates with CA (X.509) and UserCA (SSH). It is a test double, not
// fleetd: access control is "has a client certificate".
type Fleet struct {
	Cluster string
	CA      *CA
	Pin     string     // CA's pin
	UserCA  ssh.Signer // signs users' SSH certificates
	HostCA  ssh.Signer // its public key is in LoginResponse.HostCAKeys
	Addr    string     // 127.0.0.1:PORT
	Server  *httptest.Server

	mu      sync.Mutex // guards the fields below
	users   map[string]*User
	roles   map[string]api.Role
	tokens  map[string]api.Token
	devices []api.Device
	calls   []string
	logins  []api.LoginRequest
	connect func(device, login, service string, conn net.Conn)
}

// NewFleet starts a fake fleet named "fleet"; t.Cleanup stops it.
func NewFleet(t TB) *Fleet {
	t.Helper()
	f := &Fleet{
		Cluster: "fleet",
		CA:      NewCA(t, "fleet CA"),
		users:   map[string]*User{},
		roles:   map[string]api.Role{},
		tokens:  map[string]api.Token{},
	}
	f.Pin = pin.Of(f.CA.Cert)
	f.UserCA = newSSHSigner(t)
	f.HostCA = newSSHSigner(t)
	srv := httptest.NewUnstartedServer(f)
	pool := x509.NewCertPool()
	pool.AddCert(f.CA.Cert)
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{f.CA.KeyPair(t, "fleet", time.Now().Add(24*time.Hour), "127.0.0.1", "localhost")},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    pool,
		NextProtos:   []string{"http/1.1"},
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	f.Server = srv
	f.Addr = srv.Listener.Addr().String()
	return f
}

func newSSHSigner(t TB) ssh.Signer {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("clienttest: ssh key: %v", err)
	}
	s, err := ssh.NewSignerFromKey(key)
	if err != nil {
		t.Fatalf("clienttest: ssh signer: %v", err)
	}
	return s
}

// AddUser adds or replaces a user.
func (f *Fleet) AddUser(name string, u User) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.users[name] = &u
}

// SetDevices sets the device list.
func (f *Fleet) SetDevices(ds ...api.Device) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.devices = ds
}

// SetConnect sets what serves an upgraded /v1/connect; fn owns conn. With
// none set, /v1/connect answers device_offline.
func (f *Fleet) SetConnect(fn func(device, login, service string, conn net.Conn)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.connect = fn
}

// Calls returns "METHOD /path" of each request served so far.
func (f *Fleet) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// Logins returns the login requests served so far.
func (f *Fleet) Logins() []api.LoginRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.logins)
}

// Roles returns the roles the fleet holds.
func (f *Fleet) Roles() map[string]api.Role {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]api.Role{}
	for k, v := range f.roles {
		out[k] = v
	}
	return out
}

// Users returns the users the fleet holds.
func (f *Fleet) Users() map[string]User {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]User{}
	for k, v := range f.users {
		out[k] = *v
	}
	return out
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(api.Error{Code: code, Message: msg})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func (f *Fleet) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.calls = append(f.calls, r.Method+" "+r.URL.Path)
	f.mu.Unlock()
	open := r.URL.Path == api.PathPing || r.URL.Path == api.PathLogin
	if !open && (r.TLS == nil || len(r.TLS.PeerCertificates) == 0) {
		writeErr(w, http.StatusUnauthorized, api.CodeUnauthorized, "a client certificate is required")
		return
	}
	collection, name, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/v1/"), "/")
	switch {
	case r.URL.Path == api.PathPing:
		writeJSON(w, api.Ping{Cluster: f.Cluster, Version: "test", ProtocolVersion: 1, CAPin: f.Pin, ServerTime: time.Now()})
	case r.URL.Path == api.PathLogin && r.Method == http.MethodPost:
		f.login(w, r)
	case r.URL.Path == api.PathWhoami:
		f.mu.Lock()
		u := f.users[r.TLS.PeerCertificates[0].Subject.CommonName]
		f.mu.Unlock()
		if u == nil {
			writeErr(w, http.StatusNotFound, api.CodeNotFound, "no such user")
			return
		}
		writeJSON(w, api.Whoami{User: r.TLS.PeerCertificates[0].Subject.CommonName, Roles: u.Roles, Logins: u.Logins, Expires: r.TLS.PeerCertificates[0].NotAfter})
	case r.URL.Path == api.PathConnect:
		f.serveConnect(w, r)
	case r.URL.Path == api.PathStatus:
		f.mu.Lock()
		st := api.Status{Cluster: f.Cluster, Version: "test", CAPin: f.Pin, Listen: f.Addr, Users: len(f.users), Devices: len(f.devices)}
		f.mu.Unlock()
		writeJSON(w, st)
	case collection == "devices":
		f.mu.Lock()
		defer f.mu.Unlock()
		if r.Method == http.MethodDelete {
			i := slices.IndexFunc(f.devices, func(d api.Device) bool { return d.Name == name })
			if i < 0 {
				writeErr(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("device %q not found", name))
				return
			}
			f.devices = slices.Delete(f.devices, i, i+1)
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeJSON(w, append([]api.Device{}, f.devices...))
	case collection == "users":
		f.serveUsers(w, r, name)
	case collection == "roles":
		f.serveRoles(w, r, name)
	case collection == "tokens":
		f.serveTokens(w, r, name)
	default:
		writeErr(w, http.StatusNotFound, api.CodeNotFound, "no such API path")
	}
}

func (f *Fleet) login(w http.ResponseWriter, r *http.Request) {
	var req api.LoginRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, api.CodeBadRequest, "bad login request")
		return
	}
	f.mu.Lock()
	f.logins = append(f.logins, req)
	u := f.users[req.User]
	f.mu.Unlock()
	switch {
	case u == nil || u.Password != req.Password:
		writeErr(w, http.StatusUnauthorized, api.CodeUnauthorized, "wrong user name or password")
		return
	case u.TOTP != "" && req.TOTP == "":
		writeErr(w, http.StatusUnauthorized, api.CodeTOTPRequired, "a TOTP code is required")
		return
	case u.TOTP != "" && req.TOTP != u.TOTP:
		writeErr(w, http.StatusUnauthorized, api.CodeUnauthorized, "wrong TOTP code")
		return
	}
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err == nil {
		err = csr.CheckSignature()
	}
	if err != nil {
		writeErr(w, http.StatusBadRequest, api.CodeBadRequest, "bad CSR: "+err.Error())
		return
	}
	sshPub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(req.SSHPublicKey))
	if err != nil {
		writeErr(w, http.StatusBadRequest, api.CodeBadRequest, "bad SSH public key: "+err.Error())
		return
	}
	ttl := req.TTL
	if ttl <= 0 || ttl > 8*time.Hour {
		ttl = 8 * time.Hour
	}
	expires := time.Now().Add(ttl).Truncate(time.Second)
	cert, err := f.CA.sign(csr.PublicKey, req.User, false, expires)
	if err != nil {
		writeErr(w, http.StatusInternalServerError, api.CodeInternal, err.Error())
		return
	}
	sshCert := &ssh.Certificate{
		Key:             sshPub,
		CertType:        ssh.UserCert,
		KeyId:           req.User,
		ValidPrincipals: u.Logins,
		ValidAfter:      uint64(time.Now().Add(-time.Minute).Unix()),
		ValidBefore:     uint64(expires.Unix()),
		Permissions:     ssh.Permissions{Extensions: map[string]string{"permit-pty": ""}},
	}
	if err := sshCert.SignCert(rand.Reader, f.UserCA); err != nil {
		writeErr(w, http.StatusInternalServerError, api.CodeInternal, err.Error())
		return
	}
	writeJSON(w, api.LoginResponse{
		User:       req.User,
		Roles:      u.Roles,
		Logins:     u.Logins,
		Cluster:    f.Cluster,
		SSHCert:    string(ssh.MarshalAuthorizedKey(sshCert)),
		Cert:       cert.Raw,
		CACerts:    [][]byte{f.CA.Cert.Raw},
		HostCAKeys: []string{string(ssh.MarshalAuthorizedKey(f.HostCA.PublicKey()))},
		Expires:    expires,
	})
}

// bufConn reads what a bufio.Reader holds before the connection itself.
type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(p []byte) (int, error) { return c.r.Read(p) }

func (f *Fleet) serveConnect(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), api.UpgradeProto) {
		writeErr(w, http.StatusBadRequest, api.CodeBadRequest, "want Upgrade: "+api.UpgradeProto)
		return
	}
	q := r.URL.Query()
	device, login, service := q.Get("device"), q.Get("login"), q.Get("service")
	f.mu.Lock()
	fn := f.connect
	u := f.users[r.TLS.PeerCertificates[0].Subject.CommonName]
	f.mu.Unlock()
	if u != nil && !slices.Contains(u.Logins, login) {
		writeErr(w, http.StatusForbidden, api.CodeForbidden, fmt.Sprintf("access denied: login %q on %q", login, device))
		return
	}
	if fn == nil {
		writeErr(w, http.StatusServiceUnavailable, api.CodeDeviceOffline, fmt.Sprintf("device %q is offline", device))
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		writeErr(w, http.StatusInternalServerError, api.CodeInternal, err.Error())
		return
	}
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", api.UpgradeProto)
	if err := brw.Flush(); err != nil {
		conn.Close()
		return
	}
	fn(device, login, service, &bufConn{Conn: conn, r: brw.Reader})
}

func (f *Fleet) serveUsers(w http.ResponseWriter, r *http.Request, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.Method {
	case http.MethodGet:
		out := []api.User{}
		for n, u := range f.users {
			out = append(out, api.User{Name: n, Roles: u.Roles, TOTP: u.TOTP != ""})
		}
		slices.SortFunc(out, func(a, b api.User) int { return strings.Compare(a.Name, b.Name) })
		writeJSON(w, out)
	case http.MethodPost:
		var req api.AddUserRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeErr(w, http.StatusBadRequest, api.CodeBadRequest, "bad request")
			return
		}
		if _, ok := f.users[req.Name]; ok {
			writeErr(w, http.StatusConflict, api.CodeConflict, fmt.Sprintf("user %q already exists", req.Name))
			return
		}
		u := &User{Password: req.Password, Roles: req.Roles, Logins: req.Logins}
		resp := api.AddUserResponse{User: api.User{Name: req.Name, Roles: req.Roles, TOTP: req.TOTP}}
		if req.TOTP {
			u.TOTP = "123456"
			resp.TOTPURL = "otpauth://totp/" + f.Cluster + ":" + req.Name + "?secret=JBSWY3DPEHPK3PXP&issuer=" + f.Cluster
		}
		f.users[req.Name] = u
		writeJSON(w, resp)
	case http.MethodDelete:
		if _, ok := f.users[name]; !ok {
			writeErr(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("user %q not found", name))
			return
		}
		delete(f.users, name)
		w.WriteHeader(http.StatusNoContent)
	}
}

func (f *Fleet) serveRoles(w http.ResponseWriter, r *http.Request, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.Method {
	case http.MethodGet:
		out := []api.Role{}
		for _, role := range f.roles {
			out = append(out, role)
		}
		slices.SortFunc(out, func(a, b api.Role) int { return strings.Compare(a.Metadata.Name, b.Metadata.Name) })
		writeJSON(w, out)
	case http.MethodPut:
		var role api.Role
		if err := json.NewDecoder(r.Body).Decode(&role); err != nil || role.Metadata.Name == "" {
			writeErr(w, http.StatusBadRequest, api.CodeBadRequest, "bad role")
			return
		}
		f.roles[role.Metadata.Name] = role
		writeJSON(w, role)
	case http.MethodDelete:
		if _, ok := f.roles[name]; !ok {
			writeErr(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("role %q not found", name))
			return
		}
		delete(f.roles, name)
		w.WriteHeader(http.StatusNoContent)
	}
}

func (f *Fleet) serveTokens(w http.ResponseWriter, r *http.Request, id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.Method {
	case http.MethodGet:
		out := []api.Token{}
		for _, t := range f.tokens {
			t.Token, t.JoinString = "", ""
			out = append(out, t)
		}
		slices.SortFunc(out, func(a, b api.Token) int { return strings.Compare(a.ID, b.ID) })
		writeJSON(w, out)
	case http.MethodPost:
		var req api.AddTokenRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			writeErr(w, http.StatusBadRequest, api.CodeBadRequest, "bad request")
			return
		}
		if req.TTL == 0 {
			req.TTL = time.Hour
		}
		if req.Uses == 0 {
			req.Uses = 1
		}
		id := fmt.Sprintf("tok%d", len(f.tokens)+1)
		secret := id + "secret"
		t := api.Token{ID: id, Token: secret, Expires: time.Now().Add(req.TTL), UsesLeft: req.Uses, Labels: req.Labels,
			CreatedAt: time.Now(), JoinString: pin.JoinString(secret, f.Pin), CAPin: f.Pin}
		f.tokens[id] = t
		writeJSON(w, t)
	case http.MethodDelete:
		if _, ok := f.tokens[id]; !ok {
			writeErr(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("token %q not found", id))
			return
		}
		delete(f.tokens, id)
		w.WriteHeader(http.StatusNoContent)
	}
}
