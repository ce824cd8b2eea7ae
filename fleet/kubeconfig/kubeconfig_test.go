package kubeconfig

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const other = `apiVersion: v1
kind: Config
clusters:
- name: prod
  cluster: {server: "https://prod.example:6443"}
users:
- name: prod-admin
  user: {token: secret}
contexts:
- name: prod
  context: {cluster: prod, user: prod-admin}
current-context: prod
`

func entry(name, user string) Entry {
	return Entry{
		Name: name, Server: "https://fleet:3080/v1/kube/" + name, CAData: []byte("-----BEGIN CERTIFICATE-----\n"),
		Command: "/usr/bin/tsh", Args: []string{"kube", "credentials", "--proxy=fleet:3080", "--user=" + user},
		Env: map[string]string{"TSH_HOME": "/h"},
	}
}

func tshMatch(user string) func(string, *clientcmdapi.AuthInfo) bool {
	return func(_ string, u *clientcmdapi.AuthInfo) bool {
		return ExecArgsMatch(u, []string{"kube", "credentials"}, "--proxy=fleet:3080", "--user="+user)
	}
}

func loadMerged(t *testing.T, paths []string) *clientcmdapi.Config {
	t.Helper()
	cfg, err := (&clientcmd.ClientConfigLoadingRules{Precedence: paths}).Load()
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func TestAddKeepsOtherEntriesAndRemoveTakesOnlyOurs(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config")
	if err := os.WriteFile(path, []byte(other), 0o600); err != nil {
		t.Fatal(err)
	}
	paths := []string{path}
	if err := Add(paths, entry("fleet-pi-1", "alice"), true); err != nil {
		t.Fatal(err)
	}
	if err := Add(paths, entry("fleet-pi-2", "bob"), false); err != nil {
		t.Fatal(err)
	}
	cfg := loadMerged(t, paths)
	if cfg.CurrentContext != "fleet-pi-1" {
		t.Errorf("current context %q, want fleet-pi-1", cfg.CurrentContext)
	}
	for _, name := range []string{"prod", "fleet-pi-1", "fleet-pi-2"} {
		if cfg.Contexts[name] == nil {
			t.Errorf("context %q missing", name)
		}
	}
	u := cfg.AuthInfos["fleet-pi-1"]
	if u == nil || u.Exec == nil || u.Exec.Command != "/usr/bin/tsh" || u.Exec.APIVersion != "client.authentication.k8s.io/v1" ||
		len(u.Exec.Env) != 1 || u.Exec.Env[0].Value != "/h" {
		t.Fatalf("user fleet-pi-1: got %+v, want the tsh exec plugin", u)
	}
	if cfg.Clusters["fleet-pi-1"].Server != "https://fleet:3080/v1/kube/fleet-pi-1" {
		t.Errorf("cluster server %q", cfg.Clusters["fleet-pi-1"].Server)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}

	removed, err := Remove(paths, tshMatch("alice"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, []string{"fleet-pi-1"}) {
		t.Errorf("removed %q, want only alice's context", removed)
	}
	cfg = loadMerged(t, paths)
	if cfg.CurrentContext != "" || cfg.Contexts["fleet-pi-1"] != nil || cfg.AuthInfos["fleet-pi-1"] != nil || cfg.Clusters["fleet-pi-1"] != nil {
		t.Errorf("after remove: %+v", cfg)
	}
	if cfg.Contexts["prod"] == nil || cfg.AuthInfos["prod-admin"].Token != "secret" || cfg.Contexts["fleet-pi-2"] == nil {
		t.Errorf("remove touched other entries: %+v", cfg)
	}
}

func TestKUBECONFIGList(t *testing.T) {
	dir := t.TempDir()
	first, second := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	os.WriteFile(second, []byte(other), 0o600)
	paths, err := Files(func(k string) string {
		if k == "KUBECONFIG" {
			return first + string(os.PathListSeparator) + second
		}
		return ""
	})
	if err != nil || !slices.Equal(paths, []string{first, second}) {
		t.Fatalf("Files: got %q %v", paths, err)
	}
	if err := Add(paths, entry("fleet-pi-1", "alice"), true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(first); err == nil {
		t.Errorf("a file was created at %s; want new entries in the first file that exists", first)
	}
	b, _ := os.ReadFile(second)
	if !strings.Contains(string(b), "fleet-pi-1") || !strings.Contains(string(b), "current-context: fleet-pi-1") {
		t.Errorf("second file:\n%s\nwant the new entry and current context", b)
	}
	if cur, _ := CurrentContext(paths); cur != "fleet-pi-1" {
		t.Errorf("current context %q, want fleet-pi-1", cur)
	}
}

func TestFilesDefault(t *testing.T) {
	got, err := Files(func(k string) string {
		if k == "HOME" {
			return "/home/u"
		}
		return ""
	})
	if err != nil || !slices.Equal(got, []string{"/home/u/.kube/config"}) {
		t.Errorf("got %q %v, want ~/.kube/config", got, err)
	}
}

func TestExecCredential(t *testing.T) {
	exp := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	b, err := ExecCredential([]byte("CERT"), []byte("KEY"), exp)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		APIVersion, Kind string
		Status           struct {
			ClientCertificateData, ClientKeyData string
			ExpirationTimestamp                  time.Time
		}
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.APIVersion != "client.authentication.k8s.io/v1" || got.Kind != "ExecCredential" ||
		got.Status.ClientCertificateData != "CERT" || got.Status.ClientKeyData != "KEY" || !got.Status.ExpirationTimestamp.Equal(exp) {
		t.Errorf("got %s", b)
	}
}

// TestWriteStandalone: tsh proxy kube's kubeconfig loads with clientcmd
// as written (one current context reaching the server with the client
// certificate, trusting the CA, in the namespace), is 0600, and replaces a
// file left at its path.
func TestWriteStandalone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kube-proxy", "pi-1-8443.yaml")
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("left by a proxy that was killed"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := Standalone{Name: "pi-1-via-tsh-proxy", Server: "https://127.0.0.1:8443", Namespace: "team",
		CA: []byte("ca pem"), Cert: []byte("cert pem"), Key: []byte("key pem")}
	if err := WriteStandalone(path, s); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("stat: %v %v, want mode 0600", st.Mode(), err)
	}
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := cfg.Contexts[cfg.CurrentContext]
	if cfg.CurrentContext != s.Name || ctx == nil || ctx.Namespace != "team" {
		t.Fatalf("current context %q: %+v", cfg.CurrentContext, ctx)
	}
	cl, user := cfg.Clusters[ctx.Cluster], cfg.AuthInfos[ctx.AuthInfo]
	if cl == nil || cl.Server != s.Server || string(cl.CertificateAuthorityData) != "ca pem" ||
		user == nil || string(user.ClientCertificateData) != "cert pem" || string(user.ClientKeyData) != "key pem" {
		t.Errorf("cluster %+v, user %+v", cl, user)
	}
}
