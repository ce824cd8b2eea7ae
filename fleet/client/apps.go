package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"remoteler.dev/edge/proto/api"
)

// Apps calls GET /v1/apps: the web apps the user may open.
func (c *Client) Apps(ctx context.Context) ([]api.App, error) {
	var out []api.App
	return out, c.do(ctx, http.MethodGet, api.PathApps, nil, &out)
}

// LeafApps calls GET /v1/apps?cluster=LEAF: the web apps of the leaf
// cluster that its roles let the user open, with their addresses at this
// fleet.
func (c *Client) LeafApps(ctx context.Context, leaf string) ([]api.App, error) {
	var out []api.App
	return out, c.do(ctx, http.MethodGet, api.PathApps+"?"+url.Values{api.PathAppsCluster: {leaf}}.Encode(), nil, &out)
}

// AppLogin calls POST /v1/apps/login: a client certificate for one app.
func (c *Client) AppLogin(ctx context.Context, req *api.AppLoginRequest) (*api.AppLoginResponse, error) {
	var out api.AppLoginResponse
	return &out, c.do(ctx, http.MethodPost, api.PathAppsLogin, req, &out)
}

// RotateAppKey calls POST /v1/apps/rotate-key (admin).
func (c *Client) RotateAppKey(ctx context.Context) (*api.AppKeys, error) {
	var out api.AppKeys
	return &out, c.do(ctx, http.MethodPost, api.PathAppsRotateKey, nil, &out)
}

// AppProxyConfig configures NewAppProxy. Every field is required.
type AppProxyConfig struct {
	// Fleet is the fleet's address, HOST:PORT: the proxy dials it.
	Fleet string
	// Host is the app's public host (APP--DEVICE.DOMAIN): the TLS server
	// name and the Host the fleet routes by.
	Host string
	// Cert is the app certificate (tsh apps login); CAs verify the fleet.
	Cert tls.Certificate
	CAs  *x509.CertPool
}

// NewAppProxy returns a handler that passes requests to an app through the
// fleet, presenting the app certificate: tsh proxy app serves it on a
// local port, so that curl and scripts reach the app at
// http://127.0.0.1:PORT. It streams both ways (uploads, downloads, server
// events, websockets) and rewrites redirects to the app's public address
// back to the local one.
func NewAppProxy(cfg AppProxyConfig) (http.Handler, error) {
	_, port, err := net.SplitHostPort(cfg.Fleet)
	if err != nil {
		return nil, fmt.Errorf("client: app proxy: fleet address %q is not HOST:PORT", cfg.Fleet)
	}
	if cfg.Host == "" || cfg.CAs == nil || len(cfg.Cert.Certificate) == 0 {
		return nil, errors.New("client: app proxy: the app's host, certificate and the fleet's CAs are required")
	}
	public := net.JoinHostPort(cfg.Host, port)
	d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		// Whatever the URL says, the fleet is where requests go.
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "tcp", cfg.Fleet)
		},
		TLSClientConfig: &tls.Config{
			ServerName: cfg.Host, RootCAs: cfg.CAs, Certificates: []tls.Certificate{cfg.Cert},
			MinVersion: tls.VersionTLS12, NextProtos: []string{"http/1.1"},
		},
		MaxIdleConnsPerHost: 16,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		Proxy:               nil,
		// A client's "Expect: 100-continue" is honoured: an upload the
		// fleet refuses (413) is not sent at all.
		ExpectContinueTimeout: time.Second,
	}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "https", public
			pr.Out.Host = public
		},
		Transport:     tr,
		FlushInterval: -1,
		ModifyResponse: func(resp *http.Response) error {
			loc := resp.Header.Get("Location")
			if loc == "" {
				return nil
			}
			u, err := url.Parse(loc)
			local, _ := resp.Request.Context().Value(localHostKey{}).(string)
			if err == nil && local != "" && u.Scheme == "https" && (strings.EqualFold(u.Host, public) || strings.EqualFold(u.Host, cfg.Host)) {
				u.Scheme, u.Host = "http", local
				resp.Header.Set("Location", u.String())
			}
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(err, context.Canceled) {
				return
			}
			http.Error(w, fmt.Sprintf("tsh proxy app: cannot reach the app through the fleet at %s: %v", cfg.Fleet, err), http.StatusBadGateway)
		},
	}
	// Redirects name the local address each request came to.
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), localHostKey{}, r.Host)))
	}), nil
}

type localHostKey struct{}
