package fleetd

import (
	"context"
	"log/slog"
	"net"
	"net/http"
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
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/fleet/web/login"
	"remoteler.dev/edge/proto/api"
)

// webAddr is where browsers reach the fleet: the apps domain (default the
// first DNS name among the public addresses, else "localhost") and the
// public port (default the one fleetd listens on).
func webAddr(cfg Config, listen net.Addr) apps.Addr {
	a := apps.Addr{Domain: strings.ToLower(cfg.AppsDomain), Port: cfg.PublicPort}
	if a.Domain == "" {
		a.Domain = "localhost"
		for _, h := range cfg.PublicAddrs {
			if net.ParseIP(h) == nil && h != "" {
				a.Domain = strings.ToLower(h)
				break
			}
		}
	}
	if a.Port == 0 {
		if t, ok := listen.(*net.TCPAddr); ok {
			a.Port = t.Port
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

func newWeb(cfg Config, addr apps.Addr, us *users.Service, roles *rbac.Roles, auth *ca.Authority, brk *broker.Broker,
	rec *audit.Recorder, keys *appjwt.Keys, catalog *apps.Catalog, log *slog.Logger, now func() time.Time) *web {
	appHosts := "https://*." + addr.Domain
	if addr.Port != 443 {
		appHosts += ":" + strconv.Itoa(addr.Port)
	}
	lg := login.New(login.Config{
		Users: us, Origin: addr.FleetOrigin(), Fleet: cfg.Cluster, Home: appsrv.PathApps, Audit: rec,
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
		Broker: brk, Login: lg, Users: us, Roles: roles, CA: auth, Keys: keys, Catalog: *catalog, Addr: addr,
		UploadLimit: cfg.AppUploadLimit, SessionTTL: time.Duration(cfg.AppSessionTTL), Logger: log, Now: now,
	})
	mux := http.NewServeMux()
	lg.Register(mux)
	as.Register(mux)
	mux.Handle("GET "+api.PathJWKS, keys.Handler())
	mux.HandleFunc("GET /web/{$}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, appsrv.PathApps, http.StatusSeeOther)
	})
	return &web{addr: addr, login: lg, apps: as, mux: mux}
}

// route sends a request to an app (by its host), to the browser pages
// (/web/, the JWKS) or to the API.
func (wb *web) route(apiHandler http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch p := r.URL.Path; {
		case wb.apps.IsAppHost(r.Host):
			wb.apps.ServeHTTP(w, r)
		case p == "/web" || strings.HasPrefix(p, "/web/") || p == api.PathJWKS:
			wb.mux.ServeHTTP(w, r)
		default:
			apiHandler.ServeHTTP(w, r)
		}
	})
}
