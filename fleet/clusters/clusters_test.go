package clusters

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/lifecycle"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/boltstore"
	"remoteler.dev/edge/fleet/tokens"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/logtest"
	"remoteler.dev/edge/tools/pkitest"
)

// fixture is a root fleet's registry on the real parts: a bbolt store
// and an audit trail in a temporary directory, the fleet's CA and tokens.
type fixture struct {
	reg   *Registry
	st    store.Store
	ca    *ca.Authority
	toks  *tokens.Service
	trail *audit.Log
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	st, err := boltstore.Open(filepath.Join(dir, "fleet.db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	trail, err := audit.Open(audit.Config{Path: filepath.Join(dir, "audit.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { trail.Close() })
	auth, err := ca.LoadOrCreate(ctx, st, "root", time.Now)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{st: st, ca: auth, trail: trail, toks: &tokens.Service{Store: st}}
	f.reg = New(Config{Store: st, CA: auth, Tokens: f.toks, Cluster: "root",
		Audit: &audit.Recorder{Log: trail, Cluster: "root"}, Logger: logtest.Logger(t)})
	return f
}

// token adds a token of type typ, good for one join within ttl.
func (f *fixture) token(t *testing.T, typ string, ttl time.Duration) string {
	t.Helper()
	tok, err := f.toks.Add(context.Background(), api.AddTokenRequest{Type: typ, Uses: 1, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Token
}

// events returns the trail's events of type typ and outcome.
func (f *fixture) events(t *testing.T, typ, outcome string) []proto.AuditEvent {
	t.Helper()
	recs, _, err := f.trail.Search(context.Background(), audit.Query{Type: typ})
	if err != nil {
		t.Fatal(err)
	}
	var out []proto.AuditEvent
	for _, r := range recs {
		if r.Event.Outcome == outcome {
			out = append(out, r.Event)
		}
	}
	return out
}

// leafKey is a leaf's tunnel key.
func leafKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func csrFor(t testing.TB, key *ecdsa.PrivateKey) []byte {
	t.Helper()
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "leaf"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

// joinRequest is a well-formed join of the leaf called name.
func joinRequest(t *testing.T, name, token string, key *ecdsa.PrivateKey) *api.ClusterJoinRequest {
	t.Helper()
	host := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pkitest.SSHSigner(t).PublicKey())))
	return &api.ClusterJoinRequest{Token: token, Cluster: name, Root: "root", CSR: csrFor(t, key), HostCAKeys: []string{host}, Version: "v1"}
}

// csrTampered returns csr with its signature's last byte changed: the
// signature no longer verifies.
func csrTampered(t *testing.T, csr []byte) []byte {
	t.Helper()
	out := append([]byte(nil), csr...)
	out[len(out)-1] ^= 0x01
	return out
}

// csrOtherKey returns a CSR that names the public key of victim but is
// signed by the attacker's key: it proves possession of no key it names.
func csrOtherKey(t *testing.T, victim, attacker *ecdsa.PrivateKey) []byte {
	t.Helper()
	type csrASN1 struct {
		TBS    asn1.RawValue
		SigAlg pkix.AlgorithmIdentifier
		Sig    asn1.BitString
	}
	var v, a csrASN1
	if _, err := asn1.Unmarshal(csrFor(t, victim), &v); err != nil {
		t.Fatal(err)
	}
	if _, err := asn1.Unmarshal(csrFor(t, attacker), &a); err != nil {
		t.Fatal(err)
	}
	out, err := asn1.Marshal(csrASN1{TBS: v.TBS, SigAlg: a.SigAlg, Sig: a.Sig})
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := x509.ParseCertificateRequest(out)
	if err != nil {
		t.Fatal(err)
	}
	if !parsed.PublicKey.(*ecdsa.PublicKey).Equal(victim.Public()) {
		t.Fatal("the spliced CSR does not name the victim's key")
	}
	return out
}

// joined joins the leaf called name and returns its tunnel certificate.
func (f *fixture) joined(t *testing.T, name string) *x509.Certificate {
	t.Helper()
	resp, err := f.reg.Join(context.Background(), joinRequest(t, name, f.token(t, api.TokenTrustedCluster, time.Hour), leafKey(t)), "127.0.0.1:40000")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(resp.Cert)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func TestJoin(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	key := leafKey(t)
	req := joinRequest(t, "leaf", f.token(t, api.TokenTrustedCluster, time.Hour), key)
	resp, err := f.reg.Join(ctx, req, "127.0.0.1:40000")
	if err != nil {
		t.Fatal(err)
	}
	if resp.Cluster != "root" || len(resp.CACerts) == 0 || len(resp.UserCAKeys) == 0 {
		t.Errorf("join response %+v lacks the root's CAs", resp)
	}
	cert, err := x509.ParseCertificate(resp.Cert)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.PublicKey.(*ecdsa.PublicKey).Equal(key.Public()) {
		t.Error("the certificate is not for the key the CSR proved")
	}
	id, err := f.ca.Identify(cert)
	if err != nil || id.Kind != ca.KindCluster || id.Name != "leaf" {
		t.Errorf("the certificate identifies as %+v, %v; want cluster leaf", id, err)
	}
	c, err := f.reg.Get(ctx, "leaf")
	if err != nil {
		t.Fatal(err)
	}
	if c.TokenID != tokens.IDOf(req.Token) || len(c.HostCAKeys) != 1 || c.HostCAKeys[0] != req.HostCAKeys[0] {
		t.Errorf("stored %+v: want the token's ID and the leaf's host CA key", c)
	}
	got := f.events(t, proto.EventClusterJoin, proto.OutcomeSuccess)
	if len(got) != 1 || got[0].Fields["cluster"] != "leaf" || got[0].Fields["token_id"] != c.TokenID || got[0].Addr != "127.0.0.1:40000" {
		t.Errorf("audit trail holds %+v; want one successful join of leaf", got)
	}
}

func TestJoinRefusals(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	used := f.token(t, api.TokenTrustedCluster, time.Hour)
	if _, err := f.reg.Join(ctx, joinRequest(t, "first", used, leafKey(t)), "127.0.0.1:40000"); err != nil {
		t.Fatal(err)
	}
	// A token made an hour ago to live a minute.
	hourAgo := &tokens.Service{Store: f.st, Now: func() time.Time { return time.Now().Add(-time.Hour) }}
	old, err := hourAgo.Add(ctx, api.AddTokenRequest{Type: api.TokenTrustedCluster, Uses: 1, TTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	expired := old.Token
	deviceTok := f.token(t, api.TokenDevice, time.Hour)
	victim, attacker := leafKey(t), leafKey(t)

	tests := []struct {
		name     string
		req      func() *api.ClusterJoinRequest
		wantCode string
		wantMsg  string
	}{
		{"used token", func() *api.ClusterJoinRequest { return joinRequest(t, "second", used, leafKey(t)) },
			api.CodeUnauthorized, "no uses left"},
		{"expired token", func() *api.ClusterJoinRequest { return joinRequest(t, "late", expired, leafKey(t)) },
			api.CodeUnauthorized, "expired"},
		{"device token", func() *api.ClusterJoinRequest { return joinRequest(t, "sneaky", deviceTok, leafKey(t)) },
			api.CodeUnauthorized, "another type"},
		{"unknown token", func() *api.ClusterJoinRequest {
			return joinRequest(t, "guess", "jt_0000000000000000000000000000000000000000000", leafKey(t))
		}, api.CodeUnauthorized, "not recognised"},
		{"tampered CSR signature", func() *api.ClusterJoinRequest {
			r := joinRequest(t, "tampered", f.token(t, api.TokenTrustedCluster, time.Hour), leafKey(t))
			r.CSR = csrTampered(t, r.CSR)
			return r
		}, api.CodeBadRequest, "proof of key possession"},
		{"CSR for a key it does not hold", func() *api.ClusterJoinRequest {
			r := joinRequest(t, "spliced", f.token(t, api.TokenTrustedCluster, time.Hour), victim)
			r.CSR = csrOtherKey(t, victim, attacker)
			return r
		}, api.CodeBadRequest, "proof of key possession"},
		{"no CSR", func() *api.ClusterJoinRequest {
			r := joinRequest(t, "nocsr", f.token(t, api.TokenTrustedCluster, time.Hour), leafKey(t))
			r.CSR = nil
			return r
		}, api.CodeBadRequest, "csr"},
		{"another root", func() *api.ClusterJoinRequest {
			r := joinRequest(t, "lost", f.token(t, api.TokenTrustedCluster, time.Hour), leafKey(t))
			r.Root = "elsewhere"
			return r
		}, api.CodeBadRequest, `not "elsewhere"`},
		{"the root's own name", func() *api.ClusterJoinRequest {
			return joinRequest(t, "root", f.token(t, api.TokenTrustedCluster, time.Hour), leafKey(t))
		}, api.CodeBadRequest, "another cluster name"},
		{"bad name", func() *api.ClusterJoinRequest {
			return joinRequest(t, "Leaf One", f.token(t, api.TokenTrustedCluster, time.Hour), leafKey(t))
		}, api.CodeBadRequest, "cluster name"},
		{"name taken", func() *api.ClusterJoinRequest {
			return joinRequest(t, "first", f.token(t, api.TokenTrustedCluster, time.Hour), leafKey(t))
		}, api.CodeConflict, "has joined already"},
		{"bad host CA key", func() *api.ClusterJoinRequest {
			r := joinRequest(t, "badkey", f.token(t, api.TokenTrustedCluster, time.Hour), leafKey(t))
			r.HostCAKeys = []string{"ssh-ed25519 AAAA"}
			return r
		}, api.CodeBadRequest, "host CA keys"},
		{"too many host CA keys", func() *api.ClusterJoinRequest {
			r := joinRequest(t, "manykeys", f.token(t, api.TokenTrustedCluster, time.Hour), leafKey(t))
			for range proto.MaxClusterKeys {
				r.HostCAKeys = append(r.HostCAKeys, r.HostCAKeys[0])
			}
			return r
		}, api.CodeBadRequest, "at most"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := tt.req()
			before := len(f.events(t, proto.EventClusterJoin, proto.OutcomeDenied))
			resp, err := f.reg.Join(ctx, req, "127.0.0.1:40001")
			var je *lifecycle.JoinError
			if !errors.As(err, &je) || je.Code != tt.wantCode || !strings.Contains(je.Msg, tt.wantMsg) {
				t.Fatalf("Join = %+v, %v; want a refusal %s saying %q", resp, err, tt.wantCode, tt.wantMsg)
			}
			if resp != nil {
				t.Errorf("a refused join got a response: %+v", resp)
			}
			denied := f.events(t, proto.EventClusterJoin, proto.OutcomeDenied)
			if len(denied) != before+1 || denied[len(denied)-1].Addr != "127.0.0.1:40001" || denied[len(denied)-1].Message == "" {
				t.Errorf("the refusal was not recorded with its address and reason: %+v", denied)
			}
			if req.Cluster != "first" {
				if _, err := f.reg.Get(ctx, req.Cluster); !errors.Is(err, ErrNotFound) {
					t.Errorf("a refused leaf is registered: %v", err)
				}
			}
		})
	}
	// A token of the wrong type keeps its use: the device can still join
	// with it.
	if _, err := f.toks.Consume(ctx, deviceTok); err != nil {
		t.Errorf("the device token was spent by a refused cluster join: %v", err)
	}
	list, err := f.reg.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Name != "first" {
		t.Errorf("registry holds %+v; want only first", list)
	}
}

// tunnelHooks are the tunnel server's hooks with the registry's routing
// in front of device hooks that record what reached them.
type tunnelHooks struct {
	cfg     tunnelsrv.Config
	mu      sync.Mutex
	devices []string // what reached the device hooks
}

func (h *tunnelHooks) saw(what string) {
	h.mu.Lock()
	h.devices = append(h.devices, what)
	h.mu.Unlock()
}

func (h *tunnelHooks) seen() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.devices...)
}

func newHooks(r *Registry) *tunnelHooks {
	h := &tunnelHooks{}
	h.cfg = tunnelsrv.Config{
		Authenticate: func(tls.ConnectionState) (string, error) {
			h.saw("authenticate")
			return "", errors.New("not a device")
		},
		OnHello: func(_ context.Context, id string, _ net.Addr, _ *proto.Hello) (*proto.HelloAck, error) {
			h.saw("hello " + id)
			return &proto.HelloAck{DeviceID: id}, nil
		},
		Recheck: func(_ context.Context, id string) error { h.saw("recheck " + id); return nil },
		OnRenew: func(_ context.Context, id string, _ *proto.RenewRequest) *proto.RenewResponse {
			h.saw("renew " + id)
			return &proto.RenewResponse{}
		},
		OnAgentStream: func(_ context.Context, id, service string, conn net.Conn) {
			h.saw("stream " + id)
			conn.Close()
		},
	}
	r.Configure(&h.cfg)
	return h
}

func connState(cert *x509.Certificate) tls.ConnectionState {
	return tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
}

var leafAddr = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40002}

