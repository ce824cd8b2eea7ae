package sso

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"remoteler.dev/edge/proto/api"
)

func TestGlob(t *testing.T) {
	tests := []struct {
		pattern, s string
		want       bool
	}{
		{"fleet-admins", "fleet-admins", true},
		{"fleet-admins", "fleet-admins2", false},
		{"fleet-admins", "Fleet-admins", false},
		{"*", "", true},
		{"*", "anything", true},
		{"*@example.com", "carol@example.com", true},
		{"*@example.com", "carol@example.com.evil.io", false},
		{"*@example.com", "carol@sub.example.com", false},
		{"*example.com", "carol@sub.example.com", true},
		{"/fleet/*", "/fleet/admins", true},
		{"a*b*c", "aXXbYYc", true},
		{"a*b*c", "aXXbYY", false},
		{"a**", "a", true},
		{"", "", true},
		{"", "x", false},
		{"x", "", false},
		{strings.Repeat("a*", 50) + "b", strings.Repeat("a", 200), false},
	}
	for _, tt := range tests {
		if got := Glob(tt.pattern, tt.s); got != tt.want {
			t.Errorf("Glob(%q, %q) = %v, want %v", tt.pattern, tt.s, got, tt.want)
		}
	}
}

func claimsOf(t *testing.T, j string) map[string]any {
	t.Helper()
	m := map[string]any{}
	if err := json.Unmarshal([]byte(j), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestMapClaims(t *testing.T) {
	no := false
	base := connector("c", "https://idp.example.com", "fleet")
	byUPN := base
	byUPN.Spec.UsernameClaim = "upn"
	lax := base
	lax.Spec.RequireEmailVerified = &no
	domain := base
	domain.Spec.ClaimsToRoles = []api.ClaimMapping{{Claim: "email", Value: "*@example.com", Roles: []string{"access"}}, {Claim: "admin", Value: "true", Roles: []string{"admin"}}}
	tests := []struct {
		name      string
		conn      api.OIDCConnector
		claims    string
		wantUser  string
		wantRoles []string
		reason    string
		traits    map[string][]string
	}{
		{name: "groups", conn: base, claims: `{"email":"Carol@Example.com","groups":["fleet-admins","ops"],"unix_login":"carol"}`,
			wantUser: "carol@example.com", wantRoles: []string{"admin", "access", "ops"},
			traits: map[string][]string{"external.email": {"Carol@Example.com"}, "external.groups": {"fleet-admins", "ops"}, "external.logins": {"carol"}}},
		{name: "a single group as a string", conn: base, claims: `{"email":"a@x.io","groups":"ops"}`, wantUser: "a@x.io", wantRoles: []string{"access", "ops"}},
		{name: "another username claim", conn: byUPN, claims: `{"upn":"Carol","groups":["ops"]}`, wantUser: "carol", wantRoles: []string{"access", "ops"}},
		{name: "email domain and a boolean claim", conn: domain, claims: `{"email":"z@example.com","admin":true}`, wantUser: "z@example.com", wantRoles: []string{"access", "admin"}},
		{name: "other domain", conn: domain, claims: `{"email":"z@example.org"}`, reason: ReasonNoRole},
		{name: "no username claim", conn: base, claims: `{"groups":["ops"]}`, reason: ReasonUsername},
		{name: "username not a string", conn: base, claims: `{"email":["a@x.io"],"groups":["ops"]}`, reason: ReasonUsername},
		{name: "username with a space", conn: byUPN, claims: `{"upn":"Carol Smith","groups":["ops"]}`, reason: ReasonUsername},
		{name: "username with a slash", conn: byUPN, claims: `{"upn":"a/../b","groups":["ops"]}`, reason: ReasonUsername},
		{name: "unverified email", conn: base, claims: `{"email":"a@x.io","email_verified":false,"groups":["ops"]}`, reason: ReasonEmailUnverified},
		{name: "unverified email allowed", conn: lax, claims: `{"email":"a@x.io","email_verified":false,"groups":["ops"]}`, wantUser: "a@x.io", wantRoles: []string{"access", "ops"}},
		{name: "no email_verified claim", conn: base, claims: `{"email":"a@x.io","groups":["ops"]}`, wantUser: "a@x.io", wantRoles: []string{"access", "ops"}},
		{name: "no group matches", conn: base, claims: `{"email":"a@x.io","groups":["visitors"]}`, reason: ReasonNoRole},
		{name: "groups object ignored", conn: base, claims: `{"email":"a@x.io","groups":{"fleet-admins":true}}`, reason: ReasonNoRole},
		{name: "control characters dropped", conn: base, claims: `{"email":"a@x.io","groups":["ops\u001b[31m","ops"]}`, wantUser: "a@x.io", wantRoles: []string{"access", "ops"},
			traits: map[string][]string{"external.groups": {"ops"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := MapClaims(tt.conn, claimsOf(t, tt.claims))
			if tt.reason != "" {
				var ref *Refusal
				if !errors.As(err, &ref) || ref.Reason != tt.reason {
					t.Fatalf("MapClaims = %+v, %v; want refusal %q", id, err, tt.reason)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id.User != tt.wantUser || !slices.Equal(id.Roles, tt.wantRoles) {
				t.Errorf("user %q roles %q, want %q %q", id.User, id.Roles, tt.wantUser, tt.wantRoles)
			}
			for k, v := range tt.traits {
				if !slices.Equal(id.Traits[k], v) {
					t.Errorf("trait %s = %q, want %q", k, id.Traits[k], v)
				}
			}
			for k := range id.Traits {
				if !strings.HasPrefix(k, "external.") {
					t.Errorf("trait %q is not external", k)
				}
			}
		})
	}
}

func TestClaimValuesAreBounded(t *testing.T) {
	many := make([]any, 5000)
	for i := range many {
		many[i] = "g"
	}
	long := strings.Repeat("x", maxValueBytes+1)
	got := claimValues(map[string]any{"groups": append(many, long)}, "groups")
	if len(got) != maxClaimValues {
		t.Errorf("%d values kept, want %d", len(got), maxClaimValues)
	}
	if vals := claimValues(map[string]any{"g": long}, "g"); len(vals) != 0 {
		t.Errorf("a value over %d bytes was kept", maxValueBytes)
	}
	if vals := claimValues(map[string]any{"n": 42.0, "b": false}, "n"); !slices.Equal(vals, []string{"42"}) {
		t.Errorf("number claim: %q", vals)
	}
}
