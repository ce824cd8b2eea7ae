package dashboard

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"remoteler.dev/edge/fleet/admin"
	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/fleetview"
	"remoteler.dev/edge/fleet/linkhist"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/recordings"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/fleet/tokens"
	"remoteler.dev/edge/fleet/users"
	"remoteler.dev/edge/fleet/web/static"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/logtest"
)

// fakeLogin stands in for the fleet's browser login (fleet/web/login, whose
// own tests cover the login form): a session cookie names a session it
// made with logIn. Its CheckPost checks the origin and the CSRF token as
// the real one does, so the dashboard's use of it is tested.
type fakeLogin struct {
	origin string

	mu       sync.Mutex // guards sessions
	sessions map[string]Session
}

const cookieName = "test_session"

func (l *fakeLogin) logIn(user string) (*http.Cookie, Session) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sessions == nil {
		l.sessions = map[string]Session{}
	}
	tok := rand.Text()
	s := Session{User: user, ID: rand.Text(), CSRF: rand.Text(), Expires: time.Now().Add(time.Hour)}
	l.sessions[tok] = s
	return &http.Cookie{Name: cookieName, Value: tok, Path: "/"}, s
}

func (l *fakeLogin) logOut(user string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for k, s := range l.sessions {
		if s.User == user {
			delete(l.sessions, k)
		}
	}
}

func (l *fakeLogin) Session(r *http.Request) (Session, bool) {
	c, err := r.Cookie(cookieName)
	if err != nil {
		return Session{}, false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.sessions[c.Value]
	return s, ok
}

func (l *fakeLogin) RedirectToLogin(w http.ResponseWriter, r *http.Request, next string) {
	http.Redirect(w, r, "/web/login?next="+url.QueryEscape(next), http.StatusSeeOther)
}

var errForbidden = errors.New("forbidden")

func (l *fakeLogin) CheckPost(r *http.Request, s Session) error {
	if o := r.Header.Get("Origin"); o != "" && o != l.origin {
		return errForbidden
	}
	if err := r.ParseForm(); err != nil {
		return errForbidden
	}
	if r.PostForm.Get("csrf") != s.CSRF || s.CSRF == "" {
		return errForbidden
	}
	return nil
}

// fakeLinks stands in for the tunnel server's list of live tunnels.
type fakeLinks struct {
	mu    sync.Mutex // guards links
	links map[string]quic.ConnectionStats
}

func (f *fakeLinks) set(id string, up bool, rtt time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.links == nil {
		f.links = map[string]quic.ConnectionStats{}
	}
	if !up {
		delete(f.links, id)
		return
	}
	f.links[id] = quic.ConnectionStats{SmoothedRTT: rtt, PacketsSent: 1000, PacketsLost: 3, BytesSent: 123456, BytesReceived: 654321}
}

func (f *fakeLinks) EachLink(fn func(string, time.Time, quic.ConnectionStats)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, st := range f.links {
		fn(id, time.Unix(1_780_000_000, 0), st)
	}
}

// trail is the audit recorder: the real audit log, behind audit.Recorder.
type fixture struct {
	t        *testing.T
	srv      *Server
	http     *httptest.Server
	login    *fakeLogin
	links    *fakeLinks
	view     *fleetview.View
	reg      *devices.Registry
	users    *users.Service
	roles    *rbac.Roles
	events   *audit.Log
	recs     *recordings.Store
	sessions *sessions.Registry
	history  *linkhist.History
	ids      map[string]string // device name -> ID
	// terminals are the terminal requests the dashboard let through.
	terminals chan TerminalRequest
	mux       *http.ServeMux
	loginOnce sync.Once
	rollouts  *fakeRollouts
	streams   atomic.Int64 // live streams open
}

// fakeRollouts stands in for the rollout engine (fleet/rollouts, whose
// own tests run rollouts): what it lists is what the test sets.
type fakeRollouts struct {
	mu      sync.Mutex // guards the fields below
	list    []api.Rollout
	updates map[string]*api.DeviceUpdate
}

func (r *fakeRollouts) List(context.Context) []api.Rollout {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]api.Rollout(nil), r.list...)
}

func (r *fakeRollouts) DeviceUpdate(id string) *api.DeviceUpdate {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.updates[id]
}

