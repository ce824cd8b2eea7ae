package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/harness"
	"remoteler.dev/edge/tools/kube/kubetest"
)

// Trusted clusters with real processes: a root fleetd and a leaf fleetd
// on loopback, a device of the leaf, the root's users with tsh, OpenSSH
// and kubectl.

// rootRoles are the root's roles beside its presets: the names the leaf
// maps.
const rootRoles = `kind: role
version: v1
metadata: {name: ops-north}
spec:
  allow:
    device_labels: {site: north}
    logins: ["{{internal.logins}}"]
---
kind: role
version: v1
metadata: {name: contractor}
spec:
  allow:
    device_labels: {site: north}
    logins: ["{{internal.logins}}"]
`

// leafRoles are the leaf's own roles, which the role map gives the
// root's users: operator-north reaches the north site's devices with the
// user's logins, and Kubernetes as group developers; no-root takes login
// root away everywhere.
const leafRoles = `kind: role
version: v1
metadata: {name: operator-north}
spec:
  allow:
    device_labels: {site: north}
    logins: ["{{internal.logins}}"]
    kubernetes_groups: [developers]
---
kind: role
version: v1
metadata: {name: no-root}
spec:
  allow:
    device_labels: {site: north}
    logins: ["{{internal.logins}}"]
  deny:
    logins: [root]
    device_labels: {"*": "*"}
`

// trustFile is a trusted_cluster resource for the leaf.
func trustFile(root *harness.Fleet, token, pin string, extra string) string {
	return fmt.Sprintf(`kind: trusted_cluster
version: v1
metadata: {name: root}
spec:
  root_addr: %s
  token: %s
  ca_pin: %s
  role_map:
  - {remote: "^ops-(.*)$", local: ["operator-$1"]}
  - {remote: contractor, local: [no-root]}
%s`, root.Addr, token, pin, extra)
}

// clusterToken makes a trusted-cluster token on f.
func clusterToken(t *testing.T, f *harness.Fleet, args ...string) api.Token {
	t.Helper()
	out := f.Ctl("", append([]string{"tokens", "add", "--type=trusted-cluster", "--format=json"}, args...)...)
	var tok api.Token
	if err := json.Unmarshal([]byte(out), &tok); err != nil || tok.Token == "" || tok.Type != api.TokenTrustedCluster {
		t.Fatalf("tokens add --type=trusted-cluster: %v\n%s", err, out)
	}
	return tok
}

// clusterState returns how f lists the cluster name: found, online.
func clusterState(f *harness.Fleet, name string) (bool, bool) {
	out, _, err := f.CtlErr("", "clusters", "ls", "--format=json")
	if err != nil {
		return false, false
	}
	var l api.List[api.Cluster]
	if json.Unmarshal([]byte(out), &l) != nil {
		return false, false
	}
	for _, c := range l.Items {
		if c.Name == name {
			return true, c.Online
		}
	}
	return false, false
}

// waitCluster waits until f lists cluster name as online (or, with
// online false, as offline or gone).
func waitCluster(t *testing.T, f *harness.Fleet, name string, online bool) {
	t.Helper()
	if !harness.Eventually(time.Minute, func() bool {
		_, on := clusterState(f, name)
		return on == online
	}) {
		out, _, _ := f.CtlErr("", "clusters", "ls")
		t.Fatalf("cluster %s not online=%v within a minute:\n%s", name, online, out)
	}
}

