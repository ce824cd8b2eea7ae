package api

// List is the one shape of every listing that tsh and fleetctl print with
// --format=json or --format=yaml (tsh ls, fleetctl users ls, fleetctl audit
// search, ...): an object, never a bare array, so that a script can tell a
// complete list from one the fleet cut short, and so that fields can be added
// later without breaking it.
//
//	{"kind": "devices", "items": [...], "truncated": false}
type List[T any] struct {
	// Kind names what the items are: "devices", "users", "roles", "tokens",
	// "recordings", "kube_clusters", "audit_events", "profiles",
	// "releases", "rollouts", "pins".
	Kind string `json:"kind"`
	// Items are the entries, in the order the text table shows them; an
	// empty list is [], never null.
	Items []T `json:"items"`
	// Truncated is true when more entries matched than Items holds (the
	// fleet stopped at a limit, such as fleetctl audit search --limit).
	Truncated bool `json:"truncated"`
}

// NewList returns a List of items, with [] for none.
func NewList[T any](kind string, items []T, truncated bool) List[T] {
	if items == nil {
		items = []T{}
	}
	return List[T]{Kind: kind, Items: items, Truncated: truncated}
}
