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

// expandKube resolves trait templates (traits.go) in Kubernetes user or
// group lists and drops invalid names. "*" is kept only when wildcard is
// true (deny rules); a trait value never acts as a wildcard.
func expandKube(names []string, traits map[string][]string, wildcard bool) map[string]bool {
	out := make(map[string]bool)
	for _, n := range names {
		if vals, ok := traitValues(n, traits); ok {
			for _, v := range vals {
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
				case isTemplate(n):
					if !templateRE.MatchString(n) {
						return fmt.Errorf(`%s.%s: %q is not a template of the form "{{internal.TRAIT}}" or "{{external.TRAIT}}"`, side.where, field, n)
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

// KubeAccess returns the Kubernetes users and groups the user's roles
// give in the cluster of a device with these labels: the union of those of
// the allow rules that select the device, minus those of the deny rules
// that select it, each sorted. A device the user cannot see
// (CanSeeDevice) gives nothing, and so does a deny rule that selects the
// device with kubernetes_users or kubernetes_groups "*": that keeps the
// user off the device's cluster altogether. Who a request acts as is
// CheckKube's decision.
func (c *Checker) KubeAccess(labels map[string]string) (users, groups []string) {
	u, g, _ := c.kubeAccess("", labels)
	if len(u) > 0 {
		users = sortedSet(u)
	}
	if len(g) > 0 {
		groups = sortedSet(g)
	}
	return users, groups
}

// kubeAccess is KubeAccess with sets, and the refusal when there is one.
func (c *Checker) kubeAccess(deviceName string, labels map[string]string) (u, g map[string]bool, denied *AccessDenied) {
	if ad := c.hidden(deviceName, labels); ad != nil {
		ad.Kube = true
		return nil, nil, ad
	}
	for _, d := range c.deny {
		if !matchLabels(d.labels, labels) {
			continue
		}
		switch {
		case d.kubeGroups[Wildcard]:
			return nil, nil, &AccessDenied{Device: deviceName, Kube: true, Role: d.role, Rule: RuleDenyKubeGroups}
		case d.kubeUsers[Wildcard]:
			return nil, nil, &AccessDenied{Device: deviceName, Kube: true, Role: d.role, Rule: RuleDenyKubeUsers}
		}
	}
	u, g = make(map[string]bool), make(map[string]bool)
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
	if len(u) == 0 && len(g) == 0 {
		return nil, nil, &AccessDenied{Device: deviceName, Kube: true, Rule: RuleAllowKube, Matched: c.matchingAllows(labels)}
	}
	granted := len(u) > 0
	var lastUserDeny string
	for _, d := range c.deny {
		if !matchLabels(d.labels, labels) {
			continue
		}
		for v := range d.kubeUsers {
			if u[v] {
				delete(u, v)
				lastUserDeny = d.role
			}
		}
		for v := range d.kubeGroups {
			delete(g, v)
		}
	}
	if granted && len(u) == 0 {
		// Every user the roles give is denied: no one to act as.
		return nil, nil, &AccessDenied{Device: deviceName, Kube: true, Role: lastUserDeny, Rule: RuleDenyKubeUsers}
	}
	return u, g, nil
}

// denyKubeUser returns the role whose deny rule selects a device with
// these labels and names the Kubernetes user name, or "".
func (c *Checker) denyKubeUser(labels map[string]string, name string) string {
	for _, d := range c.deny {
		if matchLabels(d.labels, labels) && d.kubeUsers[name] {
			return d.role
		}
	}
	return ""
}

// CheckKube decides whether the user fleetUser may reach the Kubernetes
// cluster of the device deviceName with these labels, and as whom. Deny
// wins everywhere:
//
//   - a device the user cannot see is refused;
//   - a deny rule that selects the device with kubernetes_users or
//     kubernetes_groups "*" refuses the cluster outright;
//   - with neither Kubernetes users nor groups from the allow rules that
//     select the device, it is refused;
//   - the users are those the allow rules give minus those deny rules
//     name; when the allow rules give none, the user acts as their fleet
//     name, which deny rules' kubernetes_users may name too; when every
//     user they give is denied, it is refused;
//   - the groups are those the allow rules give minus those deny rules
//     name.
//
// It returns the users (at least one) and groups, sorted, or an
// *AccessDenied whose Rule says which rule refused.
func (c *Checker) CheckKube(deviceName string, labels map[string]string, fleetUser string) (users, groups []string, err error) {
	u, g, denied := c.kubeAccess(deviceName, labels)
	if denied != nil {
		return nil, nil, denied
	}
	if len(u) == 0 {
		if role := c.denyKubeUser(labels, fleetUser); role != "" {
			return nil, nil, &AccessDenied{Device: deviceName, Kube: true, Role: role, Rule: RuleDenyKubeUsers, KubeUser: fleetUser}
		}
		u[fleetUser] = true
	}
	users = sortedSet(u)
	if len(g) > 0 {
		groups = sortedSet(g)
	}
	return users, groups, nil
}
