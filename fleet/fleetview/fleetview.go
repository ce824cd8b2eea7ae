// Package fleetview keeps a live picture of every device in the fleet, for
// the dashboard (fleet/dashboard) and the metrics (fleet/metrics): each
// device's record from the registry (followed through the store's watch, so
// a device that joins or changes on any fleetd sharing the store shows at
// once), whether its tunnel is up on this fleetd, its link (round-trip
// time, loss outside blackouts, bytes), and its open sessions.
//
// The picture answers filtered, paged queries over tens of thousands of
// devices in a few milliseconds (Query), with summary counts that are
// themselves filters (online, offline, degraded link, outdated agent), and
// says when it changed (Changed, Version), so that pages kept live by
// server-sent events re-render only when there is something new.
//
// A device is online when its tunnel is up on this fleetd, on another
// replica (Config.Elsewhere, from fleet/presence), or when it is a direct
// node that checked in within devices.DirectWindow (its record says so);
// the link's figures are measured only for a tunnel on this fleetd.
//
// Only fleet/... server packages import fleetview.
package fleetview

import (
	"context"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"
	"golang.org/x/mod/semver"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/proto/ota"
)

// Defaults of Config's thresholds.
const (
	// DefaultDegradedLoss is the loss, in percent, at which a link counts
	// as degraded.
	DefaultDegradedLoss = 2.0
	// DefaultDegradedRTT is the round-trip time at which a link counts as
	// degraded.
	DefaultDegradedRTT = 500 * time.Millisecond
	// DefaultRefresh is how often the tunnels and sessions are read while
	// a live page watches the picture.
	DefaultRefresh = time.Second
)

// watchWindow is how long a live page counts as watching after it last
// asked for the picture's changes (Changed): the dashboard's live pages
// ask at least every 20 s (their keep-alive).
const watchWindow = time.Minute

// Links lists the live device tunnels (*tunnelsrv.Server): each device's
// ID, when its connection began, and its counters (SmoothedRTT, bytes).
type Links interface {
	EachLink(fn func(deviceID string, since time.Time, st quic.ConnectionStats))
}

// Registry is the device registry the picture follows (*devices.Registry).
type Registry interface {
	Follow(ctx context.Context, f devices.Follower) error
}

// Sessions lists the live brokered sessions (*sessions.Registry).
type Sessions interface {
	List(f sessions.Filter) []sessions.Session
}

