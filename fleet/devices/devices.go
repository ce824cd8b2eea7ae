// Package devices is the fleet's device registry: every device that joined,
// stored as JSON under "devices/ID" in a store.Store, with a name index
// "devicenames/NAME" -> ID that keeps names unique. Only fleet/... server
// packages import it.
//
// Consistency without transactions: Register writes the device first and
// claims the name second (store.Create), so a name in the index always
// pointed at a device that existed. Delete releases the name first and
// removes the device second. A crash between the two steps can leave a
// device record without a name entry (listed by List, removable by ID with
// Delete); a name entry whose device is gone is reclaimed by the next
// Register of that name.
package devices

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

const (
	devicePrefix = "devices/"
	namePrefix   = "devicenames/"
	// maxRetries bounds the compare-and-swap loops.
	maxRetries = 32
	// MaxLabels is the most labels a device may carry.
	MaxLabels = 32
)

// ErrNotFound is returned for a device that does not exist. It also matches
// store.ErrNotFound.
var ErrNotFound error = &kindError{msg: "device not found", kind: store.ErrNotFound}

// ErrNameTaken is returned by Register when another device has the name.
// The error Register returns wraps it with the name and what to do. It also
// matches store.ErrExists.
var ErrNameTaken error = &kindError{msg: "device name taken", kind: store.ErrExists}

type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

