// Package rbac holds the fleet's role-based access control: validating and
// decoding role resources, the preset roles, the role store (JSON under
// "roles/NAME" in a store.Store) and the Checker that decides, for one
// user's roles and traits, which devices and logins they may use.
//
// Rules, in short (the Checker's doc has the details):
//   - deny wins over allow, across all of a user's roles;
//   - a condition selects devices by labels; an empty device_labels selects
//     no device, in allow and in deny alike, so a deny rule must name labels
//     ({"*": ["*"]} means every device);
//   - logins may be templates "{{internal.TRAIT}}" that expand to the user's
//     trait values, or "{{external.TRAIT}}" that expand to a single sign-on
//     user's claims (traits.go; an unknown trait expands to nothing);
//     expanded values that are not valid Unix login names are dropped;
//   - kubernetes_users and kubernetes_groups work like logins for the
//     Kubernetes clusters on devices (kube.go): templated, "*" only in
//     deny, deny wins; a deny "*" in either keeps the user off the
//     clusters it selects, and deny kubernetes_users applies to the fleet
//     user name a request acts as when roles give no Kubernetes user;
//   - options port_forwarding and ssh_file_copy: the most restrictive
//     across a user's roles wins;
//   - app_labels select the web apps on devices (app.go), matched against
//     the app's labels merged with its device's: an app is allowed when an
//     allow rule's app_labels select it and no deny rule's do.
//
// Only fleet/... server packages import rbac.
package rbac

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"time"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/proto/api"
	"sigs.k8s.io/yaml"
)

// Kind and Version of role resources.
const (
	Kind    = "role"
	Version = "v1"
)

// Wildcard matches any label key or value in device_labels, and any login
// in deny.logins.
const Wildcard = "*"

