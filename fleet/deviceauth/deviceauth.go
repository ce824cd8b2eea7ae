// Package deviceauth is headless login: the OAuth 2.0 device authorization
// grant (RFC 8628), implemented by the fleet itself so that it works with
// every identity provider, and with local users once the browser login
// plugs in.
//
// tsh login --headless POSTs its keys to the device authorization endpoint
// (api.PathDeviceAuthorize) and gets a device code (its secret), a short
// user code and the verification address (api.PathDeviceVerify). The user
// opens that address in any browser, logs in to the fleet there, checks
// that the page shows the code their terminal shows and which machine asks,
// and approves (or denies). Meanwhile tsh polls the token endpoint
// (api.PathDeviceToken) at the interval the fleet set; once approved, it
// gets a login ticket (fleet/ticket) for the approving user, which it
// redeems for certificates with the verifier only it holds.
//
// Grants live in the store ("deviceauth/grants/HASH", HASH the SHA-256 of
// the device code; "deviceauth/codes/USERCODE" points to it), so every
// replica serves every step. A grant lasts CodeTTL (10 minutes); polling
// faster than the interval is answered slow_down and the interval grows by
// 5 s, as the RFC says.
//
// Who is logged in in the browser comes from the Browser hook (the fleet's
// browser login). Without one, the verification page offers the single
// sign-on connectors: logging in through one of them, for this approval
// only, is what "logged in to the fleet" means then. The approval itself
// is a POST from the fleet's own page (origin checked) carrying a token
// bound, by an HttpOnly cookie, to the browser that saw the page.
//
// Only fleet/... server packages import deviceauth.
package deviceauth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/big"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/sso"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/ticket"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/printable"
)

// Defaults of Config.
const (
	DefaultCodeTTL     = 10 * time.Minute
	DefaultInterval    = 5 * time.Second
	DefaultApprovalTTL = 5 * time.Minute
	// MaxTTL bounds the certificate lifetime a request may ask for (roles
	// cap it further).
	MaxTTL = 365 * 24 * time.Hour
)

// Kind is the kind of the single sign-on logins that approve headless
// logins (sso.Service.Handle).
const Kind = "headless"

const (
	grantPrefix    = "deviceauth/grants/"
	codePrefix     = "deviceauth/codes/"
	approvalPrefix = "deviceauth/approvals/"
)

// Cookies of the verification page: the approval's tie to its browser,
// and the CSRF token of the code form.
const (
	approvalCookie = "__Host-fleet_approval"
	csrfCookie     = "__Host-fleet_device_csrf"
)

// Browser says who is logged in to the fleet in a browser (the fleet's
// browser login).
type Browser interface {
	// User returns the user logged in in r's browser, and how they logged
	// in (for the audit log: "web", "sso:NAME").
	User(r *http.Request) (user, method string, ok bool)
	// LoginURL is where to send a browser to log in and come back to next
	// (a path on the fleet).
	LoginURL(next string) string
}

// SSO is the single sign-on the page offers when no Browser login is
// there (*sso.Service).
type SSO interface {
	Public(ctx context.Context) ([]api.SSOConnector, error)
	StartBrowser(w http.ResponseWriter, r *http.Request, req sso.StartRequest) error
	Handle(kind string, f sso.Finisher)
	Origins(ctx context.Context) []string
}

// Users looks users up (*users.Service).
type Users interface {
	Get(ctx context.Context, name string) (api.User, error)
}

// Recorder records an audit event.
type Recorder interface {
	Record(ctx context.Context, e *proto.AuditEvent) error
}

// Config configures a Server. Store, Tickets, Users and PublicURL are
// required, and Browser or SSO (or both).
type Config struct {
	Store   store.Store
	Tickets *ticket.Service
	Users   Users
	// PublicURL is the fleet's address for browsers, https://HOST[:PORT]:
	// the verification address is under it, and POSTs must come from it.
	PublicURL string
	Browser   Browser
	SSO       SSO
	// Limit rate-limits device authorization requests per source: it
	// returns false and how long to wait when r must wait. Nil: no limit.
	Limit func(r *http.Request) (wait time.Duration, ok bool)
	// CodeTTL is how long a headless login may take; default 10m.
	CodeTTL time.Duration
	// Interval is the polling interval given to clients; default 5s.
	Interval time.Duration
	// Refuse, when set, is asked before a user approves a headless login:
	// an error (a lock, fleet/locks) refuses the approval with its
	// message, recorded with the error's AuditFields() when it has them.
	Refuse func(u api.User) error
	// Audit records approvals and denials; nil records nothing.
	Audit Recorder
	// Cluster names the fleet, on pages and in audit events.
	Cluster string
	// Logger receives operational logs; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Server serves the device flow. Create it with New.
type Server struct {
	cfg Config
	log *slog.Logger
}

// New returns a Server for cfg, and registers its single sign-on finisher
// with cfg.SSO.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.CodeTTL <= 0 {
		cfg.CodeTTL = DefaultCodeTTL
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	cfg.PublicURL = strings.TrimSuffix(cfg.PublicURL, "/")
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "deviceauth")}
	if cfg.SSO != nil {
		cfg.SSO.Handle(Kind, s.finishSSO)
	}
	return s
}