var (
	nameRE       = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	labelKeyRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$`)
	labelValueRE = regexp.MustCompile(`^[A-Za-z0-9._:/@+-]{1,63}$`)
	idRE         = regexp.MustCompile(`^[0-9a-f]{32}$`)
)

// CheckName reports whether name is a valid device name: a DNS label of 1
// to 63 lower-case letters, digits and '-', not starting or ending with '-',
// that does not have the shape of a device ID (32 hex digits), so that no
// name can be mistaken for another device's ID.
func CheckName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("device name %q must be 1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-'", name)
	}
	if IsID(name) {
		return fmt.Errorf("device name %q has the shape of a device ID (32 hex digits): choose another name", name)
	}
	return nil
}

// IsID reports whether s has the shape of a device ID: 32 lower-case hex
// digits.
func IsID(s string) bool { return idRE.MatchString(s) }

// CheckLabels reports whether labels are valid device labels: at most
// MaxLabels; keys of 1 to 63 characters of A-Z, a-z, 0-9, '.', '_', '/',
// '-' starting with a letter or digit; values of 1 to 63 characters of
// A-Z, a-z, 0-9, '.', '_', ':', '/', '@', '+', '-'. ("*" is never a key or
// a value: it is the wildcard of role selectors.)
func CheckLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fmt.Errorf("%d labels, at most %d allowed", len(labels), MaxLabels)
	}
	for k, v := range labels {
		if !ValidLabelKey(k) {
			return fmt.Errorf("label key %q must be 1 to 63 characters of A-Z, a-z, 0-9, '.', '_', '/', '-', starting with a letter or digit", k)
		}
		if !ValidLabelValue(v) {
			return fmt.Errorf("label %s=%q: the value must be 1 to 63 characters of A-Z, a-z, 0-9, '.', '_', ':', '/', '@', '+', '-'", k, v)
		}
	}
	return nil
}

// ValidLabelKey reports whether k may be a label key (see CheckLabels).
func ValidLabelKey(k string) bool { return labelKeyRE.MatchString(k) }

// ValidLabelValue reports whether v may be a label value (see CheckLabels).
func ValidLabelValue(v string) bool { return labelValueRE.MatchString(v) }

// Device is one registered device.
type Device struct {
	ID           string            `json:"id"` // 32 hex digits, chosen by Register
	Name         string            `json:"name"`
	Labels       map[string]string `json:"labels,omitempty"`
	JoinedAt     time.Time         `json:"joined_at"`
	LastSeen     time.Time         `json:"last_seen"`
	AgentVersion string            `json:"agent_version,omitempty"`
	OS           string            `json:"os,omitempty"`
	Arch         string            `json:"arch,omitempty"`
	Addr         string            `json:"addr,omitempty"`     // last remote address seen
	TokenID      string            `json:"token_id,omitempty"` // join token it joined with
	// TokenLabels are the labels its join token fixed; they override
	// whatever the agent reports.
	TokenLabels map[string]string `json:"token_labels,omitempty"`
	// Connects counts the tunnel connections the device made.
	Connects int `json:"connects,omitempty"`
	// AddrChangedAt is when the device's address last changed.
	AddrChangedAt time.Time `json:"addr_changed_at,omitzero"`
	// Services are what the agent offered in its last hello ("ssh",
	// "kube", ...).
	Services []string `json:"services,omitempty"`
	// Apps are the web apps the agent offered in its last hello that the
	// fleet accepted (fleet/lifecycle), sorted by name.
	Apps []proto.App `json:"apps,omitempty"`
	// DirectAddr, for a direct node, is where the fleet dials it
	// (IP:PORT), from its last check-in; empty for a device on a tunnel.
	DirectAddr string `json:"direct_addr,omitempty"`
}

// DirectWindow is how long after its last check-in a direct node counts
// as online: three of its longest check-in periods (proto.DirectWindow).
const DirectWindow = proto.DirectWindow

// Direct reports whether the device is a direct node: the fleet dials it
// instead of holding its tunnel.
func (d Device) Direct() bool { return d.DirectAddr != "" }

// App returns the device's app called name, or nil.
func (d *Device) App(name string) *proto.App {
	for i := range d.Apps {
		if d.Apps[i].Name == name {
			return &d.Apps[i]
		}
	}
	return nil
}

// API returns the device as the API lists it. Online and Logins are the
// caller's to fill in.
func (d Device) API() api.Device {
	return api.Device{
		ID:           d.ID,
		Name:         d.Name,
		Labels:       maps.Clone(d.Labels),
		LastSeen:     d.LastSeen,
		AgentVersion: d.AgentVersion,
		OS:           d.OS,
		Arch:         d.Arch,
		Addr:         d.Addr,
		JoinedAt:     d.JoinedAt,
		Link:         api.Link{Reconnects: max(d.Connects-1, 0), AddrChangedAt: d.AddrChangedAt},
		Services:     slices.Clone(d.Services),
		Mode:         d.Mode(),
		DirectAddr:   d.DirectAddr,
	}
}

// Mode is how the fleet reaches the device: api.ModeDirect or
// api.ModeTunnel.
func (d Device) Mode() string {
	if d.Direct() {
		return api.ModeDirect
	}
	return api.ModeTunnel
}

// Registry stores devices. Its methods are safe for concurrent use, also
// across fleetd replicas sharing a store.
//
// With Copies set, while Follow runs, the registry keeps the records as
// it last saw them (followed, or written by Update): Update then writes
// against that copy without reading the store first, and Guard lets
// another write depend on it. A copy that is out of date costs one failed
// write and a read, as before; it is never taken for the truth.
type Registry struct {
	Store store.Store
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// Copies keeps a copy of every record while Follow runs: about 1 kB a
	// device in the fleet, to save a read of a remote store (etcd) per
	// update. fleetd sets it on several replicas, where every device's
	// reconnect is an update; a read of the embedded store costs less
	// than the copies.
	Copies bool

	mu   sync.Mutex
	seen map[string][]byte // device ID → its record as last seen; nil while nobody follows
}

func (r *Registry) now() time.Time {
	if r.Now == nil {
		return time.Now()
	}
	return r.Now()
}

// Register adds a new device with a new random ID, JoinedAt and LastSeen
// set to now. Any ID, JoinedAt or LastSeen in d are ignored. When another
// device has the name it returns an error matching ErrNameTaken.
func (r *Registry) Register(ctx context.Context, d Device) (Device, error) {
	if err := CheckName(d.Name); err != nil {
		return Device{}, fmt.Errorf("devices: register: %w", err)
	}
	if err := CheckLabels(d.Labels); err != nil {
		return Device{}, fmt.Errorf("devices: register %q: %w", d.Name, err)
	}
	var idb [16]byte
	rand.Read(idb[:])
	d.ID = hex.EncodeToString(idb[:])
	d.JoinedAt = r.now().UTC()
	d.LastSeen = d.JoinedAt
	d.Labels = maps.Clone(d.Labels)
	b, err := json.Marshal(d)
	if err != nil {
		return Device{}, fmt.Errorf("devices: register %q: %w", d.Name, err)
	}
	if err := r.Store.Create(ctx, devicePrefix+d.ID, b); err != nil {
		return Device{}, fmt.Errorf("devices: register %q: %w", d.Name, err)
	}
	if err := r.claimName(ctx, d.Name, d.ID); err != nil {
		// Best effort: the record is not reachable by name, and a crash
		// here leaves it for Delete by ID.
		_ = r.Store.Delete(context.WithoutCancel(ctx), devicePrefix+d.ID)
		return Device{}, err
	}
	return d, nil
}

// claimName points the name index at id, reclaiming an entry whose device
// is gone.
func (r *Registry) claimName(ctx context.Context, name, id string) error {
	key := namePrefix + name
	for range maxRetries {
		err := r.Store.Create(ctx, key, []byte(id))
		if err == nil {
			return nil
		}
		if !errors.Is(err, store.ErrExists) {
			return fmt.Errorf("devices: register %q: claim name: %w", name, err)
		}
		old, err := r.Store.Get(ctx, key)
		if errors.Is(err, store.ErrNotFound) {
			continue // released meanwhile; try Create again
		}
		if err != nil {
			return fmt.Errorf("devices: register %q: claim name: %w", name, err)
		}
		_, err = r.Store.Get(ctx, devicePrefix+string(old))
		if err == nil {
			return fmt.Errorf("devices: register %q: %w: remove the old device with `fleetctl devices rm %s`, or pick another --name", name, ErrNameTaken, name)
		}
		if !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("devices: register %q: claim name: %w", name, err)
		}
		// The name points at a device that no longer exists: take it over.
		err = r.Store.CompareAndSwap(ctx, key, old, []byte(id))
		if err == nil {
			return nil
		}
		if !errors.Is(err, store.ErrConflict) && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("devices: register %q: claim name: %w", name, err)
		}
	}
	return fmt.Errorf("devices: register %q: claim name: too much contention, try again", name)
}

// Get returns the device with this ID, or an error matching ErrNotFound.
func (r *Registry) Get(ctx context.Context, id string) (Device, error) {
	d, _, err := r.get(ctx, id)
	if err != nil {
		return Device{}, fmt.Errorf("devices: get %q: %w", id, err)
	}
	return d, nil
}

// get returns the device and the bytes it was decoded from.
func (r *Registry) get(ctx context.Context, id string) (Device, []byte, error) {
	var d Device
	if !idRE.MatchString(id) {
		return d, nil, ErrNotFound
	}
	b, err := r.Store.Get(ctx, devicePrefix+id)
	if errors.Is(err, store.ErrNotFound) {
		return d, nil, ErrNotFound
	}
	if err != nil {
		return d, nil, err
	}
	if err := json.Unmarshal(b, &d); err != nil {
		return d, nil, fmt.Errorf("decode: %w", err)
	}
	return d, b, nil
}

// ByName returns the device called name, or an error matching ErrNotFound.
func (r *Registry) ByName(ctx context.Context, name string) (Device, error) {
	id, err := r.idOf(ctx, name)
	if err != nil {
		return Device{}, fmt.Errorf("devices: get %q: %w", name, err)
	}
	d, _, err := r.get(ctx, id)
	if err != nil {
		return Device{}, fmt.Errorf("devices: get %q: %w", name, err)
	}
	return d, nil
}

// idOf looks a name up in the index.
func (r *Registry) idOf(ctx context.Context, name string) (string, error) {
	if !nameRE.MatchString(name) { // not CheckName: older stores may hold ID-shaped names
		return "", ErrNotFound
	}
	b, err := r.Store.Get(ctx, namePrefix+name)
	if errors.Is(err, store.ErrNotFound) {
		return "", ErrNotFound
	}
	return string(b), err
}

// List returns every device, ordered by ID.
func (r *Registry) List(ctx context.Context) ([]Device, error) {
	items, err := r.Store.List(ctx, devicePrefix)
	if err != nil {
		return nil, fmt.Errorf("devices: list: %w", err)
	}
	out := make([]Device, 0, len(items))
	for _, it := range items {
		var d Device
		if err := json.Unmarshal(it.Value, &d); err != nil {
			return nil, fmt.Errorf("devices: list: decode %q: %w", it.Key, err)
		}
		out = append(out, d)
	}
	return out, nil
}

// Delete removes the device with this ID (never a name: a device could
// be named after another's ID in a store written before CheckName refused
// such names), releasing its name. It returns the removed device, or an
// error matching ErrNotFound.
func (r *Registry) Delete(ctx context.Context, id string) (Device, error) {
	d, _, err := r.get(ctx, id)
	if err != nil {
		return Device{}, fmt.Errorf("devices: delete %q: %w", id, err)
	}
	if d.Name != "" {
		if err := r.releaseName(ctx, d.Name, id); err != nil {
			return Device{}, fmt.Errorf("devices: delete %q: %w", id, err)
		}
	}
	err = r.Store.Delete(ctx, devicePrefix+id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return Device{}, fmt.Errorf("devices: delete %q: %w", id, err)
	}
	r.saw(id, nil)
	return d, nil
}

// releaseName deletes the name entry if it still points at id.
func (r *Registry) releaseName(ctx context.Context, name, id string) error {
	key := namePrefix + name
	b, err := r.Store.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("release name: %w", err)
	}
	if string(b) != id {
		return nil // someone else's now
	}
	// The store has no compare-and-delete. A Register cannot take the name
	// over between the Get and this Delete, because this device still
	// exists until the caller's next step. Only two Deletes of the same
	// device racing with a new Register of its name could remove the new
	// device's entry; that device then stays in List and can be removed by
	// ID, and its name can be registered again.
	if err := r.Store.Delete(ctx, key); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("release name: %w", err)
	}
	return nil
}

// Update applies fn to the device with this ID and stores the result with
// compare-and-swap, retrying fn on a concurrent change (a bounded number of
// times). fn may change anything but ID, Name and JoinedAt. If fn returns an
// error the device is left as it was and Update returns that error.
//
// While Follow keeps copies (Copies), the first try starts from the
// record as followed, with no read of the store (a device's hello is one
// write, not a read and a write); a swap that finds the record changed
// reads it and tries again. fn's error on the followed copy is checked
// against a fresh read before it is returned.
func (r *Registry) Update(ctx context.Context, id string, fn func(*Device) error) (Device, error) {
	cached := r.seenRecord(id)
	for range maxRetries {
		var (
			d   Device
			old []byte
			err error
		)
		fromCache := cached != nil
		if fromCache {
			old, cached = cached, nil
			if json.Unmarshal(old, &d) != nil {
				continue // read the store's instead
			}
		} else if d, old, err = r.get(ctx, id); err != nil {
			return Device{}, fmt.Errorf("devices: update %q: %w", id, err)
		}
		orig := d
		d.Labels = maps.Clone(d.Labels)
		if err := fn(&d); err != nil {
			if fromCache {
				continue
			}
			return Device{}, fmt.Errorf("devices: update %q: %w", id, err)
		}
		if d.ID != orig.ID || d.Name != orig.Name || !d.JoinedAt.Equal(orig.JoinedAt) {
			return Device{}, fmt.Errorf("devices: update %q: ID, name and join time cannot change", id)
		}
		if err := CheckLabels(d.Labels); err != nil {
			return Device{}, fmt.Errorf("devices: update %q: %w", id, err)
		}
		next, err := json.Marshal(d)
		if err != nil {
			return Device{}, fmt.Errorf("devices: update %q: %w", id, err)
		}
		err = r.Store.CompareAndSwap(ctx, devicePrefix+id, old, next)
		switch {
		case err == nil:
			r.wrote(id, old, next)
			return d, nil
		case errors.Is(err, store.ErrConflict):
			continue
		case errors.Is(err, store.ErrNotFound):
			r.saw(id, nil)
			return Device{}, fmt.Errorf("devices: update %q: %w", id, ErrNotFound)
		default:
			return Device{}, fmt.Errorf("devices: update %q: %w", id, err)
		}
	}
	return Device{}, fmt.Errorf("devices: update %q: too much contention, try again", id)
}

// Guard returns a guard (store.If) that holds while device id's record is
// as this registry last saw it (followed, or written by Update), and false
// when it has no copy (Copies is off, Follow is not running, or the
// device is not known). A write made under it fails with
// store.ErrFenced when the record has changed or gone since; it then
// proves nothing either way.
func (r *Registry) Guard(id string) (store.Guard, bool) {
	b := r.seenRecord(id)
	if b == nil {
		return store.Guard{}, false
	}
	return store.Guard{Key: devicePrefix + id, Value: b}, true
}

// seenRecord is device id's record as last seen, or nil.
func (r *Registry) seenRecord(id string) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[id]
}

// wrote keeps next, just written over old, as device id's record, if the
// copy is still old: the watch may have brought a newer write, or the
// record's removal, meanwhile.
func (r *Registry) wrote(id string, old, next []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if b, ok := r.seen[id]; ok && bytes.Equal(b, old) {
		r.seen[id] = next
	}
}

// saw keeps b as device id's record (nil: it is gone), while Follow runs.
func (r *Registry) saw(id string, b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.seen == nil:
	case b == nil:
		delete(r.seen, id)
	default:
		r.seen[id] = b
	}
}

// Follower receives what Follow learns of the registry. Reset and Apply
// are called from Follow's goroutine, one at a time.
type Follower struct {
	// Reset replaces the whole picture with all: called first, and again
	// whenever the watch had to start over.
	Reset func(all []Device)
	// Apply applies one change: the device with this ID was written (d
	// is it) or removed (d is nil).
	Apply func(id string, d *Device)
	// Bad, when set, is told of a record that does not decode (it is
	// left out).
	Bad func(key string, err error)
}

// Follow keeps f up to date with the registry for as long as ctx lives,
// through the store's watch (store.Follow): a device registered, updated
// or removed on any fleetd sharing the store reaches f. It returns when
// ctx ends or the store closes.
func (r *Registry) Follow(ctx context.Context, f Follower) error {
	decode := func(key string, b []byte) (*Device, bool) {
		var d Device
		if err := json.Unmarshal(b, &d); err != nil {
			if f.Bad != nil {
				f.Bad(key, err)
			}
			return nil, false
		}
		return &d, true
	}
	// The copies are kept from the first list on, and dropped when Follow
	// returns (nobody keeps them up to date then).
	copies := r.Copies
	defer func() {
		r.mu.Lock()
		r.seen = nil
		r.mu.Unlock()
	}()
	return store.Follow(ctx, r.Store, devicePrefix, store.FollowHandler{
		Reset: func(items []store.Item, _ int64) {
			all := make([]Device, 0, len(items))
			var seen map[string][]byte
			if copies {
				seen = make(map[string][]byte, len(items))
			}
			for _, it := range items {
				if d, ok := decode(it.Key, it.Value); ok {
					all = append(all, *d)
					if copies {
						seen[strings.TrimPrefix(it.Key, devicePrefix)] = it.Value
					}
				}
			}
			if copies {
				r.mu.Lock()
				r.seen = seen
				r.mu.Unlock()
			}
			f.Reset(all)
		},
		Apply: func(ev store.Event) {
			id := strings.TrimPrefix(ev.Key, devicePrefix)
			switch ev.Kind {
			case store.EventPut:
				if d, ok := decode(ev.Key, ev.Value); ok {
					r.saw(id, ev.Value)
					f.Apply(id, d)
				} else {
					r.saw(id, nil)
				}
			case store.EventDelete:
				r.saw(id, nil)
				f.Apply(id, nil)
			}
		},
	})
}
