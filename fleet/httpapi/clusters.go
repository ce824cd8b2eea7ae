package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/clusters"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/trust"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/kubewire"
)

// Trusted clusters (proto/api/clusters.go). As a root, the fleet lists its
// leaves, removes them, joins new ones, issues its users certificates for
// a leaf's devices, and relays its users' requests to a leaf's API: each
// request is one broker session to the leaf (the broker opens a "cluster"
// stream down the leaf's tunnel and registers it, so that the request ends
// when the user's access here ends), and the leaf answers it with its own
// roles. As a leaf, the fleet takes trusted_cluster resources and serves
// the requests its roots relay (identifyRemote).

func (s *Server) clusterRoutes(mux *http.ServeMux) {
	mux.Handle("GET "+api.PathClusters, s.authed(s.listClusters))
	mux.Handle("DELETE "+api.PathClusters+"/{name}", s.admin(s.deleteCluster))
	mux.Handle("POST "+api.PathClusters+"/{name}/certs", s.authed(s.clusterCerts))
	mux.HandleFunc(api.PathClusters+"/{name}/v1/", s.relay)
	mux.HandleFunc("POST "+api.PathTrustJoin, s.trustJoin)
	mux.Handle("GET "+api.PathTrustedClusters, s.admin(s.listTrusted))
	mux.Handle("PUT "+api.PathTrustedClusters, s.admin(s.putTrusted))
}

// identifyRemote builds the caller of a request a trusted root relayed:
// the root vouched for the user (name, roles, traits, certificate expiry)
// or its admin identity; this fleet maps the roles with the trust's
// role_map and decides with its own.
func (s *Server) identifyRemote(ctx context.Context, rc *trust.Caller) (*caller, error) {
	if s.Trust == nil {
		return nil, errors.New("this fleet trusts no root cluster")
	}
	if rc.Target != "" {
		return nil, errors.New("a stream to this fleet's web apps reaches no API endpoint")
	}
	if err := rc.Check(s.now()); err != nil {
		return nil, err
	}
	exp := rc.Expires()
	c := &caller{remote: rc}
	if rc.Identity.Admin {
		_, auditSearch, err := s.Trust.Resolve(ctx, rc)
		if err != nil {
			return nil, err
		}
		c.auditSearch = auditSearch
		c.id = ca.Identity{Kind: ca.KindAdmin, Name: rc.Identity.User, Expires: exp}
		return c, nil
	}
	u, auditSearch, err := s.Trust.User(ctx, rc)
	if err != nil {
		return nil, err
	}
	c.auditSearch = auditSearch
	c.id = ca.Identity{Kind: ca.KindUser, Name: u.Name, Expires: exp}
	c.user = u
	if c.checker, err = s.checker(ctx, c.user); err != nil {
		return nil, err
	}
	return c, nil
}

// listClusters answers GET /v1/clusters: the leaves this fleet relays to
// (to every user: they may try), and for admins the roots it trusts.
func (s *Server) listClusters(w http.ResponseWriter, r *http.Request, c *caller) {
	out := []api.Cluster{}
	if s.Clusters != nil {
		leaves, err := s.Clusters.List(r.Context())
		if err != nil {
			s.storeError(w, "list clusters", err)
			return
		}
		for _, l := range leaves {
			ac := api.Cluster{Name: l.Name, Kind: api.ClusterLeaf, LastSeen: l.LastSeen, Version: l.Version, Since: l.JoinedAt}
			if s.Tunnels != nil && s.Tunnels.Online(clusters.TunnelID(l.Name)) {
				ac.Online, ac.LastSeen = true, s.now().UTC()
			}
			if c.isAdmin() {
				ac.Addr = l.Addr
			}
			out = append(out, ac)
		}
	}
	if s.Trust != nil && c.isAdmin() {
		roots, err := s.Trust.Clusters(r.Context())
		if err != nil {
			s.storeError(w, "list trusted clusters", err)
			return
		}
		out = append(out, roots...)
	}
	writeJSON(w, http.StatusOK, out)
}

