package rbac

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"remoteler.dev/edge/proto/api"
)

// AccessDenied is the error of a refused check. Its message says why in
// words the user can act on.
type AccessDenied struct {
	Device string // device name, when the check was about a device
	Login  string // login asked for, when the check was about a login
	Role   string // the role whose deny rule refused, or "" when no role allowed
	// Allowed lists the logins the user does have on the device, when the
	// device is visible to them but the login is not allowed.
	Allowed []string
	// Kube is true when the check was about the device's Kubernetes
	// cluster (CheckKube).
	Kube bool
	// KubeUser is the Kubernetes user a deny rule named, for Kubernetes
	// refusals of one user (Rule RuleDenyKubeUsers).
	KubeUser string
	// Rule says which rule refused, for the audit log: one of the Rule
	// constants. The user sees Error(), which may hide it (a device the
	// user cannot see is refused like one that does not exist).
	Rule string
	// Matched lists the roles whose allow rules select the device, when
	// none of them allows what was asked (RuleAllowLogins, RuleAllowKube).
	Matched []string
	// App is the app's name, when the check was about a web app
	// (CheckApp).
	App string
}

// Rules that refuse, in AccessDenied.Rule.
const (
	// RuleAllowLabels: no role's allow.device_labels selects the device.
	RuleAllowLabels = "allow.device_labels"
	// RuleAllowLogins: allow rules select the device, but none allows the
	// login (Matched names them).
	RuleAllowLogins = "allow.logins"
	// RuleDenyLogins: Role's deny rule selects the device and names the
	// login, or "*".
	RuleDenyLogins = "deny.logins"
	// RuleAllowKube: allow rules select the device (or none does), but
	// none gives Kubernetes users or groups there.
	RuleAllowKube = "allow.kubernetes"
	// RuleDenyKubeUsers: Role's deny rule selects the device and names
	// the Kubernetes user (KubeUser) the request would act as, or "*".
	RuleDenyKubeUsers = "deny.kubernetes_users"
	// RuleDenyKubeGroups: Role's deny rule selects the device and has
	// kubernetes_groups "*": no Kubernetes access there at all.
	RuleDenyKubeGroups = "deny.kubernetes_groups"
	// RuleAllowApps: no role's allow.app_labels selects the app.
	RuleAllowApps = "allow.app_labels"
	// RuleDenyApps: Role's deny.app_labels selects the app.
	RuleDenyApps = "deny.app_labels"
)

// AuditFields describes the refusal for an access.denied audit event:
// "rule" (AccessDenied.Rule), and "role" or "roles" when roles are
// involved.
func (e *AccessDenied) AuditFields() map[string]string {
	f := map[string]string{"rule": e.Rule}
	if e.Role != "" {
		f["role"] = e.Role
	}
	if len(e.Matched) > 0 {
		f["roles"] = strings.Join(e.Matched, ",")
	}
	if e.KubeUser != "" {
		f["kube_user"] = e.KubeUser
	}
	return f
}

func (e *AccessDenied) Error() string {
	switch {
	case e.App != "" && e.Role != "":
		return fmt.Sprintf("access denied: role %q denies app %q on device %q", e.Role, e.App, e.Device)
	case e.App != "":
		return fmt.Sprintf("access denied: no role gives access to app %q on device %q (app_labels)", e.App, e.Device)
	case e.Kube && e.Role != "" && e.KubeUser != "":
		return fmt.Sprintf("access denied: role %q denies Kubernetes user %q on device %q", e.Role, e.KubeUser, e.Device)
	case e.Kube && e.Role != "":
		return fmt.Sprintf("access denied: role %q denies Kubernetes access on device %q", e.Role, e.Device)
	case e.Kube:
		return fmt.Sprintf("access denied: no role gives Kubernetes users or groups on device %q (kubernetes_users, kubernetes_groups)", e.Device)
	case e.Role != "" && e.Login != "":
		return fmt.Sprintf("access denied: role %q denies login %q on device %q", e.Role, e.Login, e.Device)
	case e.Role != "":
		return fmt.Sprintf("access denied: role %q denies every login on device %q", e.Role, e.Device)
	case e.Login == "":
		return fmt.Sprintf("access denied: no role gives access to device %q", e.Device)
	case len(e.Allowed) > 0:
		return fmt.Sprintf("access denied: no role allows login %q on device %q; logins you have there: %s", e.Login, e.Device, strings.Join(e.Allowed, ", "))
	default:
		return fmt.Sprintf("access denied: no role allows login %q on device %q", e.Login, e.Device)
	}
}