func TestTunnelHooks(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	cert := f.joined(t, "leaf")
	h := newHooks(f.reg)

	id, err := h.cfg.Authenticate(connState(cert))
	if err != nil || id != TunnelID("leaf") {
		t.Fatalf("Authenticate(leaf's certificate) = %q, %v; want %q", id, err, TunnelID("leaf"))
	}
	ack, err := h.cfg.OnHello(ctx, id, leafAddr, &proto.Hello{Name: "leaf", AgentVersion: "v2", OS: "linux", Arch: "amd64"})
	if err != nil || ack.DeviceID != TunnelID("leaf") {
		t.Fatalf("OnHello = %+v, %v", ack, err)
	}
	c, err := f.reg.Get(ctx, "leaf")
	if err != nil {
		t.Fatal(err)
	}
	if c.Connects != 1 || c.Version != "v2" || c.Addr != leafAddr.String() || c.LastSeen.IsZero() {
		t.Errorf("after hello the registry holds %+v", c)
	}
	if len(f.events(t, proto.EventClusterOnline, proto.OutcomeSuccess)) != 1 {
		t.Error("the leaf's hello was not recorded")
	}
	if err := h.cfg.Recheck(ctx, id); err != nil {
		t.Errorf("Recheck of a trusted leaf: %v", err)
	}

	t.Run("hello in another leaf's name", func(t *testing.T) {
		_, err := h.cfg.OnHello(ctx, id, leafAddr, &proto.Hello{Name: "other", AgentVersion: "v2", OS: "linux", Arch: "amd64"})
		var pe *proto.Error
		if !errors.As(err, &pe) || pe.Code != proto.CodeForbidden {
			t.Errorf("OnHello(name other) = %v; want forbidden", err)
		}
	})
	t.Run("the root opens no stream from a leaf", func(t *testing.T) {
		a, b := net.Pipe()
		defer b.Close()
		h.cfg.OnAgentStream(ctx, id, "ssh", a)
		if _, err := a.Write([]byte("x")); err == nil {
			t.Error("a leaf's stream was left open")
		}
	})
	t.Run("a leaf's control messages are cluster-info only", func(t *testing.T) {
		_, err := h.cfg.OnMessage(ctx, id, &proto.SessionEnd{SessionID: "s"})
		var pe *proto.Error
		if !errors.As(err, &pe) || pe.Code != proto.CodeBadRequest {
			t.Errorf("OnMessage(session-end) = %v; want bad request", err)
		}
		host := pkitest.SSHSigner(t).PublicKey()
		m, err := h.cfg.OnMessage(ctx, id, &proto.ClusterInfo{Cluster: "leaf", HostCAKeys: [][]byte{host.Marshal()}})
		if err != nil {
			t.Fatal(err)
		}
		info := m.(*proto.ClusterInfo)
		if info.Cluster != "root" || len(info.UserCAKeys) == 0 || len(info.CACerts) == 0 {
			t.Errorf("cluster-info answer %+v lacks the root's keys", info)
		}
		c, _ := f.reg.Get(ctx, "leaf")
		if len(c.HostCAKeys) != 1 || c.HostCAKeys[0] != strings.TrimSpace(string(ssh.MarshalAuthorizedKey(host))) {
			t.Errorf("the leaf's new host CA key was not kept: %q", c.HostCAKeys)
		}
	})
	t.Run("renewal is for the leaf's own name", func(t *testing.T) {
		key := leafKey(t)
		resp := h.cfg.OnRenew(ctx, id, &proto.RenewRequest{CSR: csrFor(t, key)})
		if resp.Err != nil {
			t.Fatal(resp.Err)
		}
		cert, err := x509.ParseCertificate(resp.Cert)
		if err != nil {
			t.Fatal(err)
		}
		if id, err := f.ca.Identify(cert); err != nil || id.Kind != ca.KindCluster || id.Name != "leaf" {
			t.Errorf("renewed certificate identifies as %+v, %v", id, err)
		}
		bad := h.cfg.OnRenew(ctx, id, &proto.RenewRequest{CSR: csrTampered(t, csrFor(t, key))})
		if bad.Err == nil {
			t.Error("a renewal without proof of key possession was signed")
		}
	})
	t.Run("devices keep their hooks", func(t *testing.T) {
		devCert := pkitest.NewCA(t).Client(t, "pi-1")
		if _, err := h.cfg.Authenticate(tls.ConnectionState{PeerCertificates: []*x509.Certificate{devCert.Leaf}}); err == nil {
			t.Error("a certificate from another CA was taken for a leaf")
		}
		h.cfg.OnHello(ctx, "0123", leafAddr, &proto.Hello{})
		h.cfg.Recheck(ctx, "0123")
		h.cfg.OnRenew(ctx, "0123", &proto.RenewRequest{})
		a, b := net.Pipe()
		defer b.Close()
		h.cfg.OnAgentStream(ctx, "0123", "ssh", a)
		want := []string{"authenticate", "hello 0123", "recheck 0123", "renew 0123", "stream 0123"}
		if got := h.seen(); strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("device hooks saw %q; want %q (and nothing of the leaf's)", got, want)
		}
	})
}

