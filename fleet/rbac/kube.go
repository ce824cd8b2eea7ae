package rbac

import (
	"fmt"
	"regexp"
	"strings"

	"remoteler.dev/edge/proto/api"
)

// kubeNameRE is what a Kubernetes user or group name may be here: 1 to 253
// printable ASCII characters without spaces. The names travel in HTTP
// headers (Impersonate-User, Impersonate-Group), so nothing that could
// split or bend a header gets through.
var kubeNameRE = regexp.MustCompile(`^[!-~]{1,253}$`)

// CheckKubeName reports whether name may be a Kubernetes user or group name
// in a role: 1 to 253 printable ASCII characters, no spaces, not "*" (the
// wildcard of deny) and no template braces.
func CheckKubeName(name string) error {
	if !kubeNameRE.MatchString(name) || name == Wildcard || strings.Contains(name, "{{") || strings.Contains(name, "}}") {
		return fmt.Errorf("kubernetes name %q must be 1 to 253 printable ASCII characters without spaces, braces or a lone \"*\"", name)
	}
	return nil
}

// expandKube resolves "{{internal.TRAIT}}" templates in Kubernetes user or
// group lists and drops invalid names. "*" is kept only when wildcard is
// true (deny rules); a trait value never acts as a wildcard.
func expandKube(names []string, traits map[string][]string, wildcard bool) map[string]bool {
	out := make(map[string]bool)
	for _, n := range names {
		if m := templateRE.FindStringSubmatch(n); m != nil {
			for _, v := range traits[m[1]] {
				if CheckKubeName(v) == nil {
					out[v] = true
				}
			}
			continue
		}
		if (wildcard && n == Wildcard) || CheckKubeName(n) == nil {
			out[n] = true
		}
	}
	return out
}

// validateKube checks kubernetes_users and kubernetes_groups on both sides
// of a role.
func validateKube(spec api.RoleSpec) error {
	sides := []struct {
		where string
		c     api.RoleConditions
		deny  bool
	}{{"allow", spec.Allow, false}, {"deny", spec.Deny, true}}
	for _, side := range sides {
		for field, names := range map[string][]string{
			"kubernetes_users":  side.c.KubernetesUsers,
			"kubernetes_groups": side.c.KubernetesGroups,
		} {
			for _, n := range names {
				switch {
				case n == Wildcard && side.deny:
				case n == Wildcard:
					return fmt.Errorf(`%s.%s: "*" is only allowed in deny; list the names to allow, or use "{{internal.%s}}"`, side.where, field, field)
				case strings.Contains(n, "{{") || strings.Contains(n, "}}"):
					if !templateRE.MatchString(n) {
						return fmt.Errorf(`%s.%s: %q is not a template of the form "{{internal.TRAIT}}"`, side.where, field, n)
					}
				default:
					if err := CheckKubeName(n); err != nil {
						return fmt.Errorf("%s.%s: %w", side.where, field, err)
					}
				}
			}
		}
	}
	d := spec.Deny
	if denyKube(d) && len(d.DeviceLabels) == 0 {
		return fmt.Errorf(`deny.kubernetes_users and deny.kubernetes_groups need deny.device_labels to select devices; use device_labels: {"*": "*"} to deny everywhere`)
	}
	return nil
}

// denyKube reports whether a deny condition names Kubernetes users or
// groups.
func denyKube(d api.RoleConditions) bool {
	return len(d.KubernetesUsers) > 0 || len(d.KubernetesGroups) > 0
}

// KubeAccess returns the Kubernetes users and groups the user may act as
// in the cluster of a device with these labels: the union of those of the
// allow rules that select the device, minus those of the deny rules that
// select it (a "*" there removes every value), each sorted. A device the
// user cannot see (CanSeeDevice) gives nothing.
func (c *Checker) KubeAccess(labels map[string]string) (users, groups []string) {
	if !c.CanSeeDevice(labels) {
		return nil, nil
	}
	u, g := make(map[string]bool), make(map[string]bool)
	for _, a := range c.allow {
		if !matchLabels(a.labels, labels) {
			continue
		}
		for v := range a.kubeUsers {
			u[v] = true
		}
		for v := range a.kubeGroups {
			g[v] = true
		}
	}
	for _, d := range c.deny {
		if !matchLabels(d.labels, labels) {
			continue
		}
		subtract(u, d.kubeUsers)
		subtract(g, d.kubeGroups)
	}
	if len(u) > 0 {
		users = sortedSet(u)
	}
	if len(g) > 0 {
		groups = sortedSet(g)
	}
	return users, groups
}

// subtract removes the names in deny from set; a "*" in deny empties it.
func subtract(set, deny map[string]bool) {
	if deny[Wildcard] {
		clear(set)
		return
	}
	for v := range deny {
		delete(set, v)
	}
}

// CheckKube decides whether the user may reach the Kubernetes cluster of
// the device deviceName with these labels, and as whom: it returns the
// allowed users and groups (KubeAccess), or an *AccessDenied when the
// device is hidden from the user or their roles give neither Kubernetes
// users nor groups there.
func (c *Checker) CheckKube(deviceName string, labels map[string]string) (users, groups []string, err error) {
	users, groups = c.KubeAccess(labels)
	if len(users) == 0 && len(groups) == 0 {
		return nil, nil, &AccessDenied{Device: deviceName, Kube: true}
	}
	return users, groups, nil
}
