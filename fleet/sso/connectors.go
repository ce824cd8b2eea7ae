package sso

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/printable"
)

// Version of connector resources.
const Version = "v1"

const connectorPrefix = "connectors/oidc/"

// Defaults of a connector's spec.
var (
	DefaultScopes        = []string{"email", "profile"}
	DefaultUsernameClaim = "email"
)

// ErrNotFound is returned for a connector that does not exist. It also
// matches store.ErrNotFound.
var ErrNotFound error = &kindError{msg: "no such single sign-on connector", kind: store.ErrNotFound}

type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

// invalidError marks a connector that does not validate: the API answers
// it 400.
type invalidError struct{ err error }

func (e *invalidError) Error() string      { return e.err.Error() }
func (e *invalidError) Unwrap() error      { return e.err }
func (e *invalidError) InvalidInput() bool { return true }

var (
	claimRE = regexp.MustCompile(`^[!-~]{1,256}$`) // printable ASCII, no spaces: claims may be URLs
	traitRE = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)
	scopeRE = regexp.MustCompile(`^[!#-\[\]-~]{1,128}$`) // RFC 6749's scope-token
)

// Prompts a connector may send.
var prompts = []string{"", "none", "login", "consent", "select_account"}

// Validate checks a connector: kind "oidc", version "v1", a name as roles
// have, an issuer that is https (or http on a loopback address, for
// tests) with no query or fragment, a client ID, a redirect address whose
// path is api.PathSSOCallback, scopes, claim and trait names, at least one
// claims_to_roles rule naming valid roles, and a known prompt. The client
// secret is checked by Connectors.Put, which may keep a stored one.
func Validate(c api.OIDCConnector) error {
	if err := validate(c); err != nil {
		return &invalidError{fmt.Errorf("sso: connector %q: %w", c.Metadata.Name, err)}
	}
	return nil
}

func validate(c api.OIDCConnector) error {
	s := c.Spec
	switch {
	case c.Kind != api.ConnectorKindOIDC:
		return fmt.Errorf("kind is %q, want %q", c.Kind, api.ConnectorKindOIDC)
	case c.Version != Version:
		return fmt.Errorf("version is %q, want %q", c.Version, Version)
	}
	if err := rbac.CheckName(c.Metadata.Name); err != nil {
		return err
	}
	if err := checkIssuer(s.IssuerURL); err != nil {
		return fmt.Errorf("issuer_url: %w", err)
	}
	if s.ClientID == "" || printable.Check(s.ClientID, 255) != nil {
		return errors.New("client_id must be 1 to 255 printable characters (the client ID the provider gave the fleet)")
	}
	if len(s.ClientSecret) > 1024 {
		return errors.New("client_secret is longer than 1024 bytes")
	}
	if s.RedirectURL != "" {
		if err := checkRedirect(s.RedirectURL); err != nil {
			return fmt.Errorf("redirect_url: %w", err)
		}
	}
	for _, sc := range s.Scopes {
		if !scopeRE.MatchString(sc) {
			return fmt.Errorf("scopes: %q is not a scope (printable characters without spaces, quotes or backslashes)", sc)
		}
	}
	if s.UsernameClaim != "" && !claimRE.MatchString(s.UsernameClaim) {
		return fmt.Errorf("username_claim %q must be 1 to 256 printable characters without spaces", s.UsernameClaim)
	}
	for trait, claim := range s.ClaimsToTraits {
		if !traitRE.MatchString(trait) {
			return fmt.Errorf("claims_to_traits: trait %q must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '.', '-' (roles read it as {{external.%s}})", trait, trait)
		}
		if !claimRE.MatchString(claim) {
			return fmt.Errorf("claims_to_traits[%q]: claim %q must be 1 to 256 printable characters without spaces", trait, claim)
		}
	}
	if len(s.ClaimsToRoles) == 0 {
		return errors.New("claims_to_roles is empty: no user could log in; add a rule such as {claim: groups, value: fleet-admins, roles: [admin]}")
	}
	for i, m := range s.ClaimsToRoles {
		where := fmt.Sprintf("claims_to_roles[%d]", i)
		switch {
		case !claimRE.MatchString(m.Claim):
			return fmt.Errorf("%s: claim %q must be 1 to 256 printable characters without spaces", where, m.Claim)
		case m.Value == "" || printable.Check(m.Value, 512) != nil:
			return fmt.Errorf("%s: value must be 1 to 512 printable characters ('*' matches any run of them)", where)
		case len(m.Roles) == 0:
			return fmt.Errorf("%s: no roles", where)
		}
		for _, r := range m.Roles {
			if err := rbac.CheckName(r); err != nil {
				return fmt.Errorf("%s: role %w", where, err)
			}
		}
	}
	if printable.Check(s.Display, 64) != nil {
		return errors.New("display must be at most 64 printable characters")
	}
	if !slices.Contains(prompts, s.Prompt) {
		return fmt.Errorf("prompt %q is not one of none, login, consent, select_account", s.Prompt)
	}
	return nil
}

