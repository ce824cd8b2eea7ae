package sso

import (
	"encoding/json"
	"strings"
	"testing"

	"remoteler.dev/edge/fleet/users"
)

// FuzzDecodeConnector feeds connector documents (the admin API's request
// bodies) to Decode: it must never panic, and what it accepts validates.
func FuzzDecodeConnector(f *testing.F) {
	f.Add([]byte(`{"metadata":{"name":"okta"},"spec":{"issuer_url":"https://example.okta.com","client_id":"x","client_secret":"s","claims_to_roles":[{"claim":"groups","value":"a*","roles":["admin"]}]}}`))
	f.Add([]byte(`{"kind":"oidc","version":"v1","metadata":{"name":"k"},"spec":{"issuer_url":"http://127.0.0.1:1/realms/x","client_id":"x","scopes":["groups"],"claims_to_traits":{"logins":"unix"},"claims_to_roles":[{"claim":"email","value":"*@x.io","roles":["access"]}],"prompt":"login"}}`))
	f.Add([]byte(`{"spec":{"issuer_url":"https://[::1]:99"}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Decode(data)
		if err != nil {
			return
		}
		if err := Validate(c); err != nil {
			t.Fatalf("Decode accepted what Validate refuses: %v", err)
		}
	})
}

// FuzzMapClaims feeds claim sets (an ID token's and a userinfo answer's
// JSON, which the provider controls) to MapClaims: it must never panic,
// and what it accepts names a valid user with roles and external traits
// only.
func FuzzMapClaims(f *testing.F) {
	f.Add([]byte(`{"email":"Carol@Example.com","groups":["fleet-admins","ops"],"unix_login":"carol"}`))
	f.Add([]byte(`{"email":"a@x.io","email_verified":false,"groups":"ops"}`))
	f.Add([]byte(`{"email":["a"],"groups":[1,true,null,{"x":1}],"department":"\u001b]52;c;x\u0007"}`))
	conn := connector("c", "https://idp.example.com", "fleet")
	conn.Spec.ClaimsToRoles = append(conn.Spec.ClaimsToRoles, conn.Spec.ClaimsToRoles[0])
	conn.Spec.ClaimsToRoles[3].Claim, conn.Spec.ClaimsToRoles[3].Value = "department", "*ops*"
	f.Fuzz(func(t *testing.T, data []byte) {
		claims := map[string]any{}
		if json.Unmarshal(data, &claims) != nil {
			return
		}
		id, err := MapClaims(conn, claims)
		if err != nil {
			return
		}
		if users.CheckSSOName(id.User) != nil || len(id.Roles) == 0 {
			t.Fatalf("accepted %+v", id)
		}
		for k, vals := range id.Traits {
			if !strings.HasPrefix(k, "external.") || len(vals) == 0 || len(vals) > maxClaimValues {
				t.Fatalf("trait %q = %d values", k, len(vals))
			}
		}
	})
}

// FuzzGlob checks Glob against a plain rule on any input: a pattern
// without '*' matches only itself, and "*"+s+"*" matches whatever holds s.
func FuzzGlob(f *testing.F) {
	f.Add("fleet-*", "fleet-admins")
	f.Add("*@example.com", "a@example.com")
	f.Fuzz(func(t *testing.T, p, s string) {
		got := Glob(p, s)
		if !strings.Contains(p, "*") && got != (p == s) {
			t.Fatalf("Glob(%q, %q) = %v without a star", p, s, got)
		}
		if !strings.Contains(p, "*") && !Glob("*"+p+"*", s) && strings.Contains(s, p) {
			t.Fatalf("Glob(*%q*, %q) is false", p, s)
		}
	})
}
