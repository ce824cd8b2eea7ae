// Package apps is the agent's web-app service ("app" in the agent's
// service registry, firmware/services): the web apps declared in the
// agent's configuration, which the fleet reaches over "app" streams.
//
// A stream's header names an app (Target); the agent connects to that
// app's URI, and to nothing else: it is no proxy for the fleet or anyone
// else, and a stream naming an app the configuration does not declare is
// refused. For an https URI the agent speaks TLS to the app, verifying its
// certificate against the system's roots unless the configuration opted
// out for that app (insecure_skip_verify, for a self-signed certificate).
// The stream then carries HTTP/1.1 between the fleet and the app, byte for
// byte: the fleet does the rewriting (fleet/appsrv).
//
// When the app does not answer, the agent answers the fleet's request
// itself with 502 Bad Gateway and a message that names the app, so the
// user learns which app on which device is down.
//
// Only firmware/... imports this package.
package apps

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/proto"
)

// App is one app in the agent's configuration: the "apps" list of its
// config file, or --app flags (ParseFlag). The fields are those the agent
// declares in its hello (proto.App): name, uri, labels,
// insecure_skip_verify and rewrite.
type App = proto.App

// Config configures a Service. The zero value offers no app.
type Config struct {
	// Apps are the declared apps.
	Apps []App
	// RootCAs verify https apps; nil means the system's roots.
	RootCAs *x509.CertPool
	// DialTimeout bounds connecting to an app; default 10s.
	DialTimeout time.Duration
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
}

// Service serves "app" streams. Create it with New.
type Service struct {
	cfg  Config
	log  *slog.Logger
	apps map[string]*app
}

type app struct {
	decl App
	addr string      // host:port to dial
	tls  *tls.Config // nil for http
}

// New checks the declared apps (names, URIs, no name twice) and returns
// the service.
func New(cfg Config) (*Service, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	s := &Service{cfg: cfg, log: cfg.Logger.With("component", "apps"), apps: map[string]*app{}}
	for _, a := range cfg.Apps {
		if err := proto.CheckAppName(a.Name); err != nil {
			return nil, fmt.Errorf("apps: %w", err)
		}
		if _, dup := s.apps[a.Name]; dup {
			return nil, fmt.Errorf("apps: app %q is declared twice", a.Name)
		}
		u, err := proto.ParseAppURI(a.URI)
		if err != nil {
			return nil, fmt.Errorf("apps: %s: %w", a.Name, err)
		}
		if a.InsecureSkipVerify && u.Scheme != "https" {
			return nil, fmt.Errorf("apps: %s: insecure_skip_verify is for https URIs only", a.Name)
		}
		ap := &app{decl: a, addr: proto.AppHostPort(u)}
		if u.Scheme == "https" {
			ap.tls = &tls.Config{
				ServerName: u.Hostname(), RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12,
				InsecureSkipVerify: a.InsecureSkipVerify, // the operator opted in for this app
				NextProtos:         []string{"http/1.1"}, // the stream carries HTTP/1.1
			}
		}
		s.apps[a.Name] = ap
	}
	return s, nil
}

// Name is the service's name in the agent's registry.
func (s *Service) Name() string { return proto.ServiceApp }

// Hello declares the apps in the agent's hello.
func (s *Service) Hello(h *proto.Hello) {
	h.Apps = append(h.Apps, s.cfg.Apps...)
}

// Check refuses a stream that names no declared app.
func (s *Service) Check(h *proto.StreamHeader) error {
	if s.apps[h.Target] == nil {
		return proto.Errorf(proto.CodeNotFound, "this device declares no app %q", h.Target)
	}
	return nil
}

