package fleetview

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/tools/logtest"
)

// fakeLinks stands in for the tunnel server: the devices whose tunnel is
// up and their counters.
type fakeLinks struct {
	mu    sync.Mutex // guards links
	links map[string]quic.ConnectionStats
}

func (f *fakeLinks) set(id string, st *quic.ConnectionStats) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.links == nil {
		f.links = map[string]quic.ConnectionStats{}
	}
	if st == nil {
		delete(f.links, id)
		return
	}
	f.links[id] = *st
}

func (f *fakeLinks) EachLink(fn func(string, time.Time, quic.ConnectionStats)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, st := range f.links {
		fn(id, time.Unix(1000, 0), st)
	}
}

type fakeSessions []sessions.Session

func (f fakeSessions) List(sessions.Filter) []sessions.Session { return f }

type fixture struct {
	view  *View
	reg   *devices.Registry
	links *fakeLinks
	ids   map[string]string // name -> ID
	// elsewhere stands in for presence: the devices whose tunnel another
	// replica holds (ID -> since).
	elsewhere sync.Map
	// later moves the view's clock ahead.
	later atomic.Int64
}

// newFixture registers devices (name -> labels and version), runs a View
// over them and waits until it has them.
func newFixture(t *testing.T, devs map[string]devices.Device, sess fakeSessions) *fixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	reg := &devices.Registry{Store: memstore.New()}
	f := &fixture{reg: reg, links: &fakeLinks{}, ids: map[string]string{}}
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for n := range devs {
			if !yield(n) {
				return
			}
		}
	}) {
		d := devs[name]
		d.Name = name
		got, err := reg.Register(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		f.ids[name] = got.ID
	}
	for i := range sess {
		sess[i].DeviceID = f.ids[sess[i].DeviceName]
	}
	f.view = New(Config{Registry: reg, Links: f.links, Sessions: sess, Refresh: time.Hour, Logger: logtest.Logger(t),
		Elsewhere: func(id string) (time.Time, bool) {
			since, ok := f.elsewhere.Load(id)
			if !ok {
				return time.Time{}, false
			}
			return since.(time.Time), true
		},
		Now: func() time.Time { return time.Now().Add(time.Duration(f.later.Load())) }})
	done := make(chan struct{})
	go func() { defer close(done); f.view.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	f.waitFor(t, "the registry listed", func() bool { return f.view.Query(Query{}).Counts.All == len(devs) })
	return f
}

func (f *fixture) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		// The channel first, then the condition: a change in between
		// closes the channel.
		ch, _ := f.view.Changed()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-time.After(time.Until(deadline)):
			t.Fatalf("waited 30s for %s", what)
		}
	}
}

func names(p Page) []string {
	var out []string
	for _, d := range p.Devices {
		out = append(out, d.Name)
	}
	return out
}

