package rbac

import (
	"regexp"
	"strings"
)

// Traits are what templates in roles expand to. A local user's traits are
// the fleet's own (the logins given by fleetctl users add --logins): a
// template reads them as {{internal.NAME}}. A single sign-on user's traits
// come from their identity provider's claims (fleet/sso): they are kept
// under keys with ExternalPrefix and a template reads them as
// {{external.NAME}}. Neither namespace reaches the other, so a claim can
// never pose as an admin-given trait.
//
// {{email.local(internal.NAME)}} and {{email.local(external.NAME)}} give
// the part before the "@" of each value: a login "alice" from the email
// claim "alice@example.com".

// ExternalPrefix starts the trait keys that hold a single sign-on user's
// claims: {{external.groups}} reads traits["external.groups"].
const ExternalPrefix = "external."

// templateRE matches a whole trait template; its groups are the function
// ("email.local" or ""), the namespace and the trait name of either form.
var templateRE = regexp.MustCompile(`^\{\{\s*(?:(email\.local)\(\s*(internal|external)\.([A-Za-z0-9_.-]+)\s*\)|(internal|external)\.([A-Za-z0-9_.-]+))\s*\}\}$`)

// isTemplate reports whether s looks like a template (holds braces), so
// that a malformed one is refused rather than taken as a name.
func isTemplate(s string) bool {
	return strings.Contains(s, "{{") || strings.Contains(s, "}}")
}

// traitValues expands the template tmpl against traits. ok is false when
// tmpl is not a template. Values that are empty after the function are
// dropped.
func traitValues(tmpl string, traits map[string][]string) (values []string, ok bool) {
	m := templateRE.FindStringSubmatch(tmpl)
	if m == nil {
		return nil, false
	}
	fn, ns, name := m[1], m[2], m[3]
	if fn == "" {
		ns, name = m[4], m[5]
	}
	var key string
	switch ns {
	case "internal":
		if strings.HasPrefix(name, ExternalPrefix) {
			return nil, true // claims are not internal traits
		}
		key = name
	case "external":
		key = ExternalPrefix + name
	}
	for _, v := range traits[key] {
		if fn == "email.local" {
			local, _, found := strings.Cut(v, "@")
			if !found {
				continue
			}
			v = local
		}
		if v != "" {
			values = append(values, v)
		}
	}
	return values, true
}
