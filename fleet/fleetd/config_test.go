package fleetd

import (
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/yaml"
)

func TestLoadConfigStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fleetd.yaml")
	os.WriteFile(path, []byte(`data_dir: /var/lib/fleetd
store: etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379/fleet
store_tls:
  ca_file: /etc/fleetd/etcd-ca.pem
  cert_file: /etc/fleetd/etcd-client.pem
  key_file: /etc/fleetd/etcd-client-key.pem
`), 0o600)
	c, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.Store != "etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379/fleet" ||
		c.StoreTLS.CAFile != "/etc/fleetd/etcd-ca.pem" || c.StoreTLS.CertFile != "/etc/fleetd/etcd-client.pem" ||
		c.StoreTLS.KeyFile != "/etc/fleetd/etcd-client-key.pem" {
		t.Errorf("LoadConfig = %+v", c)
	}
	os.WriteFile(path, []byte("store_tls:\n  ca: x\n"), 0o600)
	if _, err := LoadConfig(path); err == nil {
		t.Error("an unknown store_tls key was accepted")
	}
}

func TestPublicURL(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		addr string
		want string
		err  bool
	}{
		{"default: the listen address", Config{}, "127.0.0.1:3080", "https://127.0.0.1:3080", false},
		{"unspecified listen host", Config{}, "0.0.0.0:3080", "https://127.0.0.1:3080", false},
		{"first public address", Config{PublicAddrs: []string{"fleet.example.com", "10.0.0.1"}}, "0.0.0.0:3080", "https://fleet.example.com:3080", false},
		{"public address IPv6", Config{PublicAddrs: []string{"2001:db8::1"}}, "[::]:3080", "https://[2001:db8::1]:3080", false},
		{"given", Config{PublicURL: "https://fleet.example.com"}, "0.0.0.0:3080", "https://fleet.example.com", false},
		{"given with a slash", Config{PublicURL: "https://fleet.example.com:443/"}, "0.0.0.0:3080", "https://fleet.example.com:443", false},
		{"http", Config{PublicURL: "http://fleet.example.com"}, "0.0.0.0:3080", "", true},
		{"a path", Config{PublicURL: "https://fleet.example.com/fleet"}, "0.0.0.0:3080", "", true},
		{"no host", Config{PublicURL: "https://"}, "0.0.0.0:3080", "", true},
	}
	for _, tt := range tests {
		got, err := publicURLOf(tt.cfg, tt.addr)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("%s: publicURLOf = %q, %v; want %q (error %v)", tt.name, got, err, tt.want, tt.err)
		}
	}
}

// TestKubernetesConfigs: the fleetd.yaml of each Kubernetes layout
// (images/fleet/kubernetes) is a config fleetd takes.
func TestKubernetesConfigs(t *testing.T) {
	for _, tt := range []struct{ file, store string }{
		{"../../images/fleet/kubernetes/20-config.yaml", ""},
		{"../../images/fleet/kubernetes/replicas/20-config.yaml", "etcd://etcd-0.etcd:2379,etcd-1.etcd:2379,etcd-2.etcd:2379/fleet"},
	} {
		b, err := os.ReadFile(tt.file)
		if err != nil {
			t.Fatal(err)
		}
		var cm struct {
			Data map[string]string `json:"data"`
		}
		if err := yaml.Unmarshal(b, &cm); err != nil {
			t.Fatalf("%s: %v", tt.file, err)
		}
		path := filepath.Join(t.TempDir(), "fleetd.yaml")
		if err := os.WriteFile(path, []byte(cm.Data["fleetd.yaml"]), 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := LoadConfig(path)
		if err != nil {
			t.Errorf("%s: %v", tt.file, err)
			continue
		}
		if cfg.Store != tt.store || cfg.DataDir != "/var/lib/fleetd" {
			t.Errorf("%s: store %q, data dir %q", tt.file, cfg.Store, cfg.DataDir)
		}
	}
}
