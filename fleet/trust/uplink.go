package trust

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"remoteler.dev/edge/firmware/tunnel"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto"
)

// Run keeps a tunnel up to every trusted root until ctx ends, following
// the trusts in st as they are put and deleted; what the tunnels learn
// (renewed certificates, the roots' CA keys) is written through st (a
// store fenced by leadership: one replica runs the tunnels).
func (s *Service) Run(ctx context.Context, st store.Store) error {
	defer s.stopAll()
	return store.Follow(ctx, st, prefix, store.FollowHandler{
		Reset: func(items []store.Item, _ int64) {
			seen := map[string]bool{}
			for _, it := range items {
				if r := decode(it.Value); r != nil {
					seen[r.Name] = true
					s.ensure(ctx, st, r)
				}
			}
			s.mu.Lock()
			var gone []string
			for name := range s.uplinks {
				if !seen[name] {
					gone = append(gone, name)
				}
			}
			s.mu.Unlock()
			for _, name := range gone {
				s.stop(name)
			}
		},
		Apply: func(ev store.Event) {
			switch ev.Kind {
			case store.EventPut:
				if r := decode(ev.Value); r != nil {
					s.ensure(ctx, st, r)
				}
			case store.EventDelete:
				s.retire(strings.TrimPrefix(ev.Key, prefix))
			}
		},
		Retry: func(err error, wait time.Duration) {
			s.log.Warn("following the trusted clusters; listing them again", "err", err, "in", wait)
		},
	})
}

func decode(b []byte) *record {
	var r record
	if json.Unmarshal(b, &r) != nil || r.Name == "" {
		return nil
	}
	return &r
}

// ensure starts the tunnel to r's root, or gives the running one r.
func (s *Service) ensure(ctx context.Context, st store.Store, r *record) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if u := s.uplinks[r.Name]; u != nil {
		u.rec.Store(r)
		return
	}
	uctx, cancel := context.WithCancel(ctx)
	u := &uplink{s: s, name: r.Name, st: st, cancel: cancel, done: make(chan struct{}), streams: map[string]*streamConn{}}
	u.rec.Store(r)
	u.tun = u.newTunnel(uctx)
	s.uplinks[r.Name] = u
	go u.run(uctx)
}

// retire closes the tunnel to a root this fleet no longer trusts, after
// ending its users' sessions and requests in a way they learn why: the
// sessions first (each service tells its user), then the root is told
// (leave), then, once the broker has closed them, whatever requests are
// left; the streams close gracefully, so the root passes the news on
// before the tunnel goes.
func (s *Service) retire(name string) {
	s.mu.Lock()
	u := s.uplinks[name]
	s.mu.Unlock()
	if u == nil {
		return
	}
	reason := fmt.Sprintf("this fleet no longer trusts the cluster %q: its admin removed the trust", name)
	if s.cfg.Sessions != nil {
		s.cfg.Sessions.End(func(x *sessions.Session) bool { return x.Origin == name }, reason)
	}
	u.leave(reason)
	t := time.NewTimer(2 * s.cfg.EndGrace)
	<-t.C
	u.mu.Lock()
	var open []*streamConn
	for _, c := range u.streams {
		open = append(open, c)
	}
	u.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
	if len(open) > 0 {
		t.Reset(s.cfg.EndGrace)
		<-t.C
	}
	s.stop(name)
}

// stop closes the tunnel to the root called name and waits for it.
func (s *Service) stop(name string) {
	s.mu.Lock()
	u := s.uplinks[name]
	delete(s.uplinks, name)
	s.mu.Unlock()
	if u != nil {
		u.cancel()
		<-u.done
	}
}

func (s *Service) stopAll() {
	s.mu.Lock()
	var names []string
	for name := range s.uplinks {
		names = append(names, name)
	}
	s.mu.Unlock()
	for _, name := range names {
		s.stop(name)
	}
}

// uplink is the tunnel to one root.
type uplink struct {
	s      *Service
	name   string
	st     store.Store
	rec    atomic.Pointer[record]
	tun    *tunnel.Client // set before run starts
	left   atomic.Bool    // the root was told this fleet no longer trusts it
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex // guards the fields below
	streams map[string]*streamConn
	up      bool
	lastUp  time.Time
}

func (u *uplink) state() (online bool, lastSeen time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.up {
		return true, u.s.cfg.Now().UTC()
	}
	return false, u.lastUp
}

