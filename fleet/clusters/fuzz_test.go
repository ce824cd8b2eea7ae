package clusters

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/lifecycle"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/fleet/tokens"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/pkitest"
)

// fuzzRegistry is a root's registry on the in-memory store (the store
// contract's test double: a fuzz run makes thousands of joins).
func fuzzRegistry(f *testing.F) (*Registry, *tokens.Service, *ca.Authority) {
	f.Helper()
	st := memstore.New()
	auth, err := ca.LoadOrCreate(context.Background(), st, "root", time.Now)
	if err != nil {
		f.Fatal(err)
	}
	toks := &tokens.Service{Store: st}
	return New(Config{Store: st, CA: auth, Tokens: toks, Cluster: "root"}), toks, auth
}

// FuzzJoinRequest feeds a leaf's join request (the network's bytes, as
// the API decoded them) with a good token: a join is refused with a
// *lifecycle.JoinError, or issues a cluster certificate for exactly the
// name asked and keeps host CA keys that parse.
func FuzzJoinRequest(f *testing.F) {
	reg, toks, auth := fuzzRegistry(f)
	key := leafKey(f)
	host := string(ssh.MarshalAuthorizedKey(pkitest.SSHSigner(f).PublicKey()))
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add("leaf", "root", csr, host, "")
	f.Add("leaf-2.site", "root", csr, host+"\n"+host, "x")
	f.Add("Leaf", "root", []byte("junk"), "ssh-ed25519 AAAA", "")
	f.Add("root", "root", csr[:len(csr)/2], "", "")
	f.Fuzz(func(t *testing.T, name, root string, csr []byte, key1, key2 string) {
		ctx := context.Background()
		tok, err := toks.Add(ctx, api.AddTokenRequest{Type: api.TokenTrustedCluster})
		if err != nil {
			t.Fatal(err)
		}
		req := &api.ClusterJoinRequest{Token: tok.Token, Cluster: name, Root: root, CSR: csr, HostCAKeys: []string{key1, key2}}
		resp, err := reg.Join(ctx, req, "127.0.0.1:1")
		if err != nil {
			var je *lifecycle.JoinError
			if !errors.As(err, &je) || je.Msg == "" {
				t.Fatalf("Join = %v; want a *lifecycle.JoinError with a message", err)
			}
			return
		}
		defer reg.Delete(ctx, name)
		cert, err := x509.ParseCertificate(resp.Cert)
		if err != nil {
			t.Fatal(err)
		}
		id, err := auth.Identify(cert)
		if err != nil || id.Kind != ca.KindCluster || id.Name != name {
			t.Fatalf("joined %q and got a certificate for %+v, %v", name, id, err)
		}
		c, err := reg.Get(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range c.HostCAKeys {
			if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil {
				t.Fatalf("kept host CA key %q that does not parse: %v", k, err)
			}
		}
	})
}

// FuzzClusterInfo feeds a leaf's cluster-info (its host CA keys, from the
// tunnel) to the registry: it is refused as a bad request, or the keys it
// keeps parse.
func FuzzClusterInfo(f *testing.F) {
	reg, toks, _ := fuzzRegistry(f)
	ctx := context.Background()
	tok, err := toks.Add(ctx, api.AddTokenRequest{Type: api.TokenTrustedCluster})
	if err != nil {
		f.Fatal(err)
	}
	key := leafKey(f)
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := reg.Join(ctx, &api.ClusterJoinRequest{Token: tok.Token, Cluster: "leaf", Root: "root", CSR: csr}, "127.0.0.1:1"); err != nil {
		f.Fatal(err)
	}
	var cfg tunnelsrv.Config
	cfg.OnHello = func(context.Context, string, net.Addr, *proto.Hello) (*proto.HelloAck, error) { return nil, nil }
	reg.Configure(&cfg)
	good := pkitest.SSHSigner(f).PublicKey().Marshal()
	f.Add("leaf", good, []byte{})
	f.Add("leaf", good[:len(good)-1], good)
	f.Add("", []byte{0, 0, 0, 11, 's', 's', 'h'}, []byte(nil))
	f.Fuzz(func(t *testing.T, cluster string, k1, k2 []byte) {
		m, err := cfg.OnMessage(ctx, TunnelID("leaf"), &proto.ClusterInfo{Cluster: cluster, HostCAKeys: [][]byte{k1, k2}})
		if err != nil {
			var pe *proto.Error
			if !errors.As(err, &pe) || pe.Code != proto.CodeBadRequest {
				t.Fatalf("OnMessage = %v; want a bad request", err)
			}
			return
		}
		if info, ok := m.(*proto.ClusterInfo); !ok || info.Cluster != "root" {
			t.Fatalf("OnMessage answered %+v", m)
		}
		c, err := reg.Get(ctx, "leaf")
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range c.HostCAKeys {
			if _, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k)); err != nil {
				t.Fatalf("kept host CA key %q that does not parse: %v", k, err)
			}
		}
	})
}