func TestQuery(t *testing.T) {
	f := newFixture(t, map[string]devices.Device{
		"pi-1":    {Labels: map[string]string{"site": "north", "model": "pi4"}, AgentVersion: "v1.2.0", OS: "linux", Arch: "arm64"},
		"pi-2":    {Labels: map[string]string{"site": "north"}, AgentVersion: "v1.1.9", OS: "linux", Arch: "arm"},
		"gw-1":    {Labels: map[string]string{"site": "south"}, AgentVersion: "v1.2.0", OS: "linux", Arch: "amd64"},
		"lab-dev": {Labels: map[string]string{"site": "lab"}, AgentVersion: "dev", OS: "linux", Arch: "amd64"},
	}, fakeSessions{{ID: "s1", DeviceName: "pi-1"}, {ID: "s2", DeviceName: "pi-1"}})
	f.links.set(f.ids["pi-1"], &quic.ConnectionStats{SmoothedRTT: 40 * time.Millisecond})
	f.links.set(f.ids["gw-1"], &quic.ConnectionStats{SmoothedRTT: 900 * time.Millisecond})
	f.view.Refresh()

	tests := []struct {
		name  string
		q     Query
		want  []string
		total int
		count Counts
	}{
		{"all, by name", Query{}, []string{"gw-1", "lab-dev", "pi-1", "pi-2"}, 4, Counts{All: 4, Online: 2, Offline: 2, Degraded: 1, Outdated: 1}},
		{"text in the name", Query{Text: "PI-"}, []string{"pi-1", "pi-2"}, 2, Counts{All: 2, Online: 1, Offline: 1, Outdated: 1}},
		{"text in a label", Query{Text: "model=pi4"}, []string{"pi-1"}, 1, Counts{All: 1, Online: 1}},
		{"text in OS/arch", Query{Text: "linux/amd64"}, []string{"gw-1", "lab-dev"}, 2, Counts{All: 2, Online: 1, Offline: 1, Degraded: 1}},
		{"label", Query{Labels: map[string]string{"site": "north"}}, []string{"pi-1", "pi-2"}, 2, Counts{All: 2, Online: 1, Offline: 1, Outdated: 1}},
		{"any value of a label", Query{Labels: map[string]string{"model": "*"}}, []string{"pi-1"}, 1, Counts{All: 1, Online: 1}},
		{"online", Query{Status: StatusOnline}, []string{"gw-1", "pi-1"}, 2, Counts{All: 4, Online: 2, Offline: 2, Degraded: 1, Outdated: 1}},
		{"offline", Query{Status: StatusOffline}, []string{"lab-dev", "pi-2"}, 2, Counts{All: 4, Online: 2, Offline: 2, Degraded: 1, Outdated: 1}},
		{"degraded", Query{Status: StatusDegraded}, []string{"gw-1"}, 1, Counts{All: 4, Online: 2, Offline: 2, Degraded: 1, Outdated: 1}},
		{"outdated (dev is never)", Query{Status: StatusOutdated}, []string{"pi-2"}, 1, Counts{All: 4, Online: 2, Offline: 2, Degraded: 1, Outdated: 1}},
		{"roles hide south", Query{Visible: func(l map[string]string) bool { return l["site"] != "south" }},
			[]string{"lab-dev", "pi-1", "pi-2"}, 3, Counts{All: 3, Online: 1, Offline: 2, Outdated: 1}},
		{"second page", Query{Offset: 1, Limit: 2}, []string{"lab-dev", "pi-1"}, 4, Counts{All: 4, Online: 2, Offline: 2, Degraded: 1, Outdated: 1}},
		{"past the end", Query{Offset: 9}, nil, 4, Counts{All: 4, Online: 2, Offline: 2, Degraded: 1, Outdated: 1}},
		{"nothing matches", Query{Text: "nope"}, nil, 0, Counts{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := f.view.Query(tt.q)
			if got := names(p); !slices.Equal(got, tt.want) {
				t.Errorf("devices %v, want %v", got, tt.want)
			}
			if p.Total != tt.total {
				t.Errorf("total %d, want %d", p.Total, tt.total)
			}
			if p.Counts != tt.count {
				t.Errorf("counts %+v, want %+v", p.Counts, tt.count)
			}
		})
	}

	pi1, ok := f.view.Get("pi-1")
	if !ok || !pi1.Online || pi1.Sessions != 2 || pi1.Quality != QualityGood || pi1.RTT != 40*time.Millisecond {
		t.Errorf("pi-1: %+v, want online, 2 sessions, a good link of 40ms", pi1)
	}
	gw, _ := f.view.Get("gw-1")
	if !gw.Degraded || gw.Quality != QualityPoor {
		t.Errorf("gw-1: %+v, want a poor, degraded link", gw)
	}
	if _, ok := f.view.Get("pi-9"); ok {
		t.Error("Get found a device that does not exist")
	}
}