// Config configures a View. Registry and Links are required; the zero
// value of the rest works.
type Config struct {
	Registry Registry
	Links    Links
	// Elsewhere reports a device whose tunnel another replica holds, and
	// since when (fleet/presence); nil: none (one fleetd). It is asked
	// for every device without a tunnel here on each refresh, so it must
	// be cheap, and must not call the View.
	Elsewhere func(deviceID string) (since time.Time, ok bool)
	// Loss gives a tunnel's loss outside blackouts, in percent, and its
	// blackouts (fleet/linkhealth's Sampler.Loss); nil, or ok false,
	// falls back to QUIC's count of every lost packet.
	Loss func(deviceID string) (percent float64, blackouts int, ok bool)
	// Sessions counts the open sessions per device; nil counts none.
	Sessions Sessions
	// Latest is the agent version devices should run (the newest
	// release published: fleet/releases); "" or nil: the newest version
	// any device of the fleet runs. A device on an older release is
	// outdated (versions compare as semver, proto/ota); a development
	// build never is.
	Latest func() string
	// DegradedLoss and DegradedRTT are where a link counts as degraded;
	// defaults DefaultDegradedLoss and DefaultDegradedRTT.
	DegradedLoss float64
	DegradedRTT  time.Duration
	// Refresh is how often the tunnels and sessions are read while a live
	// page watches the picture (it asked for its changes within the last
	// minute); default DefaultRefresh. With none watching they are read
	// only when the picture is read (Query, Get, Counts) and is older
	// than Refresh, so a reader never sees it older than that.
	Refresh time.Duration
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Status is a device's state as the summary counts and filters see it.
type Status string

// The statuses. A device is online or offline; degraded (online with a
// degraded link) and outdated (an agent older than Latest) cut across.
const (
	StatusAny      Status = ""
	StatusOnline   Status = "online"
	StatusOffline  Status = "offline"
	StatusDegraded Status = "degraded"
	StatusOutdated Status = "outdated"
)

// ParseStatus reads a status filter; ok is false for an unknown one.
func ParseStatus(s string) (Status, bool) {
	switch st := Status(s); st {
	case StatusAny, StatusOnline, StatusOffline, StatusDegraded, StatusOutdated:
		return st, true
	}
	return "", false
}

// Reach is how the fleet reaches an online device.
type Reach string

// The reaches. Only a tunnel on this fleetd has its link measured here
// (RTT, loss, bytes, quality).
const (
	ReachNone    Reach = ""        // offline
	ReachTunnel  Reach = "tunnel"  // its tunnel on this fleetd
	ReachReplica Reach = "replica" // its tunnel on another replica
	ReachDirect  Reach = "direct"  // a direct node within its check-in window
)

// Quality rates a live link.
type Quality string

// The link qualities.
const (
	QualityNone Quality = ""     // offline, or a link not measured here (Reach)
	QualityGood Quality = "good" // RTT under a third of DegradedRTT, loss under a quarter of DegradedLoss
	QualityFair Quality = "fair"
	QualityPoor Quality = "poor" // degraded
)

// Device is one device as the picture has it: its record and what this
// fleetd sees of it now.
type Device struct {
	devices.Device
	// Online says the fleet reaches it, since ConnectedSince: Reach says
	// how.
	Online         bool
	ConnectedSince time.Time
	Reach          Reach
	// RTT is the tunnel's smoothed round-trip time; LossPercent its loss
	// outside blackouts (LossKnown false until measured), Blackouts how
	// many it went through; BytesUp and BytesDown what the fleet sent to
	// it and received from it on this connection.
	RTT                time.Duration
	LossPercent        float64
	LossKnown          bool
	Blackouts          int
	BytesUp, BytesDown uint64
	// Sessions counts its open brokered sessions.
	Sessions int
	// Quality rates its link (none while offline); Degraded and Outdated
	// are the summary's flags.
	Quality  Quality
	Degraded bool
	Outdated bool
}

// entry is a device in the picture.
type entry struct {
	rec  devices.Device
	live live
	// lower is the text a query's Text is matched against: name, labels
	// (k=v), version, OS/arch, in lower case.
	lower string
	// release says the agent's version is a release (semantic).
	release bool
	// refreshed is the last refresh that found its tunnel on this fleetd.
	refreshed uint64
}

func newEntry(d *devices.Device) *entry {
	return &entry{rec: *d, lower: lowerText(d), release: semver.IsValid(d.AgentVersion)}
}

// live is what the refresh loop reads.
type live struct {
	online    bool
	reach     Reach
	since     time.Time
	rtt       time.Duration
	loss      float64
	lossKnown bool
	blackouts int
	up, down  uint64
	sessions  int
}

// shown is what the dashboard shows of live: a change of anything else
// (bytes, RTT under a millisecond) does not make a new version.
func (l live) shown() live {
	l.rtt = l.rtt.Round(time.Millisecond)
	l.loss = math.Round(l.loss*10) / 10
	l.up, l.down = 0, 0
	return l
}

// View is the live picture. Create it with New and run it with Run; its
// methods are safe for concurrent use.
type View struct {
	cfg Config
	log *slog.Logger

	// refreshMu makes Refreshes take turns over the buffers below, reused
	// from one to the next.
	refreshMu sync.Mutex
	links     []link
	counts    map[string]int // open sessions by device

	// refreshedAt is when the tunnels were last read, watchedAt when a
	// live page last asked for changes (Unix ns, Config.Now); wake tells
	// Run that a page started watching.
	refreshedAt atomic.Int64
	watchedAt   atomic.Int64
	wake        chan struct{}

	mu     sync.RWMutex // guards the fields below
	byID   map[string]*entry
	order  []*entry // by name
	sorted bool     // order is up to date
	// releases counts the devices on each release; latest is the newest
	// of them. A device's change costs a look at the releases only when
	// one appears or goes, not at every device.
	releases map[string]int
	latest   string
	// refreshes counts the Refreshes (entry.refreshed).
	refreshes uint64
	version   uint64
	changed   chan struct{} // closed and replaced when version moves
	ready     bool          // the registry was listed once
}

// New returns a View for cfg; Run fills it.
func New(cfg Config) *View {
	if cfg.DegradedLoss <= 0 {
		cfg.DegradedLoss = DefaultDegradedLoss
	}
	if cfg.DegradedRTT <= 0 {
		cfg.DegradedRTT = DefaultDegradedRTT
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = DefaultRefresh
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &View{cfg: cfg, log: cfg.Logger.With("component", "fleetview"), byID: map[string]*entry{}, releases: map[string]int{}, counts: map[string]int{}, changed: make(chan struct{}),
		wake: make(chan struct{}, 1)}
}

// Run follows the registry, and reads the tunnels and sessions every
// Refresh while a live page watches, until ctx ends.
func (v *View) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() {
		err := v.cfg.Registry.Follow(ctx, devices.Follower{
			Reset: v.reset,
			Apply: v.apply,
			Bad: func(key string, err error) {
				v.log.Warn("device record left out of the dashboard: it does not decode", "key", key, "err", err)
			},
		})
		if ctx.Err() == nil {
			v.log.Error("following the device registry stopped", "err", err)
		}
	})
	t := time.NewTicker(v.cfg.Refresh)
	defer t.Stop()
	v.Refresh()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-t.C:
			v.tick()
		case <-v.wake:
			v.refreshOlder(0)
		}
	}
}