// deleteCluster answers DELETE /v1/clusters/NAME: it ends the trust with
// a leaf (its relayed requests end, its tunnel closes and it cannot come
// back) or with a root (the tunnel to it closes and its users' sessions
// end).
func (s *Server) deleteCluster(w http.ResponseWriter, r *http.Request, c *caller) {
	name := r.PathValue("name")
	if s.Clusters != nil {
		err := s.Clusters.Delete(r.Context(), name)
		if err == nil {
			reason := fmt.Sprintf("the trust between %s and the cluster %s was removed", s.Cluster, name)
			n := s.sessions().End(func(ss *sessions.Session) bool { return ss.Cluster == name }, reason)
			if s.Tunnels != nil {
				// After the session ends have reached the leaf.
				time.AfterFunc(time.Second, func() { s.Tunnels.Disconnect(clusters.TunnelID(name), reason) })
			}
			s.audit().Info("leaf cluster removed", "event", proto.EventClusterDelete, "by", c.name(), "cluster", name, "sessions", n)
			s.record(r.Context(), &proto.AuditEvent{Type: proto.EventClusterDelete, User: c.name(), Addr: r.RemoteAddr,
				Fields: map[string]string{"cluster": name, "kind": api.ClusterLeaf}})
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if !errors.Is(err, store.ErrNotFound) {
			s.storeError(w, "remove cluster", err)
			return
		}
	}
	if s.Trust != nil {
		err := s.Trust.Delete(r.Context(), name, c.name(), r.RemoteAddr)
		if err == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if !errors.Is(err, store.ErrNotFound) {
			s.storeError(w, "remove trusted cluster", err)
			return
		}
	}
	writeError(w, http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("no cluster %q trusts this fleet or is trusted by it: see fleetctl clusters ls", name))
}

// trustJoin answers POST /v1/trust/join (open, with a token): a leaf joins
// this root.
func (s *Server) trustJoin(w http.ResponseWriter, r *http.Request) {
	if v := s.admit(r); !v.OK {
		tarpit(r.Context(), v.Wait)
		retryAfter(w, v.Wait)
		writeError(w, http.StatusTooManyRequests, api.CodeRateLimited, "too many joins and logins from your address; try again later")
		return
	}
	var req api.ClusterJoinRequest
	if !readJSON(w, r, &req) {
		return
	}
	if s.Clusters == nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "this fleet takes no leaf clusters")
		return
	}
	resp, err := s.Clusters.Join(r.Context(), &req, r.RemoteAddr)
	s.joinAnswer(w, "join cluster", resp, err)
}

func (s *Server) listTrusted(w http.ResponseWriter, r *http.Request, c *caller) {
	if s.Trust == nil {
		writeJSON(w, http.StatusOK, []api.TrustedCluster{})
		return
	}
	list, err := s.Trust.Resources(r.Context())
	if err != nil {
		s.storeError(w, "list trusted clusters", err)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) putTrusted(w http.ResponseWriter, r *http.Request, c *caller) {
	var tc api.TrustedCluster
	if !readJSON(w, r, &tc) {
		return
	}
	if s.Trust == nil {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "this fleet cannot trust root clusters")
		return
	}
	if err := s.Trust.Put(r.Context(), tc, c.name(), r.RemoteAddr); err != nil {
		s.storeError(w, "trust cluster", err)
		return
	}
	s.audit().Info("root cluster trusted", "event", proto.EventTrustPut, "by", c.name(), "cluster", tc.Metadata.Name, "root_addr", tc.Spec.RootAddr)
	w.WriteHeader(http.StatusNoContent)
}

// relayed is one request relayed to a leaf: its grant and live session.
type relayed struct {
	g    *broker.Grant
	sess *broker.Session
}

// openRelay authorises c's request to reach leaf cluster name, registers
// it, and opens its stream. Refusals are answered with refuse.
func (s *Server) openRelay(ctx context.Context, r *http.Request, c *caller, name, action string, refuse func(*broker.Refusal)) (*relayed, net.Conn, bool) {
	ask := broker.Ask{Service: proto.ServiceCluster, Cluster: name, User: c.user, Checker: c.checker, ClientAddr: r.RemoteAddr,
		Expires: c.id.Expires, Admin: c.id.Kind == ca.KindAdmin, Action: action}
	switch {
	case c.id.Name == anonymous && c.checker == nil:
		ask.User.Name, ask.Token = anonymous, true
	case c.checker == nil:
		ask.User.Name = c.name()
	}
	b := s.broker()
	g, err := b.Authorize(ctx, ask)
	if err != nil {
		refuse(err.(*broker.Refusal))
		return nil, nil, false
	}
	sess, err := b.Start(ctx, g, broker.StartOptions{NoEvents: true})
	if err != nil {
		refuse(err.(*broker.Refusal))
		return nil, nil, false
	}
	conn, err := b.Open(ctx, g, "")
	if err != nil {
		var ref *broker.Refusal
		if !errors.As(err, &ref) {
			ref = &broker.Refusal{Status: broker.StatusNoAnswer, Msg: err.Error()}
		}
		sess.DoneSilently(ref.Msg)
		b.Deny(ctx, ask, ref)
		refuse(ref)
		return nil, nil, false
	}
	rel := &relayed{g: g, sess: sess}
	sess.OnEnd(func() { conn.Close() })
	return rel, conn, true
}