// newTunnel makes the tunnel to the root; ctx is run's.
func (u *uplink) newTunnel(ctx context.Context) *tunnel.Client {
	return tunnel.New(tunnel.Config{
		Addr:      u.rec.Load().Spec.RootAddr,
		TLSConfig: u.tlsConfig,
		Hello: func() *proto.Hello {
			return &proto.Hello{Name: u.s.cfg.Cluster, AgentVersion: u.s.cfg.Version, Services: []string{proto.ServiceCluster}}
		},
		Check:  u.check,
		Handle: func(ctx context.Context, h *proto.StreamHeader, conn net.Conn) { u.s.handle(ctx, u, h, conn) },
		OnMessage: func(m proto.Message) {
			if end, ok := m.(*proto.SessionEnd); ok {
				u.end(end)
			}
		},
		OnState: func(up bool) {
			u.mu.Lock()
			u.up = up
			u.lastUp = u.s.cfg.Now().UTC()
			u.mu.Unlock()
			if up {
				go u.sync(ctx)
			}
		},
		Logger: u.s.log.With("root", u.name),
		Now:    u.s.cfg.Now,
	})
}

func (u *uplink) run(ctx context.Context) {
	defer close(u.done)
	log := u.s.log.With("root", u.name)
	var wg sync.WaitGroup
	wg.Go(func() { u.renewLoop(ctx) })
	log.Info("tunnel to the root cluster starting", "root_addr", u.rec.Load().Spec.RootAddr)
	u.tun.Run(ctx)
	wg.Wait()
}

// tlsConfig is the tunnel's TLS config for the next dial: the
// certificate the root issued, and the root's CAs to verify it with.
func (u *uplink) tlsConfig() (*tls.Config, error) {
	r := u.rec.Load()
	key, err := x509.ParsePKCS8PrivateKey(r.Key)
	if err != nil {
		return nil, fmt.Errorf("trust: tunnel key: %w", err)
	}
	leaf, err := x509.ParseCertificate(r.Cert)
	if err != nil {
		return nil, fmt.Errorf("trust: tunnel certificate: %w", err)
	}
	pool := x509.NewCertPool()
	for _, der := range r.CACerts {
		if c, err := x509.ParseCertificate(der); err == nil {
			pool.AddCert(c)
		}
	}
	host, _, err := net.SplitHostPort(r.Spec.RootAddr)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{r.Cert}, PrivateKey: key, Leaf: leaf}},
		RootCAs:      pool,
		ServerName:   host,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// check accepts only what a root may ask of a leaf: requests to this
// fleet's API (service "cluster") for a caller it vouches for. Never a
// stream to a device or an address: those the leaf opens itself, for its
// own devices, when its roles allow.
func (u *uplink) check(h *proto.StreamHeader) error {
	switch {
	case h.Service != proto.ServiceCluster:
		return proto.Errorf(proto.CodeForbidden, "a leaf cluster takes only its API's requests (service %q) from its root, not %q", proto.ServiceCluster, h.Service)
	case h.Target != "" && h.Target != proto.ServiceApp:
		return proto.Errorf(proto.CodeForbidden, "a request to a leaf cluster names no target but %q (its web apps)", proto.ServiceApp)
	case h.Identity.User == "":
		return proto.Errorf(proto.CodeForbidden, "the root vouched for nobody")
	case h.Identity.Cluster != u.name:
		return proto.Errorf(proto.CodeForbidden, "the root %q vouched for a user of %q", u.name, h.Identity.Cluster)
	case h.Identity.Login != "" || h.Identity.KubeUser != "" || len(h.Identity.KubeGroups) > 0 || len(h.Identity.UserCAKeys) > 0:
		return proto.Errorf(proto.CodeForbidden, "a root does not decide logins or Kubernetes users here: the leaf does")
	}
	return nil
}

// leave tells the root that this fleet no longer trusts it, with the
// reason (proto.ClusterInfo.Leaving): the root forgets this fleet and
// ends the sessions it relays here, rather than wait for a tunnel that
// will not come back. A root that is not reached hears of it no more.
func (u *uplink) leave(reason string) {
	if !u.tun.Up() || !u.left.CompareAndSwap(false, true) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := u.tun.Call(ctx, &proto.ClusterInfo{Cluster: u.s.cfg.Cluster, Leaving: reason}, proto.KindClusterInfo); err != nil {
		u.s.log.Warn("tell the root this fleet no longer trusts it", "root", u.name, "err", err)
	}
}

