package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/kubeconfig"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/kube/kubetest"

	"remoteler.dev/edge/tools/harness"
)

const kubeRoles = `kind: role
version: v1
metadata: {name: kube-dev}
spec:
  allow:
    device_labels: {k3s: "yes"}
    kubernetes_groups: [developers]
---
kind: role
version: v1
metadata: {name: kube-home}
spec:
  allow:
    device_labels: {kubernetes: in-cluster}
    kubernetes_groups: [developers]
`

// The cluster's own RBAC: group developers may work with config maps in
// namespace team, and nothing else.
const teamRBAC = `apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: dev, namespace: team}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, update, patch, delete]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: dev, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: dev}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: developers}
`

// Another context in the user's kubeconfig, which tsh must keep.
const otherKubeconfig = `apiVersion: v1
kind: Config
clusters:
- name: prod
  cluster: {server: "https://prod.example:6443"}
users:
- name: prod-admin
  user: {token: keep-me}
contexts:
- name: prod
  context: {cluster: prod, user: prod-admin}
current-context: prod
`

// TestKube drives Kubernetes access end to end with real processes: a
// kube-apiserver (the stand-in for k3s) behind edge-agents, fleetd
// (also running "in" that cluster), tsh kube login and the real kubectl.
// kubectl exec against a real kubelet is not run here (no kubelet, no
// container runtime); upgrades are tested byte-for-byte against a test
// server that upgrades behind an agent.
func TestKube(t *testing.T) {
	saToken := kubetest.RandomToken()
	kc := kubetest.Start(t, kubetest.Options{Tokens: []kubetest.Token{{
		Token: saToken, User: "system:serviceaccount:remoteler:fleetd",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:remoteler"},
	}}})
	linkKubectl(t, kc)
	manifests := filepath.Join(kubetest.ModuleRoot(t), "images", "fleet", "kubernetes")
	// The fleet's namespace and service account with its impersonation
	// rights, as the manifests define them, for the in-cluster fleet.
	kc.KubectlAdmin(t, "", "apply", "-f", filepath.Join(manifests, "00-namespace.yaml"), "-f", filepath.Join(manifests, "10-rbac.yaml"))
	kc.KubectlAdmin(t, teamRBAC, "apply", "-f", "-")

	// fleetd "in the cluster": the service account directory and the
	// variables Kubernetes gives a pod.
	saDir := t.TempDir()
	os.WriteFile(filepath.Join(saDir, "token"), []byte(saToken+"\n"), 0o600)
	os.WriteFile(filepath.Join(saDir, "ca.crt"), kc.CAPEM, 0o600)
	cfgPath := filepath.Join(t.TempDir(), "fleetd.yaml")
	os.WriteFile(cfgPath, []byte(fmt.Sprintf("kube_service_account_dir: %s\nkube_cluster_name: home\nkube_cluster_labels: {kubernetes: in-cluster}\n", saDir)), 0o600)
	host, port, _ := strings.Cut(strings.TrimPrefix(kc.URL, "https://"), ":")
	f := startFleetArgs(t, []string{"KUBERNETES_SERVICE_HOST=" + host, "KUBERNETES_SERVICE_PORT=" + port}, "--config", cfgPath)
	f.Proc.WaitOutput("offering the Kubernetes cluster fleetd runs in", 10*time.Second)

	f.Ctl(kubeRoles, "roles", "create", "-f", "-")
	// access gives alice a login: tsh login needs one today (see the report).
	alice := f.Login("alice", f.AddUser("alice", "access,kube-dev,kube-home", "alice"))
	bob := f.Login("bob", f.AddUser("bob", "access", "bob"))

	kcfg := filepath.Join(t.TempDir(), "kube", "config")
	os.MkdirAll(filepath.Dir(kcfg), 0o700)
	os.WriteFile(kcfg, []byte(otherKubeconfig), 0o600)
	up := newUpgradeServer(t)
	link, linkAddr := linkTo(t, f.Addr)
	startKubeAgent(f, "pi-1", "k3s=yes", f.Addr, kc.AdminKubeconfig)
	startKubeAgent(f, "pi-link", "k3s=yes", linkAddr, kc.AdminKubeconfig)
	startKubeAgent(f, "pi-up", "k3s=yes", f.Addr, up.kubeconfig(t))
	startKubeAgent(f, "pi-none", "k3s=yes", f.Addr, "off")
	kubectl := func(t *testing.T, args ...string) string {
		t.Helper()
		return mustKubectl(t, alice, kcfg, "", args...)
	}

	t.Run("devices advertise kube", func(t *testing.T) {
		for _, d := range f.Devices() {
			want := d.Name != "pi-none"
			if got := slices.Contains(d.Services, "kube"); got != want {
				t.Errorf("device %s services %q: offers kube %v, want %v", d.Name, d.Services, got, want)
			}
		}
	})

	t.Run("kube ls", func(t *testing.T) {
		var got api.List[api.KubeCluster]
		if err := json.Unmarshal([]byte(tshKube(t, alice, kcfg, "kube", "ls", "--format=json")), &got); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, k := range got.Items {
			names = append(names, k.Name)
			if !slices.Equal(k.Groups, []string{"developers"}) {
				t.Errorf("%s: groups %q, want developers", k.Name, k.Groups)
			}
		}
		if want := []string{"home", "pi-1", "pi-link", "pi-up"}; !slices.Equal(names, want) {
			t.Errorf("alice's clusters %q, want %q", names, want)
		}
		if _, errOut, _ := run("", kubeEnv(bob, kcfg), "tsh", "kube", "ls"); !strings.Contains(errOut, "No Kubernetes cluster") {
			t.Errorf("bob's tsh kube ls: %q, want no cluster", errOut)
		}
	})

	t.Run("login keeps other contexts", func(t *testing.T) {
		out := tshKube(t, alice, kcfg, "kube", "login", "pi-1")
		if !strings.Contains(out, "Logged in to Kubernetes cluster pi-1 as alice") {
			t.Errorf("tsh kube login: %q", out)
		}
		if got := strings.TrimSpace(kubectl(t, "config", "current-context")); got != "fleet-pi-1" {
			t.Errorf("current context %q, want fleet-pi-1", got)
		}
		if got := kubectl(t, "config", "get-contexts", "-o", "name"); !strings.Contains(got, "prod") || !strings.Contains(got, "fleet-pi-1") {
			t.Errorf("contexts %q, want prod kept next to fleet-pi-1", got)
		}
	})

	t.Run("get list create apply delete", func(t *testing.T) {
		kubectl(t, "-n", "team", "create", "configmap", "c1", "--from-literal=k=v1")
		if got := kubectl(t, "-n", "team", "get", "configmap", "c1", "-o", "jsonpath={.data.k}"); got != "v1" {
			t.Errorf("get c1: %q, want v1", got)
		}
		cm := "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c2, namespace: team}\ndata: {k: v2}\n"
		if out := mustKubectl(t, alice, kcfg, cm, "apply", "-f", "-"); !strings.Contains(out, "configmap/c2 created") {
			t.Errorf("apply: %q", out)
		}
		if out := mustKubectl(t, alice, kcfg, cm, "apply", "-f", "-"); !strings.Contains(out, "configmap/c2 unchanged") {
			t.Errorf("apply again: %q", out)
		}
		if out := kubectl(t, "-n", "team", "get", "configmaps", "-o", "name"); !strings.Contains(out, "configmap/c1") || !strings.Contains(out, "configmap/c2") {
			t.Errorf("list: %q, want c1 and c2", out)
		}
		kubectl(t, "-n", "team", "patch", "configmap", "c1", "-p", `{"data":{"k":"v3"}}`)
		if out := kubectl(t, "-n", "team", "delete", "configmap", "c1", "c2"); !strings.Contains(out, `"c1" deleted`) || !strings.Contains(out, `"c2" deleted`) {
			t.Errorf("delete: %q", out)
		}
	})

	t.Run("whoami and can-i show the impersonated user", func(t *testing.T) {
		out := kubectl(t, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}")
		if !strings.HasPrefix(out, "alice ") || !strings.Contains(out, `"developers"`) || !strings.Contains(out, `"system:authenticated"`) {
			t.Errorf("whoami: %q, want alice in developers", out)
		}
		if out := kubectl(t, "auth", "can-i", "list", "configmaps", "-n", "team"); strings.TrimSpace(out) != "yes" {
			t.Errorf("can-i list configmaps: %q, want yes", out)
		}
		for _, args := range [][]string{{"list", "secrets", "-n", "team"}, {"create", "deployments", "-n", "team"}, {"list", "configmaps", "-n", "default"}} {
			out, _, err := kubectlAs(alice, kcfg, "", append([]string{"auth", "can-i"}, args...)...)
			if err == nil || strings.TrimSpace(out) != "no" {
				t.Errorf("can-i %s: %q %v, want no", strings.Join(args, " "), out, err)
			}
		}
	})

	t.Run("cluster RBAC decides", func(t *testing.T) {
		_, errOut, err := kubectlAs(alice, kcfg, "", "-n", "team", "get", "secrets")
		if err == nil || !strings.Contains(errOut, "Forbidden") || !strings.Contains(errOut, `User "alice" cannot list resource "secrets"`) {
			t.Errorf("get secrets: %v %q, want the cluster's refusal for alice", err, errOut)
		}
	})

	t.Run("own impersonation headers gain nothing", func(t *testing.T) {
		for _, args := range [][]string{
			{"--as=admin", "get", "secrets", "-n", "team"},
			{"--as=alice", "--as-group=system:masters", "get", "secrets", "-n", "team"},
			{"--as=alice", "--as-uid=0", "get", "configmaps", "-n", "team"},
		} {
			_, errOut, err := kubectlAs(alice, kcfg, "", args...)
			if err == nil || !strings.Contains(errOut, "Forbidden") {
				t.Errorf("kubectl %s: %v %q, want the fleet's refusal", strings.Join(args, " "), err, errOut)
			}
		}
		// Narrowing to what the roles give is fine.
		if out := kubectl(t, "--as=alice", "--as-group=developers", "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"); out != "alice" {
			t.Errorf("--as=alice --as-group=developers: %q", out)
		}
	})

	t.Run("refused without kubernetes groups", func(t *testing.T) {
		if _, errOut, err := run("", kubeEnv(bob, filepath.Join(t.TempDir(), "config")), "tsh", "kube", "login", "pi-1"); err == nil || !strings.Contains(errOut, "no Kubernetes cluster") {
			t.Errorf("bob's tsh kube login: %v %q, want a refusal", err, errOut)
		}
		bobCfg := filepath.Join(t.TempDir(), "config")
		handEntry(t, bob, bobCfg, "pi-1")
		_, errOut, err := kubectlAs(bob, bobCfg, "", "-n", "team", "get", "configmaps")
		if err == nil || !strings.Contains(errOut, "Forbidden") || !strings.Contains(errOut, "no role gives Kubernetes users or groups") {
			t.Errorf("bob's kubectl: %v %q, want the fleet's refusal", err, errOut)
		}
		// A device that does not offer Kubernetes.
		noneCfg := filepath.Join(t.TempDir(), "config")
		handEntry(t, alice, noneCfg, "pi-none")
		_, errOut, err = kubectlAs(alice, noneCfg, "", "get", "configmaps")
		if err == nil || !strings.Contains(errOut, "does not offer Kubernetes") {
			t.Errorf("kubectl to pi-none: %v %q, want not found", err, errOut)
		}
	})

	t.Run("watch", func(t *testing.T) {
		// kubectl lists, then watches from the list's version: once w0 is
		// listed, every later change is reported.
		kc.KubectlAdmin(t, "", "-n", "team", "create", "configmap", "w0")
		w := start(t, "kubectl watch", kubeEnv(alice, kcfg), "kubectl", "-n", "team", "get", "configmaps", "--watch", "-o", "name")
		w.WaitLine(regexp.MustCompile(`^configmap/w0$`), 30*time.Second)
		kc.KubectlAdmin(t, "", "-n", "team", "create", "configmap", "w1")
		w.WaitLine(regexp.MustCompile(`^configmap/w1$`), 30*time.Second)
	})

	t.Run("watch survives a link blackout", func(t *testing.T) {
		tshKube(t, alice, kcfg, "kube", "login", "pi-link")
		kc.KubectlAdmin(t, "", "-n", "team", "create", "configmap", "b0")
		w := start(t, "kubectl watch (pi-link)", kubeEnv(alice, kcfg), "kubectl", "-n", "team", "get", "configmaps", "--watch", "-o", "name")
		w.WaitLine(regexp.MustCompile(`^configmap/b0$`), 30*time.Second)
		const outage = 8 * time.Second
		link.Blackout(outage)
		link.Rebind() // and the NAT forgets the device's mapping
		back := time.Now().Add(outage)
		kc.KubectlAdmin(t, "", "-n", "team", "create", "configmap", "b1")
		l, _ := w.WaitLineAt(regexp.MustCompile(`^configmap/b1$`), 60*time.Second)
		at := l.At
		if at.Before(back) {
			t.Errorf("event arrived %s before the link came back: the blackout did not hold", back.Sub(at))
		}
		t.Logf("event delivered %s after the link came back", at.Sub(back).Round(time.Millisecond))
		select {
		case <-w.Done():
			t.Fatalf("the watch ended: %s", w.Output())
		default:
		}
		kc.KubectlAdmin(t, "", "-n", "team", "create", "configmap", "b2")
		w.WaitLine(regexp.MustCompile(`^configmap/b2$`), 30*time.Second)
	})

	t.Run("upgrades carry bytes both ways", func(t *testing.T) {
		tshKube(t, alice, kcfg, "kube", "login", "pi-up")
		creds := tlsCreds(t, alice)
		for _, tc := range []struct{ name, headers string }{
			{"spdy", "Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n"},
			{"websocket", "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				conn := dialFleet(t, f.Addr, creds)
				fmt.Fprintf(conn, "POST /v1/kube/pi-up/api/v1/namespaces/team/pods/p/exec?command=sh&stdin=true&stdout=true HTTP/1.1\r\n"+
					"Host: %s\r\nConnection: Upgrade\r\nImpersonate-Group: developers\r\nAuthorization: Bearer not-for-the-device\r\n%s\r\n", f.Addr, tc.headers)
				br := bufio.NewReader(conn)
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode != http.StatusSwitchingProtocols {
					b, _ := io.ReadAll(resp.Body)
					t.Fatalf("got %s: %s", resp.Status, b)
				}
				big := strings.Repeat("stdin bytes ", 20000) // 240 KB: more than one window
				go fmt.Fprint(conn, big)
				got := make([]byte, len(big))
				if _, err := io.ReadFull(br, got); err != nil {
					t.Fatal(err)
				}
				if string(got) != strings.ToUpper(big) {
					t.Errorf("echo differs from what was sent")
				}
				conn.Close()
			})
		}
		reqs := up.requests()
		if len(reqs) != 2 {
			t.Fatalf("the upgrade server saw %d requests, want 2", len(reqs))
		}
		for _, h := range reqs {
			if !slices.Equal(h["Impersonate-User"], []string{"alice"}) || !slices.Equal(h["Impersonate-Group"], []string{"developers"}) ||
				!slices.Equal(h["Authorization"], []string{"Bearer device-token"}) || h["Path"][0] != "/api/v1/namespaces/team/pods/p/exec" {
				t.Errorf("behind the agent: %v, want alice in developers with the device's token", h)
			}
		}
		f.Proc.WaitOutput("event=kube.session.end", 10*time.Second)
		if auditLine(f.Proc.Output(), "event=kube.session.start", "user=alice", "device=pi-up", "resource=pods", "subresource=exec") == "" {
			t.Errorf("no session start audit line for the exec")
		}
	})

	t.Run("the cluster fleetd runs in", func(t *testing.T) {
		tshKube(t, alice, kcfg, "kube", "login", "home")
		kubectl(t, "-n", "team", "create", "configmap", "h1")
		if out := kubectl(t, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"); out != "alice" {
			t.Errorf("whoami in the fleet's cluster: %q", out)
		}
		if _, errOut, err := kubectlAs(alice, kcfg, "", "-n", "team", "get", "secrets"); err == nil || !strings.Contains(errOut, `User "alice" cannot list`) {
			t.Errorf("get secrets: %v %q, want the cluster's refusal", err, errOut)
		}
	})

	t.Run("audit", func(t *testing.T) {
		out := f.Proc.Output()
		for _, want := range [][]string{
			{"event=kube.request", "user=alice", "device=pi-1", "verb=create", "namespace=team", "resource=configmaps", "code=201"},
			{"event=kube.request", "user=alice", "device=pi-1", "verb=list", "namespace=team", "resource=configmaps", "code=200"},
			{"event=kube.request", "user=alice", "device=pi-1", "verb=delete", "namespace=team", "resource=configmaps", "name=c1", "code=200"},
			{"event=kube.request", "user=alice", "device=pi-1", "verb=list", "namespace=team", "resource=secrets", "code=403"},
			{"event=kube.session.start", "user=alice", "device=pi-link", "verb=watch", "resource=configmaps", "kind=watch"},
			{"event=kube.request", "user=alice", "device=home", "verb=create", "resource=configmaps", "code=201"},
			{"event=access.denied", "user=bob", "device=pi-1", "service=kube"},
		} {
			if auditLine(out, want...) == "" {
				t.Errorf("no audit line with %q", want)
			}
		}
	})

	t.Run("manifests pass a server-side dry run", func(t *testing.T) {
		out := kc.KubectlAdmin(t, "", "apply", "--dry-run=server", "-f", manifests)
		for _, want := range []string{"deployment.apps/fleetd", "service/fleetd", "persistentvolumeclaim/fleetd-data", "configmap/fleetd", "clusterrole.rbac.authorization.k8s.io/remoteler-fleetd-impersonator"} {
			if !strings.Contains(out, want) {
				t.Errorf("dry run output lacks %s:\n%s", want, out)
			}
		}
	})

	t.Run("logout removes what tsh added", func(t *testing.T) {
		tshKube(t, alice, kcfg, "logout")
		b, _ := os.ReadFile(kcfg)
		if strings.Contains(string(b), "fleet-") || !strings.Contains(string(b), "keep-me") {
			t.Errorf("kubeconfig after tsh logout:\n%s\nwant only the prod context", b)
		}
	})
}

// handEntry writes a kubeconfig entry for cluster name by hand, as tsh kube
// login would but without asking the fleet, to send requests the fleet
// must refuse.
func handEntry(t *testing.T, u *harness.User, path, name string) {
	t.Helper()
	cas, err := os.ReadFile(filepath.Join(u.Home, "keys", u.Fleet.Addr, u.Name, "cas.pem"))
	if err != nil {
		t.Fatal(err)
	}
	err = kubeconfig.Add([]string{path}, kubeconfig.Entry{
		Name: "x", Server: "https://" + u.Fleet.Addr + api.PathKube + "/" + name, CAData: cas,
		Command: filepath.Join(string(bin), "tsh"), Args: []string{"kube", "credentials", "--proxy=" + u.Fleet.Addr, "--user=" + u.Name},
		Env: map[string]string{"TSH_HOME": u.Home},
	}, true)
	if err != nil {
		t.Fatal(err)
	}
}
