package sso

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/proto/api"
)

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		edit   func(c *api.OIDCConnector)
		errHas string
	}{
		{"valid", func(*api.OIDCConnector) {}, ""},
		{"http on loopback", func(c *api.OIDCConnector) { c.Spec.IssuerURL = "http://127.0.0.1:9999/realms/x" }, ""},
		{"http on localhost", func(c *api.OIDCConnector) { c.Spec.IssuerURL = "http://localhost:9999" }, ""},
		{"http elsewhere", func(c *api.OIDCConnector) { c.Spec.IssuerURL = "http://idp.example.com" }, "use https"},
		{"not a URL", func(c *api.OIDCConnector) { c.Spec.IssuerURL = "idp.example.com" }, "not an absolute URL"},
		{"issuer with query", func(c *api.OIDCConnector) { c.Spec.IssuerURL = "https://idp.example.com?x=1" }, "no query"},
		{"ftp issuer", func(c *api.OIDCConnector) { c.Spec.IssuerURL = "ftp://idp.example.com" }, "scheme must be https"},
		{"no client ID", func(c *api.OIDCConnector) { c.Spec.ClientID = "" }, "client_id"},
		{"client ID with escape", func(c *api.OIDCConnector) { c.Spec.ClientID = "a\x1b[0m" }, "client_id"},
		{"bad kind", func(c *api.OIDCConnector) { c.Kind = "saml" }, "kind is"},
		{"bad version", func(c *api.OIDCConnector) { c.Version = "v2" }, "version is"},
		{"bad name", func(c *api.OIDCConnector) { c.Metadata.Name = "Okta!" }, "must be 1 to 64"},
		{"redirect elsewhere", func(c *api.OIDCConnector) { c.Spec.RedirectURL = "https://fleet.example.com/other" }, "the path must be /v1/sso/callback"},
		{"redirect over http", func(c *api.OIDCConnector) { c.Spec.RedirectURL = "http://fleet.example.com/v1/sso/callback" }, "use https"},
		{"redirect", func(c *api.OIDCConnector) { c.Spec.RedirectURL = "https://fleet.example.com:3080/v1/sso/callback" }, ""},
		{"bad scope", func(c *api.OIDCConnector) { c.Spec.Scopes = []string{"email profile"} }, "is not a scope"},
		{"bad trait", func(c *api.OIDCConnector) { c.Spec.ClaimsToTraits = map[string]string{"a b": "x"} }, "claims_to_traits: trait"},
		{"bad claim", func(c *api.OIDCConnector) { c.Spec.ClaimsToTraits = map[string]string{"ab": "x y"} }, "claims_to_traits[\"ab\"]: claim"},
		{"URL claims", func(c *api.OIDCConnector) {
			c.Spec.ClaimsToTraits = map[string]string{"groups": "https://example.com/claims/groups"}
		}, ""},
		{"no role rules", func(c *api.OIDCConnector) { c.Spec.ClaimsToRoles = nil }, "claims_to_roles is empty"},
		{"rule without roles", func(c *api.OIDCConnector) { c.Spec.ClaimsToRoles[0].Roles = nil }, "no roles"},
		{"rule with a bad role", func(c *api.OIDCConnector) { c.Spec.ClaimsToRoles[0].Roles = []string{"Admin"} }, "role name"},
		{"rule without value", func(c *api.OIDCConnector) { c.Spec.ClaimsToRoles[0].Value = "" }, "value must be"},
		{"bad prompt", func(c *api.OIDCConnector) { c.Spec.Prompt = "always" }, "prompt"},
		{"long display", func(c *api.OIDCConnector) { c.Spec.Display = strings.Repeat("x", 65) }, "display"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := connector("okta", "https://example.okta.com", "fleet")
			tt.edit(&c)
			err := Validate(c)
			if tt.errHas == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.errHas) {
				t.Fatalf("Validate = %v, want an error containing %q", err, tt.errHas)
			}
			var in interface{ InvalidInput() bool }
			if !errors.As(err, &in) || !in.InvalidInput() {
				t.Errorf("the error is not marked as invalid input: %T", err)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	good := `{"metadata":{"name":"okta"},"spec":{"issuer_url":"https://example.okta.com","client_id":"x","claims_to_roles":[{"claim":"groups","value":"a","roles":["admin"]}]}}`
	c, err := Decode([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if c.Kind != api.ConnectorKindOIDC || c.Version != Version {
		t.Errorf("defaults: kind %q version %q", c.Kind, c.Version)
	}
	for name, bad := range map[string]string{
		"unknown field": strings.Replace(good, `"client_id"`, `"clientid"`, 1),
		"two documents": good + good,
		"not JSON":      "kind: oidc",
		"wrong type":    `{"spec":{"scopes":"email"}}`,
	} {
		if _, err := Decode([]byte(bad)); err == nil {
			t.Errorf("%s: decoded", name)
		}
	}
}

func TestConnectorsKeepTheSecret(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	defer st.Close()
	cs := &Connectors{Store: st}
	c := connector("okta", "https://example.okta.com", "fleet")
	noSecret := c
	noSecret.Spec.ClientSecret = ""
	if _, err := cs.Put(ctx, noSecret); err == nil || !strings.Contains(err.Error(), "client_secret is required") {
		t.Fatalf("a new connector without a secret: %v", err)
	}
	if created, err := cs.Put(ctx, c); err != nil || !created {
		t.Fatalf("Put = %v, %v", created, err)
	}
	// Replaced without a secret: the stored one stays.
	noSecret.Spec.Display = "Okta"
	if created, err := cs.Put(ctx, noSecret); err != nil || created {
		t.Fatalf("replace = %v, %v", created, err)
	}
	got, err := cs.Get(ctx, "okta")
	if err != nil || got.Spec.ClientSecret != "fleet-secret" || got.Spec.Display != "Okta" {
		t.Fatalf("Get = %+v, %v", got.Spec, err)
	}
	list, err := cs.List(ctx)
	if err != nil || len(list) != 1 {
		t.Fatalf("List = %v, %v", list, err)
	}
	b, _ := json.Marshal(list)
	if strings.Contains(string(b), "fleet-secret") || !list[0].Spec.HasSecret {
		t.Errorf("the listing shows the secret, or not that there is one: %s", b)
	}
	// A new secret replaces the old.
	c.Spec.ClientSecret = "rotated"
	cs.Put(ctx, c)
	if got, _ := cs.Get(ctx, "okta"); got.Spec.ClientSecret != "rotated" {
		t.Errorf("secret after rotation: %q", got.Spec.ClientSecret)
	}
	if err := cs.Delete(ctx, "okta"); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Get(ctx, "okta"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get after Delete: %v", err)
	}
	if err := cs.Delete(ctx, "okta"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Delete again: %v", err)
	}
}
