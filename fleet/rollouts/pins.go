package rollouts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/ota"
)

var pinNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// PutPin holds a device (by name) or the devices matching a selector at a
// version. A device pinned twice follows the pin whose name sorts first.
func (e *Engine) PutPin(ctx context.Context, p api.Pin, by string) error {
	if !pinNameRE.MatchString(p.Name) {
		return invalidf("rollouts: pin name %q must be 1 to 63 characters of a-z, 0-9 and '-'", p.Name)
	}
	if (p.Device == "") == (len(p.Selector) == 0) {
		return invalidf("rollouts: a pin names either a device or a selector")
	}
	if _, err := e.cfg.Releases.Get(ctx, p.Version); err != nil {
		return invalidf("rollouts: no release %s: add it first", p.Version)
	}
	b, _ := json.Marshal(p)
	if err := e.cfg.Store.Put(ctx, pinPrefix+p.Name, b); err != nil {
		return fmt.Errorf("rollouts: pin: %w", err)
	}
	e.mu.Lock()
	e.pins[p.Name] = p
	// Offer the pinned version at once to ready devices.
	var sends []send
	devs, _ := e.cfg.Devices.List(ctx)
	for _, d := range devs {
		if st := e.status[d.ID]; st != nil && e.ready[d.ID] {
			if o := e.pinOfferLocked(ctx, d.ID, st); o != nil {
				sends = append(sends, send{d.ID, o})
			}
		}
	}
	e.mu.Unlock()
	for _, s := range sends {
		e.cfg.Send(s.device, s.msg)
	}
	e.record(ctx, &proto.AuditEvent{Type: proto.EventRolloutPin, User: by, Outcome: proto.OutcomeSuccess,
		Fields: map[string]string{"pin": p.Name, "version": p.Version, "device": p.Device, "selector": formatLabels(p.Selector)}})
	return nil
}

// DeletePin removes a pin.
func (e *Engine) DeletePin(ctx context.Context, name, by string) error {
	if err := e.cfg.Store.Delete(ctx, pinPrefix+name); err != nil {
		return fmt.Errorf("rollouts: pin %s: %w", name, err)
	}
	e.mu.Lock()
	delete(e.pins, name)
	e.mu.Unlock()
	e.record(ctx, &proto.AuditEvent{Type: proto.EventRolloutPin, User: by, Outcome: proto.OutcomeSuccess,
		Fields: map[string]string{"pin": name, "action": "remove"}})
	return nil
}

// Pins lists the pins by name.
func (e *Engine) Pins() []api.Pin {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := slices.Collect(maps.Values(e.pins))
	slices.SortFunc(out, func(a, b api.Pin) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// pinOfLocked returns the pin that holds d, if any.
func (e *Engine) pinOfLocked(d devices.Device) (api.Pin, bool) {
	for _, name := range slices.Sorted(maps.Keys(e.pins)) {
		p := e.pins[name]
		if p.Device == d.Name || (p.Device == "" && matches(p.Selector, d.Labels)) {
			return p, true
		}
	}
	return api.Pin{}, false
}

// pinOfferLocked returns the offer of a pinned device's version when it
// runs an older one.
func (e *Engine) pinOfferLocked(ctx context.Context, deviceID string, st *devStatus) *proto.UpdateOffer {
	if len(e.pins) == 0 || st.Target == "" {
		return nil
	}
	d, err := e.cfg.Devices.Get(ctx, deviceID)
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			e.log.Debug("pin: device", "err", err)
		}
		return nil
	}
	p, ok := e.pinOfLocked(d)
	if !ok || !ota.Newer(p.Version, st.Running) || (st.Rollout == "pin:"+p.Name && terminal(st.State)) {
		return nil
	}
	o, err := e.buildOffer(ctx, "pin:"+p.Name, p.Version, st)
	if err != nil {
		return nil
	}
	e.offered[deviceID] = o.Rollout
	return o
}
