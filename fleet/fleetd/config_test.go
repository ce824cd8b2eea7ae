package fleetd

import (
	"os"
	"path/filepath"
	"testing"
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