// Register adds the device flow's endpoints and pages to mux.
func (s *Server) Register(mux *http.ServeMux) {
	mux.HandleFunc("POST "+api.PathDeviceAuthorize, s.authorize)
	mux.HandleFunc("POST "+api.PathDeviceToken, s.token)
	mux.HandleFunc("GET "+api.PathDeviceVerify, s.verifyPage)
	mux.HandleFunc("POST "+api.PathDeviceVerify+"/login", s.startLogin)
	mux.HandleFunc("POST "+api.PathDeviceVerify+"/decide", s.decide)
}

// Grant states.
const (
	statePending  = "pending"
	stateApproved = "approved"
	stateDenied   = "denied"
)

// grant is a headless login in progress.
type grant struct {
	UserCode     string        `json:"user_code"`
	CSR          []byte        `json:"csr"`
	SSHPublicKey string        `json:"ssh_public_key"`
	TTL          time.Duration `json:"ttl,omitempty"`
	Challenge    string        `json:"challenge"`
	Host         string        `json:"host,omitempty"`
	ClientAddr   string        `json:"client_addr"`
	Created      time.Time     `json:"created"`
	Expires      time.Time     `json:"expires"`
	Interval     time.Duration `json:"interval"`
	LastPoll     time.Time     `json:"last_poll,omitzero"`
	State        string        `json:"state"`
	// User approved or denied it, having logged in by Method.
	User   string `json:"user,omitempty"`
	Method string `json:"method,omitempty"`
}

// Request is a parsed device authorization request.
type Request struct {
	CSR          []byte
	SSHPublicKey string
	TTL          time.Duration
	Challenge    string
	Host         string
}

// ParseRequest checks a device authorization request's form: client_id
// "tsh", the keys (an SSH public key, a CSR whose signature verifies), a
// lifetime in seconds, the verifier's challenge and the asking machine's
// name. It never panics on any input.
func ParseRequest(form url.Values) (*Request, error) {
	if form.Get("client_id") != api.DeviceClientID {
		return nil, fmt.Errorf("client_id must be %q", api.DeviceClientID)
	}
	req := &Request{Challenge: form.Get(api.DeviceFieldChallenge), Host: form.Get(api.DeviceFieldHost)}
	key, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(form.Get(api.DeviceFieldSSHKey)))
	if err != nil || len(strings.TrimSpace(string(rest))) > 0 {
		return nil, fmt.Errorf("%s is not one SSH public key in authorized_keys format", api.DeviceFieldSSHKey)
	}
	if _, ok := key.(*ssh.Certificate); ok {
		return nil, fmt.Errorf("%s is a certificate, not a key", api.DeviceFieldSSHKey)
	}
	req.SSHPublicKey = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
	req.CSR, err = base64.RawURLEncoding.DecodeString(form.Get(api.DeviceFieldCSR))
	if err != nil || len(req.CSR) == 0 || len(req.CSR) > 8192 {
		return nil, fmt.Errorf("%s must be a DER certificate request in base64url without padding", api.DeviceFieldCSR)
	}
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", api.DeviceFieldCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%s signature (proof of key possession): %v", api.DeviceFieldCSR, err)
	}
	if v := form.Get(api.DeviceFieldTTL); v != "" {
		secs, err := strconv.ParseInt(v, 10, 64)
		if err != nil || secs < 0 || secs > int64(MaxTTL/time.Second) {
			return nil, fmt.Errorf("%s must be a number of seconds up to a year", api.DeviceFieldTTL)
		}
		req.TTL = time.Duration(secs) * time.Second
	}
	if err := ticket.CheckChallenge(req.Challenge); err != nil {
		return nil, err
	}
	if printable.Check(req.Host, 64) != nil {
		return nil, fmt.Errorf("%s must be at most 64 printable characters", api.DeviceFieldHost)
	}
	return req, nil
}

