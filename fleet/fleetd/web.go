package fleetd

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"remoteler.dev/edge/fleet/appjwt"
	"remoteler.dev/edge/fleet/apps"
	"remoteler.dev/edge/fleet/appsrv"
	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/sso"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/trust"
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/fleet/web/login"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// webAddr is where browsers reach the fleet: the apps domain (AppsDomain;
// default the public URL's host when it is a DNS name, else the first DNS
// name among the public addresses, else "localhost") and the public URL's
// port (publicURL is publicURLOf's).
func webAddr(cfg Config, publicURL string) apps.Addr {
	a := apps.Addr{Domain: strings.ToLower(cfg.AppsDomain), Port: 443}
	u, err := url.Parse(publicURL)
	if err == nil {
		if p, err := strconv.Atoi(u.Port()); err == nil {
			a.Port = p
		}
	}
	if a.Domain == "" && err == nil && net.ParseIP(u.Hostname()) == nil && u.Hostname() != "" {
		a.Domain = strings.ToLower(u.Hostname())
	}
	if a.Domain == "" {
		a.Domain = "localhost"
		for _, h := range cfg.PublicAddrs {
			if net.ParseIP(h) == nil && h != "" {
				a.Domain = strings.ToLower(h)
				break
			}
		}
	}
	return a
}

// web is what fleetd serves to browsers.
type web struct {
	addr  apps.Addr
	login *login.Server
	apps  *appsrv.Server
	mux   *http.ServeMux
}

func newWeb(cfg Config, st store.Store, addr apps.Addr, us *users.Service, roles *rbac.Roles, auth *ca.Authority, brk *broker.Broker,
	rec *audit.Recorder, keys *appjwt.Keys, catalog *apps.Catalog, admit func(*http.Request) (time.Duration, bool),
	refuse func(api.User) error, single *sso.Service, remote func(*http.Request) (appsrv.Remote, error), log *slog.Logger, now func() time.Time) *web {
	appHosts := "https://*." + addr.Domain
	if addr.Port != 443 {
		appHosts += ":" + strconv.Itoa(addr.Port)
	}
	lg := login.New(login.Config{
		Users: us, Store: st, Origin: addr.FleetOrigin(), Fleet: cfg.Cluster, Audit: rec, Admit: admit, Refuse: refuse, SSO: single, // Home: the dashboard
		// The launch of an app after a login redirects to the app's host.
		FormTargets: []string{appHosts},
		TTL: func(ctx context.Context, u api.User) time.Duration {
			ttl := time.Duration(cfg.UserCertTTL)
			if c, err := roles.NewCheckerFor(ctx, u.Roles, u.Traits); err == nil {
				ttl = c.MaxTTL(ttl)
			}
			return ttl
		},
		Logger: log, Now: now,
	})
	as := appsrv.New(appsrv.Config{
		Broker: brk, Login: lg, Users: us, Roles: roles, CA: auth, Keys: keys, Catalog: *catalog, Addr: addr, Store: st,
		UploadLimit: cfg.AppUploadLimit, SessionTTL: time.Duration(cfg.AppSessionTTL), Remote: remote, Logger: log, Now: now,
	})
	mux := http.NewServeMux()
	lg.Register(mux)
	as.Register(mux)
	mux.Handle("GET "+api.PathJWKS, keys.Handler())
	return &web{addr: addr, login: lg, apps: as, mux: mux}
}

// route sends a request to an app (by its host), to the browser pages
// on wb.mux (the login, the apps page, the JWKS, the dashboard), or to the API
// (which serves other pages of its own, such as the headless login's).
func (wb *web) route(apiHandler http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if wb.apps.IsAppHost(r.Host) {
			wb.apps.ServeHTTP(w, r)
			return
		}
		if _, pattern := wb.mux.Handler(r); pattern != "" {
			wb.mux.ServeHTTP(w, r)
			return
		}
		apiHandler.ServeHTTP(w, r)
	})
}

// relayRoute is what a trusted root's streams reach on this fleet (the
// leaf): requests to its apps on the streams for apps (fleet/appsrv), the
// API on the others.
func relayRoute(as *appsrv.Server, apiHandler http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if c, ok := trust.CallerFrom(r.Context()); ok && c.Target == proto.ServiceApp {
			as.ServeRelayed(w, r)
			return
		}
		apiHandler.ServeHTTP(w, r)
	})
}

// remoteAppUser identifies a root's user at one of this fleet's apps.
func remoteAppUser(r *http.Request, roots *trust.Service) (appsrv.Remote, error) {
	c, ok := trust.CallerFrom(r.Context())
	if !ok || roots == nil {
		return appsrv.Remote{}, errors.New("this fleet serves its apps to the users of its trusted roots only")
	}
	rm := appsrv.Remote{User: api.User{Name: api.RemoteUser(c.Root, c.Identity.User)}, Root: c.Root, RootRoles: c.Identity.Roles, Expires: c.Expires()}
	u, _, err := roots.User(r.Context(), c)
	if err != nil {
		return rm, err
	}
	rm.User = u
	return rm, nil
}