// TestLive: a device that joins, changes, comes online, goes offline or
// is removed moves the version and shows in the next query.
func TestLive(t *testing.T) {
	f := newFixture(t, map[string]devices.Device{"pi-1": {AgentVersion: "v1.0.0"}}, nil)
	ctx := context.Background()
	_, v0 := f.view.Changed()

	d, err := f.reg.Register(ctx, devices.Device{Name: "pi-2", Labels: map[string]string{"site": "north"}})
	if err != nil {
		t.Fatal(err)
	}
	f.waitFor(t, "pi-2 to join", func() bool { return f.view.Query(Query{}).Total == 2 })
	if f.view.Version() <= v0 {
		t.Error("a join did not move the version")
	}

	if _, err := f.reg.Update(ctx, d.ID, func(d *devices.Device) error { d.Labels["site"] = "south"; return nil }); err != nil {
		t.Fatal(err)
	}
	f.waitFor(t, "pi-2's new label", func() bool {
		return f.view.Query(Query{Labels: map[string]string{"site": "south"}}).Total == 1
	})

	v1 := f.view.Version()
	f.links.set(d.ID, &quic.ConnectionStats{SmoothedRTT: 20 * time.Millisecond})
	f.view.Refresh()
	if f.view.Version() == v1 || f.view.Query(Query{Status: StatusOnline}).Total != 1 {
		t.Error("a tunnel that came up did not show")
	}
	v2 := f.view.Version()
	f.links.set(d.ID, &quic.ConnectionStats{SmoothedRTT: 20*time.Millisecond + 100*time.Microsecond, BytesSent: 5000})
	f.view.Refresh()
	if f.view.Version() != v2 {
		t.Error("bytes and an RTT change under a millisecond moved the version")
	}
	f.links.set(d.ID, nil)
	f.view.Refresh()
	if f.view.Version() == v2 || f.view.Query(Query{Status: StatusOnline}).Total != 0 {
		t.Error("a tunnel that went down did not show")
	}

	if _, err := f.reg.Delete(ctx, d.ID); err != nil {
		t.Fatal(err)
	}
	f.waitFor(t, "pi-2 to go", func() bool { return f.view.Query(Query{}).Total == 1 })
}

// TestOutdated: against the newest version in the fleet, or the newest
// release when one is given; development builds never are.
func TestOutdated(t *testing.T) {
	devs := map[string]devices.Device{
		"a": {AgentVersion: "v1.2.0"}, "b": {AgentVersion: "v1.10.0"}, "c": {AgentVersion: "dev"}, "d": {AgentVersion: "v1.10.0-rc.1"},
	}
	f := newFixture(t, devs, nil)
	if got := names(f.view.Query(Query{Status: StatusOutdated})); !slices.Equal(got, []string{"a", "d"}) {
		t.Errorf("outdated against the fleet's newest: %v, want a and d", got)
	}
	latest := "v2.0.0"
	f.view.cfg.Latest = func() string { return latest }
	if got := names(f.view.Query(Query{Status: StatusOutdated})); !slices.Equal(got, []string{"a", "b", "d"}) {
		t.Errorf("outdated against release v2.0.0: %v", got)
	}
	latest = "not a version"
	if got := names(f.view.Query(Query{Status: StatusOutdated})); !slices.Equal(got, []string{"a", "d"}) {
		t.Errorf("a bad release version falls back to the fleet's newest: %v", got)
	}
}

func TestParseStatus(t *testing.T) {
	for _, s := range []string{"", "online", "offline", "degraded", "outdated"} {
		if got, ok := ParseStatus(s); !ok || string(got) != s {
			t.Errorf("ParseStatus(%q) = %q, %v", s, got, ok)
		}
	}
	if _, ok := ParseStatus("<script>"); ok {
		t.Error("ParseStatus accepted an unknown status")
	}
}

// BenchmarkQuery10k measures a dashboard's query over 10,000 devices: a
// page of 100 with counts, with and without a text filter and roles.
func BenchmarkQuery10k(b *testing.B) {
	v := New(Config{Links: &fakeLinks{}})
	var all []devices.Device
	for i := range 10000 {
		all = append(all, devices.Device{ID: fmt.Sprintf("%032x", i), Name: fmt.Sprintf("dev-%05d", i),
			Labels: map[string]string{"site": []string{"north", "south", "east"}[i%3], "model": "pi4"}, AgentVersion: "v1.0.0"})
	}
	v.reset(all)
	visible := func(l map[string]string) bool { return l["site"] != "east" }
	for _, bc := range []struct {
		name string
		q    Query
	}{
		{"all", Query{}},
		{"text", Query{Text: "site=north"}},
		{"roles", Query{Visible: visible, Offset: 5000}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				v.Query(bc.q)
			}
		})
	}
}