// User codes: 8 characters of an alphabet without vowels (no words) and
// without characters people confuse, shown as XXXX-XXXX: about 2^34.6.
const userCodeAlphabet = "BCDFGHJKLMNPQRSTVWXZ"

func newUserCode() string {
	var b strings.Builder
	for i := range 8 {
		if i == 4 {
			b.WriteByte('-')
		}
		n, _ := rand.Int(rand.Reader, big.NewInt(int64(len(userCodeAlphabet))))
		b.WriteByte(userCodeAlphabet[n.Int64()])
	}
	return b.String()
}

// NormalizeUserCode returns the user code s as the fleet writes it
// (XXXX-XXXX), accepting lower case, spaces and dashes anywhere; ok is
// false when s is not one.
func NormalizeUserCode(s string) (string, bool) {
	if len(s) > 32 {
		return "", false
	}
	var b strings.Builder
	for _, r := range strings.ToUpper(s) {
		switch {
		case r == '-' || r == ' ':
			continue
		case r < 128 && strings.IndexByte(userCodeAlphabet, byte(r)) >= 0:
			if b.Len() == 4 {
				b.WriteByte('-')
			}
			b.WriteRune(r)
		default:
			return "", false
		}
	}
	if b.Len() != 9 {
		return "", false
	}
	return b.String(), true
}

func hashHex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// oauthError answers an RFC 6749 error.
func oauthError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(v)
}

// parseForm reads a bounded form body.
func parseForm(w http.ResponseWriter, r *http.Request) error {
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	return r.ParseForm()
}

// authorize answers RFC 8628's device authorization request.
func (s *Server) authorize(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Limit != nil {
		if wait, ok := s.cfg.Limit(r); !ok {
			w.Header().Set("Retry-After", strconv.Itoa(max(1, int(wait.Seconds()+0.999))))
			oauthError(w, http.StatusTooManyRequests, "slow_down", fmt.Sprintf("too many logins from your address; try again in %s", wait.Round(time.Second)))
			return
		}
	}
	if err := parseForm(w, r); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request", "bad form: "+err.Error())
		return
	}
	req, err := ParseRequest(r.PostForm)
	if err != nil {
		code := "invalid_request"
		if r.PostForm.Get("client_id") != api.DeviceClientID {
			code = "invalid_client"
		}
		oauthError(w, http.StatusBadRequest, code, err.Error())
		return
	}
	now := s.cfg.Now().UTC()
	g := grant{
		CSR: req.CSR, SSHPublicKey: req.SSHPublicKey, TTL: req.TTL, Challenge: req.Challenge, Host: req.Host,
		ClientAddr: r.RemoteAddr, Created: now, Expires: now.Add(s.cfg.CodeTTL), Interval: s.cfg.Interval, State: statePending,
	}
	deviceCode := "dc_" + rand.Text() + rand.Text()
	ctx := r.Context()
	for range 8 { // a user code collision is rare; pick another
		g.UserCode = newUserCode()
		err = s.cfg.Store.Create(ctx, codePrefix+g.UserCode, []byte(hashHex(deviceCode)))
		if !errors.Is(err, store.ErrExists) {
			break
		}
	}
	if err != nil {
		s.log.Error("device authorization", "err", err)
		oauthError(w, http.StatusInternalServerError, "server_error", "the fleet could not store the login; try again")
		return
	}
	b, _ := json.Marshal(g)
	if err := s.cfg.Store.Create(ctx, grantPrefix+hashHex(deviceCode), b); err != nil {
		s.cfg.Store.Delete(ctx, codePrefix+g.UserCode)
		s.log.Error("device authorization", "err", err)
		oauthError(w, http.StatusInternalServerError, "server_error", "the fleet could not store the login; try again")
		return
	}
	verify := s.cfg.PublicURL + api.PathDeviceVerify
	s.log.Info("headless login started", "user_code", g.UserCode, "client", r.RemoteAddr, "host", req.Host)
	writeJSON(w, map[string]any{
		"device_code":               deviceCode,
		"user_code":                 g.UserCode,
		"verification_uri":          verify,
		"verification_uri_complete": verify + "?user_code=" + url.QueryEscape(g.UserCode),
		"expires_in":                int(s.cfg.CodeTTL / time.Second),
		"interval":                  int(s.cfg.Interval / time.Second),
	})
}

// errNoGrant is a grant that is not there (never was, used, pruned).
var errNoGrant = errors.New("deviceauth: no such grant")

