package kubesrv

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
)

// Refusal is a request the fleet refuses before forwarding it; its message
// says why and what to do. Answer it with 403 (kubewire.WriteStatus).
type Refusal struct{ Msg string }

func (r *Refusal) Error() string { return r.Msg }

// Resolve decides whom a request acts as in the cluster, given the
// Kubernetes users and groups the user's roles allow there (rbac's
// CheckKube) and the request's own impersonation headers:
//
//   - with no Impersonate-User, the user acts as the one allowed
//     Kubernetes user, or as their fleet name when roles allow none; with
//     several allowed users the request must pick one (kubectl --as);
//   - Impersonate-User may only name an allowed user (or the fleet name,
//     when none is allowed);
//   - with no Impersonate-Group, the user has every allowed group; the
//     header may only narrow them to a subset;
//   - Impersonate-Uid and Impersonate-Extra-* are refused.
//
// So impersonation headers can only select among what the roles grant:
// asking for more is refused, never ignored.
func Resolve(fleetUser string, users, groups []string, h http.Header) (string, []string, error) {
	for k := range h {
		ck := http.CanonicalHeaderKey(k)
		if strings.HasPrefix(ck, "Impersonate-") && ck != "Impersonate-User" && ck != "Impersonate-Group" {
			return "", nil, &Refusal{fmt.Sprintf("the fleet does not pass on %s: impersonate only with kubectl --as and --as-group", ck)}
		}
		if ck != k && (ck == "Impersonate-User" || ck == "Impersonate-Group") {
			// A non-canonical spelling would slip past h.Values below.
			return "", nil, &Refusal{fmt.Sprintf("malformed impersonation header %q", k)}
		}
	}
	allowedUsers := users
	if len(allowedUsers) == 0 {
		allowedUsers = []string{fleetUser}
	}
	var user string
	switch asked := h.Values("Impersonate-User"); {
	case len(asked) > 1:
		return "", nil, &Refusal{"more than one Impersonate-User header"}
	case len(asked) == 1:
		if !slices.Contains(allowedUsers, asked[0]) {
			return "", nil, &Refusal{fmt.Sprintf("your roles do not allow acting as Kubernetes user %q; allowed: %s", asked[0], strings.Join(allowedUsers, ", "))}
		}
		user = asked[0]
	case len(allowedUsers) == 1:
		user = allowedUsers[0]
	default:
		return "", nil, &Refusal{fmt.Sprintf("your roles allow several Kubernetes users (%s): pick one with kubectl --as=USER or tsh kube login --as=USER", strings.Join(allowedUsers, ", "))}
	}
	outGroups := groups
	if asked := h.Values("Impersonate-Group"); len(asked) > 0 {
		for _, g := range asked {
			if !slices.Contains(groups, g) {
				return "", nil, &Refusal{fmt.Sprintf("your roles do not allow Kubernetes group %q; allowed: %s", g, strings.Join(groups, ", "))}
			}
		}
		outGroups = slices.Compact(slices.Sorted(slices.Values(asked)))
	}
	return user, slices.Clone(outGroups), nil
}