// relay answers PathClusters/NAME/v1/...: the request goes to the leaf
// NAME's own API, unchanged but for its path, with the caller this fleet
// vouches for; the leaf's answer (an upgrade too: SSH, kubectl exec) comes
// back as it is.
func (s *Server) relay(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	_, rest, _ := api.SplitClusterPath(r.URL.Path)
	kube := strings.HasPrefix(rest, api.PathKube+"/")
	fail := func(status int, code, msg string) {
		if kube {
			kubewire.WriteStatus(w, r, status, msg)
			return
		}
		writeError(w, status, code, msg)
	}
	var c *caller
	if strings.HasPrefix(rest, api.PathSessions+"/") && r.Header.Get(api.HeaderSessionToken) != "" && r.Method == http.MethodGet {
		// How a session ended, asked with its token: the leaf checks the
		// token; the caller's certificate may have expired meanwhile.
		c = &caller{id: ca.Identity{Kind: ca.KindUser, Name: anonymous}}
	} else {
		var err error
		if c, err = s.identify(r); err != nil {
			s.record(r.Context(), &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, Addr: r.RemoteAddr, Message: err.Error(),
				Fields: map[string]string{"cluster": name, "service": proto.ServiceCluster, "action": r.Method + " " + rest}})
			fail(http.StatusUnauthorized, api.CodeUnauthorized, err.Error())
			return
		}
		if c.remote != nil {
			fail(http.StatusForbidden, api.CodeForbidden, "a root cluster's request cannot be relayed on to another cluster")
			return
		}
	}
	rel, conn, ok := s.openRelay(r.Context(), r, c, name, r.Method+" "+rest, func(ref *broker.Refusal) {
		status, code := refusalStatus(ref.Status)
		fail(status, code, ref.Msg)
	})
	if !ok {
		return
	}
	releaseBody(r) // the leaf reads the body at its pace (Kubernetes, SSH)
	reason := ""
	defer func() { rel.sess.DoneSilently(reason) }()
	proxy := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL = &url.URL{Scheme: "http", Host: name, Path: rest, RawQuery: r.URL.RawQuery}
			pr.Out.Host = name
			pr.Out.Header.Del("Forwarded")
		},
		Transport:     oneConn(conn),
		FlushInterval: -1,
		ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
			if why := rel.sess.Ending(); why != "" {
				err = errors.New(why)
			}
			reason = err.Error()
			if !errors.Is(err, context.Canceled) {
				fail(http.StatusBadGateway, api.CodeDeviceOffline, fmt.Sprintf("the leaf cluster %q did not answer: %v", name, err))
			}
		},
	}
	proxy.ServeHTTP(w, r)
}

// anonymous is the caller of a relayed request that shows a session's
// token instead of a certificate; the leaf maps it to no role.
const anonymous = "anonymous"

// oneConn is a transport that sends one request on conn, a stream to a
// leaf, and closes it when the answer is read (or the upgrade ends).
func oneConn(conn net.Conn) http.RoundTripper {
	used := false
	return &http.Transport{
		DialContext: func(context.Context, string, string) (net.Conn, error) {
			if used {
				return nil, errors.New("the stream to the leaf cluster is used up")
			}
			used = true
			return conn, nil
		},
		DisableKeepAlives:     true,
		DisableCompression:    true,
		ResponseHeaderTimeout: 0,
	}
}