// loadGrant reads the grant stored at key, with its raw bytes for a
// compare-and-swap.
func (s *Server) loadGrant(ctx context.Context, key string) (grant, []byte, error) {
	var g grant
	b, err := s.cfg.Store.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return g, nil, errNoGrant
	}
	if err != nil {
		return g, nil, err
	}
	if err := json.Unmarshal(b, &g); err != nil {
		return g, nil, fmt.Errorf("deviceauth: decode grant: %w", err)
	}
	return g, b, nil
}

// remove deletes a grant and its user code.
func (s *Server) remove(ctx context.Context, key string, g grant) {
	s.cfg.Store.Delete(ctx, key)
	s.cfg.Store.Delete(ctx, codePrefix+g.UserCode)
}

// token answers the token endpoint's device_code grant.
func (s *Server) token(w http.ResponseWriter, r *http.Request) {
	if err := parseForm(w, r); err != nil {
		oauthError(w, http.StatusBadRequest, "invalid_request", "bad form: "+err.Error())
		return
	}
	f := r.PostForm
	switch {
	case f.Get("grant_type") != api.DeviceCodeGrant:
		oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "this endpoint takes only the grant type "+api.DeviceCodeGrant)
		return
	case f.Get("client_id") != api.DeviceClientID:
		oauthError(w, http.StatusUnauthorized, "invalid_client", fmt.Sprintf("client_id must be %q", api.DeviceClientID))
		return
	}
	code := f.Get("device_code")
	if code == "" || len(code) > 256 {
		oauthError(w, http.StatusBadRequest, "invalid_grant", "no device_code")
		return
	}
	ctx := r.Context()
	key := grantPrefix + hashHex(code)
	for range 8 {
		g, raw, err := s.loadGrant(ctx, key)
		if errors.Is(err, errNoGrant) {
			oauthError(w, http.StatusBadRequest, "expired_token", "this headless login is over (expired, or already used); run tsh login --headless again")
			return
		}
		if err != nil {
			s.log.Error("device token", "err", err)
			oauthError(w, http.StatusInternalServerError, "server_error", "the fleet could not read the login; try again")
			return
		}
		now := s.cfg.Now()
		if !now.Before(g.Expires) {
			s.remove(ctx, key, g)
			oauthError(w, http.StatusBadRequest, "expired_token", fmt.Sprintf("nobody approved this headless login within %s; run tsh login --headless again", s.cfg.CodeTTL))
			return
		}
		switch g.State {
		case stateDenied:
			s.remove(ctx, key, g)
			oauthError(w, http.StatusBadRequest, "access_denied", fmt.Sprintf("%s denied this headless login in the browser", g.User))
			return
		case stateApproved:
			if err := s.cfg.Store.Delete(ctx, key); errors.Is(err, store.ErrNotFound) {
				continue // another poll took it
			} else if err != nil {
				oauthError(w, http.StatusInternalServerError, "server_error", "the fleet could not read the login; try again")
				return
			}
			s.cfg.Store.Delete(ctx, codePrefix+g.UserCode)
			secret, err := s.cfg.Tickets.Issue(ctx, ticket.Ticket{User: g.User, Method: "headless", Connector: strings.TrimPrefix(g.Method, "sso:"),
				CSR: g.CSR, SSHPublicKey: g.SSHPublicKey, TTL: g.TTL, Challenge: g.Challenge})
			if err != nil {
				s.log.Error("device token: issue ticket", "err", err)
				oauthError(w, http.StatusInternalServerError, "server_error", "the fleet could not issue the login's ticket; run tsh login --headless again")
				return
			}
			ttl := s.cfg.Tickets.TTL
			if ttl <= 0 {
				ttl = ticket.DefaultTTL
			}
			writeJSON(w, map[string]any{"access_token": secret, "token_type": "fleet_ticket", "expires_in": int(ttl / time.Second)})
			return
		}
		// Pending: the client polls; too fast is slow_down, and the
		// interval grows by 5 s (RFC 8628 3.5).
		next := g
		next.LastPoll = now
		tooFast := !g.LastPoll.IsZero() && now.Sub(g.LastPoll) < g.Interval
		if tooFast {
			next.Interval += 5 * time.Second
		}
		b, _ := json.Marshal(next)
		if err := s.cfg.Store.CompareAndSwap(ctx, key, raw, b); errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrNotFound) {
			continue
		} else if err != nil {
			oauthError(w, http.StatusInternalServerError, "server_error", "the fleet could not read the login; try again")
			return
		}
		if tooFast {
			oauthError(w, http.StatusBadRequest, "slow_down", fmt.Sprintf("poll every %s", next.Interval))
			return
		}
		oauthError(w, http.StatusBadRequest, "authorization_pending", "waiting for the user to approve in a browser")
		return
	}
	oauthError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "the login changed under too many polls; poll again")
}