// rule is one side (allow or deny) of one role, with logins expanded.
type rule struct {
	role   string
	labels map[string][]string
	logins map[string]bool // expanded; "*" only in deny
	admin  bool
	// kubeUsers and kubeGroups are expanded like logins (kube.go).
	kubeUsers, kubeGroups map[string]bool
	// apps selects web apps by their labels (app.go).
	apps map[string][]string
}

// Checker decides what one user may do, given their roles and traits. It is
// immutable and safe for concurrent use.
//
// Matching a device: a condition's device_labels must match every one of
// its keys against the device's labels. Key "*" with value "*" matches
// every device; value "*" matches any value of a key the device has; a
// device without the key does not match. An empty device_labels matches no
// device, in allow and in deny alike.
type Checker struct {
	allow []rule
	deny  []rule
	ttl   time.Duration // smallest max_session_ttl, 0 if none
	input bool          // some role has record_input
	// noForward and noFileCopy: some role turns port_forwarding or
	// ssh_file_copy off.
	noForward, noFileCopy bool
}

// NewChecker builds a Checker from a user's roles (already loaded; see
// Roles.Resolve) and traits (e.g. traits["logins"]). Login templates are
// expanded here; values that are not valid Unix login names are dropped.
func NewChecker(roles []api.Role, traits map[string][]string) *Checker {
	c := &Checker{}
	for _, r := range roles {
		name := r.Metadata.Name
		c.allow = append(c.allow, rule{
			role:   name,
			labels: r.Spec.Allow.DeviceLabels,
			logins: expand(r.Spec.Allow.Logins, traits, false),
			admin:  r.Spec.Allow.Admin,

			kubeUsers:  expandKube(r.Spec.Allow.KubernetesUsers, traits, false),
			kubeGroups: expandKube(r.Spec.Allow.KubernetesGroups, traits, false),
			apps:       r.Spec.Allow.AppLabels,
		})
		c.deny = append(c.deny, rule{
			role:   name,
			labels: r.Spec.Deny.DeviceLabels,
			logins: expand(r.Spec.Deny.Logins, traits, true),
			admin:  r.Spec.Deny.Admin,

			kubeUsers:  expandKube(r.Spec.Deny.KubernetesUsers, traits, true),
			kubeGroups: expandKube(r.Spec.Deny.KubernetesGroups, traits, true),
			apps:       r.Spec.Deny.AppLabels,
		})
		c.input = c.input || r.Spec.Options.RecordInput
		if o := r.Spec.Options.PortForwarding; o != nil && !*o {
			c.noForward = true
		}
		if o := r.Spec.Options.SSHFileCopy; o != nil && !*o {
			c.noFileCopy = true
		}
		if d, err := time.ParseDuration(r.Spec.Options.MaxSessionTTL); err == nil && d > 0 {
			if c.ttl == 0 || d < c.ttl {
				c.ttl = d
			}
		}
	}
	return c
}

// expand resolves templates and drops invalid logins. "*" is kept only when
// wildcard is true (deny rules).
func expand(logins []string, traits map[string][]string, wildcard bool) map[string]bool {
	out := make(map[string]bool)
	add := func(l string) {
		if (wildcard && l == Wildcard) || CheckLogin(l) == nil {
			out[l] = true
		}
	}
	for _, l := range logins {
		if vals, ok := traitValues(l, traits); ok {
			for _, v := range vals {
				if v != Wildcard { // a trait value never acts as a wildcard
					add(v)
				}
			}
			continue
		}
		add(l)
	}
	return out
}

// matchLabels reports whether selector matches a device with labels.
func matchLabels(selector map[string][]string, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, vals := range selector {
		if k == Wildcard {
			if !slices.Contains(vals, Wildcard) {
				return false
			}
			continue
		}
		v, ok := labels[k]
		if !ok {
			return false
		}
		if !slices.Contains(vals, Wildcard) && !slices.Contains(vals, v) {
			return false
		}
	}
	return true
}

// CheckDevice decides whether the user may log in as login on the device
// named deviceName with these labels. Deny wins: a deny rule whose labels
// match the device and whose logins contain login (or "*") refuses even if
// another role allows. It returns nil or an *AccessDenied.
func (c *Checker) CheckDevice(deviceName string, labels map[string]string, login string) error {
	for _, d := range c.deny {
		if matchLabels(d.labels, labels) && (d.logins[login] || d.logins[Wildcard]) {
			return &AccessDenied{Device: deviceName, Login: login, Role: d.role, Rule: RuleDenyLogins}
		}
	}
	for _, a := range c.allow {
		if a.logins[login] && matchLabels(a.labels, labels) {
			return nil
		}
	}
	matched := c.matchingAllows(labels)
	if len(matched) == 0 {
		return &AccessDenied{Device: deviceName, Login: login, Rule: RuleAllowLabels}
	}
	return &AccessDenied{Device: deviceName, Login: login, Allowed: c.DeviceLogins(labels), Rule: RuleAllowLogins, Matched: matched}
}

