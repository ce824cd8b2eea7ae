package sso

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/printable"
)

// Bounds on what claims become: a provider (or a user who can set their own
// profile fields there) must not be able to blow up a user record.
const (
	maxClaimValues = 1000 // values taken from one claim
	maxValueBytes  = 512  // a longer value is dropped
)

// Identity is who a login through a connector found, mapped to the fleet.
type Identity struct {
	// Connector is the connector's name; Issuer and Subject the provider
	// and the user's ID there (iss and sub).
	Connector, Issuer, Subject string
	// User is the fleet user name, from the connector's username claim.
	User string
	// Roles are what claims_to_roles gave, in the order of the rules.
	Roles []string
	// Traits are the user's claims as traits, keys under
	// rbac.ExternalPrefix: role templates read them as {{external.NAME}}.
	Traits map[string][]string
}

// AuditFields names who the provider vouched for, for the login's audit
// event: the connector, the issuer and the subject.
func (id *Identity) AuditFields() map[string]string {
	return map[string]string{"connector": id.Connector, "issuer": id.Issuer, "subject": id.Subject}
}

// claimValues returns a claim's values as strings: a string is one value,
// a list gives its strings, numbers and booleans; objects and nulls give
// nothing. Values that are empty, too long or not printable are dropped,
// and at most maxClaimValues are kept.
func claimValues(claims map[string]any, name string) []string {
	var out []string
	add := func(v any) {
		var s string
		switch x := v.(type) {
		case string:
			s = x
		case bool:
			s = strconv.FormatBool(x)
		case float64:
			s = strconv.FormatFloat(x, 'f', -1, 64)
		default:
			return
		}
		if s == "" || printable.Check(s, maxValueBytes) != nil || len(out) >= maxClaimValues {
			return
		}
		out = append(out, s)
	}
	switch v := claims[name].(type) {
	case []any:
		for _, e := range v {
			add(e)
		}
	default:
		add(v)
	}
	return out
}

// Refusal reasons, in Refusal.Reason and the audit event's "reason" field.
const (
	ReasonConnector       = "connector"        // unknown or removed connector
	ReasonProvider        = "provider"         // the provider could not be reached, or answered an error
	ReasonState           = "state"            // unknown, used (replayed) or stale state
	ReasonBrowser         = "browser"          // the callback came to another browser than the one that started
	ReasonExchange        = "code_exchange"    // the provider refused the code
	ReasonNoIDToken       = "no_id_token"      // the token answer has no ID token
	ReasonSignature       = "signature"        // the ID token's signature does not verify
	ReasonExpired         = "expired"          // the ID token expired
	ReasonAudience        = "audience"         // the ID token is for another client
	ReasonIssuer          = "issuer"           // the ID token is from another issuer
	ReasonIDToken         = "id_token"         // another fault of the ID token
	ReasonNonce           = "nonce"            // the ID token's nonce is not the login's
	ReasonUserinfo        = "userinfo"         // the userinfo answer could not be had or is another user's
	ReasonUsername        = "username"         // no usable user name in the claims
	ReasonEmailUnverified = "email_unverified" // the user name is an email the provider has not verified
	ReasonNoRole          = "no_role"          // the claims map to no role
	ReasonNameTaken       = "name_taken"       // a local user, or another connector's, has the name
	ReasonLocked          = "lock"             // a lock shuts the user or one of their roles out (fleet/locks)
)

// Refusal is a login through a connector that the fleet refused. Its
// message says why in words the user can act on; Reason is one of the
// Reason constants, for the audit log.
type Refusal struct {
	Reason  string
	Message string
	// User is the fleet user name, when the refusal came after it was
	// known.
	User string
	// Fields add to the refusal's audit event (the lock that refused).
	Fields map[string]string
}

func (r *Refusal) Error() string { return r.Message }

func refuse(reason, format string, args ...any) *Refusal {
	return &Refusal{Reason: reason, Message: fmt.Sprintf(format, args...)}
}

