package kubesrv

import (
	"bufio"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/kubewire"
	"remoteler.dev/edge/proto/kubewire/kubewiretest"
	"remoteler.dev/edge/tools/logtest"
)

// fakeDevice answers kube streams with an HTTP server standing in for the
// agent and its cluster: it echoes what it received.
type fakeDevice struct {
	mu      sync.Mutex // guards headers
	headers []*proto.StreamHeader
	ln      *pipeListener
	offline atomic.Bool
	// down makes Online report the device offline, while Open still
	// works.
	down atomic.Bool
}

// Online, Send and Open make the fake device the broker's tunnels.
func (d *fakeDevice) Online(string) bool { return !d.offline.Load() && !d.down.Load() }

func (d *fakeDevice) Send(string, proto.Message) error { return nil }

// newServer returns a Server for cfg whose broker reaches dev and
// registers sessions in reg (nil: a registry of its own).
func newServer(t *testing.T, dev *fakeDevice, reg *sessions.Registry, cfg Config) *Server {
	t.Helper()
	if reg == nil {
		reg = sessions.New(sessions.Config{})
		t.Cleanup(reg.Close)
	}
	cfg.Broker = broker.New(broker.Config{Tunnels: dev, Offline: errOffline, Sessions: reg, Cluster: "fleet", Logger: cfg.Logger})
	s := New(cfg)
	t.Cleanup(s.Close)
	return s
}

var errOffline = errors.New("offline")

func (d *fakeDevice) Open(ctx context.Context, id string, h *proto.StreamHeader) (net.Conn, error) {
	if d.offline.Load() {
		return nil, errOffline
	}
	d.mu.Lock()
	d.headers = append(d.headers, h)
	d.mu.Unlock()
	a, b := net.Pipe()
	d.ln.conns <- hdrConn{a, h}
	return b, nil
}

func (d *fakeDevice) opened() []*proto.StreamHeader {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.headers)
}

type hdrConn struct {
	net.Conn
	h *proto.StreamHeader
}

type pipeListener struct {
	conns  chan net.Conn
	closed chan struct{}
	once   sync.Once
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{} }

type hdrKey struct{}

// echo is what the fake device's server answers.
type echo struct {
	Path          string
	Impersonation []string // Impersonate-* headers the device received
	Authorization string
	Stream        proto.Identity
}

func newFakeDevice(t *testing.T) *fakeDevice {
	d := &fakeDevice{ln: &pipeListener{conns: make(chan net.Conn, 16), closed: make(chan struct{})}}
	srv := &http.Server{
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, hdrKey{}, c.(hdrConn).h)
		},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h := r.Context().Value(hdrKey{}).(*proto.StreamHeader)
			switch {
			case r.Header.Get("Sec-WebSocket-Protocol") == "v5.channel.k8s.io":
				kubewiretest.FakeExec(w, r)
			case r.Header.Get("Upgrade") != "":
				conn, brw, err := http.NewResponseController(w).Hijack()
				if err != nil {
					return
				}
				defer conn.Close()
				fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", r.Header.Get("Upgrade"))
				brw.Flush()
				io.Copy(conn, brw)
			case r.URL.Query().Get("watch") == "true":
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusOK)
				fmt.Fprintln(w, `{"type":"ADDED"}`)
				w.(http.Flusher).Flush()
				<-r.Context().Done()
			case r.URL.Path == "/api/v1/namespaces/default/secrets/x":
				kubewire.WriteStatus(w, r, http.StatusForbidden, "RBAC says no")
			default:
				e := echo{Path: r.URL.Path, Authorization: r.Header.Get("Authorization"), Stream: h.Identity}
				for k := range r.Header {
					if strings.HasPrefix(k, "Impersonate-") {
						e.Impersonation = append(e.Impersonation, k)
					}
				}
				json.NewEncoder(w).Encode(e)
			}
		}),
	}
	go srv.Serve(d.ln)
	t.Cleanup(func() { srv.Close() })
	return d
}

// frontend serves s under /v1/kube/NAME/ with a fixed grant per request,
// as httpapi does after checking roles.
func frontend(t *testing.T, s *Server, g func(r *http.Request) *broker.Grant) *httptest.Server {
	t.Helper()
	fe := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gr := g(r)
		r.URL.Path = strings.TrimPrefix(r.URL.Path, "/v1/kube/"+gr.Session.DeviceName)
		r.URL.RawPath = ""
		s.Serve(w, r, gr)
	}))
	t.Cleanup(fe.Close)
	return fe
}

type events struct {
	mu    sync.Mutex
	evs   []kubewire.Event
	added chan struct{} // gets a token per event, when made
	fail  atomic.Bool   // the audit log cannot be written
}

