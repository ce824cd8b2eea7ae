package kubetest

import (
	"strings"
	"testing"
)

func TestStartServesRBACAndImpersonation(t *testing.T) {
	c := Start(t, Options{})
	if out := c.KubectlAdmin(t, "", "get", "namespace", "default", "-o", "name"); strings.TrimSpace(out) != "namespace/default" {
		t.Errorf("get namespace default: got %q", out)
	}
	out := c.KubectlAdmin(t, "", "auth", "whoami", "--as=alice", "--as-group=developers", "-o", "jsonpath={.status.userInfo.username} {.status.userInfo.groups}")
	if !strings.HasPrefix(out, "alice ") || !strings.Contains(out, "developers") {
		t.Errorf("whoami as alice: got %q", out)
	}
	if out, err := c.KubectlAdminErr("auth", "can-i", "list", "secrets", "--as=alice"); err == nil || strings.TrimSpace(out) != "no" {
		t.Errorf("RBAC: can alice list secrets? got %q, %v; want no", out, err)
	}
}