// TestDelete: removing a leaf ends the trust. Its certificate, still
// valid as X.509, gets no tunnel, no renewal and no recheck; the refusal
// is recorded; the leaf must join again with a new token.
func TestDelete(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	cert := f.joined(t, "leaf")
	f.joined(t, "other")
	h := newHooks(f.reg)
	id := TunnelID("leaf")

	if err := f.reg.Delete(ctx, "leaf"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.reg.Get(ctx, "leaf"); !errors.Is(err, ErrNotFound) || !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get after Delete = %v; want ErrNotFound", err)
	}
	if err := f.reg.Delete(ctx, "leaf"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete = %v; want ErrNotFound", err)
	}
	if _, err := f.reg.Get(ctx, "other"); err != nil {
		t.Errorf("Delete of leaf removed other: %v", err)
	}

	forbidden := func(t *testing.T, err error) {
		t.Helper()
		var pe *proto.Error
		if !errors.As(err, &pe) || pe.Code != proto.CodeForbidden || !strings.Contains(pe.Message, "no longer trusts") && !strings.Contains(pe.Message, "not trusted") {
			t.Errorf("got %v; want forbidden, saying the trust is gone", err)
		}
	}
	tests := []struct {
		name string
		call func() error
	}{
		{"hello", func() error {
			_, err := h.cfg.OnHello(ctx, id, leafAddr, &proto.Hello{Name: "leaf", AgentVersion: "v2", OS: "linux", Arch: "amd64"})
			return err
		}},
		{"recheck", func() error { return h.cfg.Recheck(ctx, id) }},
		{"renew", func() error {
			if resp := h.cfg.OnRenew(ctx, id, &proto.RenewRequest{CSR: csrFor(t, leafKey(t))}); resp.Err != nil {
				return resp.Err
			}
			return nil
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got, err := h.cfg.Authenticate(connState(cert)); err != nil || got != id {
				t.Fatalf("Authenticate = %q, %v", got, err)
			}
			forbidden(t, tt.call())
		})
	}
	denied := f.events(t, proto.EventAccessDenied, proto.OutcomeDenied)
	if len(denied) != 1 || denied[0].Fields["cluster"] != "leaf" || denied[0].Fields["action"] != "tunnel" {
		t.Errorf("the removed leaf's tunnel refusal was not recorded: %+v", denied)
	}
	if c, err := f.reg.Get(ctx, "leaf"); err == nil {
		t.Errorf("a hook of the removed leaf wrote it back: %+v", c)
	}
	h.cfg.OnDisconnect(id, time.Time{}, errors.New("gone"))
	if _, err := f.reg.Get(ctx, "leaf"); err == nil {
		t.Error("the removed leaf's disconnect wrote it back")
	}

	if _, err := f.reg.Join(ctx, joinRequest(t, "leaf", f.token(t, api.TokenTrustedCluster, time.Hour), leafKey(t)), "127.0.0.1:40000"); err != nil {
		t.Errorf("the removed leaf cannot join again with a new token: %v", err)
	}
}