func (e *events) add(ev kubewire.Event) error {
	if e.fail.Load() {
		return errors.New("audit log: disk full")
	}
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	e.mu.Unlock()
	if e.added != nil {
		e.added <- struct{}{}
	}
	return nil
}

func (e *events) all() []kubewire.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.evs)
}

func grantFor(user string, groups ...string) *broker.Grant {
	return &broker.Grant{Cluster: "fleet", Session: sessions.Session{Service: proto.ServiceKube, DeviceName: "pi-1", DeviceID: "dev1",
		User: user, KubeUser: user, KubeGroups: groups, ClientAddr: "127.0.0.1:1"}}
}

func TestServeDevice(t *testing.T) {
	dev := newFakeDevice(t)
	var evs events
	s := newServer(t, dev, nil, Config{Audit: evs.add, Logger: logtest.Logger(t)})
	fe := frontend(t, s, func(r *http.Request) *broker.Grant {
		return grantFor(r.Header.Get("X-Test-User"), "developers")
	})
	get := func(user, path string) echo {
		t.Helper()
		req, _ := http.NewRequest("GET", fe.URL+"/v1/kube/pi-1"+path, nil)
		req.Header.Set("X-Test-User", user)
		req.Header.Set("Impersonate-User", "admin")
		req.Header.Add("Impersonate-Group", "system:masters")
		req.Header.Set("Authorization", "Bearer stolen")
		resp, err := fe.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e echo
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := get("alice", "/api/v1/namespaces/default/pods")
	if e.Path != "/api/v1/namespaces/default/pods" || len(e.Impersonation) > 0 || e.Authorization != "" {
		t.Errorf("device got %+v, want the API path and no client impersonation or credentials", e)
	}
	if e.Stream.KubeUser != "alice" || !slices.Equal(e.Stream.KubeGroups, []string{"developers"}) {
		t.Errorf("stream identity %+v, want alice in developers", e.Stream)
	}
	get("alice", "/api/v1/namespaces/default/pods/p1")
	if n := len(dev.opened()); n != 1 {
		t.Errorf("two requests of one identity opened %d streams, want 1 (pooled)", n)
	}
	e = get("bob", "/api/v1/pods")
	if e.Stream.User != "bob" || len(dev.opened()) != 2 {
		t.Errorf("another identity: stream %+v after %d opens, want bob's own stream", e.Stream, len(dev.opened()))
	}
	for _, h := range dev.opened() {
		if h.Service != proto.ServiceKube || h.SessionID == "" {
			t.Errorf("stream header %+v, want service kube and a session id", h)
		}
	}
	// The event of a request is written as its handler returns, which can
	// be just after the client has the answer.
	got := evs.all()
	for deadline := time.Now().Add(5 * time.Second); len(got) < 3 && time.Now().Before(deadline); got = evs.all() {
		time.Sleep(5 * time.Millisecond)
	}
	if len(got) != 3 {
		t.Fatalf("got %d audit events, want 3: %+v", len(got), got)
	}
	want := []kubewire.RequestInfo{
		{Verb: "list", APIVersion: "v1", Namespace: "default", Resource: "pods", IsResource: true},
		{Verb: "get", APIVersion: "v1", Namespace: "default", Resource: "pods", Name: "p1", IsResource: true},
		{Verb: "list", APIVersion: "v1", Resource: "pods", IsResource: true},
	}
	for i, ev := range got {
		if ev.Type != kubewire.EventRequest || ev.Code != 200 || ev.Request != want[i] || ev.Cluster != "pi-1" {
			t.Errorf("event %d: got %+v, want a 200 request event for %+v", i, ev, want[i])
		}
	}
}

func TestServeErrors(t *testing.T) {
	dev := newFakeDevice(t)
	var evs events
	s := newServer(t, dev, nil, Config{Audit: evs.add, Logger: logtest.Logger(t)})
	fe := frontend(t, s, func(*http.Request) *broker.Grant { return grantFor("alice", "developers") })
	status := func(path string) (int, string) {
		t.Helper()
		resp, err := fe.Client().Get(fe.URL + "/v1/kube/pi-1" + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var st struct{ Kind, Reason, Message string }
		json.NewDecoder(resp.Body).Decode(&st)
		if st.Kind != "Status" {
			t.Errorf("got a %q body, want a Status", st.Kind)
		}
		return resp.StatusCode, st.Message
	}
	if code, _ := status("/api/v1/namespaces/default/secrets/x"); code != http.StatusForbidden {
		t.Errorf("a refusal from the cluster: got %d, want 403 passed through", code)
	}
	dev.offline.Store(true)
	s.Close() // drop the pooled stream: the next request dials
	if code, msg := status("/api/v1/nodes"); code != http.StatusServiceUnavailable || !strings.Contains(msg, "offline") {
		t.Errorf("offline device: got %d %q, want 503 saying offline", code, msg)
	}
	if evs := evs.all(); len(evs) != 2 || evs[0].Code != 403 || evs[1].Code != 503 || evs[0].Request.Resource != "secrets" {
		t.Errorf("audit: got %+v, want a 403 and a 503 event", evs)
	}
}

func TestWatchEndsWhenCertificateExpires(t *testing.T) {
	dev := newFakeDevice(t)
	s := newServer(t, dev, nil, Config{Logger: logtest.Logger(t)})
	expires := time.Now().Add(300 * time.Millisecond)
	fe := frontend(t, s, func(*http.Request) *broker.Grant {
		g := grantFor("alice", "developers")
		g.Session.Expires = expires
		return g
	})
	resp, err := fe.Client().Get(fe.URL + "/v1/kube/pi-1/api/v1/pods?watch=true")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	if l, err := r.ReadString('\n'); err != nil || !strings.Contains(l, "ADDED") {
		t.Fatalf("first event: %q, %v", l, err)
	}
	// The watch never sends more; it must end at the expiry.
	if _, err := io.Copy(io.Discard, r); time.Now().Before(expires) {
		t.Fatalf("watch ended before the certificate expired: %v", err)
	}
}

func TestUpgradeIsAuditedAsSession(t *testing.T) {
	dev := newFakeDevice(t)
	evs := events{added: make(chan struct{}, 4)}
	s := newServer(t, dev, nil, Config{Audit: evs.add, Logger: logtest.Logger(t)})
	fe := frontend(t, s, func(*http.Request) *broker.Grant { return grantFor("alice", "developers") })
	conn, err := net.Dial("tcp", strings.TrimPrefix(fe.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "POST /v1/kube/pi-1/api/v1/namespaces/default/pods/p/exec?command=sh HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("got %v %v, want 101", resp, err)
	}
	fmt.Fprint(conn, "ping")
	got := make([]byte, 4)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "ping" {
		t.Fatalf("echo: got %q, %v", got, err)
	}
	conn.Close()
	for range 2 {
		select {
		case <-evs.added:
		case <-time.After(10 * time.Second):
			t.Fatalf("got events %+v, want session start and end", evs.all())
		}
	}
	all := evs.all()
	if len(all) != 2 || all[0].Type != kubewire.EventSessionStart || all[1].Type != kubewire.EventSessionEnd ||
		all[1].Request.Subresource != "exec" || all[1].Request.Verb != "create" {
		t.Fatalf("got events %+v, want session start and end for pods/exec", all)
	}
}

func TestLocalCluster(t *testing.T) {
	var mu sync.Mutex
	var got http.Header
	api := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = r.Header.Clone()
		mu.Unlock()
		fmt.Fprint(w, `{"kind":"PodList"}`)
	}))
	t.Cleanup(api.Close)
	u, _ := url.Parse(api.URL)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "token"), []byte("sa-token\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "ca.crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: api.Certificate().Raw}), 0o600)
	env := map[string]string{"KUBERNETES_SERVICE_HOST": u.Hostname(), "KUBERNETES_SERVICE_PORT": u.Port()}
	if _, err := DetectLocal(dir, func(string) string { return "" }, "home", nil, nil); !errors.Is(err, ErrNotInCluster) {
		t.Fatalf("without the variables: got %v, want ErrNotInCluster", err)
	}
	if _, err := DetectLocal(t.TempDir(), func(k string) string { return env[k] }, "home", nil, nil); !errors.Is(err, ErrNotInCluster) {
		t.Fatalf("without a token: got %v, want ErrNotInCluster", err)
	}
	local, err := DetectLocal(dir, func(k string) string { return env[k] }, "home", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := newServer(t, newFakeDevice(t), nil, Config{Local: local, Logger: logtest.Logger(t)})
	fe := frontend(t, s, func(*http.Request) *broker.Grant {
		return &broker.Grant{Session: sessions.Session{Service: proto.ServiceKube, DeviceName: "home", User: "alice", KubeUser: "alice", KubeGroups: []string{"a", "b"}}}
	})
	req, _ := http.NewRequest("GET", fe.URL+"/v1/kube/home/api/v1/pods", nil)
	req.Header.Set("Impersonate-User", "admin")
	req.Header.Set("Authorization", "Bearer stolen")
	resp, err := fe.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	mu.Lock()
	defer mu.Unlock()
	if got.Get("Authorization") != "Bearer sa-token" || got.Get("Impersonate-User") != "alice" || !slices.Equal(got.Values("Impersonate-Group"), []string{"a", "b"}) {
		t.Errorf("API server got Authorization %q, Impersonate-User %q, groups %q; want the service account acting as alice in a, b",
			got.Get("Authorization"), got.Get("Impersonate-User"), got.Values("Impersonate-Group"))
	}
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name       string
		users      []string
		groups     []string
		hdr        http.Header
		wantUser   string
		wantGroups []string
		wantErr    string
	}{
		{"defaults to fleet name", nil, []string{"dev"}, http.Header{}, "alice", []string{"dev"}, ""},
		{"one allowed user", []string{"k-alice"}, []string{"dev"}, http.Header{}, "k-alice", []string{"dev"}, ""},
		{"several users need a pick", []string{"a", "b"}, nil, http.Header{}, "", nil, "pick one"},
		{"pick allowed user", []string{"a", "b"}, nil, http.Header{"Impersonate-User": {"b"}}, "b", nil, ""},
		{"as self without users", nil, []string{"dev"}, http.Header{"Impersonate-User": {"alice"}}, "alice", []string{"dev"}, ""},
		{"escalate user", nil, []string{"dev"}, http.Header{"Impersonate-User": {"admin"}}, "", nil, `not allow acting as Kubernetes user "admin"`},
		{"narrow groups", nil, []string{"dev", "ops"}, http.Header{"Impersonate-Group": {"ops"}}, "alice", []string{"ops"}, ""},
		{"escalate group", nil, []string{"dev"}, http.Header{"Impersonate-Group": {"dev", "system:masters"}}, "", nil, `"system:masters"`},
		{"uid refused", nil, []string{"dev"}, http.Header{"Impersonate-Uid": {"0"}}, "", nil, "Impersonate-Uid"},
		{"extra refused", nil, []string{"dev"}, http.Header{"Impersonate-Extra-Scopes": {"x"}}, "", nil, "Impersonate-Extra-Scopes"},
		{"two users", []string{"a", "b"}, nil, http.Header{"Impersonate-User": {"a", "b"}}, "", nil, "more than one"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, g, err := Resolve("alice", tt.users, tt.groups, tt.hdr)
			if tt.wantErr != "" {
				var r *Refusal
				if !errors.As(err, &r) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want a refusal containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || u != tt.wantUser || !slices.Equal(g, tt.wantGroups) {
				t.Fatalf("got %q %q %v, want %q %q", u, g, err, tt.wantUser, tt.wantGroups)
			}
		})
	}
}

