package imagetest

import (
	"path/filepath"
	"strings"
	"testing"

	"remoteler.dev/edge/tools/kube/kubetest"
)

// TestKubernetesManifests applies both layouts of images/fleet/kubernetes
// (one replica on the embedded store; several on etcd) to a real API
// server, which checks every object against its schema, and checks what
// the replicas need: a StatefulSet whose pods name themselves and
// advertise their IP to their peers, the peer port, readiness on the
// replica's lease, and client affinity on the Service.
func TestKubernetesManifests(t *testing.T) {
	need(t)
	c := kubetest.Start(t, kubetest.Options{})
	dir := filepath.Join(imagesDir(t), "fleet", "kubernetes")
	c.KubectlAdmin(t, "", "apply", "-f", dir)
	out := c.KubectlAdmin(t, "", "get", "deployment,service,pvc,configmap", "-n", "remoteler", "-o", "name")
	for _, want := range []string{"deployment.apps/fleetd", "service/fleetd", "persistentvolumeclaim/fleetd-data", "configmap/fleetd"} {
		if !strings.Contains(out, want) {
			t.Errorf("single replica: %q missing from %q", want, out)
		}
	}
	// The replicas replace the single replica's objects.
	c.KubectlAdmin(t, "", "delete", "-f", filepath.Join(dir, "40-deployment.yaml"), "-f", filepath.Join(dir, "50-service.yaml"))
	c.KubectlAdmin(t, "", "apply", "-f", filepath.Join(dir, "replicas"))
	out = c.KubectlAdmin(t, "", "get", "statefulset,service,poddisruptionbudget,networkpolicy", "-n", "remoteler", "-o", "name")
	for _, want := range []string{"statefulset.apps/fleetd", "statefulset.apps/etcd", "service/fleetd", "service/fleetd-peers", "service/etcd",
		"poddisruptionbudget.policy/fleetd", "networkpolicy.networking.k8s.io/etcd", "networkpolicy.networking.k8s.io/fleetd"} {
		if !strings.Contains(out, want) {
			t.Errorf("replicas: %q missing from %q", want, out)
		}
	}
	got := c.KubectlAdmin(t, "", "get", "statefulset", "fleetd", "-n", "remoteler", "-o",
		`jsonpath={.spec.replicas} {.spec.template.spec.containers[0].args} {.spec.template.spec.containers[0].readinessProbe.httpGet.path} {.spec.template.spec.containers[0].ports[2].containerPort}`)
	for _, want := range []string{"3 ", "--replica-id=$(POD_NAME)", "--peer-advertise=$(POD_IP)", "/v1/ready", "3081"} {
		if !strings.Contains(got, want) {
			t.Errorf("fleetd StatefulSet: %q lacks %q", got, want)
		}
	}
	if got := c.KubectlAdmin(t, "", "get", "service", "fleetd", "-n", "remoteler", "-o", "jsonpath={.spec.sessionAffinity}"); got != "ClientIP" {
		t.Errorf("fleetd Service affinity %q, want ClientIP", got)
	}
	// The peer port admits the replicas only.
	peerFrom := c.KubectlAdmin(t, "", "get", "networkpolicy", "fleetd", "-n", "remoteler", "-o",
		`jsonpath={range .spec.ingress[*]}{.ports[*].port}={.from[*].podSelector.matchLabels}{"\n"}{end}`)
	if !strings.Contains(peerFrom, `3081={"app.kubernetes.io/name":"fleetd"}`) || !strings.Contains(peerFrom, "3080 3080=\n") {
		t.Errorf("fleetd network policy's ingress:\n%s\nwant 3081 from fleetd pods only, 3080 from anywhere", peerFrom)
	}
	cfg := c.KubectlAdmin(t, "", "get", "configmap", "fleetd-replicas", "-n", "remoteler", "-o", "jsonpath={.data.fleetd\\.yaml}")
	for _, want := range []string{"store: etcd://etcd-0.etcd:2379,etcd-1.etcd:2379,etcd-2.etcd:2379/fleet", "peer_listen: 0.0.0.0:3081"} {
		if !strings.Contains(cfg, want) {
			t.Errorf("replicas' config lacks %q:\n%s", want, cfg)
		}
	}
}
