package rbac

import (
	"errors"
	"strings"
	"testing"

	"remoteler.dev/edge/proto/api"
)

func TestCheckApp(t *testing.T) {
	nodered := map[string]string{"app": "nodered", "team": "ops"}
	device := map[string]string{"site": "north", "env": "prod"}
	opsApps := role("ops-apps", api.RoleConditions{AppLabels: map[string][]string{"team": {"ops"}}}, api.RoleConditions{})
	northApps := role("north-apps", api.RoleConditions{AppLabels: map[string][]string{"site": {"north"}}}, api.RoleConditions{})
	noProdApps := role("no-prod-apps", api.RoleConditions{}, api.RoleConditions{AppLabels: map[string][]string{"env": {"prod"}}})
	devOnly := role("dev-only", api.RoleConditions{Logins: []string{"pi"}, DeviceLabels: everywhere}, api.RoleConditions{})
	tests := []struct {
		name     string
		roles    []api.Role
		app      map[string]string
		wantErr  string
		wantRule string
	}{
		{"allowed by app label", []api.Role{opsApps}, nodered, "", ""},
		{"allowed by device label", []api.Role{northApps}, nodered, "", ""},
		{"presets allow every app", []api.Role{preset(t, "access")}, nodered, "", ""},
		{"device access is not app access", []api.Role{devOnly}, nodered,
			`access denied: no role gives access to app "nodered" on device "pi-1" (app_labels)`, RuleAllowApps},
		{"deny wins over allow", []api.Role{opsApps, noProdApps}, nodered,
			`access denied: role "no-prod-apps" denies app "nodered" on device "pi-1"`, RuleDenyApps},
		{"the device's label wins over the app's", []api.Role{opsApps, noProdApps}, map[string]string{"team": "ops", "env": "dev"},
			`access denied: role "no-prod-apps" denies app "nodered" on device "pi-1"`, RuleDenyApps},
		{"no label matches", []api.Role{opsApps}, map[string]string{"team": "web"},
			`access denied: no role gives access to app "nodered" on device "pi-1" (app_labels)`, RuleAllowApps},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewChecker(tt.roles, nil)
			labels := AppLabels(tt.app, device)
			err := c.CheckApp("pi-1", "nodered", labels)
			if got := c.CanSeeApp(labels); got != (tt.wantErr == "") {
				t.Errorf("CanSeeApp = %v, want %v", got, tt.wantErr == "")
			}
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("got %v, want allowed", err)
				}
				return
			}
			var ad *AccessDenied
			if !errors.As(err, &ad) {
				t.Fatalf("got %v, want *AccessDenied", err)
			}
			if err.Error() != tt.wantErr {
				t.Errorf("got %q, want %q", err, tt.wantErr)
			}
			if ad.Rule != tt.wantRule {
				t.Errorf("rule %q, want %q", ad.Rule, tt.wantRule)
			}
		})
	}
}

func TestDecodeAppLabels(t *testing.T) {
	tests := []struct {
		name, doc, wantErr string
	}{
		{"single value as string", "metadata: {name: a}\nspec:\n  allow: {app_labels: {team: ops}}", ""},
		{"deny apps only", "metadata: {name: a}\nspec:\n  deny: {app_labels: {\"*\": \"*\"}}", ""},
		{"star key with a value", "metadata: {name: a}\nspec:\n  allow: {app_labels: {\"*\": ops}}", `allow.app_labels: key "*" takes only the value "*" (every app)`},
		{"bad key", "metadata: {name: a}\nspec:\n  allow: {app_labels: {\"a b\": ops}}", `allow.app_labels: key "a b"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Decode([]byte(tt.doc))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				if len(r.Spec.Allow.AppLabels)+len(r.Spec.Deny.AppLabels) == 0 {
					t.Error("app_labels lost in decoding")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got %v, want an error with %q", err, tt.wantErr)
			}
		})
	}
}
