// Package rolemap maps the roles a root fleet vouches for to a leaf
// fleet's own roles (trusted clusters: the role_map of a trusted_cluster
// resource). Each rule's Remote is one of
//
//   - an exact role name ("admin");
//   - a glob, where '*' matches any run of characters and '?' one
//     character ("site-*"); each wildcard is also a capture;
//   - a regular expression anchored at both ends ("^site-(.*)$"), in Go's
//     RE2 syntax.
//
// A rule's Local names may use the captures of its Remote ("operator-$1",
// "${1}-ops"). Every rule applies: a user's local roles are those of all
// the rules their remote roles match, without repeats; names that expand
// to an invalid role name are dropped. A map that gives nothing is a
// refusal whose message says which roles were tried (NoMatchError).
//
// Only fleet/... server packages import rolemap.
package rolemap

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/proto/api"
)

// Limits of a role map.
const (
	MaxRules      = 64  // rules in a map
	MaxPatternLen = 256 // bytes of a rule's Remote
	MaxLocal      = 16  // local names in a rule
)

// Map is a compiled role map. The zero Map maps nothing.
type Map struct {
	rules []rule
}

type rule struct {
	remote string
	exact  bool
	re     *regexp.Regexp
	local  []string
}

// Compile checks and compiles rules. Its errors name the rule (counting
// from 1) and say what is wrong with it.
func Compile(rules []api.RoleMapping) (*Map, error) {
	if len(rules) > MaxRules {
		return nil, fmt.Errorf("role_map: %d rules; at most %d", len(rules), MaxRules)
	}
	m := &Map{}
	for i, r := range rules {
		cr, err := compileRule(r)
		if err != nil {
			return nil, fmt.Errorf("role_map rule %d (remote %q): %w", i+1, r.Remote, err)
		}
		m.rules = append(m.rules, cr)
	}
	return m, nil
}

func compileRule(r api.RoleMapping) (rule, error) {
	cr := rule{remote: r.Remote, local: slices.Clone(r.Local)}
	switch {
	case r.Remote == "":
		return cr, fmt.Errorf("remote is empty; name a role, a glob (site-*) or a regular expression (^site-(.*)$)")
	case len(r.Remote) > MaxPatternLen:
		return cr, fmt.Errorf("remote is longer than %d bytes", MaxPatternLen)
	case len(r.Local) == 0:
		return cr, fmt.Errorf("local is empty; name the roles of this fleet it maps to")
	case len(r.Local) > MaxLocal:
		return cr, fmt.Errorf("%d local roles; at most %d", len(r.Local), MaxLocal)
	}
	var expr string
	switch {
	case strings.HasPrefix(r.Remote, "^"):
		if !strings.HasSuffix(r.Remote, "$") {
			return cr, fmt.Errorf("a regular expression must end with $ as it starts with ^")
		}
		expr = r.Remote
	case strings.ContainsAny(r.Remote, "*?"):
		expr = globRegexp(r.Remote)
	default:
		if err := rbac.CheckName(r.Remote); err != nil {
			return cr, fmt.Errorf("not a role name, glob or ^regular expression$: %w", err)
		}
		cr.exact = true
	}
	if !cr.exact {
		re, err := regexp.Compile(expr)
		if err != nil {
			return cr, fmt.Errorf("bad regular expression: %w", err)
		}
		cr.re = re
	}
	for _, l := range r.Local {
		if err := checkLocal(l, cr.re); err != nil {
			return cr, fmt.Errorf("local %q: %w", l, err)
		}
	}
	return cr, nil
}

// globRegexp turns a glob into an anchored regular expression with one
// capture per wildcard.
func globRegexp(glob string) string {
	var b strings.Builder
	b.WriteByte('^')
	for _, c := range glob {
		switch c {
		case '*':
			b.WriteString("(.*)")
		case '?':
			b.WriteString("(.)")
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteByte('$')
	return b.String()
}

// checkLocal accepts a role name, or for a pattern a template that may
// name its captures: what is left once they are taken out must be made
// of role-name characters.
func checkLocal(l string, re *regexp.Regexp) error {
	if re == nil || !strings.Contains(l, "$") {
		return rbac.CheckName(l)
	}
	rest := captureRE.ReplaceAllString(l, "")
	if strings.Contains(rest, "$") {
		return fmt.Errorf("a $ that names no capture (write $1, ${1} or ${name})")
	}
	// As regexp.Expand reads them: "$1x" names capture "1x", so write
	// ${1}x.
	for _, m := range captureRE.FindAllStringSubmatch(l, -1) {
		name := m[1] + m[2]
		if !knownCapture(re, name) {
			return fmt.Errorf("the remote pattern has no capture %s", name)
		}
	}
	if rest != "" && !localCharsRE.MatchString(rest) {
		return fmt.Errorf("holds characters a role name cannot")
	}
	return nil
}

var (
	captureRE    = regexp.MustCompile(`\$(?:\{(\w+)\}|(\w+))`)
	localCharsRE = regexp.MustCompile(`^[a-z0-9._-]+$`)
)

func knownCapture(re *regexp.Regexp, name string) bool {
	var n int
	if _, err := fmt.Sscanf(name, "%d", &n); err == nil && fmt.Sprint(n) == name {
		return n >= 0 && n <= re.NumSubexp()
	}
	return re.SubexpIndex(name) > 0
}

// Roles maps remote roles to local ones: every local role of every rule
// that one of them matches, in the order first given, without repeats.
func (m *Map) Roles(remote []string) []string {
	var out []string
	add := func(name string) {
		if rbac.CheckName(name) == nil && !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	for _, r := range m.rules {
		for _, role := range remote {
			switch {
			case r.exact:
				if role == r.remote {
					for _, l := range r.local {
						add(l)
					}
				}
			default:
				sub := r.re.FindStringSubmatchIndex(role)
				if sub == nil {
					continue
				}
				for _, l := range r.local {
					add(string(r.re.ExpandString(nil, l, role, sub)))
				}
			}
		}
	}
	return out
}

// NoMatchError is the refusal of a user none of whose roles maps.
type NoMatchError struct {
	// Cluster is the root fleet that vouched for the user.
	Cluster string
	// Roles are the user's roles there.
	Roles []string
}

func (e *NoMatchError) Error() string {
	roles := "you hold no role there"
	if len(e.Roles) > 0 {
		roles = "roles " + strings.Join(e.Roles, ", ")
	}
	return fmt.Sprintf("none of your roles at %s (%s) maps to a role of this cluster: the role_map of its trusted cluster %q has no rule for them; ask this cluster's admin to add one (fleetctl create -f)",
		e.Cluster, roles, e.Cluster)
}

// Map maps the roles a user of cluster holds there, or refuses with a
// *NoMatchError when none maps.
func (m *Map) Map(cluster string, remote []string) ([]string, error) {
	out := m.Roles(remote)
	if len(out) == 0 {
		return nil, &NoMatchError{Cluster: cluster, Roles: slices.Clone(remote)}
	}
	return out, nil
}
