package apps

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/proto/api"
)

// Lister lists the fleet's devices (*devices.Registry).
type Lister interface {
	List(ctx context.Context) ([]devices.Device, error)
}

// Catalog lists the apps of the fleet's devices, as users may see them.
type Catalog struct {
	Devices Lister
	// Online reports whether a device's tunnel is up; nil: never.
	Online func(deviceID string) bool
	Addr   Addr
}

// List returns the apps whose labels the user's roles (checker) allow,
// sorted by label; admin adds each app's URI and certificate opt-out.
func (c Catalog) List(ctx context.Context, checker *rbac.Checker, admin bool) ([]api.App, error) {
	all, err := c.Devices.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("apps: list: %w", err)
	}
	out := []api.App{}
	for _, d := range all {
		for _, a := range d.Apps {
			if !admin && (checker == nil || !checker.CanSeeApp(rbac.AppLabels(a.Labels, d.Labels))) {
				continue
			}
			label, _ := Label(a.Name, d.Name)
			e := api.App{Name: a.Name, Device: d.Name, Label: label, Labels: maps.Clone(a.Labels)}
			if o, err := c.Addr.Origin(a.Name, d.Name); err == nil && c.Addr.Domain != "" {
				e.PublicAddr = o
			}
			if c.Online != nil {
				e.Online = c.Online(d.ID)
			}
			if admin {
				e.URI, e.InsecureSkipVerify = a.URI, a.InsecureSkipVerify
			}
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b api.App) int { return strings.Compare(a.Label, b.Label) })
	return out, nil
}

// Find picks one app of list by its label (APP--DEVICE) or, when only one
// device offers it, its name; the error says what to type instead.
func Find(list []api.App, name string) (api.App, error) {
	var byName []api.App
	for _, a := range list {
		if a.Label == name {
			return a, nil
		}
		if a.Name == name {
			byName = append(byName, a)
		}
	}
	switch len(byName) {
	case 1:
		return byName[0], nil
	case 0:
		return api.App{}, fmt.Errorf("no app %q that you can reach: see tsh apps ls", name)
	}
	labels := make([]string, len(byName))
	for i, a := range byName {
		labels[i] = a.Label
	}
	return api.App{}, fmt.Errorf("several devices offer app %q: name one of %s", name, strings.Join(labels, ", "))
}