// TestReach: a device is online with its tunnel here (its link measured),
// with its tunnel on another replica (since when that replica says), or as
// a direct node within its check-in window (offline past it); and offline
// otherwise.
func TestReach(t *testing.T) {
	f := newFixture(t, map[string]devices.Device{
		"here":   {},
		"moved":  {},
		"direct": {DirectAddr: "10.0.0.7:4433"},
		"gone":   {},
	}, nil)
	f.links.set(f.ids["here"], &quic.ConnectionStats{SmoothedRTT: 40 * time.Millisecond})
	movedAt := time.Unix(2000, 0)
	f.elsewhere.Store(f.ids["moved"], movedAt)
	f.view.Refresh()
	tests := []struct {
		name    string
		reach   Reach
		since   time.Time // zero: not checked
		quality Quality
	}{
		{"here", ReachTunnel, time.Unix(1000, 0), QualityGood},
		{"moved", ReachReplica, movedAt, QualityNone},
		{"direct", ReachDirect, time.Time{}, QualityNone},
		{"gone", ReachNone, time.Time{}, QualityNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, ok := f.view.Get(tt.name)
			if !ok {
				t.Fatalf("%s not in the view", tt.name)
			}
			if d.Reach != tt.reach || d.Online != (tt.reach != ReachNone) || d.Quality != tt.quality {
				t.Errorf("reach %q online %v quality %q, want %q, %v, %q", d.Reach, d.Online, d.Quality, tt.reach, tt.reach != ReachNone, tt.quality)
			}
			if !tt.since.IsZero() && !d.ConnectedSince.Equal(tt.since) {
				t.Errorf("connected since %v, want %v", d.ConnectedSince, tt.since)
			}
		})
	}
	if c := f.view.Query(Query{}).Counts; c.Online != 3 || c.Offline != 1 {
		t.Errorf("counts %+v, want 3 online and 1 offline", c)
	}
	// Past its check-in window a direct node is offline; a device that
	// left the other replica too.
	f.later.Store(int64(devices.DirectWindow + time.Minute))
	f.elsewhere.Delete(f.ids["moved"])
	f.view.Refresh()
	for _, name := range []string{"direct", "moved"} {
		if d, _ := f.view.Get(name); d.Online || d.Reach != ReachNone {
			t.Errorf("%s: online %v reach %q, want offline", name, d.Online, d.Reach)
		}
	}
}

// TestOutdatedFollowsChanges: the fleet's newest release follows devices
// that upgrade, join and go, one change at a time.
func TestOutdatedFollowsChanges(t *testing.T) {
	v := New(Config{Links: &fakeLinks{}})
	v.reset([]devices.Device{{ID: "a", Name: "a", AgentVersion: "v1.2.0"}, {ID: "b", Name: "b", AgentVersion: "v1.10.0"}})
	steps := []struct {
		name     string
		id       string
		version  string // "" removes the device
		outdated []string
	}{
		{"b upgrades", "b", "v1.11.0", []string{"a"}},
		{"c joins on b's release", "c", "v1.11.0", []string{"a"}},
		{"b goes; c still runs the newest", "b", "", []string{"a"}},
		{"d joins on an older release", "d", "v1.0.0", []string{"a", "d"}},
		{"c goes: a's release is the newest", "c", "", []string{"d"}},
		{"a runs a development build", "a", "dev", nil},
		{"d goes: no release left", "d", "", nil},
		{"e joins on a release", "e", "v0.9.0", nil},
		{"a moves to a newer release", "a", "v2.0.0", []string{"e"}},
	}
	for _, st := range steps {
		if st.version == "" {
			v.apply(st.id, nil)
		} else {
			v.apply(st.id, &devices.Device{ID: st.id, Name: st.id, AgentVersion: st.version})
		}
		if got := names(v.Query(Query{Status: StatusOutdated})); !slices.Equal(got, st.outdated) {
			t.Errorf("%s: outdated %v, want %v", st.name, got, st.outdated)
		}
	}
}

// fleetOf returns n devices on one release, with IDs 0 to n-1 in hex.
func fleetOf(n int) []devices.Device {
	all := make([]devices.Device, n)
	for i := range all {
		all[i] = devices.Device{ID: fmt.Sprintf("%032x", i), Name: fmt.Sprintf("dev-%05d", i),
			Labels: map[string]string{"site": "north"}, AgentVersion: "v1.0.0"}
	}
	return all
}