// clusterCerts answers POST /v1/clusters/NAME/certs (tsh login NAME): it
// asks the leaf what its roles give the user (through the tunnel, as the
// user), and signs an SSH certificate for the user's key whose principals
// are the logins the leaf allows and whose key ID is the name the leaf
// knows the user by (api.RemoteUser). The leaf's devices accept it because
// the leaf trusts this fleet's user CA; the leaf still decides every
// connection.
func (s *Server) clusterCerts(w http.ResponseWriter, r *http.Request, c *caller) {
	name := r.PathValue("name")
	var req api.ClusterCertsRequest
	if !readJSON(w, r, &req) {
		return
	}
	if c.checker == nil || c.remote != nil {
		writeError(w, http.StatusForbidden, api.CodeForbidden, "only this fleet's users get certificates for a leaf cluster: run tsh login")
		return
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(req.SSHPublicKey))
	if err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, "bad ssh_public_key: "+err.Error())
		return
	}
	refuse := func(ref *broker.Refusal) {
		status, code := refusalStatus(ref.Status)
		writeError(w, status, code, ref.Msg)
	}
	rel, conn, ok := s.openRelay(r.Context(), r, c, name, "POST certs", refuse)
	if !ok {
		return
	}
	who, err := askWhoami(r.Context(), conn, name)
	conn.Close()
	rel.sess.DoneSilently("")
	if err != nil {
		writeLeafError(w, name, err)
		return
	}
	if want := api.RemoteUser(s.Cluster, c.user.Name); who.User != want {
		writeError(w, http.StatusBadGateway, api.CodeInternal, fmt.Sprintf("the leaf cluster %q knows you as %q, not %q: its fleetd and this one disagree", name, who.User, want))
		return
	}
	logins := who.Logins
	if len(logins) == 0 {
		// A certificate needs a principal; this one is no login anywhere.
		logins = []string{noLogin}
	}
	ttl := time.Until(c.id.Expires)
	if ttl <= 0 {
		writeError(w, http.StatusUnauthorized, api.CodeUnauthorized, "your certificate expired: run tsh login")
		return
	}
	cert, err := s.CA.SignUserSSH(pub, who.User, logins, ttl)
	if err != nil {
		writeError(w, http.StatusBadRequest, api.CodeBadRequest, err.Error())
		return
	}
	resp := api.ClusterCertsResponse{Cluster: name, User: who.User, Roles: who.Roles, Logins: who.Logins,
		SSHCert: string(ssh.MarshalAuthorizedKey(cert)), HostCAKeys: rel.g.Leaf.HostCAKeys, Expires: c.id.Expires}
	s.record(r.Context(), &proto.AuditEvent{Type: proto.EventCertIssued, User: c.name(), Addr: r.RemoteAddr,
		Fields: map[string]string{"kind": "cluster", "cluster": name, "logins": strings.Join(who.Logins, ",")}})
	writeJSON(w, http.StatusOK, resp)
}

// noLogin is the principal of a certificate for a leaf that allows the
// user no login (only Kubernetes, say): OpenSSH reads an empty list as
// "any", so there must be one, and this names no account.
const noLogin = "remoteler-no-login"

// askWhoami sends GET /v1/whoami on conn, a stream to a leaf, and reads
// the answer: an *api.Error when the leaf refuses.
func askWhoami(ctx context.Context, conn net.Conn, leaf string) (*api.Whoami, error) {
	var who api.Whoami
	if err := askLeaf(ctx, conn, leaf, api.PathWhoami, &who); err != nil {
		return nil, err
	}
	return &who, nil
}

// askLeaf sends GET path on conn, a stream to a leaf, and decodes the
// answer into out: an *api.Error when the leaf refuses.
func askLeaf(ctx context.Context, conn net.Conn, leaf, path string, out any) error {
	if d, ok := ctx.Deadline(); ok {
		conn.SetDeadline(d)
	} else {
		conn.SetDeadline(time.Now().Add(30 * time.Second))
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+leaf+path, nil)
	req.Header.Set("Connection", "close")
	if err := req.Write(conn); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var ae api.Error
		if json.Unmarshal(body, &ae) != nil || ae.Message == "" {
			ae = api.Error{Code: api.CodeInternal, Message: resp.Status}
		}
		return &ae
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("decode the leaf's answer to %s: %w", path, err)
	}
	return nil
}

// writeLeafError answers a user's request that leaf refused (its refusal,
// 401 or 403, with its message) or did not answer (502).
func writeLeafError(w http.ResponseWriter, leaf string, err error) {
	var ae *api.Error
	if !errors.As(err, &ae) {
		writeError(w, http.StatusBadGateway, api.CodeDeviceOffline, fmt.Sprintf("the leaf cluster %q did not answer: %v", leaf, err))
		return
	}
	status := http.StatusForbidden
	if ae.Code == api.CodeUnauthorized {
		status = http.StatusUnauthorized
	}
	writeError(w, status, ae.Code, fmt.Sprintf("the leaf cluster %q refused you: %s", leaf, ae.Message))
}
