package trust_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/clusters"
	"remoteler.dev/edge/fleet/httpapi"
	"remoteler.dev/edge/fleet/rolemap"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/boltstore"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/fleet/tokens"
	"remoteler.dev/edge/fleet/trust"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/audittest"
	"remoteler.dev/edge/tools/logtest"
)

// root is a root fleet's HTTPS API on loopback: the real join endpoint
// (fleet/httpapi) in front of the real leaf registry (fleet/clusters).
type root struct {
	addr string
	pin  string
	reg  *clusters.Registry
	toks *tokens.Service
}

func startRoot(t *testing.T) *root {
	t.Helper()
	ctx := context.Background()
	st := memstore.New()
	auth, err := ca.LoadOrCreate(ctx, st, "root", time.Now)
	if err != nil {
		t.Fatal(err)
	}
	toks := &tokens.Service{Store: st}
	reg := clusters.New(clusters.Config{Store: st, CA: auth, Tokens: toks, Cluster: "root"})
	api := &httpapi.Server{CA: auth, Tokens: toks, Cluster: "root", Clusters: reg, Logger: logtest.Logger(t)}
	cert, err := auth.ServerCert([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(api.Handler())
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return &root{addr: srv.Listener.Addr().String(), pin: auth.Pin(), reg: reg, toks: toks}
}

func (r *root) token(t *testing.T) string {
	t.Helper()
	tok, err := r.toks.Add(context.Background(), api.AddTokenRequest{Type: api.TokenTrustedCluster})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Token
}

// leaf is a leaf fleet's trust on a bbolt store.
type leaf struct {
	svc   *trust.Service
	st    store.Store
	trail *audittest.Recorder
}

func newLeaf(t *testing.T, name string) *leaf {
	t.Helper()
	st, err := boltstore.Open(filepath.Join(t.TempDir(), "fleet.db"), boltstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	auth, err := ca.LoadOrCreate(context.Background(), st, name, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	l := &leaf{st: st, trail: &audittest.Recorder{}}
	l.svc = trust.New(trust.Config{Store: st, CA: auth, Cluster: name, Version: "v1", Handler: http.NotFoundHandler(),
		DialTimeout: 30 * time.Second, Audit: l.trail, Logger: logtest.Logger(t)})
	return l
}

var roleMap = []api.RoleMapping{
	{Remote: "admin", Local: []string{"admin"}},
	{Remote: "site-*", Local: []string{"access"}},
	{Remote: "^ops-(.*)$", Local: []string{"operator-$1"}},
}

func resource(r *root, token, pin string) api.TrustedCluster {
	return api.TrustedCluster{Kind: api.TrustedClusterKind, Version: "v1", Metadata: api.Metadata{Name: "root"},
		Spec: api.TrustedClusterSpec{RootAddr: r.addr, Token: token, CAPin: pin, RoleMap: roleMap}}
}

func invalid(t *testing.T, err error, want string) {
	t.Helper()
	var ie *trust.InvalidError
	if !errors.As(err, &ie) || !strings.Contains(ie.Msg, want) {
		t.Fatalf("got %v; want an *InvalidError saying %q", err, want)
	}
}

// TestPut joins a real root: a wrong CA pin is refused before the token
// leaves the leaf, a right one joins once, and the token is spent.
func TestPut(t *testing.T) {
	ctx := context.Background()
	r := startRoot(t)
	tok := r.token(t)

	t.Run("wrong CA pin", func(t *testing.T) {
		l := newLeaf(t, "leaf")
		other := startRoot(t) // another fleet's CA
		err := l.svc.Put(ctx, resource(r, tok, other.pin), "admin:alice", "127.0.0.1:1")
		invalid(t, err, "spec.ca_pin")
		if ok, err := l.svc.Trusts(ctx, "root"); ok || err != nil {
			t.Errorf("Trusts after a refused join = %v, %v", ok, err)
		}
		if e, ok := l.trail.Find(proto.EventTrustPut); !ok || e.Outcome != proto.OutcomeFailure || e.User != "admin:alice" {
			t.Errorf("the refused join was not recorded: %+v", l.trail.Events())
		}
		if _, err := r.reg.Get(ctx, "leaf"); err == nil {
			t.Error("the root registered a leaf that did not trust its CA")
		}
	})

	l := newLeaf(t, "leaf")
	if err := l.svc.Put(ctx, resource(r, tok, r.pin), "admin:alice", "127.0.0.1:1"); err != nil {
		t.Fatalf("Put with the right pin (and the token the wrong-pin Put kept): %v", err)
	}
	if ok, err := l.svc.Trusts(ctx, "root"); !ok || err != nil {
		t.Fatalf("Trusts = %v, %v", ok, err)
	}
	if _, err := r.reg.Get(ctx, "leaf"); err != nil {
		t.Errorf("the root does not hold the leaf: %v", err)
	}
	res, err := l.svc.Resources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 1 || res[0].Spec.Token != "" || res[0].Spec.CAPin != r.pin {
		t.Errorf("Resources = %+v; want the trust without its token", res)
	}
	if e := l.trail.Last(); e.Type != proto.EventTrustPut || e.Outcome != proto.OutcomeSuccess || e.Fields["ca_pin"] != r.pin {
		t.Errorf("the join was not recorded: %+v", e)
	}

	t.Run("used token", func(t *testing.T) {
		l2 := newLeaf(t, "leaf-two")
		invalid(t, l2.svc.Put(ctx, resource(r, tok, r.pin), "admin:bob", "127.0.0.1:1"), "no uses left")
	})
	t.Run("another root's name", func(t *testing.T) {
		l2 := newLeaf(t, "leaf-three")
		tc := resource(r, r.token(t), r.pin)
		tc.Metadata.Name = "elsewhere"
		invalid(t, l2.svc.Put(ctx, tc, "admin:bob", "127.0.0.1:1"), "refused to join")
	})
	t.Run("again at another pin", func(t *testing.T) {
		other := startRoot(t)
		invalid(t, l.svc.Put(ctx, resource(r, "", other.pin), "admin:alice", "127.0.0.1:1"), "remove it")
	})
	t.Run("again with a new role_map", func(t *testing.T) {
		tc := resource(r, "", r.pin)
		tc.Spec.RoleMap = []api.RoleMapping{{Remote: "dev", Local: []string{"access"}}}
		if err := l.svc.Put(ctx, tc, "admin:alice", "127.0.0.1:1"); err != nil {
			t.Fatal(err)
		}
		got, err := l.svc.Roles(ctx, "root", []string{"dev", "admin"})
		if err != nil || !slices.Equal(got, []string{"access"}) {
			t.Errorf("Roles after the new map = %q, %v; want only the new map's", got, err)
		}
	})
}

func TestPutRefusesBadResources(t *testing.T) {
	ctx := context.Background()
	l := newLeaf(t, "leaf")
	good := api.TrustedCluster{Kind: api.TrustedClusterKind, Version: "v1", Metadata: api.Metadata{Name: "root"},
		Spec: api.TrustedClusterSpec{RootAddr: "127.0.0.1:9", Token: "jt_x", CAPin: "sha256:" + strings.Repeat("ab", 32), RoleMap: roleMap}}
	tests := []struct {
		name   string
		change func(*api.TrustedCluster)
		want   string
	}{
		{"kind", func(tc *api.TrustedCluster) { tc.Kind = "role" }, "kind"},
		{"version", func(tc *api.TrustedCluster) { tc.Version = "v2" }, "version"},
		{"name", func(tc *api.TrustedCluster) { tc.Metadata.Name = "Root!" }, "metadata.name"},
		{"own name", func(tc *api.TrustedCluster) { tc.Metadata.Name = "leaf" }, "cannot trust itself"},
		{"address", func(tc *api.TrustedCluster) { tc.Spec.RootAddr = "root" }, "spec.root_addr"},
		{"pin", func(tc *api.TrustedCluster) { tc.Spec.CAPin = "sha1:00" }, "spec.ca_pin"},
		{"no role_map", func(tc *api.TrustedCluster) { tc.Spec.RoleMap = nil }, "role_map is empty"},
		{"bad role_map", func(tc *api.TrustedCluster) {
			tc.Spec.RoleMap = []api.RoleMapping{{Remote: "^x(.*)", Local: []string{"a"}}}
		}, "must end with $"},
		{"no token", func(tc *api.TrustedCluster) { tc.Spec.Token = "" }, "spec.token is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tc := good
			tt.change(&tc)
			invalid(t, l.svc.Put(ctx, tc, "admin:alice", "127.0.0.1:1"), tt.want)
			if ok, _ := l.svc.Trusts(ctx, tc.Metadata.Name); ok {
				t.Error("a refused resource is trusted")
			}
		})
	}
}

// TestResolve maps a root's callers' roles with the trust's role_map.
func TestResolve(t *testing.T) {
	ctx := context.Background()
	r := startRoot(t)
	l := newLeaf(t, "leaf")
	tc := resource(r, r.token(t), r.pin)
	tc.Spec.AuditSearch = true
	if err := l.svc.Put(ctx, tc, "admin:alice", "127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		caller  trust.Caller
		want    []string
		wantErr string
	}{
		{"exact", trust.Caller{Root: "root", Identity: proto.Identity{User: "alice", Roles: []string{"admin"}}}, []string{"admin"}, ""},
		{"glob", trust.Caller{Root: "root", Identity: proto.Identity{User: "bob", Roles: []string{"site-north"}}}, []string{"access"}, ""},
		{"regexp capture", trust.Caller{Root: "root", Identity: proto.Identity{User: "carol", Roles: []string{"ops-north"}}}, []string{"operator-north"}, ""},
		{"several", trust.Caller{Root: "root", Identity: proto.Identity{User: "dan", Roles: []string{"ops-x", "admin", "nope"}}}, []string{"admin", "operator-x"}, ""},
		{"nothing maps", trust.Caller{Root: "root", Identity: proto.Identity{User: "eve", Roles: []string{"guest"}}}, nil,
			"none of your roles at root (roles guest) maps to a role of this cluster"},
		{"no roles", trust.Caller{Root: "root", Identity: proto.Identity{User: "eve"}}, nil, "you hold no role there"},
		{"admin identity maps to no roles", trust.Caller{Root: "root", Identity: proto.Identity{User: "admin:root", Admin: true, Roles: []string{"admin"}}}, nil, ""},
		{"untrusted root", trust.Caller{Root: "elsewhere", Identity: proto.Identity{User: "alice", Roles: []string{"admin"}}}, nil,
			`no longer trusts the cluster "elsewhere"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			roles, audit, err := l.svc.Resolve(ctx, &tt.caller)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || roles != nil {
					t.Fatalf("Resolve = %q, %v; want a refusal saying %q", roles, err, tt.wantErr)
				}
				if strings.Contains(tt.wantErr, "maps") {
					var nm *rolemap.NoMatchError
					if !errors.As(err, &nm) {
						t.Errorf("the refusal is %T, want *rolemap.NoMatchError", err)
					}
				}
				return
			}
			if err != nil || !slices.Equal(roles, tt.want) || !audit {
				t.Errorf("Resolve = %q, %v, %v; want %q and audit search", roles, audit, err, tt.want)
			}
		})
	}
}

// TestDelete: removing the trust refuses the root's callers at once, and
// it is recorded.
func TestDelete(t *testing.T) {
	ctx := context.Background()
	r := startRoot(t)
	l := newLeaf(t, "leaf")
	if err := l.svc.Put(ctx, resource(r, r.token(t), r.pin), "admin:alice", "127.0.0.1:1"); err != nil {
		t.Fatal(err)
	}
	alice := &trust.Caller{Root: "root", Identity: proto.Identity{User: "alice", Roles: []string{"admin"}}}
	if _, _, err := l.svc.Resolve(ctx, alice); err != nil {
		t.Fatal(err)
	}
	if err := l.svc.Delete(ctx, "root", "admin:alice", "127.0.0.1:2"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := l.svc.Resolve(ctx, alice); err == nil || !strings.Contains(err.Error(), "no longer trusts") {
		t.Errorf("Resolve after Delete = %v; want a refusal saying the trust is gone", err)
	}
	if ok, err := l.svc.Trusts(ctx, "root"); ok || err != nil {
		t.Errorf("Trusts after Delete = %v, %v", ok, err)
	}
	if keys := l.svc.UserCAKeys("root"); keys != nil {
		t.Error("the removed root's user CA keys are still accepted")
	}
	e, ok := l.trail.Find(proto.EventClusterDelete)
	if !ok || e.User != "admin:alice" || e.Addr != "127.0.0.1:2" || e.Fields["cluster"] != "root" || e.Fields["kind"] != api.ClusterRoot {
		t.Errorf("the removal was not recorded: %+v", l.trail.Events())
	}
	for _, name := range []string{"root", "Bad Name"} {
		if err := l.svc.Delete(ctx, name, "admin:alice", "127.0.0.1:2"); !errors.Is(err, trust.ErrNotFound) {
			t.Errorf("Delete(%q) = %v; want ErrNotFound", name, err)
		}
	}
}

// FuzzJoinResponse feeds the root's answer to a join (network bytes, from
// a server whose CA has the pin) to Put: it joins and keeps a certificate
// and user CA keys that parse, or refuses with an *InvalidError.
func FuzzJoinResponse(f *testing.F) {
	ctx := context.Background()
	auth, err := ca.LoadOrCreate(ctx, memstore.New(), "root", time.Now)
	if err != nil {
		f.Fatal(err)
	}
	var answer atomic.Pointer[[]byte]
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(*answer.Load())
	}))
	cert, err := auth.ServerCert([]string{"127.0.0.1"}, time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	f.Cleanup(srv.Close)
	leafCA, err := ca.LoadOrCreate(ctx, memstore.New(), "leaf", time.Now)
	if err != nil {
		f.Fatal(err)
	}
	svc := trust.New(trust.Config{Store: memstore.New(), CA: leafCA, Cluster: "leaf", Handler: http.NotFoundHandler()})
	tc := api.TrustedCluster{Kind: api.TrustedClusterKind, Version: "v1", Metadata: api.Metadata{Name: "root"},
		Spec: api.TrustedClusterSpec{RootAddr: srv.Listener.Addr().String(), Token: "jt_x", CAPin: auth.Pin(), RoleMap: roleMap}}

	userKey := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(auth.UserCAKeys()[0])))
	good, _ := json.Marshal(api.ClusterJoinResponse{Cluster: "root", Cert: cert.Certificate[0], CACerts: [][]byte{auth.CACerts()[0].Raw}, UserCAKeys: []string{userKey}})
	f.Add(good)
	f.Add([]byte(`{"cluster":"other"}`))
	f.Add([]byte(`{"cluster":"root","cert":"AAAA","user_ca_keys":["ssh-ed25519 AAAA"]}`))
	f.Add([]byte(`{`))
	f.Fuzz(func(t *testing.T, b []byte) {
		answer.Store(&b)
		err := svc.Put(ctx, tc, "admin:alice", "127.0.0.1:1")
		if err != nil {
			var ie *trust.InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("Put = %v (%T); want an *InvalidError", err, err)
			}
			if ok, _ := svc.Trusts(ctx, "root"); ok {
				t.Fatal("a refused join left a trust")
			}
			return
		}
		defer svc.Delete(ctx, "root", "admin:alice", "127.0.0.1:1")
		for _, k := range svc.UserCAKeys("root") {
			if _, err := ssh.ParsePublicKey(k); err != nil {
				t.Fatalf("kept a user CA key that does not parse: %v", err)
			}
		}
	})
}
