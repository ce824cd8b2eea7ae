package api

import "time"

// Single sign-on (docs/sso.md). The fleet is an OpenID Connect relying
// party: connectors name the identity providers it trusts, and logins
// through them end, like password logins, in short-lived certificates.
//
// tsh login --auth=NAME:
//
//  1. tsh makes its keys and a secret verifier, listens on a loopback
//     port, and POSTs SSOLoginRequest to PathSSOLogin; the answer's
//     AuthURL is the identity provider's login page, which tsh opens in a
//     browser (or prints).
//  2. The provider sends the browser back to the fleet's own redirect
//     address (PathSSOCallback); the fleet checks the answer and sends the
//     browser on to tsh's loopback address with a one-time ticket.
//  3. tsh POSTs the ticket and its verifier to PathSSORedeem and gets the
//     LoginResponse. The ticket alone is worth nothing: only the verifier
//     whose hash tsh sent in step 1 redeems it.
//
// tsh login --headless (RFC 8628 device authorization, implemented by the
// fleet for every provider): tsh POSTs a form to PathDeviceAuthorize with
// its keys (form fields below) and shows the user code and verification
// address; the user approves in a browser logged in to the fleet; tsh polls
// PathDeviceToken, whose access_token is a ticket it redeems as above.

// Paths of single sign-on.
const (
	// PathConnectors is admin: GET list (secrets left out), PUT
	// create/replace an OIDCConnector, DELETE PathConnectors/NAME.
	PathConnectors = "/v1/connectors"
	// PathSSOConnectors is open: GET the connectors users may log in with
	// ([]SSOConnector), for tsh and login pages.
	PathSSOConnectors = "/v1/sso/connectors"
	// PathSSOLogin is open: POST SSOLoginRequest, answered SSOLoginResponse.
	PathSSOLogin = "/v1/sso/login"
	// PathSSOCallback is the fleet's redirect address that identity
	// providers send browsers back to: register
	// https://FLEET/v1/sso/callback with the provider.
	PathSSOCallback = "/v1/sso/callback"
	// PathSSORedeem is open: POST SSORedeemRequest, answered LoginResponse.
	PathSSORedeem = "/v1/sso/redeem"
	// PathDeviceAuthorize is RFC 8628's device authorization endpoint
	// (form-encoded POST, JSON answer).
	PathDeviceAuthorize = "/v1/oauth/device"
	// PathDeviceToken is the token endpoint the device flow polls (grant
	// type DeviceCodeGrant).
	PathDeviceToken = "/v1/oauth/token"
	// PathDeviceVerify is the page a user opens to approve a headless
	// login: the verification_uri of the device flow.
	PathDeviceVerify = "/web/device"
)

// Form fields of a device authorization request beyond RFC 8628's
// client_id and scope: the keys the certificates will be for, the
// lifetime asked for, and the S256 challenge of tsh's redeem verifier.
const (
	DeviceFieldSSHKey    = "ssh_public_key" // authorized_keys format
	DeviceFieldCSR       = "csr"            // base64url (no padding) of the DER PKCS#10 request
	DeviceFieldTTL       = "ttl"            // seconds
	DeviceFieldChallenge = "code_challenge" // base64url SHA-256 of the verifier
	DeviceFieldHost      = "client_host"    // the name of the machine asking, shown on the approval page
)

// DeviceCodeGrant is RFC 8628's grant type.
const DeviceCodeGrant = "urn:ietf:params:oauth:grant-type:device_code"

// DeviceClientID is the client_id tsh sends in the device flow.
const DeviceClientID = "tsh"

// ConnectorKindOIDC is the kind of OpenID Connect connector resources.
const ConnectorKindOIDC = "oidc"

// OIDCConnector is a connector resource, as in oidc.yaml:
//
//	kind: oidc
//	version: v1
//	metadata:
//	  name: okta
//	spec:
//	  issuer_url: https://example.okta.com
//	  client_id: 0oa1example
//	  client_secret: s3cret
//	  claims_to_roles:
//	  - {claim: groups, value: fleet-admins, roles: [admin]}
type OIDCConnector struct {
	Kind     string            `json:"kind"`
	Version  string            `json:"version"`
	Metadata Metadata          `json:"metadata"`
	Spec     OIDCConnectorSpec `json:"spec"`
}