// tick is Run's every Refresh: the tunnels are read while a live page
// watches. Nobody watching, the picture is brought up to date when read
// (fresh): on a fleet of tens of thousands this saves a read of every
// tunnel and every device a second.
func (v *View) tick() {
	if v.cfg.Now().UnixNano()-v.watchedAt.Load() < int64(watchWindow) {
		v.refreshOlder(0)
	}
}

// fresh brings the picture up to date for a reader if it is older than
// Refresh.
func (v *View) fresh() { v.refreshOlder(v.cfg.Refresh) }

// Ready reports whether the registry was read once: before that the
// picture is empty.
func (v *View) Ready() bool {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.ready
}

func (v *View) reset(all []devices.Device) {
	v.mu.Lock()
	defer v.mu.Unlock()
	old := v.byID
	v.byID = make(map[string]*entry, len(all))
	clear(v.releases)
	for _, d := range all {
		e := newEntry(&d)
		if o := old[d.ID]; o != nil {
			e.live = o.live
		}
		v.byID[d.ID] = e
		v.countLocked(e, 1)
	}
	v.ready = true
	v.sorted = false
	v.bumpLocked()
}

func (v *View) apply(id string, d *devices.Device) {
	v.mu.Lock()
	defer v.mu.Unlock()
	e := v.byID[id]
	switch {
	case d == nil && e == nil:
		return
	case d == nil:
		v.countLocked(e, -1)
		delete(v.byID, id)
		v.sorted = false
	case e == nil:
		e = newEntry(d)
		v.byID[id] = e
		v.countLocked(e, 1)
		v.sorted = false
	default:
		if e.rec.Name != d.Name {
			v.sorted = false
		}
		v.countLocked(e, -1)
		n := newEntry(d)
		n.live = e.live
		*e = *n
		v.countLocked(e, 1)
	}
	v.bumpLocked()
}

// bumpLocked moves the version and wakes the waiters.
func (v *View) bumpLocked() {
	v.version++
	close(v.changed)
	v.changed = make(chan struct{})
}