// matchingAllows names the roles whose allow rules select a device with
// these labels, sorted.
func (c *Checker) matchingAllows(labels map[string]string) []string {
	var out []string
	for _, a := range c.allow {
		if matchLabels(a.labels, labels) && !slices.Contains(out, a.role) {
			out = append(out, a.role)
		}
	}
	sort.Strings(out)
	return out
}

// hidden returns why a device with these labels is hidden from the user
// (CanSeeDevice is false), or nil when it is not.
func (c *Checker) hidden(deviceName string, labels map[string]string) *AccessDenied {
	for _, d := range c.deny {
		if d.logins[Wildcard] && matchLabels(d.labels, labels) {
			return &AccessDenied{Device: deviceName, Role: d.role, Rule: RuleDenyLogins}
		}
	}
	if len(c.matchingAllows(labels)) == 0 {
		return &AccessDenied{Device: deviceName, Rule: RuleAllowLabels}
	}
	return nil
}

// CanSeeDevice reports whether some allow rule matches labels and no deny
// rule with logins "*" does: whether the device shows in the user's lists.
func (c *Checker) CanSeeDevice(labels map[string]string) bool {
	for _, d := range c.deny {
		if d.logins[Wildcard] && matchLabels(d.labels, labels) {
			return false
		}
	}
	for _, a := range c.allow {
		if matchLabels(a.labels, labels) {
			return true
		}
	}
	return false
}

// DeviceLogins returns the logins the user may use on a device with these
// labels: those of matching allow rules minus those of matching deny rules,
// sorted.
func (c *Checker) DeviceLogins(labels map[string]string) []string {
	allowed := make(map[string]bool)
	for _, a := range c.allow {
		if matchLabels(a.labels, labels) {
			for l := range a.logins {
				allowed[l] = true
			}
		}
	}
	for _, d := range c.deny {
		if !matchLabels(d.labels, labels) {
			continue
		}
		if d.logins[Wildcard] {
			return nil
		}
		for l := range d.logins {
			delete(allowed, l)
		}
	}
	if len(allowed) == 0 {
		return nil
	}
	return sortedSet(allowed)
}

// AllLogins returns the union of the logins allowed by rules that select
// some device, minus the logins denied everywhere (deny rules with
// device_labels {"*": ["*"]}), sorted. These are the principals of the
// user's SSH certificate; the fleet still checks each connection with
// CheckDevice.
func (c *Checker) AllLogins() []string {
	allowed := make(map[string]bool)
	for _, a := range c.allow {
		if len(a.labels) == 0 {
			continue
		}
		for l := range a.logins {
			allowed[l] = true
		}
	}
	for _, d := range c.deny {
		if !matchesEverywhere(d.labels) {
			continue
		}
		if d.logins[Wildcard] {
			return nil
		}
		for l := range d.logins {
			delete(allowed, l)
		}
	}
	if len(allowed) == 0 {
		return nil
	}
	return sortedSet(allowed)
}

// matchesEverywhere reports whether selector matches every device: only a
// "*" key with a "*" value.
func matchesEverywhere(selector map[string][]string) bool {
	return len(selector) == 1 && slices.Contains(selector[Wildcard], Wildcard)
}

// IsAdmin reports whether some role allows admin and none denies it.
func (c *Checker) IsAdmin() bool {
	admin := false
	for _, a := range c.allow {
		admin = admin || a.admin
	}
	for _, d := range c.deny {
		if d.admin {
			return false
		}
	}
	return admin
}

// MaxTTL returns the smallest max_session_ttl of the user's roles, or def
// when none sets one.
func (c *Checker) MaxTTL(def time.Duration) time.Duration {
	if c.ttl > 0 {
		return c.ttl
	}
	return def
}

// RecordInput reports whether some role asks for the user's input in
// interactive sessions to be recorded.
func (c *Checker) RecordInput() bool { return c.input }

// PortForwarding reports whether the user may forward ports over SSH: no
// role sets port_forwarding to false.
func (c *Checker) PortForwarding() bool { return !c.noForward }

// FileCopy reports whether the user may copy files over SSH (scp, sftp):
// no role sets ssh_file_copy to false.
func (c *Checker) FileCopy() bool { return !c.noFileCopy }

// Roles lists the names of the roles the Checker was built from, sorted.
func (c *Checker) Roles() []string {
	names := make([]string, 0, len(c.allow))
	for _, a := range c.allow {
		names = append(names, a.role)
	}
	sort.Strings(names)
	return slices.Compact(names)
}
