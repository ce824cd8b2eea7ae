package e2e

import (
	"encoding/json"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"remoteler.dev/edge/proto/api"
)

// TestListingsJSONAndYAML runs every listing command of tsh and fleetctl
// with --format=json and --format=yaml against a running fleet: each
// prints one object with its kind, its items and the truncation flag, the
// same in both formats, and fleetctl audit search --limit says when it cut
// the list.
func TestListingsJSONAndYAML(t *testing.T) {
	f, _, u := setup(t)
	listings := []struct {
		kind string
		run  func(format string) string
		min  int // items at least
	}{
		{"devices", func(format string) string { return u.Tsh("ls", "--format="+format) }, 1},
		{"profiles", func(format string) string { return u.Tsh("status", "--format="+format) }, 1},
		{"recordings", func(format string) string { return u.Tsh("recordings", "ls", "--format="+format) }, 0},
		{"kube_clusters", func(format string) string { return u.Tsh("kube", "ls", "--format="+format) }, 0},
		{"devices", func(format string) string { return f.Ctl("", "devices", "ls", "--format="+format) }, 1},
		{"users", func(format string) string { return f.Ctl("", "users", "ls", "--format="+format) }, 1},
		{"roles", func(format string) string { return f.Ctl("", "roles", "ls", "--format="+format) }, 1},
		{"tokens", func(format string) string { return f.Ctl("", "tokens", "ls", "--format="+format) }, 0},
		{"audit_events", func(format string) string { return f.Ctl("", "audit", "search", "--since=", "--format="+format) }, 3},
		{"releases", func(format string) string { return f.Ctl("", "releases", "ls", "--format="+format) }, 0},
		{"rollouts", func(format string) string { return f.Ctl("", "rollouts", "ls", "--format="+format) }, 0},
		{"pins", func(format string) string { return f.Ctl("", "rollouts", "pins", "--format="+format) }, 0},
	}
	for _, l := range listings {
		t.Run(l.kind, func(t *testing.T) {
			js := l.run("json")
			var fromJSON, fromYAML api.List[json.RawMessage]
			if err := json.Unmarshal([]byte(js), &fromJSON); err != nil {
				t.Fatalf("--format=json does not parse: %v\n%s", err, js)
			}
			if fromJSON.Kind != l.kind || len(fromJSON.Items) < l.min || fromJSON.Truncated || !strings.Contains(js, `"truncated": false`) {
				t.Errorf("--format=json: kind %q, %d items, truncated %v; want %q, at least %d, false:\n%s", fromJSON.Kind, len(fromJSON.Items), fromJSON.Truncated, l.kind, l.min, js)
			}
			y := l.run("yaml")
			j, err := yaml.YAMLToJSON([]byte(y))
			if err == nil {
				err = json.Unmarshal(j, &fromYAML)
			}
			if err != nil || fromYAML.Kind != l.kind || len(fromYAML.Items) != len(fromJSON.Items) {
				t.Errorf("--format=yaml (%v) says %+v; want the same list as JSON:\n%s", err, fromYAML, y)
			}
		})
	}
	t.Run("truncated", func(t *testing.T) {
		js := f.Ctl("", "audit", "search", "--since=", "--limit=2", "--format=json")
		var cut api.List[api.AuditEvent]
		if err := json.Unmarshal([]byte(js), &cut); err != nil || !cut.Truncated || len(cut.Items) != 2 {
			t.Errorf("audit search --limit=2: %v, %d items, truncated %v; want 2 and true:\n%s", err, len(cut.Items), cut.Truncated, js)
		}
	})
}