// grantByCode finds the grant of a user code.
func (s *Server) grantByCode(ctx context.Context, userCode string) (key string, g grant, raw []byte, err error) {
	h, err := s.cfg.Store.Get(ctx, codePrefix+userCode)
	if errors.Is(err, store.ErrNotFound) {
		return "", g, nil, errNoGrant
	}
	if err != nil {
		return "", g, nil, err
	}
	key = grantPrefix + string(h)
	g, raw, err = s.loadGrant(ctx, key)
	return key, g, raw, err
}

// decideGrant approves or denies the pending grant of userCode as user.
func (s *Server) decideGrant(ctx context.Context, userCode, user, method string, approve bool) (grant, error) {
	for range 8 {
		key, g, raw, err := s.grantByCode(ctx, userCode)
		if err != nil {
			return g, err
		}
		if g.State != statePending || !s.cfg.Now().Before(g.Expires) {
			return g, errNoGrant
		}
		g.User, g.Method, g.State = user, method, stateDenied
		if approve {
			g.State = stateApproved
		}
		b, _ := json.Marshal(g)
		err = s.cfg.Store.CompareAndSwap(ctx, key, raw, b)
		if errors.Is(err, store.ErrConflict) {
			continue // a poll changed it meanwhile
		}
		if errors.Is(err, store.ErrNotFound) {
			return g, errNoGrant
		}
		return g, err
	}
	return grant{}, errors.New("deviceauth: the login changed too often; try again")
}

// Prune deletes grants, user codes and approvals that expired, writing
// through st (the elected leader's fenced store, fleet/leader); it returns
// how many keys it deleted.
func (s *Server) Prune(ctx context.Context, st store.Store) (int, error) {
	n, now := 0, s.cfg.Now()
	del := func(k string) error {
		if err := st.Delete(ctx, k); err == nil {
			n++
		} else if !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("deviceauth: prune: %w", err)
		}
		return nil
	}
	items, err := st.List(ctx, grantPrefix)
	if err != nil {
		return 0, fmt.Errorf("deviceauth: prune: %w", err)
	}
	live := map[string]bool{}
	for _, it := range items {
		var g grant
		if json.Unmarshal(it.Value, &g) == nil && now.Before(g.Expires) {
			live[strings.TrimPrefix(it.Key, grantPrefix)] = true
			continue
		}
		if err := del(it.Key); err != nil {
			return n, err
		}
	}
	codes, err := st.List(ctx, codePrefix)
	if err != nil {
		return n, fmt.Errorf("deviceauth: prune: %w", err)
	}
	for _, it := range codes {
		if !live[string(it.Value)] {
			if err := del(it.Key); err != nil {
				return n, err
			}
		}
	}
	approvals, err := st.List(ctx, approvalPrefix)
	if err != nil {
		return n, fmt.Errorf("deviceauth: prune: %w", err)
	}
	for _, it := range approvals {
		var a approval
		if json.Unmarshal(it.Value, &a) == nil && now.Before(a.Expires) {
			continue
		}
		if err := del(it.Key); err != nil {
			return n, err
		}
	}
	return n, nil
}

// refused records and shows the refusal (by Config.Refuse) of user u's
// approval of code, and reports whether there was one.
func (s *Server) refused(w http.ResponseWriter, r *http.Request, u api.User, code string) bool {
	if s.cfg.Refuse == nil {
		return false
	}
	err := s.cfg.Refuse(u)
	if err == nil {
		return false
	}
	f := map[string]string{"user_code": code, "method": "headless"}
	if af, ok := err.(interface{ AuditFields() map[string]string }); ok {
		maps.Copy(f, af.AuditFields())
	}
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventHeadlessDenied, Outcome: proto.OutcomeDenied, User: u.Name, Addr: r.RemoteAddr,
		Message: err.Error(), Fields: f})
	s.message(w, http.StatusForbidden, "Not approved", "You cannot approve logins: "+err.Error(), "")
	return true
}

func (s *Server) record(ctx context.Context, e *proto.AuditEvent) error {
	if s.cfg.Audit == nil {
		return nil
	}
	if e.Cluster == "" {
		e.Cluster = s.cfg.Cluster
	}
	return s.cfg.Audit.Record(ctx, e)
}