// Serve connects to the stream's app and copies bytes both ways until
// either side closes or ctx ends. It closes conn.
func (s *Service) Serve(ctx context.Context, h *proto.StreamHeader, conn net.Conn) {
	defer conn.Close()
	a := s.apps[h.Target]
	if a == nil {
		return
	}
	log := s.log.With("app", h.Target, "user", h.Identity.User, "stream", h.SessionID)
	app, err := s.dial(ctx, a)
	if err != nil {
		log.Warn("app not reachable", "uri", a.decl.URI, "err", err)
		badGateway(conn, fmt.Sprintf("the app %q on this device (%s) is not answering: %v", a.decl.Name, a.decl.URI, err))
		return
	}
	defer app.Close()
	stop := context.AfterFunc(ctx, func() {
		conn.Close()
		app.Close()
	})
	defer stop()
	splice(conn, app)
}

func (s *Service) dial(ctx context.Context, a *app) (net.Conn, error) {
	d := net.Dialer{Timeout: s.cfg.DialTimeout}
	c, err := d.DialContext(ctx, "tcp", a.addr)
	if err != nil {
		return nil, err
	}
	if a.tls == nil {
		return c, nil
	}
	tc := tls.Client(c, a.tls)
	hctx, cancel := context.WithTimeout(ctx, s.cfg.DialTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		c.Close()
		var uae x509.UnknownAuthorityError
		if errors.As(err, &uae) {
			return nil, fmt.Errorf("%w (a self-signed certificate? set insecure_skip_verify for this app to accept it)", err)
		}
		return nil, err
	}
	return tc, nil
}

// badGateway answers the request waiting on conn with 502 and msg.
func badGateway(conn net.Conn, msg string) {
	msg = strings.ReplaceAll(msg, "\n", " ") + "\n"
	conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(conn, "HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(msg), msg)
}

type closeWriter interface{ CloseWrite() error }

// splice copies both ways until both directions end, passing half-closes
// on.
func splice(a, b net.Conn) {
	var wg sync.WaitGroup
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		io.Copy(dst, src)
		if cw, ok := dst.(closeWriter); ok {
			cw.CloseWrite()
		} else {
			dst.Close()
		}
	}
	wg.Add(2)
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
}

// ParseFlag reads one --app flag: NAME=URI followed by comma-separated
// options: insecure-skip-verify, and label:KEY=VALUE (any number):
//
//	nodered=http://127.0.0.1:1880
//	router=https://192.168.1.1,insecure-skip-verify,label:team=ops
//
// Rewrites are set in the config file only.
func ParseFlag(v string) (App, error) {
	var a App
	head, opts, _ := strings.Cut(v, ",")
	name, uri, ok := strings.Cut(head, "=")
	if !ok || name == "" || uri == "" {
		return a, fmt.Errorf("--app %q: want NAME=URI[,insecure-skip-verify][,label:KEY=VALUE...]", v)
	}
	a.Name, a.URI = name, uri
	if opts == "" {
		return a, nil
	}
	for _, o := range strings.Split(opts, ",") {
		switch {
		case o == "insecure-skip-verify":
			a.InsecureSkipVerify = true
		case strings.HasPrefix(o, "label:"):
			k, val, ok := strings.Cut(strings.TrimPrefix(o, "label:"), "=")
			if !ok || k == "" {
				return a, fmt.Errorf("--app %q: label %q is not label:KEY=VALUE", v, o)
			}
			if a.Labels == nil {
				a.Labels = map[string]string{}
			}
			a.Labels[k] = val
		default:
			return a, fmt.Errorf("--app %q: unknown option %q (insecure-skip-verify, label:KEY=VALUE)", v, o)
		}
	}
	return a, nil
}

// FlagForm is a's --app flag form (ParseFlag reads it back; rewrites have
// no flag form and are left out).
func FlagForm(a App) string {
	s := a.Name + "=" + a.URI
	if a.InsecureSkipVerify {
		s += ",insecure-skip-verify"
	}
	for _, k := range slices.Sorted(maps.Keys(a.Labels)) {
		s += ",label:" + k + "=" + a.Labels[k]
	}
	return s
}