// Roles of the fixture's users.
const (
	roleNorth = "kind: role\nversion: v1\nmetadata: {name: north}\nspec: {allow: {logins: [pi], device_labels: {site: north}, app_labels: {\"*\": \"*\"}}}\n"
	roleAdmin = "kind: role\nversion: v1\nmetadata: {name: fleet-admin}\nspec: {allow: {logins: [root], device_labels: {\"*\": \"*\"}, admin: true}}\n"
)

// newFixture runs a dashboard over real fleet services in memory, with
// users alice (admin), bob (role north) and devices pi-1, pi-2 (site
// north) and gw-1 (site south).
func newFixture(t *testing.T, tls bool) *fixture {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	st := memstore.New()
	dir := t.TempDir()
	log := logtest.Logger(t)
	f := &fixture{t: t, login: &fakeLogin{}, links: &fakeLinks{}, reg: &devices.Registry{Store: st},
		users: &users.Service{Store: st, HashParams: users.HashParams{Time: 1, MemoryKiB: 64, Threads: 1}},
		roles: &rbac.Roles{Store: st}, ids: map[string]string{}, terminals: make(chan TerminalRequest, 4), rollouts: &fakeRollouts{}}
	for _, doc := range []string{roleNorth, roleAdmin} {
		role, err := rbac.Decode([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.roles.Put(ctx, role); err != nil {
			t.Fatal(err)
		}
	}
	for _, u := range []api.AddUserRequest{
		{Name: "alice", Password: "alice password 1", Roles: []string{"fleet-admin"}},
		{Name: "bob", Password: "bob's password 1", Roles: []string{"north"}},
	} {
		if _, err := f.users.Add(ctx, u); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []devices.Device{
		{Name: "pi-1", Labels: map[string]string{"site": "north", "model": "pi4"}, AgentVersion: "v1.2.0", OS: "linux", Arch: "arm64",
			Services: []string{proto.ServiceSSH, proto.ServiceKube},
			Apps:     []proto.App{{Name: "nodered", URI: "http://127.0.0.1:1880"}}},
		{Name: "pi-2", Labels: map[string]string{"site": "north"}, AgentVersion: "v1.1.0", OS: "linux", Arch: "arm", Services: []string{proto.ServiceSSH}},
		{Name: "gw-1", Labels: map[string]string{"site": "south"}, AgentVersion: "v1.2.0", OS: "linux", Arch: "amd64", Services: []string{proto.ServiceSSH}},
	} {
		got, err := f.reg.Register(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		// Register keeps what a join knows; a hello brings the rest.
		got, err = f.reg.Update(ctx, got.ID, func(x *devices.Device) error {
			x.OS, x.Arch, x.Services, x.Apps = d.OS, d.Arch, d.Services, d.Apps
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		f.ids[d.Name] = got.ID
	}
	var err error
	if f.events, err = audit.Open(audit.Config{Path: filepath.Join(dir, "audit.db"), Logger: log}); err != nil {
		t.Fatal(err)
	}
	if f.recs, err = recordings.Open(recordings.Config{Dir: filepath.Join(dir, "recordings"), Logger: log}); err != nil {
		t.Fatal(err)
	}
	f.sessions = sessions.New(sessions.Config{Logger: log})
	if f.history, err = linkhist.Open(linkhist.Config{Path: filepath.Join(dir, "linkhistory.db"), Source: func(func(linkhist.Sample)) {}, Logger: log}); err != nil {
		t.Fatal(err)
	}
	f.view = fleetview.New(fleetview.Config{Registry: f.reg, Links: f.links, Sessions: f.sessions, Refresh: 50 * time.Millisecond, Logger: log})
	var wg sync.WaitGroup
	wg.Go(func() { f.view.Run(ctx) })
	recorder := &audit.Recorder{Log: f.events, Cluster: "test", Logger: log}
	toks := &tokens.Service{Store: st}
	mux := http.NewServeMux()
	mux.Handle("GET "+StaticPrefix, static.Handler(StaticPrefix))
	// Counts the live streams open, for the tests of their lives.
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/web/live/") {
			f.streams.Add(1)
			defer f.streams.Add(-1)
		}
		mux.ServeHTTP(w, r)
	})
	if tls {
		f.http = httptest.NewUnstartedServer(handler)
		f.http.StartTLS()
	} else {
		f.http = httptest.NewServer(handler)
	}
	f.login.origin = f.http.URL
	f.srv = New(Config{
		Login: f.login, Users: f.users, Roles: f.roles, View: f.view, History: f.history, Audit: f.events, Recorder: recorder,
		Recordings: f.recs, Sessions: f.sessions, Tokens: toks, Rollouts: f.rollouts,
		Admin: admin.New(admin.Config{Users: f.users, Roles: f.roles, Tokens: toks, Devices: f.reg, CAPin: func() string { return "sha256:abcd" },
			Changed: f.sessions.Changed, Audit: recorder}),
		Terminal: func(w http.ResponseWriter, r *http.Request, req TerminalRequest) {
			f.terminals <- req
			http.Error(w, "terminal reached", http.StatusTeapot)
		},
		Fleet: "test", Version: "v0.0.0-test", FleetAddr: "fleet.example.com:3080", Origin: f.http.URL,
		AppURL: func(app, device string) (string, error) {
			return "https://" + app + "--" + device + ".fleet.example.com/", nil
		},
		Logger: log,
	})
	f.srv.Register(mux)
	f.mux = mux
	t.Cleanup(func() {
		f.http.Close()
		cancel()
		wg.Wait()
		f.sessions.Close()
		f.history.Close()
		f.events.Close()
	})
	f.waitFor("the view to list the devices", func() bool { return f.view.Query(fleetview.Query{}).Total == 3 })
	return f
}

// waitFor waits for cond, which the view's changes (or time) make true.
func (f *fixture) waitFor(what string, cond func() bool) {
	f.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			f.t.Fatalf("waited 30s for %s", what)
		}
		ch, _ := f.view.Changed()
		select {
		case <-ch:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// client is a browser-less client logged in as user (nil: nobody).
type client struct {
	f    *fixture
	hc   *http.Client
	sess Session
}

func (f *fixture) client(user string) *client {
	jar, _ := cookiejar.New(nil)
	hc := *f.http.Client()
	hc.Jar = jar
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	c := &client{f: f, hc: &hc}
	if user != "" {
		cookie, s := f.login.logIn(user)
		u, _ := url.Parse(f.http.URL)
		jar.SetCookies(u, []*http.Cookie{cookie})
		c.sess = s
	}
	return c
}

// get fetches path and returns the answer and its body.
func (c *client) get(path string, header ...string) (*http.Response, string) {
	c.f.t.Helper()
	req, err := http.NewRequest("GET", c.f.http.URL+path, nil)
	if err != nil {
		c.f.t.Fatal(err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// post posts a form (with the session's CSRF token unless it holds one).
func (c *client) post(path string, form url.Values, header ...string) (*http.Response, string) {
	c.f.t.Helper()
	if form == nil {
		form = url.Values{}
	}
	if _, ok := form["csrf"]; !ok {
		form.Set("csrf", c.sess.CSRF)
	}
	req, err := http.NewRequest("POST", c.f.http.URL+path, strings.NewReader(form.Encode()))
	if err != nil {
		c.f.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", c.f.http.URL)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		c.f.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// events returns the audit events of type typ.
func (f *fixture) auditEvents(typ string) []proto.AuditEvent {
	f.t.Helper()
	recs, _, err := f.events.Search(context.Background(), audit.Query{Type: typ})
	if err != nil {
		f.t.Fatal(err)
	}
	var out []proto.AuditEvent
	for _, r := range recs {
		out = append(out, r.Event)
	}
	return out
}

// recording stores a finished recording of user's session on device.
func (f *fixture) recording(id, user, device, cast string) {
	f.t.Helper()
	w, err := f.recs.Create(f.ids[device], id, proto.RecordingMeta{Session: "s-" + id, User: user, Login: "pi", Kind: "shell"})
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := io.WriteString(w, cast); err != nil {
		f.t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		f.t.Fatal(err)
	}
}

func mustContain(t *testing.T, body string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(body, w) {
			t.Errorf("the page lacks %q", w)
		}
	}
}

func mustNotContain(t *testing.T, body string, bad ...string) {
	t.Helper()
	for _, b := range bad {
		if strings.Contains(body, b) {
			t.Errorf("the page holds %q", b)
		}
	}
}

var _ = fmt.Sprint
