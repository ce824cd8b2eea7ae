package broker

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/locks"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/audittest"
	"remoteler.dev/edge/tools/logtest"
)

// fakeTunnels stands in for the tunnel server (whose real streams need a
// QUIC connection to an agent: tools/e2e covers those). Each opened stream
// is one end of a pipe whose other end echoes in upper case, like a device
// serving the session.
type fakeTunnels struct {
	// onOpen, when set, runs as a stream is opened.
	onOpen func(deviceID string, h *proto.StreamHeader)
	// onSend, when set, runs as a control message is sent.
	onSend func(m proto.Message)

	mu      sync.Mutex // guards the fields below
	offline bool
	refuse  *proto.Error
	fail    error // returned by Open as it is
	headers []*proto.StreamHeader
	sent    []proto.Message
	devEnds []net.Conn
}

var (
	errOffline  = errors.New("offline")
	errNoAnswer = errors.New("no answer")
)

// heardErr is an error of the tunnel server's kind: it knows when the
// device was last heard from.
type heardErr struct {
	is error
	at time.Time
}

func (e *heardErr) Error() string          { return e.is.Error() }
func (e *heardErr) Is(target error) bool   { return target == e.is }
func (e *heardErr) LastHeardAt() time.Time { return e.at }

func (f *fakeTunnels) Open(ctx context.Context, id string, h *proto.StreamHeader) (net.Conn, error) {
	if f.onOpen != nil {
		f.onOpen(id, h)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.offline {
		return nil, errOffline
	}
	if f.refuse != nil {
		return nil, f.refuse
	}
	if f.fail != nil {
		return nil, f.fail
	}
	f.headers = append(f.headers, h)
	a, b := net.Pipe()
	f.devEnds = append(f.devEnds, b)
	go func() {
		defer b.Close()
		buf := make([]byte, 1024)
		for {
			n, err := b.Read(buf)
			if err != nil {
				return
			}
			if _, err := b.Write([]byte(strings.ToUpper(string(buf[:n])))); err != nil {
				return
			}
		}
	}()
	return a, nil
}

func (f *fakeTunnels) Send(id string, m proto.Message) error {
	if f.onSend != nil {
		f.onSend(m)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sent = append(f.sent, m)
	return nil
}

func (f *fakeTunnels) Online(string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.offline
}

type fixture struct {
	b     *Broker
	tun   *fakeTunnels
	trail *audittest.Recorder
	reg   *sessions.Registry
	pi1   devices.Device
	st    store.Store       // where devices and locks are kept
	devs  *devices.Registry // pi-1 and secret-1
	locks *locks.Set        // following st
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	devs := &devices.Registry{Store: st}
	pi1, err := devs.Register(ctx, devices.Device{Name: "pi-1", Labels: map[string]string{"site": "north"}})
	if err != nil {
		t.Fatal(err)
	}
	pi1, err = devs.Update(ctx, pi1.ID, func(d *devices.Device) error {
		d.Services = []string{proto.ServiceSSH}
		d.Apps = []proto.App{{Name: "nodered", URI: "http://127.0.0.1:1880", Labels: map[string]string{"team": "ops"}}}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := devs.Register(ctx, devices.Device{Name: "secret-1", Labels: map[string]string{"site": "south"}}); err != nil {
		t.Fatal(err)
	}
	reg := sessions.New(sessions.Config{})
	t.Cleanup(reg.Close)
	lockSet := &locks.Set{Logger: logtest.Logger(t)}
	fctx, cancel := context.WithCancel(ctx)
	followed := make(chan struct{})
	go func() {
		defer close(followed)
		lockSet.Follow(fctx, st)
	}()
	t.Cleanup(func() {
		cancel()
		<-followed
	})
	f := &fixture{tun: &fakeTunnels{}, trail: &audittest.Recorder{}, reg: reg, pi1: pi1, st: st, devs: devs, locks: lockSet}
	f.b = New(Config{Tunnels: f.tun, Offline: errOffline, NoAnswer: errNoAnswer, Devices: devs, Sessions: reg, Audit: f.trail, Locks: lockSet,
		Cluster: "fleet", EndGrace: 10 * time.Millisecond, Logger: logtest.Logger(t)})
	return f
}

func role(t *testing.T, doc string) api.Role {
	t.Helper()
	r, err := rbac.Decode([]byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func ask(t *testing.T, service, device, login, app string, roles ...string) Ask {
	var rs []api.Role
	for _, doc := range roles {
		rs = append(rs, role(t, doc))
	}
	return Ask{Service: service, User: api.User{Name: "alice", Roles: []string{"r"}}, Checker: rbac.NewChecker(rs, nil),
		Device: device, Login: login, App: app, ClientAddr: "192.0.2.1:1234", Expires: time.Now().Add(time.Hour)}
}

const (
	north = `metadata: {name: north}
spec: {allow: {device_labels: {site: north}, logins: [pi]}}`
	noPi = `metadata: {name: no-pi}
spec: {deny: {device_labels: {"*": "*"}, logins: [pi]}}`
	opsApps = `metadata: {name: ops-apps}
spec: {allow: {app_labels: {team: ops}}}`
)

func TestAuthorize(t *testing.T) {
	tests := []struct {
		name       string
		ask        func(t *testing.T) Ask
		wantStatus Status // 0: granted
		wantMsg    string
		wantRule   string
	}{
		{"ssh allowed", func(t *testing.T) Ask { return ask(t, proto.ServiceSSH, "pi-1", "pi", "", north) }, 0, "", ""},
		{"no such device", func(t *testing.T) Ask { return ask(t, proto.ServiceSSH, "pi-9", "pi", "", north) },
			StatusNotFound, `no device "pi-9" that you can reach`, "no such device"},
		{"hidden device reads as missing", func(t *testing.T) Ask { return ask(t, proto.ServiceSSH, "secret-1", "pi", "", north) },
			StatusNotFound, `no device "secret-1" that you can reach`, rbac.RuleAllowLabels},
		{"login refused", func(t *testing.T) Ask { return ask(t, proto.ServiceSSH, "pi-1", "root", "", north) },
			StatusForbidden, `no role allows login "root" on device "pi-1"`, rbac.RuleAllowLogins},
		{"deny wins", func(t *testing.T) Ask { return ask(t, proto.ServiceSSH, "pi-1", "pi", "", north, noPi) },
			StatusForbidden, `role "no-pi" denies login "pi" on device "pi-1"`, rbac.RuleDenyLogins},
		{"kube not offered", func(t *testing.T) Ask { return ask(t, proto.ServiceKube, "pi-1", "", "", north) },
			StatusForbidden, `device "pi-1" does not offer Kubernetes`, "no kube service"},
		{"app allowed", func(t *testing.T) Ask { return ask(t, proto.ServiceApp, "pi-1", "", "nodered", opsApps) }, 0, "", ""},
		{"app not declared", func(t *testing.T) Ask { return ask(t, proto.ServiceApp, "pi-1", "", "grafana", opsApps) },
			StatusNotFound, `no app "grafana" on device "pi-1"`, "no such app"},
		{"app hidden by roles", func(t *testing.T) Ask { return ask(t, proto.ServiceApp, "pi-1", "", "nodered", north) },
			StatusNotFound, `no app "nodered" on device "pi-1"`, rbac.RuleAllowApps},
		{"not a user", func(t *testing.T) Ask {
			a := ask(t, proto.ServiceSSH, "pi-1", "pi", "")
			a.Checker = nil
			return a
		}, StatusForbidden, "only users can reach devices", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			g, err := f.b.Authorize(context.Background(), tt.ask(t))
			if tt.wantStatus == 0 {
				if err != nil {
					t.Fatalf("got %v, want a grant", err)
				}
				if g.Session.ID == "" || g.Session.DeviceID != f.pi1.ID || g.Session.User != "alice" {
					t.Errorf("grant %+v: want a session ID, pi-1's ID and alice", g.Session)
				}
				if len(f.trail.Types()) != 0 {
					t.Errorf("a grant recorded %v, want nothing yet", f.trail.Types())
				}
				return
			}
			var ref *Refusal
			if !errors.As(err, &ref) {
				t.Fatalf("got %v, want a *Refusal", err)
			}
			if ref.Status != tt.wantStatus || !strings.Contains(ref.Msg, tt.wantMsg) {
				t.Errorf("got status %d %q, want %d with %q", ref.Status, ref.Msg, tt.wantStatus, tt.wantMsg)
			}
			e := f.trail.Last()
			if e.Type != proto.EventAccessDenied || e.Outcome != proto.OutcomeDenied || e.Message != ref.Msg {
				t.Fatalf("audit: %+v, want the refusal recorded as access.denied", e)
			}
			if e.Fields["rule"] != tt.wantRule {
				t.Errorf("audited rule %q, want %q", e.Fields["rule"], tt.wantRule)
			}
		})
	}
}

func TestOpenRefusals(t *testing.T) {
	tests := []struct {
		name    string
		set     func(*fakeTunnels)
		want    Status
		wantMsg string
	}{
		{"offline", func(f *fakeTunnels) { f.offline = true }, StatusOffline, `device "pi-1" is offline`},
		{"device refuses", func(f *fakeTunnels) { f.refuse = proto.Errorf(proto.CodeForbidden, "expired") }, StatusForbidden, "the device refused: expired"},
		{"device lacks it", func(f *fakeTunnels) { f.refuse = proto.Errorf(proto.CodeNotFound, "no app") }, StatusNotFound, "does not offer it"},
		{"device fails", func(f *fakeTunnels) { f.refuse = proto.Errorf(proto.CodeInternal, "boom") }, StatusNoAnswer, "did not answer"},
		{"offline, last heard known", func(f *fakeTunnels) {
			f.fail = &heardErr{is: errOffline, at: time.Now().Add(-90 * time.Second)}
		}, StatusOffline, `device "pi-1" is offline: last seen 1m30s ago (`},
		{"waited in vain", func(f *fakeTunnels) {
			f.fail = &heardErr{is: errNoAnswer, at: time.Now().Add(-time.Minute)}
		}, StatusNoAnswer, `device "pi-1" did not answer within 35s (last seen 1m0s ago (`},
		// Not heard since this fleet started: the registry's record.
		{"offline, last heard unknown", func(f *fakeTunnels) { f.fail = &heardErr{is: errOffline} }, StatusOffline, `is offline: last seen `},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			g, err := f.b.Authorize(context.Background(), ask(t, proto.ServiceSSH, "pi-1", "pi", "", north))
			if err != nil {
				t.Fatal(err)
			}
			tt.set(f.tun)
			_, err = f.b.Open(context.Background(), g, "")
			var ref *Refusal
			if !errors.As(err, &ref) || ref.Status != tt.want || !strings.Contains(ref.Msg, tt.wantMsg) {
				t.Errorf("got %v, want status %d with %q", err, tt.want, tt.wantMsg)
			}
		})
	}
}

func TestSessionLifecycle(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	g, err := f.b.Authorize(ctx, ask(t, proto.ServiceApp, "pi-1", "", "nodered", opsApps))
	if err != nil {
		t.Fatal(err)
	}
	dev, err := f.b.Open(ctx, g, "nodered")
	if err != nil {
		t.Fatal(err)
	}
	h := f.tun.headers[0]
	if h.Service != proto.ServiceApp || h.Target != "nodered" || h.Identity.User != "alice" || h.Identity.Cluster != "fleet" || h.ClientAddr != "192.0.2.1:1234" {
		t.Errorf("stream header %+v: want service app, target nodered, alice's identity", h)
	}
	s, err := f.b.Start(ctx, g, StartOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if live := f.reg.List(sessions.Filter{Service: proto.ServiceApp}); len(live) != 1 || live[0].App != "nodered" {
		t.Fatalf("registry lists %+v, want the app session", live)
	}
	user, client := net.Pipe()
	s.OnEnd(func() { dev.Close(); user.Close() })
	done := make(chan Stats, 1)
	go func() {
		up, down, _ := Splice(user, nil, dev, nil)
		done <- Stats{Up: up, Down: down}
	}()
	client.Write([]byte("hello"))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(client, buf); err != nil || string(buf) != "HELLO" {
		t.Fatalf("through the splice: %q, %v", buf, err)
	}
	// Access ends: the registry ends the session, the broker tells the
	// device and closes both sides after the grace period.
	if n := f.reg.End(func(*sessions.Session) bool { return true }, "access changed: no"); n != 1 {
		t.Fatalf("ended %d sessions, want 1", n)
	}
	var st Stats
	select {
	case st = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the splice did not end after the session was ended")
	}
	if reason := s.Done(ctx, "", st); reason != "access changed: no" {
		t.Errorf("Done recorded reason %q, want the registry's", reason)
	}
	f.tun.mu.Lock()
	sent := slices.Clone(f.tun.sent)
	f.tun.mu.Unlock()
	if len(sent) != 1 || sent[0].(*proto.SessionEnd).Message != "access changed: no" {
		t.Errorf("the device was told %+v, want one session-end with the reason", sent)
	}
	if got := f.trail.Types(); !slices.Equal(got, []string{proto.EventSessionStart, proto.EventSessionEnd}) {
		t.Errorf("audit %v, want session.start, session.end", got)
	}
	end := f.trail.Last()
	if end.Fields["bytes_up"] != "5" || end.Fields["bytes_down"] != "5" || end.Fields["reason"] != "access changed: no" || end.Fields["app"] != "nodered" {
		t.Errorf("end event fields %v, want 5 bytes each way, the reason and the app", end.Fields)
	}
	if n := len(f.reg.List(sessions.Filter{})); n != 0 {
		t.Errorf("%d sessions still registered", n)
	}
}

func TestStartFailsClosed(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	g, err := f.b.Authorize(ctx, ask(t, proto.ServiceSSH, "pi-1", "pi", "", north))
	if err != nil {
		t.Fatal(err)
	}
	f.trail.Err = errors.New("disk full")
	_, err = f.b.Start(ctx, g, StartOptions{})
	var ref *Refusal
	if !errors.As(err, &ref) || ref.Status != StatusUnavailable {
		t.Fatalf("got %v, want the audit refusal", err)
	}
	if n := len(f.reg.List(sessions.Filter{})); n != 0 {
		t.Errorf("an unrecorded session was registered (%d)", n)
	}
}

func TestStartRefusesExpired(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	a := ask(t, proto.ServiceSSH, "pi-1", "pi", "", north)
	a.Expires = time.Now().Add(-time.Second)
	g, err := f.b.Authorize(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.b.Start(ctx, g, StartOptions{})
	var ref *Refusal
	if !errors.As(err, &ref) || ref.Status != StatusUnauthorized || !strings.Contains(ref.Msg, "expired") {
		t.Fatalf("got %v, want an expiry refusal", err)
	}
}

// TestPooledStreamsAreRecordedBeforeTheyOpen: each pooled stream's
// session.start is committed in the hash-chained trail before the device
// hears of the stream (the device's own events about it are checked
// against that record), and its session.end when it closes; a stream the
// device does not take ends recorded as a failure; a stream the trail
// cannot record is not opened.
func TestPooledStreamsAreRecordedBeforeTheyOpen(t *testing.T) {
	f := newFixture(t)
	events, err := audit.Open(audit.Config{Path: filepath.Join(t.TempDir(), "audit.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer events.Close()
	f.b.cfg.Audit = &audit.Recorder{Log: events, Cluster: "fleet"}
	var seen []error
	f.tun.onOpen = func(deviceID string, h *proto.StreamHeader) {
		_, err := events.Brokered(deviceID, h.SessionID)
		seen = append(seen, err)
	}
	ctx := context.Background()
	g, err := f.b.Authorize(ctx, ask(t, proto.ServiceApp, "pi-1", "", "nodered", opsApps))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := f.b.OpenPooled(ctx, g, "nodered")
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 1 || seen[0] != nil {
		t.Fatalf("when the stream was opened, the fleet's record of it: %v", seen)
	}
	id := f.tun.headers[0].SessionID
	conn.Close()
	conn.Close()
	recs, _, _ := events.Search(ctx, audit.Query{Session: id})
	if len(recs) != 2 || recs[0].Event.Type != proto.EventSessionStart || recs[1].Event.Type != proto.EventSessionEnd ||
		recs[0].Event.User != "alice" || recs[0].Event.Device != f.pi1.ID || recs[0].Event.Fields["app"] != "nodered" {
		t.Errorf("events of the stream: %+v, want its session.start and one session.end", recs)
	}
	f.tun.offline = true
	if _, err := f.b.OpenPooled(ctx, g, "nodered"); err == nil {
		t.Fatal("a stream to an offline device opened")
	}
	all, _, _ := events.Search(ctx, audit.Query{Type: proto.EventSessionEnd})
	if last := all[len(all)-1].Event; last.Outcome != proto.OutcomeFailure {
		t.Errorf("the failed stream's end: %+v", last)
	}
	f.tun.offline = false
	events.Close()
	if _, err := f.b.OpenPooled(ctx, g, "nodered"); err == nil {
		t.Error("a stream was opened that the audit trail could not record")
	}
}

// TestBytesAreTold: the bytes a stream carries are told by service as they
// pass, and half-closes still pass through.
func TestBytesAreTold(t *testing.T) {
	f := newFixture(t)
	var mu sync.Mutex
	told := map[string][2]int{}
	f.b.cfg.Bytes = func(service string, up, down int) {
		mu.Lock()
		defer mu.Unlock()
		c := told[service]
		told[service] = [2]int{c[0] + up, c[1] + down}
	}
	ctx := context.Background()
	g, err := f.b.Authorize(ctx, ask(t, proto.ServiceSSH, "pi-1", "pi", "", north))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := f.b.Open(ctx, g, "")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, ok := conn.(interface{ CloseWrite() error }); !ok {
		t.Error("the counted stream lost CloseWrite")
	}
	conn.Write([]byte("hello"))
	buf := make([]byte, 5)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "HELLO" {
		t.Fatalf("read %q, %v", buf, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if got := told[proto.ServiceSSH]; got != [2]int{5, 5} {
		t.Errorf("told %v for ssh, want 5 up and 5 down", got)
	}
}

// lock writes a lock on target and waits until the broker's view has it.
func (f *fixture) lock(t *testing.T, target api.LockTarget, msg string) api.Lock {
	t.Helper()
	svc := &locks.Service{Store: f.st, Devices: f.devs}
	l, err := svc.Create(context.Background(), api.LockRequest{Target: target, Message: msg}, "admin")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		list, rev := f.locks.List()
		for _, got := range list {
			if got.ID == l.ID {
				return l
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("the broker's view never got lock %s", l.ID)
		}
		f.locks.Wait(ctx, rev)
	}
}

// TestLocksRefuse checks that a lock on the user, one of their roles (even
// with another role allowing: deny wins), the login or the device refuses
// SSH, Kubernetes and app sessions with the lock's message, audited as
// access.denied naming the lock; and that a lock written between Authorize
// and Start refuses the start.
func TestLocksRefuse(t *testing.T) {
	tests := []struct {
		name   string
		target func(f *fixture) api.LockTarget
		ask    func(t *testing.T) Ask
	}{
		{"user, ssh", func(*fixture) api.LockTarget { return api.LockTarget{User: "alice"} },
			func(t *testing.T) Ask { return ask(t, proto.ServiceSSH, "pi-1", "pi", "", north) }},
		{"user, kube", func(*fixture) api.LockTarget { return api.LockTarget{User: "alice"} },
			func(t *testing.T) Ask { return ask(t, proto.ServiceKube, "pi-1", "", "", north) }},
		{"role, app", func(*fixture) api.LockTarget { return api.LockTarget{Role: "r"} },
			func(t *testing.T) Ask { return ask(t, proto.ServiceApp, "pi-1", "", "nodered", opsApps) }},
		{"login, ssh", func(*fixture) api.LockTarget { return api.LockTarget{Login: "pi"} },
			func(t *testing.T) Ask { return ask(t, proto.ServiceSSH, "pi-1", "pi", "", north) }},
		{"device, app", func(*fixture) api.LockTarget { return api.LockTarget{Device: "pi-1"} },
			func(t *testing.T) Ask { return ask(t, proto.ServiceApp, "pi-1", "", "nodered", opsApps) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			l := f.lock(t, tt.target(f), "shut out for a test")
			_, err := f.b.Authorize(context.Background(), tt.ask(t))
			var ref *Refusal
			if !errors.As(err, &ref) || ref.Status != StatusForbidden || !strings.Contains(ref.Msg, "shut out for a test") || !strings.Contains(ref.Msg, l.ID) {
				t.Fatalf("got %v, want a 403 refusal with the lock's ID and message", err)
			}
			e := f.trail.Last()
			if e.Type != proto.EventAccessDenied || e.Fields["rule"] != "lock" || e.Fields["lock"] != l.ID {
				t.Errorf("audit: %+v, want access.denied naming lock %s", e, l.ID)
			}
		})
	}
	t.Run("a lock between authorize and start", func(t *testing.T) {
		f := newFixture(t)
		ctx := context.Background()
		g, err := f.b.Authorize(ctx, ask(t, proto.ServiceSSH, "pi-1", "pi", "", north))
		if err != nil {
			t.Fatal(err)
		}
		l := f.lock(t, api.LockTarget{User: "alice"}, "too late")
		_, err = f.b.Start(ctx, g, StartOptions{})
		var ref *Refusal
		if !errors.As(err, &ref) || !strings.Contains(ref.Msg, "too late") {
			t.Fatalf("Start = %v, want the lock's refusal", err)
		}
		if got := f.trail.Types(); !slices.Contains(got, proto.EventSessionEnd) || got[len(got)-1] != proto.EventAccessDenied {
			t.Errorf("audit %v, want the session's end and an access.denied", got)
		}
		if e := f.trail.Last(); e.Fields["lock"] != l.ID {
			t.Errorf("access.denied %+v, want it to name lock %s", e, l.ID)
		}
		if live := f.reg.List(sessions.Filter{}); len(live) != 0 {
			t.Errorf("sessions left in the registry: %+v, want none", live)
		}
	})
}
