package trust

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// Caller is whom a root fleet vouches for behind one of its requests.
type Caller struct {
	// Root is the root fleet's cluster name.
	Root string
	// Identity is what the root vouches for: the user, their roles and
	// traits there and their certificate's expiry; or its admin identity
	// (Identity.Admin).
	Identity proto.Identity
	// Via is the ID of the root's stream the request came down: the root
	// ends the request's sessions by it.
	Via string
	// Target is what the root's stream is for: "" for this fleet's API,
	// proto.ServiceApp for requests to this fleet's web apps (fleet/appsrv
	// serves them).
	Target string
}

// Check refuses a caller whose certificate at the root has expired.
func (c *Caller) Check(now time.Time) error {
	if exp := c.Expires(); !exp.IsZero() && !now.Before(exp) {
		return fmt.Errorf("your certificate at %s expired at %s: run tsh login", c.Root, exp.UTC().Format(time.RFC3339))
	}
	return nil
}

// Expires is when the caller's certificate at the root expires; zero:
// never.
func (c *Caller) Expires() time.Time {
	if c.Identity.Expires == 0 {
		return time.Time{}
	}
	return time.UnixMilli(c.Identity.Expires)
}

type callerKey struct{}

// CallerFrom returns the caller a root vouches for behind a request this
// fleet's API serves, if it came from a root.
func CallerFrom(ctx context.Context) (*Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(*Caller)
	return c, ok
}

// Resolve maps the roles of a root's caller to this fleet's with the
// trust's role_map; auditSearch says whether the trust lets the root's
// admins search this fleet's audit trail. The root's admin identity maps
// to no roles. A refusal (the trust is gone, no role maps) says why.
func (s *Service) Resolve(ctx context.Context, c *Caller) (roles []string, auditSearch bool, err error) {
	m, auditSearch, err := s.roleMap(ctx, c.Root)
	if err != nil {
		return nil, false, err
	}
	if c.Identity.Admin {
		return nil, auditSearch, nil
	}
	roles, err = m.Map(c.Root, c.Identity.Roles)
	return roles, auditSearch, err
}

// User is who a root's user is on this fleet: ROOT/USER (api.RemoteUser)
// with this fleet's roles from the trust's role_map and the traits the
// root vouched for. A root's admin identity is no user here. The refusals
// (an expired certificate, the trust gone, a map that gives nothing) say
// why. auditSearch is Resolve's.
func (s *Service) User(ctx context.Context, c *Caller) (u api.User, auditSearch bool, err error) {
	if err := c.Check(s.cfg.Now()); err != nil {
		return api.User{}, false, err
	}
	if c.Identity.Admin {
		return api.User{}, false, fmt.Errorf("the admin identity of %s is no user of this fleet: log in to %s as a user", c.Root, c.Root)
	}
	roles, auditSearch, err := s.Resolve(ctx, c)
	if err != nil {
		return api.User{}, false, err
	}
	return api.User{Name: api.RemoteUser(c.Root, c.Identity.User), Roles: roles, Traits: c.Identity.Traits}, auditSearch, nil
}

func connContext(ctx context.Context, c net.Conn) context.Context {
	if sc, ok := c.(*streamConn); ok {
		return context.WithValue(ctx, callerKey{}, sc.caller)
	}
	return ctx
}

// streamConn is a root's stream as this fleet's API server sees it: it
// knows its caller, gives the user's address as its remote address, and
// says when it is closed.
type streamConn struct {
	net.Conn
	caller *Caller
	remote net.Addr
	once   sync.Once
	done   chan struct{}
}

func (c *streamConn) RemoteAddr() net.Addr { return c.remote }

func (c *streamConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.done) })
	return err
}

// CloseWrite half-closes the stream (the API's connect splices with it).
func (c *streamConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// userAddr is the user's address as the root saw it.
type userAddr string

func (a userAddr) Network() string { return "tcp" }
func (a userAddr) String() string  { return string(a) }

// streamListener hands the roots' streams to the API's HTTP server.
type streamListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func newStreamListener() *streamListener {
	return &streamListener{conns: make(chan net.Conn), closed: make(chan struct{})}
}

func (l *streamListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// offer hands c to the server; false when the listener closed or ctx
// ended first.
func (l *streamListener) offer(ctx context.Context, c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.closed:
		return false
	case <-ctx.Done():
		return false
	}
}

func (l *streamListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *streamListener) Addr() net.Addr { return userAddr("trusted-clusters") }

// Serve serves the roots' streams with the API until ctx ends. The
// uplinks (Run) hand it the streams; run both.
func (s *Service) Serve(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() {
		s.ln.Close()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.srv.Shutdown(sctx)
		s.srv.Close()
	})
	defer stop()
	s.srv.Serve(s.ln)
}

// handle serves one stream of the root behind u: it waits until the API
// server is done with it (or the service stops).
func (s *Service) handle(ctx context.Context, u *uplink, h *proto.StreamHeader, conn net.Conn) {
	sc := &streamConn{Conn: conn, caller: &Caller{Root: u.name, Identity: h.Identity, Via: h.SessionID, Target: h.Target},
		remote: userAddr(h.ClientAddr), done: make(chan struct{})}
	if h.ClientAddr == "" {
		sc.remote = conn.RemoteAddr()
	}
	u.addStream(h.SessionID, sc)
	defer u.removeStream(h.SessionID, sc)
	if !s.ln.offer(ctx, sc) {
		sc.Close()
		return
	}
	select {
	case <-sc.done:
	case <-ctx.Done():
		sc.Close()
	}
}