// createFile writes content to a temporary file for fleetctl create -f.
func createFile(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "resource.yaml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// trustedPair starts a root and a leaf fleet and has the leaf trust the
// root (role map as trustFile, extra appended to its spec).
func trustedPair(t *testing.T, extra string) (root, leaf *harness.Fleet) {
	t.Helper()
	root = startFleetArgs(t, nil, "--cluster", "root")
	leaf = startFleetArgs(t, nil, "--cluster", "leaf")
	root.Ctl(rootRoles, "create", "-f", "-")
	leaf.Ctl(leafRoles, "create", "-f", "-")
	tok := clusterToken(t, root, "--ttl=5m")
	leaf.Ctl("", "create", "-f", createFile(t, trustFile(root, tok.Token, root.Pin, extra)))
	waitCluster(t, root, "leaf", true)
	waitCluster(t, leaf, "root", true)
	return root, leaf
}

func TestTrustJoin(t *testing.T) {
	root := startFleetArgs(t, nil, "--cluster", "root")
	leaf := startFleetArgs(t, nil, "--cluster", "leaf")
	leaf2 := startFleetArgs(t, nil, "--cluster", "leaf2")
	leaf.Ctl(leafRoles, "create", "-f", "-")
	leaf2.Ctl(leafRoles, "create", "-f", "-")
	tok := clusterToken(t, root, "--ttl=5m")

	t.Run("wrong CA pin refused", func(t *testing.T) {
		wrong := "sha256:" + strings.Repeat("ab", 32)
		_, errOut, err := leaf.CtlErr("", "create", "-f", createFile(t, trustFile(root, tok.Token, wrong, "")))
		if err == nil || !strings.Contains(errOut, "pin") {
			t.Fatalf("create with a wrong pin: %v\n%s", err, errOut)
		}
		if found, _ := clusterState(leaf, "root"); found {
			t.Error("the leaf trusts the root after a refused join")
		}
	})
	t.Run("device token refused", func(t *testing.T) {
		dev := root.Token()
		secret, _, _ := strings.Cut(dev, "@")
		_, errOut, err := leaf.CtlErr("", "create", "-f", createFile(t, trustFile(root, secret, root.Pin, "")))
		if err == nil || !strings.Contains(errOut, "trusted-cluster") {
			t.Fatalf("create with a device token: %v\n%s", err, errOut)
		}
	})
	t.Run("join", func(t *testing.T) {
		out := leaf.Ctl("", "create", "-f", createFile(t, trustFile(root, tok.Token, root.Pin, "")))
		if !strings.Contains(out, `Trusted cluster "root" written`) {
			t.Errorf("create = %q", out)
		}
		waitCluster(t, root, "leaf", true)
		waitCluster(t, leaf, "root", true)
		if got := leaf.Ctl("", "clusters", "ls"); !strings.Contains(got, "root") || !strings.Contains(got, "online") {
			t.Errorf("leaf clusters ls = %q", got)
		}
		// The token is not kept on the leaf.
		if got := leaf.Ctl("", "clusters", "ls", "--format=json"); strings.Contains(got, tok.Token) {
			t.Error("the leaf lists the token")
		}
	})
	t.Run("used token refused", func(t *testing.T) {
		_, errOut, err := leaf2.CtlErr("", "create", "-f", createFile(t, trustFile(root, tok.Token, root.Pin, "")))
		if err == nil || !strings.Contains(errOut, "no uses left") {
			t.Fatalf("create with a used token: %v\n%s", err, errOut)
		}
	})
	t.Run("expired token refused", func(t *testing.T) {
		short := clusterToken(t, root, "--ttl=1s")
		harness.Eventually(time.Minute, func() bool { return time.Now().After(short.Expires.Add(100 * time.Millisecond)) })
		_, errOut, err := leaf2.CtlErr("", "create", "-f", createFile(t, trustFile(root, short.Token, root.Pin, "")))
		if err == nil || !strings.Contains(errOut, "expired") {
			t.Fatalf("create with an expired token: %v\n%s", err, errOut)
		}
		if found, _ := clusterState(root, "leaf2"); found {
			t.Error("the root lists leaf2 after refusing it")
		}
	})
}

// TestTrustedClusterSSH: the root's users reach the leaf's device with
// tsh and OpenSSH, as the leaf's roles decide; the events land in the
// leaf's trail.
func TestTrustedClusterSSH(t *testing.T) {
	root, leaf := trustedPair(t, "")
	leaf.StartAgent("plc-1", "site=north")
	root.StartAgent("gw-1", "site=north") // a device of the root's own
	alice := root.Login("alice", root.AddUser("alice", "access,ops-north", "root"))
	bob := root.Login("bob", root.AddUser("bob", "access", "root"))
	carol := root.Login("carol", root.AddUser("carol", "access,contractor", "root"))

	t.Run("clusters", func(t *testing.T) {
		out := alice.Tsh("clusters")
		if !strings.Contains(out, "leaf") || !strings.Contains(out, "online") {
			t.Errorf("tsh clusters = %q", out)
		}
	})
	t.Run("ls", func(t *testing.T) {
		out := alice.Tsh("ls", "--cluster=leaf")
		if !strings.Contains(out, "plc-1") || strings.Contains(out, "gw-1") {
			t.Errorf("tsh ls --cluster=leaf = %q, want plc-1 only", out)
		}
	})
	t.Run("exec", func(t *testing.T) {
		if out := alice.Tsh("ssh", "--cluster=leaf", "root@plc-1", "echo", "hi"); out != "hi\n" {
			t.Errorf("tsh ssh --cluster=leaf = %q", out)
		}
	})
	t.Run("no role maps", func(t *testing.T) {
		_, errOut, err := bob.TshErr("", "ls", "--cluster=leaf")
		t.Logf("bob: %s", errOut)
		if err == nil || !strings.Contains(errOut, "role_map") || !strings.Contains(errOut, "access") {
			t.Errorf("bob's tsh ls --cluster=leaf: %v\n%s", err, errOut)
		}
		_, errOut, err = bob.TshErr("", "login", "leaf")
		if err == nil || !strings.Contains(errOut, "role_map") {
			t.Errorf("bob's tsh login leaf: %v\n%s", err, errOut)
		}
	})
	t.Run("leaf role denies a login the root allows", func(t *testing.T) {
		if out := carol.Tsh("ssh", "root@gw-1", "echo", "at-root"); out != "at-root\n" {
			t.Fatalf("carol at the root's device = %q", out)
		}
		_, errOut, err := carol.TshErr("", "ssh", "--cluster=leaf", "root@plc-1", "echo", "hi")
		t.Logf("carol: %s", errOut)
		if err == nil || !strings.Contains(errOut, "root") {
			t.Errorf("carol's tsh ssh root@plc-1 through the root: %v\n%s", err, errOut)
		}
	})
	t.Run("no address but the leaf's devices", func(t *testing.T) {
		for _, target := range []string{"root@127.0.0.1", "root@localhost", "root@gw-1"} {
			_, errOut, err := alice.TshErr("", "ssh", "--cluster=leaf", target, "true")
			if err == nil || !strings.Contains(errOut, "no device") {
				t.Errorf("tsh ssh --cluster=leaf %s: %v\n%s", target, err, errOut)
			}
		}
	})
	t.Run("login leaf without a password", func(t *testing.T) {
		out := alice.Tsh("login", "leaf")
		if !strings.Contains(out, `leaf cluster "leaf"`) || !strings.Contains(out, "operator-north") {
			t.Errorf("tsh login leaf = %q", out)
		}
		if out := alice.Tsh("ssh", "root@plc-1", "echo", "current"); out != "current\n" {
			t.Errorf("tsh ssh in the current leaf = %q", out)
		}
		if out := alice.Tsh("ls"); !strings.Contains(out, "plc-1") {
			t.Errorf("tsh ls in the current leaf = %q", out)
		}
	})
	t.Run("openssh", func(t *testing.T) {
		alice.Tsh("login", "leaf")
		cfg := alice.SSHConfig()
		if !strings.Contains(string(mustRead(t, cfg)), "Host *.leaf") {
			t.Fatalf("tsh config has no block for the leaf:\n%s", mustRead(t, cfg))
		}
		out, errOut, err := run("", nil, "ssh", "-F", cfg, "-o", "BatchMode=yes", "root@plc-1.leaf", "echo", "openssh")
		if err != nil || out != "openssh\n" {
			t.Fatalf("ssh root@plc-1.leaf = %q, %v\n%s", out, err, errOut)
		}
		local, remote := t.TempDir(), t.TempDir()
		src, sum := randomFile(t, local, 8<<20)
		up := filepath.Join(remote, "scp-up")
		if out, errOut, err := run("", nil, "scp", "-F", cfg, "-o", "BatchMode=yes", "-q", src, "root@plc-1.leaf:"+up); err != nil {
			t.Fatalf("scp up: %v\n%s%s", err, out, errOut)
		}
		down := filepath.Join(local, "scp-down")
		if out, errOut, err := run("", nil, "scp", "-F", cfg, "-o", "BatchMode=yes", "-q", "root@plc-1.leaf:"+up, down); err != nil {
			t.Fatalf("scp down: %v\n%s%s", err, out, errOut)
		}
		if fileSum(t, up) != sum || fileSum(t, down) != sum {
			t.Fatal("scp through the root: checksum differs")
		}
	})
	t.Run("audit stays in the leaf", func(t *testing.T) {
		leafEvents := leaf.Ctl("", "audit", "search", "--type=session.start", "--format=json")
		if !strings.Contains(leafEvents, "root/alice") {
			t.Errorf("the leaf's trail has no session of root/alice:\n%s", leafEvents)
		}
		rootEvents := root.Ctl("", "audit", "search", "--since=", "--limit=1000", "--format=json")
		if strings.Contains(rootEvents, "plc-1") {
			t.Errorf("the root's trail mentions the leaf's device:\n%s", rootEvents)
		}
		// Unless the leaf allows it, the root's admin cannot search it.
		_, errOut, err := root.CtlErr("", "audit", "search", "--cluster=leaf")
		if err == nil || !strings.Contains(errOut, "audit_search") {
			t.Errorf("audit search --cluster=leaf without audit_search: %v\n%s", err, errOut)
		}
	})
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// podRBAC lets group developers list the pods of namespace team.
const podRBAC = `apiVersion: v1
kind: Namespace
metadata: {name: team}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pods, namespace: team}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: pods, namespace: team}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pods}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: developers}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: default, namespace: team}
---
apiVersion: v1
kind: Pod
metadata: {name: plc-runtime, namespace: team}
spec:
  automountServiceAccountToken: false
  containers:
  - {name: app, image: example.invalid/app:1}
`

// TestTrustedClusterKube: kubectl get pods through the root, against a
// real kube-apiserver behind the leaf's device, as the Kubernetes group
// the leaf's role gives.
func TestTrustedClusterKube(t *testing.T) {
	kc := kubetest.Start(t, kubetest.Options{})
	linkKubectl(t, kc)
	kc.KubectlAdmin(t, podRBAC, "apply", "-f", "-")
	root, leaf := trustedPair(t, "")
	startKubeAgent(leaf, "plc-k3s", "site=north", leaf.Addr, kc.AdminKubeconfig)
	alice := root.Login("alice", root.AddUser("alice", "access,ops-north", "root"))
	bob := root.Login("bob", root.AddUser("bob", "access", "root"))

	if out := alice.Tsh("kube", "ls", "--cluster=leaf"); !strings.Contains(out, "plc-k3s") || !strings.Contains(out, "developers") {
		t.Fatalf("tsh kube ls --cluster=leaf = %q", out)
	}
	kcfg := filepath.Join(t.TempDir(), "kubeconfig")
	out := tshKube(t, alice, kcfg, "kube", "login", "--cluster=leaf", "plc-k3s")
	if !strings.Contains(out, "plc-k3s") {
		t.Errorf("tsh kube login = %q", out)
	}
	if got := string(mustRead(t, kcfg)); !strings.Contains(got, api.ClusterPath("leaf", api.PathKube+"/plc-k3s")) {
		t.Errorf("the kubeconfig does not reach the leaf through the root:\n%s", got)
	}
	pods := mustKubectl(t, alice, kcfg, "", "get", "pods", "-n", "team")
	if !strings.Contains(pods, "plc-runtime") {
		t.Errorf("kubectl get pods = %q", pods)
	}
	// The leaf's Kubernetes RBAC applies: only namespace team.
	if _, errOut, err := kubectlAs(alice, kcfg, "", "get", "pods", "-n", "kube-system"); err == nil || !strings.Contains(errOut, "forbidden") {
		t.Errorf("kubectl get pods -n kube-system: %v\n%s", err, errOut)
	}
	// A root user no role maps gets the leaf's refusal.
	if _, errOut, err := run("", kubeEnv(bob, kcfg), "tsh", "kube", "ls", "--cluster=leaf"); err == nil || !strings.Contains(errOut, "role_map") {
		t.Errorf("bob's tsh kube ls --cluster=leaf: %v\n%s", err, errOut)
	}
	if ev := leaf.Ctl("", "audit", "search", "--type=kube.*", "--format=json"); !strings.Contains(ev, "root/alice") {
		t.Errorf("the leaf's trail has no Kubernetes request of root/alice:\n%s", ev)
	}
}

// longSession starts tsh ssh through the root running a command that
// prints "started" and then waits, and waits for "started".
func longSession(t *testing.T, u *harness.User, args ...string) *harness.Proc {
	t.Helper()
	p := start(t, "tsh ssh "+u.Name, u.Env(), append([]string{"tsh", "ssh"}, append(args, "echo started; sleep 600")...)...)
	p.WaitOutput("started", time.Minute)
	return p
}

// ended waits for tsh's session to end and checks it said why.
func ended(t *testing.T, p *harness.Proc, why string) {
	t.Helper()
	if err := p.Wait(time.Minute); err == nil {
		t.Errorf("the session ended without an error")
	}
	if !strings.Contains(p.Output(), why) {
		t.Errorf("the session's output does not say %q:\n%s", why, p.Output())
	}
	t.Logf("tsh said: %s", strings.TrimSpace(p.Output()))
}

// TestTrustedClusterSessions: what ends a live session through the root
// ends it (the root user's access, either side removing the trust), and
// what does not (a link outage between leaf and root, a leaf restart)
// leaves the user's work going.
func TestTrustedClusterSessions(t *testing.T) {
	root := startFleetArgs(t, nil, "--cluster", "root")
	leaf := startFleetArgs(t, nil, "--cluster", "leaf")
	root.Ctl(rootRoles, "create", "-f", "-")
	leaf.Ctl(leafRoles, "create", "-f", "-")
	link, linkAddr := linkTo(t, root.Addr)
	// The leaf reaches the root through a link simulator.
	join := func() {
		tok := clusterToken(t, root, "--ttl=5m")
		file := strings.Replace(trustFile(root, tok.Token, root.Pin, "  audit_search: true\n"), "root_addr: "+root.Addr, "root_addr: "+linkAddr, 1)
		leaf.Ctl("", "create", "-f", createFile(t, file))
		waitCluster(t, root, "leaf", true)
	}
	join()
	leaf.StartAgent("plc-1", "site=north")
	alice := root.Login("alice", root.AddUser("alice", "access,ops-north", "root"))
	alice.Tsh("login", "leaf")

	t.Run("resumes across an outage between leaf and root", func(t *testing.T) {
		p := start(t, "tsh ssh alice", alice.Env(), "tsh", "ssh", "root@plc-1",
			`i=0; while [ $i -lt 40 ]; do echo line-$i; i=$((i+1)); sleep 0.1; done`)
		p.WaitOutput("line-5", time.Minute)
		link.Blackout(3 * time.Second)
		if err := p.Wait(2 * time.Minute); err != nil {
			t.Fatalf("the session did not survive the outage: %v\n%s", err, p.Output())
		}
		for i := range 40 {
			if !strings.Contains(p.Output(), fmt.Sprintf("line-%d\n", i)) {
				t.Fatalf("line-%d lost across the outage:\n%s", i, p.Output())
			}
		}
	})
	t.Run("the root user removed", func(t *testing.T) {
		dave := root.Login("dave", root.AddUser("dave", "access,ops-north", "root"))
		p := longSession(t, dave, "--cluster=leaf", "root@plc-1")
		root.Ctl("", "users", "rm", "dave")
		ended(t, p, "removed")
	})
	t.Run("the root removes a role that let the user in", func(t *testing.T) {
		// ops-east maps to the leaf's operator-east: frank's only way in.
		root.Ctl(strings.NewReplacer("ops-north", "ops-east", "\n---\n", "\n---\n").Replace(rootRoles[:strings.Index(rootRoles, "---")]), "create", "-f", "-")
		leaf.Ctl(strings.Replace(leafRoles[:strings.Index(leafRoles, "---")], "operator-north", "operator-east", 1), "create", "-f", "-")
		frank := root.Login("frank", root.AddUser("frank", "access,ops-east", "root"))
		p := longSession(t, frank, "--cluster=leaf", "root@plc-1")
		root.Ctl("", "roles", "rm", "ops-east")
		ended(t, p, `the role "ops-east"`)
		// The removed role's name lingers on frank, but the root no longer
		// vouches for it: nothing maps.
		if out, errOut, err := frank.TshErr("", "ssh", "--cluster=leaf", "root@plc-1", "echo", "again"); err == nil {
			t.Errorf("tsh ssh after the root removed frank's role: %q, want a refusal", out)
		} else {
			t.Logf("refused: %s", strings.TrimSpace(errOut))
		}
	})
	t.Run("the leaf's role map changed", func(t *testing.T) {
		p := longSession(t, alice, "root@plc-1")
		// The same trust without the rule that let alice in.
		file := strings.Replace(trustFile(root, "", root.Pin, "  audit_search: true\n"), "root_addr: "+root.Addr, "root_addr: "+linkAddr, 1)
		file = strings.Replace(file, `  - {remote: "^ops-(.*)$", local: ["operator-$1"]}`+"\n", "", 1)
		leaf.Ctl("", "create", "-f", createFile(t, file))
		ended(t, p, "role_map")
		leaf.Ctl("", "create", "-f", createFile(t, strings.Replace(trustFile(root, "", root.Pin, "  audit_search: true\n"), "root_addr: "+root.Addr, "root_addr: "+linkAddr, 1)))
	})
	t.Run("audit search through the root", func(t *testing.T) {
		out := root.Ctl("", "audit", "search", "--cluster=leaf", "--type=session.start", "--format=json")
		if !strings.Contains(out, "root/alice") || !strings.Contains(out, "plc-1") {
			t.Errorf("audit search --cluster=leaf = %s", out)
		}
	})
	t.Run("the leaf restarts", func(t *testing.T) {
		leaf.Restart()
		waitCluster(t, root, "leaf", true)
		leaf.WaitOnline("plc-1")
		// The same login and leaf certificate reach the device again.
		if !harness.Eventually(time.Minute, func() bool {
			out, _, err := alice.TshErr("", "ssh", "root@plc-1", "echo", "again")
			return err == nil && out == "again\n"
		}) {
			_, errOut, err := alice.TshErr("", "ssh", "root@plc-1", "echo", "again")
			t.Fatalf("tsh ssh after the leaf restarted: %v\n%s", err, errOut)
		}
	})
	t.Run("the leaf removes the trust", func(t *testing.T) {
		p := longSession(t, alice, "root@plc-1")
		leaf.Ctl("", "clusters", "rm", "root")
		ended(t, p, "no longer trusts")
		// The leaf told the root, which forgot it.
		if found, _ := clusterState(root, "leaf"); found {
			t.Error("the root still lists the leaf that removed its trust")
		}
		if _, errOut, err := alice.TshErr("", "ls"); err == nil || !strings.Contains(errOut, "no cluster") {
			t.Errorf("tsh ls in the leaf after it removed the trust: %v\n%s", err, errOut)
		}
	})
	t.Run("the root removes the leaf", func(t *testing.T) {
		join()
		p := longSession(t, alice, "root@plc-1")
		root.Ctl("", "clusters", "rm", "leaf")
		ended(t, p, "trust")
		if _, errOut, err := alice.TshErr("", "ls"); err == nil || !strings.Contains(errOut, "no cluster") {
			t.Errorf("tsh ls in the removed leaf: %v\n%s", err, errOut)
		}
		if found, _ := clusterState(root, "leaf"); found {
			t.Error("the root still lists the leaf")
		}
	})
}
