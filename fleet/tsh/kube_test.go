package tsh

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/kubeconfig"
)

func TestKubeCredentials(t *testing.T) {
	e := newTestEnv(t)
	e.login()
	r := e.run(nil, "kube", "credentials", "--proxy="+e.fleet.Addr, "--user=alice")
	var ec struct {
		APIVersion, Kind string
		Status           struct {
			ClientCertificateData, ClientKeyData string
			ExpirationTimestamp                  time.Time
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &ec); err != nil || r.code != 0 {
		t.Fatalf("exit %d, %v: %s", r.code, err, r.stdout)
	}
	if ec.Kind != "ExecCredential" || !strings.Contains(ec.Status.ClientCertificateData, "BEGIN CERTIFICATE") ||
		!strings.Contains(ec.Status.ClientKeyData, "PRIVATE KEY") || time.Until(ec.Status.ExpirationTimestamp) < time.Hour {
		t.Errorf("got %+v, want the login's certificate, key and expiry", ec)
	}

	var out strings.Builder
	code := Main(t.Context(), []string{"kube", "credentials", "--proxy=" + e.fleet.Addr, "--user=alice"}, Stdio{
		Out: &out, Err: &out, Getenv: func(k string) string { return e.env[k] },
		Now: func() time.Time { return time.Now().Add(9 * time.Hour) },
	})
	if code != 1 || !strings.Contains(out.String(), "expired") || !strings.Contains(out.String(), "run tsh login --proxy="+e.fleet.Addr) {
		t.Errorf("expired: exit %d, %q; want a hint to log in again", code, out.String())
	}
	if r := e.run(nil, "kube", "credentials", "--proxy="+e.fleet.Addr, "--user=bob"); r.code != 1 || !strings.Contains(r.stder, "not logged in") {
		t.Errorf("unknown login: exit %d, %q", r.code, r.stder)
	}
}

func TestKubeLogoutRemovesOnlyTshEntries(t *testing.T) {
	e := newTestEnv(t)
	kcfg := filepath.Join(t.TempDir(), "config")
	e.env["KUBECONFIG"] = kcfg
	e.login()
	other := kubeconfig.Entry{Name: "prod", Server: "https://prod:6443", Command: "aws", Args: []string{"eks", "get-token"}}
	for _, en := range []kubeconfig.Entry{other,
		{Name: "fleet-pi-1", Server: "https://" + e.fleet.Addr + "/v1/kube/pi-1", Command: "/opt/remoteler/bin/tsh",
			Args: []string{"kube", "credentials", "--proxy=" + e.fleet.Addr, "--user=alice"}},
		{Name: "fleet-pi-2", Server: "https://" + e.fleet.Addr + "/v1/kube/pi-2", Command: "/opt/remoteler/bin/tsh",
			Args: []string{"kube", "credentials", "--proxy=" + e.fleet.Addr, "--user=alice"}},
	} {
		if err := kubeconfig.Add([]string{kcfg}, en, true); err != nil {
			t.Fatal(err)
		}
	}
	if r := e.run(nil, "kube", "logout", "pi-1"); r.code != 0 || !strings.Contains(r.stdout, "fleet-pi-1") {
		t.Fatalf("kube logout pi-1: exit %d %q", r.code, r.stdout)
	}
	b, _ := os.ReadFile(kcfg)
	if strings.Contains(string(b), "fleet-pi-1") || !strings.Contains(string(b), "fleet-pi-2") {
		t.Errorf("after kube logout pi-1:\n%s", b)
	}
	if r := e.run(nil, "logout"); r.code != 0 || !strings.Contains(r.stdout, "fleet-pi-2") {
		t.Fatalf("logout: exit %d %q", r.code, r.stdout)
	}
	b, _ = os.ReadFile(kcfg)
	if strings.Contains(string(b), "fleet-pi") || !strings.Contains(string(b), "get-token") {
		t.Errorf("after logout:\n%s\nwant only the other context", b)
	}
}