// BenchmarkApply30k measures one device's change (its reconnect writes its
// record) reaching the picture of a fleet of 30,000: a fleet restart
// brings 30,000 of them within minutes.
func BenchmarkApply30k(b *testing.B) {
	all := fleetOf(30000)
	v := New(Config{Links: &fakeLinks{}})
	v.reset(all)
	i := 0
	for b.Loop() {
		d := all[i%len(all)]
		d.Connects = i
		v.apply(d.ID, &d)
		i++
	}
}

// BenchmarkRefresh30k measures the refresh that runs every second on a
// replica of a fleet of 30,000: half the tunnels here, half on other
// replicas.
func BenchmarkRefresh30k(b *testing.B) {
	all := fleetOf(30000)
	links := &fakeLinks{}
	for _, d := range all[:15000] {
		links.set(d.ID, &quic.ConnectionStats{SmoothedRTT: 40 * time.Millisecond, PacketsSent: 100})
	}
	elsewhere := map[string]time.Time{}
	for _, d := range all[15000:] {
		elsewhere[d.ID] = time.Unix(2000, 0)
	}
	v := New(Config{Links: links, Elsewhere: func(id string) (time.Time, bool) {
		since, ok := elsewhere[id]
		return since, ok
	}})
	v.reset(all)
	b.ReportAllocs()
	for b.Loop() {
		v.Refresh()
	}
}

// TestRefreshWhenWatched: the tunnels are read every Refresh only while a
// live page watches (it asked for changes within the minute); otherwise a
// reader that finds the picture older than Refresh reads them first.
func TestRefreshWhenWatched(t *testing.T) {
	var now atomic.Int64
	now.Store(time.Unix(5000, 0).UnixNano())
	advance := func(d time.Duration) { now.Add(int64(d)) }
	links := &fakeLinks{}
	v := New(Config{Links: links, Refresh: time.Second, Now: func() time.Time { return time.Unix(0, now.Load()) }})
	v.reset([]devices.Device{{ID: "a", Name: "a"}})
	v.Refresh()
	online := func() bool {
		v.mu.RLock()
		defer v.mu.RUnlock()
		return v.byID["a"].live.online
	}
	up := &quic.ConnectionStats{SmoothedRTT: 30 * time.Millisecond}

	// Nobody watches: a tick reads nothing.
	links.set("a", up)
	advance(time.Second)
	v.tick()
	if online() {
		t.Fatal("a tick read the tunnels with no live page watching")
	}
	// A reader finds the picture a second old: it is read first.
	if c := v.Query(Query{}).Counts; c.Online != 1 {
		t.Fatalf("a query of a picture a second old: counts %+v, want a online", c)
	}
	// Within Refresh of that, a reader takes the picture as it is.
	links.set("a", nil)
	advance(500 * time.Millisecond)
	if d, _ := v.Get("a"); !d.Online {
		t.Fatal("a read half a second after the last refreshed the picture again")
	}
	// A second after it, a device's page (Get) reads the tunnels first.
	advance(500 * time.Millisecond)
	if d, _ := v.Get("a"); d.Online {
		t.Fatal("a device read of a picture a second old did not refresh it")
	}

	// A live page starts watching: Run is woken to refresh at once, and
	// ticks read the tunnels until a minute passes without it asking.
	select {
	case <-v.wake:
		t.Fatal("woken before anyone watched")
	default:
	}
	v.Changed()
	select {
	case <-v.wake:
	default:
		t.Fatal("a page that started watching did not wake Run")
	}
	links.set("a", up)
	v.tick()
	if !online() {
		t.Fatal("a tick while a page watches did not read the tunnels")
	}
	links.set("a", nil)
	advance(59 * time.Second)
	v.tick()
	if online() {
		t.Fatal("a tick 59 s after the page asked did not read the tunnels")
	}
	links.set("a", up)
	advance(time.Second)
	v.tick()
	if online() {
		t.Fatal("a tick a minute after the page last asked still read the tunnels")
	}
}