func (u *uplink) addStream(id string, c *streamConn) {
	u.mu.Lock()
	u.streams[id] = c
	u.mu.Unlock()
}

func (u *uplink) removeStream(id string, c *streamConn) {
	u.mu.Lock()
	if u.streams[id] == c {
		delete(u.streams, id)
	}
	u.mu.Unlock()
}

// end ends what the root's stream end.SessionID carried, with the root's
// message: the sessions it started here (the service tells the user why),
// then, after the grace period, the stream itself.
func (u *uplink) end(end *proto.SessionEnd) {
	msg := end.Message
	if len(msg) > proto.MaxSessionEndMessage {
		msg = msg[:proto.MaxSessionEndMessage]
	}
	if msg == "" {
		msg = "the root cluster " + u.name + " ended the session"
	}
	n := 0
	if reg := u.s.cfg.Sessions; reg != nil {
		n = reg.End(func(s *sessions.Session) bool { return s.Origin == u.name && s.Via == end.SessionID }, msg)
	}
	u.mu.Lock()
	c := u.streams[end.SessionID]
	u.mu.Unlock()
	u.s.log.Info("the root ended a request", "root", u.name, "stream", end.SessionID, "sessions", n, "reason", msg)
	if c != nil {
		time.AfterFunc(u.s.cfg.EndGrace, func() { c.Close() })
	}
}

// sync exchanges CA keys with the root: this fleet's host CA keys go up,
// the root's user CA keys and CA certificates come back and are kept.
func (u *uplink) sync(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	info := &proto.ClusterInfo{Cluster: u.s.cfg.Cluster}
	for _, k := range u.s.cfg.CA.HostCAKeys() {
		info.HostCAKeys = append(info.HostCAKeys, k.Marshal())
	}
	m, err := u.tun.Call(ctx, info, proto.KindClusterInfo)
	if err != nil {
		u.s.log.Warn("exchange CA keys with the root", "root", u.name, "err", err)
		return
	}
	got := m.(*proto.ClusterInfo)
	if err := got.Check(); err != nil || len(got.UserCAKeys) == 0 || len(got.CACerts) == 0 {
		u.s.log.Warn("the root sent bad CA keys; keeping the ones it gave before", "root", u.name, "err", err)
		return
	}
	if err := u.update(ctx, func(r *record) { r.UserCAKeys, r.CACerts = got.UserCAKeys, got.CACerts }); err != nil {
		u.s.log.Warn("keep the root's CA keys", "root", u.name, "err", err)
	}
}

// update changes the stored trust with fn.
func (u *uplink) update(ctx context.Context, fn func(*record)) error {
	for range 16 {
		b, err := u.st.Get(ctx, prefix+u.name)
		if err != nil {
			return err
		}
		r := decode(b)
		if r == nil {
			return errors.New("trust: stored trust does not decode")
		}
		fn(r)
		next, _ := json.Marshal(r)
		err = u.st.CompareAndSwap(ctx, prefix+u.name, b, next)
		if err == nil {
			u.rec.Store(r)
			return nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
	return errors.New("trust: too many concurrent changes")
}

// renewLoop renews the tunnel certificate over the tunnel once half its
// lifetime has passed.
func (u *uplink) renewLoop(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		if u.tun.Up() && u.renewDue() {
			if err := u.renew(ctx); err != nil {
				u.s.log.Warn("renew the tunnel certificate at the root; will retry", "root", u.name, "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (u *uplink) renewDue() bool {
	c, err := x509.ParseCertificate(u.rec.Load().Cert)
	if err != nil {
		return true
	}
	return u.s.cfg.Now().After(c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) / 2))
}

func (u *uplink) renew(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: u.s.cfg.Cluster}}, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := u.tun.Renew(ctx, &proto.RenewRequest{CSR: csr})
	if err != nil {
		return err
	}
	if _, err := x509.ParseCertificate(resp.Cert); err != nil {
		return fmt.Errorf("the root sent a bad certificate: %w", err)
	}
	return u.update(ctx, func(r *record) {
		r.Key, r.Cert = keyDER, resp.Cert
		if len(resp.CACerts) > 0 {
			r.CACerts = resp.CACerts
		}
		if len(resp.UserCAKeys) > 0 {
			r.UserCAKeys = resp.UserCAKeys
		}
	})
}