// OIDCConnectorSpec says which provider to trust and how its claims map to
// the fleet's roles and traits.
type OIDCConnectorSpec struct {
	// IssuerURL is the provider's issuer: its discovery document is at
	// IssuerURL/.well-known/openid-configuration. https, or http on a
	// loopback address (for tests).
	IssuerURL string `json:"issuer_url"`
	// ClientID and ClientSecret are the fleet's credentials at the
	// provider. The secret is stored and never sent back (listings leave
	// it out and set HasSecret); a PUT without it keeps the stored one.
	ClientID     string `json:"client_id"`
	ClientSecret string `json:"client_secret,omitempty"`
	HasSecret    bool   `json:"has_secret,omitempty"`
	// RedirectURL is the fleet's redirect address the provider sends
	// browsers back to; default https://PUBLIC_ADDR/v1/sso/callback (the
	// fleet's public_url). Its path must be PathSSOCallback.
	RedirectURL string `json:"redirect_url,omitempty"`
	// Scopes asked for besides "openid"; default email and profile.
	Scopes []string `json:"scopes,omitempty"`
	// UsernameClaim is the claim whose value names the fleet user;
	// default "email". Values are lower-cased and must be 1 to 128
	// characters of a-z, 0-9, '.', '_', '-', '@' and '+'.
	UsernameClaim string `json:"username_claim,omitempty"`
	// ClaimsToTraits maps trait names to claim names: role templates read
	// them as {{external.TRAIT}}. The claims email and groups are always
	// the traits email and groups when the provider sends them.
	ClaimsToTraits map[string]string `json:"claims_to_traits,omitempty"`
	// ClaimsToRoles give roles to users by their claims; a user whom no
	// rule gives a role is refused.
	ClaimsToRoles []ClaimMapping `json:"claims_to_roles"`
	// Display is the text of the connector's button; default its name.
	Display string `json:"display,omitempty"`
	// Prompt is sent as the prompt parameter ("login", "select_account",
	// "consent"); default none.
	Prompt string `json:"prompt,omitempty"`
	// RequireEmailVerified refuses users whose email_verified claim is
	// false when their user name comes from the email claim; default
	// true.
	RequireEmailVerified *bool `json:"require_email_verified,omitempty"`
}

// ClaimMapping gives Roles to users whose claim Claim has the value Value
// (one of its values, for a list claim such as groups). Value may hold '*'
// wildcards that match any run of characters ("*@example.com").
type ClaimMapping struct {
	Claim string   `json:"claim"`
	Value string   `json:"value"`
	Roles []string `json:"roles"`
}

// SSOConnector is a connector as users see it, to pick one.
type SSOConnector struct {
	Name    string `json:"name"`
	Display string `json:"display"`
}

// SSOLoginRequest starts tsh's browser login through a connector. The keys
// and TTL are as in LoginRequest. RedirectURL is tsh's loopback address
// (http://127.0.0.1:PORT/PATH, or localhost or [::1]): the fleet sends the
// browser there with the ticket, and nowhere else. CodeChallenge is the
// base64url SHA-256 of the verifier tsh will redeem the ticket with.
type SSOLoginRequest struct {
	Connector     string        `json:"connector"`
	CSR           []byte        `json:"csr"`
	SSHPublicKey  string        `json:"ssh_public_key"`
	TTL           time.Duration `json:"ttl,omitempty"`
	RedirectURL   string        `json:"redirect_url"`
	CodeChallenge string        `json:"code_challenge"`
}

// SSOLoginResponse holds the address of the provider's login page.
type SSOLoginResponse struct {
	AuthURL string    `json:"auth_url"`
	Expires time.Time `json:"expires"`
}

// SSORedeemRequest redeems a ticket for certificates.
type SSORedeemRequest struct {
	Ticket       string `json:"ticket"`
	CodeVerifier string `json:"code_verifier"`
}

// Query parameters of the fleet's redirect to tsh's loopback address: the
// ticket on success, or an error message on refusal.
const (
	LoopbackTicket = "ticket"
	LoopbackError  = "error"
)
