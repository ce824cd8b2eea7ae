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