// MapClaims maps a verified user's claims to a fleet identity with the
// connector's rules: the user name from username_claim (lower-cased; it
// must pass users.CheckSSOName), traits (email, groups and username
// always, claims_to_traits on top), and roles from claims_to_roles. It
// refuses a user whose email user name the provider says is not verified
// (unless the connector allows it) and a user no rule gives a role.
func MapClaims(c api.OIDCConnector, claims map[string]any) (*Identity, error) {
	s := c.Spec
	claim := s.UsernameClaim
	if claim == "" {
		claim = DefaultUsernameClaim
	}
	raw, _ := claims[claim].(string)
	if raw == "" {
		return nil, refuse(ReasonUsername, "the identity provider sent no %q claim to name you by; ask your fleet admin to set the connector's username_claim, or the provider to send it (scopes)", claim)
	}
	name := strings.ToLower(raw)
	if err := users.CheckSSOName(name); err != nil {
		return nil, refuse(ReasonUsername, "your %q claim %q cannot name a fleet user (1 to 128 characters of a-z, 0-9, '.', '_', '-', '@', '+'); ask your fleet admin to use another username_claim", claim, printable.Escape(raw))
	}
	if claim == "email" && (s.RequireEmailVerified == nil || *s.RequireEmailVerified) {
		if v, ok := claims["email_verified"].(bool); ok && !v {
			r := refuse(ReasonEmailUnverified, "the identity provider has not verified your email address %s, which would be your fleet user name; verify it there and log in again", name)
			r.User = name
			return nil, r
		}
	}
	id := &Identity{User: name, Traits: map[string][]string{}}
	set := func(trait string, vals []string) {
		if len(vals) > 0 {
			id.Traits[rbac.ExternalPrefix+trait] = vals
		}
	}
	set("username", []string{name})
	set("email", claimValues(claims, "email"))
	set("groups", claimValues(claims, "groups"))
	for _, trait := range sortedKeys(s.ClaimsToTraits) {
		set(trait, claimValues(claims, s.ClaimsToTraits[trait]))
	}
	for _, m := range s.ClaimsToRoles {
		if !slices.ContainsFunc(claimValues(claims, m.Claim), func(v string) bool { return Glob(m.Value, v) }) {
			continue
		}
		for _, r := range m.Roles {
			if !slices.Contains(id.Roles, r) {
				id.Roles = append(id.Roles, r)
			}
		}
	}
	if len(id.Roles) == 0 {
		r := refuse(ReasonNoRole, "your identity provider's claims give you no fleet role (%s); ask your fleet admin to add a claims_to_roles rule for you to connector %q",
			describeClaims(s.ClaimsToRoles, claims), c.Metadata.Name)
		r.User = name
		return nil, r
	}
	return id, nil
}

// describeClaims lists the values of the claims the rules look at, so a
// refused user (and the admin reading the audit log) sees what the rules
// saw: "groups: ops, eng".
func describeClaims(rules []api.ClaimMapping, claims map[string]any) string {
	var parts []string
	seen := map[string]bool{}
	for _, m := range rules {
		if seen[m.Claim] {
			continue
		}
		seen[m.Claim] = true
		vals := claimValues(claims, m.Claim)
		desc := "none"
		if len(vals) > 0 {
			if len(vals) > 10 {
				vals = append(vals[:10:10], fmt.Sprintf("and %d more", len(vals)-10))
			}
			desc = strings.Join(vals, ", ")
		}
		parts = append(parts, printable.Escape(m.Claim)+": "+printable.Escape(desc))
	}
	return strings.Join(parts, "; ")
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Glob reports whether s matches pattern, where '*' matches any run of
// characters (none included) and every other character itself. It runs in
// time linear in len(pattern)×len(s) at worst, with no backtracking blow-up.
func Glob(pattern, s string) bool {
	p, i := 0, 0
	star, mark := -1, 0
	for i < len(s) {
		switch {
		case p < len(pattern) && pattern[p] == '*':
			star, mark = p, i
			p++
		case p < len(pattern) && pattern[p] == s[i]:
			p++
			i++
		case star >= 0:
			p = star + 1
			mark++
			i = mark
		default:
			return false
		}
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}