var (
	nameRE  = regexp.MustCompile(`^[a-z0-9._-]{1,64}$`)
	loginRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,31}$`)
)

// CheckName reports whether name is a valid role (and user) name: 1 to 64
// characters of lower-case letters, digits, '.', '_' and '-'.
func CheckName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("name %q must be 1 to 64 characters of a-z, 0-9, '.', '_' and '-'", name)
	}
	if name == "." || name == ".." {
		return fmt.Errorf("name %q is reserved", name)
	}
	return nil
}

// CheckLogin reports whether login is a valid Unix login name: 1 to 32
// characters of letters, digits, '_', '.' and '-', not starting with a digit,
// '.' or '-'.
func CheckLogin(login string) error {
	if !loginRE.MatchString(login) {
		return fmt.Errorf("login %q is not a valid Unix login name (1 to 32 characters of A-Z, a-z, 0-9, '_', '.', '-', starting with a letter or '_')", login)
	}
	return nil
}

// Validate checks a role: kind "role", version "v1", a valid name, logins
// that are valid Unix login names or trait templates (traits.go; "*"
// only in deny), label selectors with non-empty keys and values (key "*"
// only with value "*"), a deny that names logins also names device labels,
// and a max_session_ttl that parses as a positive Go duration. Unknown
// fields are caught by Decode, which reads role documents.
func Validate(r api.Role) error {
	if err := validate(r); err != nil {
		return fmt.Errorf("rbac: role %q: %w", r.Metadata.Name, err)
	}
	return nil
}

func validate(r api.Role) error {
	if r.Kind != Kind {
		return fmt.Errorf("kind is %q, want %q", r.Kind, Kind)
	}
	if r.Version != Version {
		return fmt.Errorf("version is %q, want %q", r.Version, Version)
	}
	if err := CheckName(r.Metadata.Name); err != nil {
		return err
	}
	if err := validateConditions("allow", r.Spec.Allow, false); err != nil {
		return err
	}
	if err := validateConditions("deny", r.Spec.Deny, true); err != nil {
		return err
	}
	if err := validateKube(r.Spec); err != nil {
		return err
	}
	d := r.Spec.Deny
	if len(d.Logins) > 0 && len(d.DeviceLabels) == 0 {
		return errors.New(`deny.logins needs deny.device_labels to select devices; use device_labels: {"*": "*"} to deny everywhere`)
	}
	if len(d.DeviceLabels) > 0 && len(d.Logins) == 0 && !denyKube(d) && len(d.AppLabels) == 0 {
		return errors.New(`deny.device_labels without deny.logins, deny.kubernetes_users or deny.kubernetes_groups denies nothing; ` +
			`add logins: ["*"] to deny every login there, or kubernetes_groups: ["*"] to keep users off the Kubernetes clusters there`)
	}
	if ttl := r.Spec.Options.MaxSessionTTL; ttl != "" {
		d, err := time.ParseDuration(ttl)
		if err != nil {
			return fmt.Errorf("options.max_session_ttl %q is not a duration like 8h or 30m", ttl)
		}
		if d <= 0 {
			return fmt.Errorf("options.max_session_ttl %q must be positive", ttl)
		}
	}
	return nil
}

func validateConditions(where string, c api.RoleConditions, deny bool) error {
	for _, l := range c.Logins {
		switch {
		case l == Wildcard && deny:
		case l == Wildcard:
			return fmt.Errorf(`%s.logins: "*" is only allowed in deny; list the logins to allow, or use "{{internal.logins}}"`, where)
		case isTemplate(l):
			if !templateRE.MatchString(l) {
				return fmt.Errorf(`%s.logins: %q is not a template of the form "{{internal.TRAIT}}", "{{external.TRAIT}}" or "{{email.local(external.TRAIT)}}"`, where, l)
			}
		default:
			if err := CheckLogin(l); err != nil {
				return fmt.Errorf("%s.logins: %w", where, err)
			}
		}
	}
	if err := validateSelector(where+".device_labels", "device", c.DeviceLabels); err != nil {
		return err
	}
	return validateSelector(where+".app_labels", "app", c.AppLabels)
}

// validateSelector checks a label selector (device_labels, app_labels);
// what names what it selects, for the messages.
func validateSelector(where, what string, sel map[string][]string) error {
	for k, vals := range sel {
		if k != Wildcard && !devices.ValidLabelKey(k) {
			return fmt.Errorf("%s: key %q must be 1 to 63 characters of A-Z, a-z, 0-9, '.', '_', '/', '-', or \"*\"", where, k)
		}
		if len(vals) == 0 {
			return fmt.Errorf("%s[%q] has no values; use \"*\" to match any value", where, k)
		}
		for _, v := range vals {
			switch {
			case v == Wildcard:
			case k == Wildcard:
				return fmt.Errorf("%s: key \"*\" takes only the value \"*\" (every %s), not %q", where, what, v)
			case v == "":
				return fmt.Errorf("%s[%q] has an empty value", where, k)
			case !devices.ValidLabelValue(v):
				return fmt.Errorf("%s[%q]: value %q must be 1 to 63 characters of A-Z, a-z, 0-9, '.', '_', ':', '/', '@', '+', '-', or \"*\"", where, k, v)
			}
		}
	}
	return nil
}

// Decode reads a role document in YAML or JSON (JSON is YAML), refusing
// unknown fields, and validates it. Missing kind and version default to
// "role" and "v1". In device_labels a single value may be written as a
// string ({site: north}) instead of a list ({site: [north]}); so in
// app_labels.
func Decode(data []byte) (api.Role, error) {
	var r api.Role
	j, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return r, fmt.Errorf("rbac: decode role: %w", err)
	}
	j, err = normalizeLabels(j)
	if err != nil {
		return r, fmt.Errorf("rbac: decode role: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return r, fmt.Errorf("rbac: decode role: %w", err)
	}
	if dec.More() {
		return r, errors.New("rbac: decode role: more than one document")
	}
	if r.Kind == "" {
		r.Kind = Kind
	}
	if r.Version == "" {
		r.Version = Version
	}
	return r, Validate(r)
}

// normalizeLabels rewrites spec.{allow,deny}.device_labels values that are
// single strings into one-element lists. Anything it does not recognise is
// left for the strict decoder to refuse.
func normalizeLabels(j []byte) ([]byte, error) {
	var doc map[string]any
	if err := json.Unmarshal(j, &doc); err != nil {
		return nil, errors.New("a role must be a mapping with kind, version, metadata and spec")
	}
	spec, _ := doc["spec"].(map[string]any)
	changed := false
	for _, side := range []string{"allow", "deny"} {
		cond, _ := spec[side].(map[string]any)
		for _, field := range []string{"device_labels", "app_labels"} {
			labels, _ := cond[field].(map[string]any)
			for k, v := range labels {
				if s, ok := v.(string); ok {
					labels[k] = []any{s}
					changed = true
				}
			}
		}
	}
	if !changed {
		return j, nil
	}
	return json.Marshal(doc)
}

// sortedSet returns the distinct values of in, sorted.
func sortedSet(in map[string]bool) []string {
	out := make([]string, 0, len(in))
	for v := range in {
		out = append(out, v)
	}
	sort.Strings(out)
	return out
}
