package rbac

import "maps"

// AppLabels are the labels roles' app_labels are matched against for an
// app: the app's own labels, with its device's labels on top. The device's
// win where both have a key, so that labels an admin fixed on the device
// (its join token's) cannot be undone by what the device declares for an
// app.
func AppLabels(app, device map[string]string) map[string]string {
	out := make(map[string]string, len(app)+len(device))
	maps.Copy(out, app)
	maps.Copy(out, device)
	return out
}

// CheckApp decides whether the user may open the web app app on the device
// deviceName; labels are AppLabels(app's, device's). Deny wins: a deny
// rule whose app_labels select the app refuses even if another role
// allows. It returns nil or an *AccessDenied.
func (c *Checker) CheckApp(deviceName, app string, labels map[string]string) error {
	for _, d := range c.deny {
		if matchLabels(d.apps, labels) {
			return &AccessDenied{Device: deviceName, App: app, Role: d.role, Rule: RuleDenyApps}
		}
	}
	for _, a := range c.allow {
		if matchLabels(a.apps, labels) {
			return nil
		}
	}
	return &AccessDenied{Device: deviceName, App: app, Rule: RuleAllowApps}
}

// CanSeeApp reports whether the user may open an app with these labels
// (AppLabels): whether it shows in their lists. For apps, seeing and
// opening are one decision.
func (c *Checker) CanSeeApp(labels map[string]string) bool {
	return c.CheckApp("", "", labels) == nil
}
