package backend

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"remoteler.dev/edge/tools/etcdcluster"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name      string
		cfg       Config
		kind      Kind
		path      string
		endpoints []string
		prefix    string
		wantErr   string
	}{
		{"default", Config{DataDir: "/var/lib/fleetd"}, Bolt, "/var/lib/fleetd/fleet.db", nil, "", ""},
		{"bolt", Config{URL: "bolt", DataDir: "/d"}, Bolt, "/d/fleet.db", nil, "", ""},
		{"data dir", Config{URL: "/srv/old"}, Bolt, "/srv/old/fleet.db", nil, "", ""},
		{"bbolt file", Config{URL: "/srv/old/fleet.db"}, Bolt, "/srv/old/fleet.db", nil, "", ""},
		{"etcd", Config{URL: "etcd://10.0.0.1:2379,10.0.0.2:2379/prod"}, Etcd, "", []string{"10.0.0.1:2379", "10.0.0.2:2379"}, "/prod/", ""},
		{"etcd nested prefix", Config{URL: "etcd://h:2379/a/b/"}, Etcd, "", []string{"h:2379"}, "/a/b/", ""},
		{"etcd default prefix", Config{URL: "etcd://h:2379"}, Etcd, "", []string{"h:2379"}, "/fleet/", ""},
		{"etcd ipv6", Config{URL: "etcd://[::1]:2379/f"}, Etcd, "", []string{"[::1]:2379"}, "/f/", ""},
		{"bolt without data dir", Config{URL: "bolt"}, "", "", nil, "", "needs a data dir"},
		{"etcd without port", Config{URL: "etcd://h1/f"}, "", "", nil, "", "not HOST:PORT"},
		{"etcd empty host", Config{URL: "etcd://h:1,/f"}, "", "", nil, "", "not HOST:PORT"},
		{"unknown scheme", Config{URL: "consul://h:8500"}, "", "", nil, "", "unknown kind"},
		{"TLS for bolt", Config{URL: "bolt", DataDir: "/d", TLS: TLSFiles{CAFile: "ca.pem"}}, "", "", nil, "", "TLS files are for etcd"},
		{"missing CA file", Config{URL: "etcd://h:1", TLS: TLSFiles{CAFile: "/nonexistent/ca.pem"}}, "", "", nil, "", "read the CA file"},
		{"cert without key", Config{URL: "etcd://h:1", TLS: TLSFiles{CertFile: "c.pem"}}, "", "", nil, "", "both the client certificate and its key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			spec, err := Parse(tt.cfg)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse(%+v): err = %v, want one saying %q", tt.cfg, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%+v): %v", tt.cfg, err)
			}
			if spec.Kind != tt.kind || spec.Path != tt.path || !slices.Equal(spec.Endpoints, tt.endpoints) || spec.Prefix != tt.prefix {
				t.Errorf("Parse(%+v) = %+v, want kind %s path %q endpoints %q prefix %q", tt.cfg, spec, tt.kind, tt.path, tt.endpoints, tt.prefix)
			}
		})
	}
}

// TestTLSFiles reads real PEM files (etcdcluster's), and refuses a file with
// no certificate in it.
func TestTLSFiles(t *testing.T) {
	c := etcdcluster.Start(t, etcdcluster.Options{Members: 1, TLS: true})
	spec, err := Parse(Config{URL: c.StoreURL("f"), TLS: TLSFiles{CAFile: c.CAFile, CertFile: c.CertFile, KeyFile: c.KeyFile}})
	if err != nil {
		t.Fatal(err)
	}
	if spec.TLS == nil || spec.TLS.RootCAs == nil || len(spec.TLS.Certificates) != 1 {
		t.Fatalf("TLS config = %+v, want the CA and one client certificate", spec.TLS)
	}
	st, err := Open(t.Context(), spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Put(t.Context(), "k", []byte("v")); err != nil {
		t.Fatal(err)
	}
	junk := filepath.Join(t.TempDir(), "junk.pem")
	os.WriteFile(junk, []byte("not PEM"), 0o600)
	if _, err := Parse(Config{URL: c.StoreURL("f"), TLS: TLSFiles{CAFile: junk}}); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("CA file without a certificate: err = %v", err)
	}
}

// FuzzParse feeds Parse any store name: it returns a spec or an error,
// never panics, and an etcd spec always has endpoints and a /prefix/.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"", "bolt", "/d", "/d/fleet.db", "etcd://h:1", "etcd://a:1,b:2/p/q/", "etcd://[::1]:2379/", "etcd://", "etcd://,/", "x://y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, url string) {
		spec, err := Parse(Config{URL: url, DataDir: "/data"})
		if err != nil {
			return
		}
		switch spec.Kind {
		case Etcd:
			if len(spec.Endpoints) == 0 || !strings.HasPrefix(spec.Prefix, "/") || !strings.HasSuffix(spec.Prefix, "/") {
				t.Errorf("Parse(%q) = %+v", url, spec)
			}
		case Bolt:
			if spec.Path == "" {
				t.Errorf("Parse(%q) = %+v: no path", url, spec)
			}
		default:
			t.Errorf("Parse(%q) = %+v: unknown kind", url, spec)
		}
	})
}