// checkIssuer accepts https URLs, and http ones on loopback addresses.
func checkIssuer(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.Opaque != "" {
		return fmt.Errorf("%q is not an absolute URL like https://login.example.com", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%q must have no query, fragment or user", raw)
	}
	return checkScheme(u)
}

// checkRedirect accepts the fleet's own redirect addresses.
func checkRedirect(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || u.Opaque != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return fmt.Errorf("%q is not an address like https://fleet.example.com%s", raw, api.PathSSOCallback)
	}
	if u.Path != api.PathSSOCallback {
		return fmt.Errorf("%q: the path must be %s, where the fleet takes the provider's answers", raw, api.PathSSOCallback)
	}
	return checkScheme(u)
}

func checkScheme(u *url.URL) error {
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if isLoopback(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("%q: use https (plain http only on a loopback address, for tests)", u.String())
	}
	return fmt.Errorf("%q: the scheme must be https", u.String())
}

// isLoopback reports whether host is localhost or a loopback IP.
func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Decode reads a connector document in JSON, refusing unknown fields and
// trailing data, and validates it (the secret may be left out). Missing
// kind and version default to "oidc" and "v1".
func Decode(data []byte) (api.OIDCConnector, error) {
	var c api.OIDCConnector
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return c, &invalidError{fmt.Errorf("sso: decode connector: %w", err)}
	}
	if dec.More() {
		return c, &invalidError{errors.New("sso: decode connector: more than one document")}
	}
	if c.Kind == "" {
		c.Kind = api.ConnectorKindOIDC
	}
	if c.Version == "" {
		c.Version = Version
	}
	return c, Validate(c)
}

// Connectors stores connectors as JSON under "connectors/oidc/NAME", with
// their client secrets.
type Connectors struct {
	Store store.Store
}

// Put validates c and creates or replaces it. A c without a client secret
// keeps the stored connector's; a new connector needs one. It reports
// whether the connector is new.
func (cs *Connectors) Put(ctx context.Context, c api.OIDCConnector) (created bool, err error) {
	c.Spec.HasSecret = false
	if err := Validate(c); err != nil {
		return false, err
	}
	name := c.Metadata.Name
	old, err := cs.Get(ctx, name)
	switch {
	case errors.Is(err, ErrNotFound):
		created = true
		if c.Spec.ClientSecret == "" {
			return false, &invalidError{fmt.Errorf("sso: connector %q: client_secret is required for a new connector (the provider gives it with the client ID)", name)}
		}
	case err != nil:
		return false, err
	case c.Spec.ClientSecret == "":
		c.Spec.ClientSecret = old.Spec.ClientSecret
	}
	b, err := json.Marshal(c)
	if err != nil {
		return false, fmt.Errorf("sso: put connector %q: %w", name, err)
	}
	if err := cs.Store.Put(ctx, connectorPrefix+name, b); err != nil {
		return false, fmt.Errorf("sso: put connector %q: %w", name, err)
	}
	return created, nil
}

// Get returns the connector called name, secret included, or an error
// matching ErrNotFound.
func (cs *Connectors) Get(ctx context.Context, name string) (api.OIDCConnector, error) {
	var c api.OIDCConnector
	if rbac.CheckName(name) != nil {
		return c, fmt.Errorf("sso: connector %q: %w", name, ErrNotFound)
	}
	b, err := cs.Store.Get(ctx, connectorPrefix+name)
	if errors.Is(err, store.ErrNotFound) {
		return c, fmt.Errorf("sso: connector %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return c, fmt.Errorf("sso: get connector %q: %w", name, err)
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return c, fmt.Errorf("sso: get connector %q: decode: %w", name, err)
	}
	return c, nil
}

// List returns every connector, sorted by name, without their secrets
// (Public).
func (cs *Connectors) List(ctx context.Context) ([]api.OIDCConnector, error) {
	items, err := cs.Store.List(ctx, connectorPrefix)
	if err != nil {
		return nil, fmt.Errorf("sso: list connectors: %w", err)
	}
	out := make([]api.OIDCConnector, 0, len(items))
	for _, it := range items {
		var c api.OIDCConnector
		if err := json.Unmarshal(it.Value, &c); err != nil {
			return nil, fmt.Errorf("sso: list connectors: decode %q: %w", it.Key, err)
		}
		out = append(out, Public(c))
	}
	return out, nil
}

// Delete removes the connector called name, or returns an error matching
// ErrNotFound. Its users stay (fleetctl users rm removes them); they can
// no longer log in.
func (cs *Connectors) Delete(ctx context.Context, name string) error {
	if rbac.CheckName(name) != nil {
		return fmt.Errorf("sso: delete connector %q: %w", name, ErrNotFound)
	}
	err := cs.Store.Delete(ctx, connectorPrefix+name)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("sso: delete connector %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("sso: delete connector %q: %w", name, err)
	}
	return nil
}

// Public returns c as admins may see it: without the client secret, with
// HasSecret saying whether one is stored.
func Public(c api.OIDCConnector) api.OIDCConnector {
	c.Spec.HasSecret = c.Spec.ClientSecret != ""
	c.Spec.ClientSecret = ""
	return c
}

// Display is the text of c's login button: its display, else its name.
func Display(c api.OIDCConnector) string {
	if d := strings.TrimSpace(c.Spec.Display); d != "" {
		return d
	}
	return c.Metadata.Name
}
