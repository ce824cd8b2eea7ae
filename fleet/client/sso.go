package client

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"golang.org/x/oauth2"

	"remoteler.dev/edge/proto/api"
)

// SSOConnectors calls GET /v1/sso/connectors (open).
func (c *Client) SSOConnectors(ctx context.Context) ([]api.SSOConnector, error) {
	var out []api.SSOConnector
	return out, c.do(ctx, http.MethodGet, api.PathSSOConnectors, nil, &out)
}

// SSOLogin calls POST /v1/sso/login (open): it starts a browser login
// through a connector and returns the provider's login address.
func (c *Client) SSOLogin(ctx context.Context, req *api.SSOLoginRequest) (*api.SSOLoginResponse, error) {
	var out api.SSOLoginResponse
	return &out, c.do(ctx, http.MethodPost, api.PathSSOLogin, req, &out)
}

// SSORedeem calls POST /v1/sso/redeem (open): a login ticket and its
// verifier for certificates.
func (c *Client) SSORedeem(ctx context.Context, req *api.SSORedeemRequest) (*api.LoginResponse, error) {
	var out api.LoginResponse
	return &out, c.do(ctx, http.MethodPost, api.PathSSORedeem, req, &out)
}

// Connectors calls GET /v1/connectors (admin); secrets are left out.
func (c *Client) Connectors(ctx context.Context) ([]api.OIDCConnector, error) {
	var out []api.OIDCConnector
	return out, c.do(ctx, http.MethodGet, api.PathConnectors, nil, &out)
}

// PutConnector calls PUT /v1/connectors (admin), creating or replacing the
// connector; without a client secret it keeps the stored one.
func (c *Client) PutConnector(ctx context.Context, conn *api.OIDCConnector) error {
	return c.do(ctx, http.MethodPut, api.PathConnectors, conn, nil)
}

// RemoveConnector calls DELETE /v1/connectors/NAME (admin).
func (c *Client) RemoveConnector(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, item(api.PathConnectors, name), nil, nil)
}

// DeviceRequest is what a headless login asks to be certified.
type DeviceRequest struct {
	CSR          []byte
	SSHPublicKey string
	TTLSeconds   int64
	// Challenge is the base64url SHA-256 of the verifier the ticket will
	// be redeemed with.
	Challenge string
	// Host names the machine asking, for the approval page.
	Host string
}

// deviceConfig is the fleet's device flow endpoints, for
// golang.org/x/oauth2.
func (c *Client) deviceConfig(ctx context.Context) (*oauth2.Config, context.Context) {
	base := "https://" + c.cfg.Addr
	conf := &oauth2.Config{ClientID: api.DeviceClientID, Endpoint: oauth2.Endpoint{
		DeviceAuthURL: base + api.PathDeviceAuthorize, TokenURL: base + api.PathDeviceToken, AuthStyle: oauth2.AuthStyleInParams,
	}}
	return conf, context.WithValue(ctx, oauth2.HTTPClient, c.http)
}

// DeviceAuthorize starts a headless login (RFC 8628's device
// authorization request): the answer holds the code to show and where to
// approve it.
func (c *Client) DeviceAuthorize(ctx context.Context, req *DeviceRequest) (*oauth2.DeviceAuthResponse, error) {
	conf, ctx := c.deviceConfig(ctx)
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	da, err := conf.DeviceAuth(ctx,
		oauth2.SetAuthURLParam(api.DeviceFieldSSHKey, req.SSHPublicKey),
		oauth2.SetAuthURLParam(api.DeviceFieldCSR, base64.RawURLEncoding.EncodeToString(req.CSR)),
		oauth2.SetAuthURLParam(api.DeviceFieldTTL, strconv.FormatInt(req.TTLSeconds, 10)),
		oauth2.SetAuthURLParam(api.DeviceFieldChallenge, req.Challenge),
		oauth2.SetAuthURLParam(api.DeviceFieldHost, req.Host))
	if err != nil {
		return nil, c.deviceError("start the headless login", err)
	}
	return da, nil
}

// DeviceWait polls the fleet at the interval it asked for until the
// headless login da is approved, denied or over, or ctx ends; it returns
// the login ticket.
func (c *Client) DeviceWait(ctx context.Context, da *oauth2.DeviceAuthResponse) (string, error) {
	conf, ctx := c.deviceConfig(ctx)
	tok, err := conf.DeviceAccessToken(ctx, da)
	if err != nil {
		return "", c.deviceError("wait for the approval", err)
	}
	return tok.AccessToken, nil
}

// deviceError words an error of the device flow.
func (c *Client) deviceError(op string, err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		switch {
		case re.ErrorDescription != "":
			return fmt.Errorf("client: %s: %s", op, re.ErrorDescription)
		case re.ErrorCode != "":
			return fmt.Errorf("client: %s: %s", op, re.ErrorCode)
		}
	}
	var ue *UnreachableError
	if errors.As(err, &ue) {
		return ue
	}
	return fmt.Errorf("client: %s: %w", op, err)
}