// Refresh reads the tunnels and the sessions once; Run calls it every
// Refresh while a live page watches, and readers when the picture is
// older than that. The version moves when something shown changed.
//
// It goes over every tunnel and every device of the fleet, so it
// allocates nothing once warm: the tunnels are read into a slice kept from
// one refresh to the next, and a device's entry is marked with the refresh
// that saw its tunnel rather than put in a map.
func (v *View) Refresh() { v.refreshOlder(0) }

// refreshOlder refreshes the picture if it was last refreshed at least age
// ago: readers that find it old at once refresh it once.
func (v *View) refreshOlder(age time.Duration) {
	v.refreshMu.Lock()
	defer v.refreshMu.Unlock()
	now := v.cfg.Now()
	if age > 0 && now.UnixNano()-v.refreshedAt.Load() < int64(age) {
		return
	}
	v.refreshedAt.Store(now.UnixNano())
	links := v.links[:0]
	v.cfg.Links.EachLink(func(id string, since time.Time, st quic.ConnectionStats) {
		l := live{online: true, reach: ReachTunnel, since: since, rtt: st.SmoothedRTT, up: st.BytesSent, down: st.BytesReceived}
		if v.cfg.Loss != nil {
			if loss, blackouts, ok := v.cfg.Loss(id); ok {
				l.loss, l.blackouts, l.lossKnown = loss, blackouts, true
			}
		}
		if !l.lossKnown && st.PacketsSent > 0 {
			l.loss, l.lossKnown = 100*float64(st.PacketsLost)/float64(st.PacketsSent), true
		}
		links = append(links, link{id: id, live: l})
	})
	// A fleet at its size keeps its buffer; one that shrank far lets it go.
	if cap(links) > 2*len(links)+1024 {
		v.links = nil
	} else {
		v.links = links[:0]
	}
	clear(v.counts)
	if v.cfg.Sessions != nil {
		for _, s := range v.cfg.Sessions.List(sessions.Filter{}) {
			v.counts[s.DeviceID]++
		}
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.refreshes++
	moved := false
	set := func(id string, e *entry, l live) {
		l.sessions = v.counts[id]
		if l.shown() != e.live.shown() {
			moved = true
		}
		e.live = l
	}
	for _, k := range links {
		// A tunnel of a device the registry's picture lacks (it joined a
		// moment ago, or was removed) shows once its record does.
		if e := v.byID[k.id]; e != nil {
			e.refreshed = v.refreshes
			set(k.id, e, k.live)
		}
	}
	for id, e := range v.byID {
		if e.refreshed != v.refreshes {
			set(id, e, v.reachedLocked(e, now))
		}
	}
	if moved {
		v.bumpLocked()
	}
}

// link is a tunnel as Refresh read it.
type link struct {
	id   string
	live live
}

// reachedLocked is what the picture has of a device with no tunnel on
// this fleetd: a direct node within its check-in window, or a tunnel on
// another replica; offline otherwise.
func (v *View) reachedLocked(e *entry, now time.Time) live {
	if e.rec.Direct() && now.Sub(e.rec.LastSeen) < devices.DirectWindow {
		return live{online: true, reach: ReachDirect, since: e.rec.LastSeen}
	}
	if v.cfg.Elsewhere != nil {
		if since, ok := v.cfg.Elsewhere(e.rec.ID); ok {
			return live{online: true, reach: ReachReplica, since: since}
		}
	}
	return live{}
}

// Version is the picture's version: it moves whenever something a page
// shows changed.
func (v *View) Version() uint64 {
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.version
}

// Changed returns a channel closed when the version moves past the one it
// was taken at, and that version.
func (v *View) Changed() (<-chan struct{}, uint64) {
	// A live page watches from now on: if none did, Run refreshes at
	// once and then every Refresh.
	now := v.cfg.Now().UnixNano()
	if now-v.watchedAt.Swap(now) >= int64(watchWindow) {
		select {
		case v.wake <- struct{}{}:
		default:
		}
	}
	v.mu.RLock()
	defer v.mu.RUnlock()
	return v.changed, v.version
}

// Query selects devices. The zero value selects every device, first page.
type Query struct {
	// Text matches, case-insensitively, a part of the name, a label
	// (KEY=VALUE or part of it), the agent version or OS/arch.
	Text string
	// Labels must all match: each key's value equal, or "*" for any.
	Labels map[string]string
	// Status keeps devices of this status.
	Status Status
	// Visible, when set, keeps only the devices whose labels it accepts
	// (the user's roles): counts leave the others out too.
	Visible func(labels map[string]string) bool
	// Offset and Limit page the matches (by name); Limit 0 means
	// DefaultLimit, at most MaxLimit.
	Offset, Limit int
}

// Page sizes.
const (
	DefaultLimit = 100
	MaxLimit     = 500
)

// Counts are the summary of the devices a query's Text, Labels and
// Visible select (whatever its Status).
type Counts struct {
	All, Online, Offline, Degraded, Outdated int
}

// Page is a query's answer.
type Page struct {
	Counts Counts
	// Total is how many devices match the whole query; Devices are those
	// from Offset, at most Limit.
	Total   int
	Offset  int
	Devices []Device
	// Version is the picture's version the page was taken at.
	Version uint64
}

// Query answers q.
func (v *View) Query(q Query) Page {
	if q.Limit <= 0 {
		q.Limit = DefaultLimit
	}
	q.Limit = min(q.Limit, MaxLimit)
	q.Offset = max(q.Offset, 0)
	text := strings.ToLower(strings.TrimSpace(q.Text))
	v.fresh()
	v.sortOnce()
	v.mu.RLock()
	defer v.mu.RUnlock()
	p := Page{Offset: q.Offset, Version: v.version}
	latest := v.wantedLocked()
	for _, e := range v.order {
		if text != "" && !strings.Contains(e.lower, text) {
			continue
		}
		if !labelsMatch(e.rec.Labels, q.Labels) {
			continue
		}
		if q.Visible != nil && !q.Visible(e.rec.Labels) {
			continue
		}
		degraded, outdated := v.degradedLocked(e), outdated(e, latest)
		p.Counts.All++
		if e.live.online {
			p.Counts.Online++
		} else {
			p.Counts.Offline++
		}
		if degraded {
			p.Counts.Degraded++
		}
		if outdated {
			p.Counts.Outdated++
		}
		switch q.Status {
		case StatusOnline:
			if !e.live.online {
				continue
			}
		case StatusOffline:
			if e.live.online {
				continue
			}
		case StatusDegraded:
			if !degraded {
				continue
			}
		case StatusOutdated:
			if !outdated {
				continue
			}
		}
		if p.Total >= q.Offset && len(p.Devices) < q.Limit {
			p.Devices = append(p.Devices, v.deviceLocked(e))
		}
		p.Total++
	}
	return p
}

// Get returns the device with this name, if the picture has it.
func (v *View) Get(name string) (Device, bool) {
	v.fresh()
	v.mu.RLock()
	defer v.mu.RUnlock()
	for _, e := range v.byID {
		if e.rec.Name == name {
			return v.deviceLocked(e), true
		}
	}
	return Device{}, false
}

// NameOf returns the name of the device with this ID.
func (v *View) NameOf(id string) (string, bool) {
	v.mu.RLock()
	defer v.mu.RUnlock()
	if e := v.byID[id]; e != nil {
		return e.rec.Name, true
	}
	return "", false
}

// Connects maps every device's ID to its tunnel connections ever (the
// registry's count), for the link history.
func (v *View) Connects() map[string]int {
	v.mu.RLock()
	defer v.mu.RUnlock()
	out := make(map[string]int, len(v.byID))
	for id, e := range v.byID {
		out[id] = e.rec.Connects
	}
	return out
}

// Names maps every device's ID to its name.
func (v *View) Names() map[string]string {
	v.mu.RLock()
	defer v.mu.RUnlock()
	out := make(map[string]string, len(v.byID))
	for id, e := range v.byID {
		out[id] = e.rec.Name
	}
	return out
}

// Counts are the summary of every device, for the metrics.
func (v *View) Counts() Counts {
	return v.Query(Query{Limit: 1}).Counts
}

// sortOnce orders the devices by name if a change unsorted them.
func (v *View) sortOnce() {
	v.mu.RLock()
	sorted := v.sorted
	v.mu.RUnlock()
	if sorted {
		return
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.sorted {
		return
	}
	v.order = slices.Collect(maps.Values(v.byID))
	slices.SortFunc(v.order, func(a, b *entry) int {
		if c := strings.Compare(a.rec.Name, b.rec.Name); c != 0 {
			return c
		}
		return strings.Compare(a.rec.ID, b.rec.ID)
	})
	v.sorted = true
}

func (v *View) deviceLocked(e *entry) Device {
	d := Device{
		Device: e.rec, Online: e.live.online, ConnectedSince: e.live.since, Reach: e.live.reach, RTT: e.live.rtt,
		LossPercent: e.live.loss, LossKnown: e.live.lossKnown, Blackouts: e.live.blackouts,
		BytesUp: e.live.up, BytesDown: e.live.down, Sessions: e.live.sessions,
		Degraded: v.degradedLocked(e), Outdated: v.outdatedLocked(e),
	}
	d.Labels = maps.Clone(e.rec.Labels)
	switch {
	case d.Reach != ReachTunnel: // offline, or not measured here
	case d.Degraded:
		d.Quality = QualityPoor
	case d.RTT < v.cfg.DegradedRTT/3 && d.LossPercent < v.cfg.DegradedLoss/4:
		d.Quality = QualityGood
	default:
		d.Quality = QualityFair
	}
	return d
}

func (v *View) degradedLocked(e *entry) bool {
	l := &e.live
	return l.online && (l.rtt >= v.cfg.DegradedRTT || (l.lossKnown && l.loss >= v.cfg.DegradedLoss))
}

func (v *View) outdatedLocked(e *entry) bool { return outdated(e, v.wantedLocked()) }

// outdated reports whether e runs a release older than latest. A
// development build (a version that is no release) is never outdated.
func outdated(e *entry, latest string) bool {
	return e.release && latest != "" && ota.Compare(e.rec.AgentVersion, latest) < 0
}

// wantedLocked is the release devices should run: Config.Latest's, or
// the newest in the fleet; "" when there is none.
func (v *View) wantedLocked() string {
	latest := v.latest
	if v.cfg.Latest != nil {
		if l := v.cfg.Latest(); semver.IsValid(l) {
			latest = l
		}
	}
	return latest
}

// countLocked counts e's release in (delta 1) or out (delta -1) of the
// fleet's, and finds the newest again if a release appeared or went.
func (v *View) countLocked(e *entry, delta int) {
	if !e.release {
		return
	}
	ver := e.rec.AgentVersion
	was := v.releases[ver]
	n := was + delta
	if n > 0 {
		v.releases[ver] = n
	} else {
		delete(v.releases, ver)
	}
	if (was > 0) == (n > 0) {
		return
	}
	v.latest = ""
	for r := range v.releases {
		// Equal versions (v1.2.0, v1.2.0+build) pick the same one
		// whatever the map's order.
		if c := ota.Compare(r, v.latest); v.latest == "" || c > 0 || c == 0 && r > v.latest {
			v.latest = r
		}
	}
}

func labelsMatch(have, want map[string]string) bool {
	for k, w := range want {
		h, ok := have[k]
		if !ok || (w != "*" && h != w) {
			return false
		}
	}
	return true
}

func lowerText(d *devices.Device) string {
	var b strings.Builder
	b.WriteString(d.Name)
	for _, k := range slices.Sorted(maps.Keys(d.Labels)) {
		b.WriteString(" " + k + "=" + d.Labels[k])
	}
	b.WriteString(" " + d.AgentVersion + " " + d.OS + "/" + d.Arch)
	return strings.ToLower(b.String())
}