func TestWatchEndsWhenClientLeaves(t *testing.T) {
	dev := newFakeDevice(t)
	evs := events{added: make(chan struct{}, 4)}
	s := newServer(t, dev, nil, Config{Audit: evs.add, Logger: logtest.Logger(t)})
	fe := frontend(t, s, func(*http.Request) *broker.Grant { return grantFor("alice", "developers") })
	resp, err := fe.Client().Get(fe.URL + "/v1/kube/pi-1/api/v1/pods?watch=true")
	if err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(resp.Body)
	if l, err := r.ReadString('\n'); err != nil || !strings.Contains(l, "ADDED") {
		t.Fatalf("first event: %q, %v", l, err)
	}
	resp.Body.Close()
	for range 2 {
		select {
		case <-evs.added:
		case <-time.After(10 * time.Second):
			t.Fatalf("the watch did not end when its client left: %+v", evs.all())
		}
	}
	all := evs.all()
	if all[0].Type != kubewire.EventSessionStart || all[1].Type != kubewire.EventSessionEnd || all[1].Request.Verb != "watch" || all[1].Kind != "watch" {
		t.Errorf("got %+v, want a watch session's start and end", all)
	}
}

func TestOfflineDeviceFailsFast(t *testing.T) {
	dev := newFakeDevice(t)
	var evs events
	dev.down.Store(true)
	s := newServer(t, dev, nil, Config{Audit: evs.add, Logger: logtest.Logger(t)})
	fe := frontend(t, s, func(*http.Request) *broker.Grant { return grantFor("alice", "developers") })
	resp, err := fe.Client().Get(fe.URL + "/v1/kube/pi-1/api/v1/pods")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || len(dev.opened()) != 0 {
		t.Errorf("got %s after %d stream opens, want 503 without opening a stream", resp.Status, len(dev.opened()))
	}
	if evs := evs.all(); len(evs) != 1 || evs[0].Code != http.StatusServiceUnavailable {
		t.Errorf("audit: %+v, want one 503 event", evs)
	}
}
