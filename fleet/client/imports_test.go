package client_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestClientsLinkNoServerCode checks the import rule of DESIGN.md for the
// user and admin clients: tsh and fleetctl link only proto/..., their own
// packages and fleet/client, never a server package, and never "testing".
func TestClientsLinkNoServerCode(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool in PATH")
	}
	allowed := []string{
		"remoteler.dev/edge/proto",
		"remoteler.dev/edge/fleet/client",
		"remoteler.dev/edge/fleet/tsh",
		"remoteler.dev/edge/fleet/fleetctl",
		"remoteler.dev/edge/fleet/kubeconfig",   // tsh kube login (client-go's clientcmd), as tools/layering allows
		"remoteler.dev/edge/internal/buildinfo", // the version, as tools/layering allows
		"remoteler.dev/edge/fleet/cmd/tsh",
		"remoteler.dev/edge/fleet/cmd/fleetctl",
	}
	for _, main := range []string{"remoteler.dev/edge/fleet/cmd/tsh", "remoteler.dev/edge/fleet/cmd/fleetctl"} {
		t.Run(main, func(t *testing.T) {
			out, err := exec.Command(goTool, "list", "-deps", main).CombinedOutput()
			if err != nil {
				t.Fatalf("go list -deps %s: %v\n%s", main, err, out)
			}
			for dep := range strings.FieldsSeq(string(out)) {
				if dep == "testing" {
					t.Errorf("%s links %q", main, dep)
				}
				if !strings.HasPrefix(dep, "remoteler.dev/edge/") {
					continue
				}
				ok := false
				for _, a := range allowed {
					if dep == a || strings.HasPrefix(dep, a+"/") {
						ok = true
					}
				}
				if !ok || strings.HasPrefix(dep, "remoteler.dev/edge/fleet/client/clienttest") {
					t.Errorf("%s links %s; tsh and fleetctl may link only proto/..., fleet/client/... (not clienttest), fleet/tsh, fleet/fleetctl, fleet/kubeconfig and internal/buildinfo", main, dep)
				}
			}
		})
	}
}
