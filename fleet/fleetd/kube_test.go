package fleetd

import (
	"os"
	"path/filepath"
	"testing"

	"sigs.k8s.io/yaml"
)

// The ConfigMap of the Kubernetes manifests holds a fleetd.yaml that
// fleetd must accept as it is.
func TestManifestConfigLoads(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "images", "fleet", "kubernetes", "20-config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cm struct {
		Kind string            `json:"kind"`
		Data map[string]string `json:"data"`
	}
	if err := yaml.Unmarshal(b, &cm); err != nil || cm.Kind != "ConfigMap" || cm.Data["fleetd.yaml"] == "" {
		t.Fatalf("20-config.yaml: %v, kind %q, want a ConfigMap with fleetd.yaml", err, cm.Kind)
	}
	path := filepath.Join(t.TempDir(), "fleetd.yaml")
	os.WriteFile(path, []byte(cm.Data["fleetd.yaml"]), 0o600)
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != "/var/lib/fleetd" || cfg.KubeClusterName == "" || len(cfg.PublicAddrs) == 0 {
		t.Errorf("config %+v, want the data dir the Deployment mounts, a cluster name and public addresses", cfg)
	}
}
