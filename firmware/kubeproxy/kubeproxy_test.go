package kubeproxy

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/kubewire/kubewiretest"
	"remoteler.dev/edge/tools/logtest"
	"remoteler.dev/edge/tools/pkitest"
)

// seen is what the fake API server received.
type seen struct {
	User          string   `json:"user"`
	Groups        []string `json:"groups"`
	Authorization string   `json:"authorization"`
	Others        []string `json:"others"` // other Impersonate-* headers
	Path          string   `json:"path"`
}

// fakeAPI is a TLS server standing in for the device's API server.
type fakeAPI struct {
	srv     *httptest.Server
	release chan struct{} // the watch's second event waits for it
	mu      sync.Mutex    // guards the counts below
	pods    int           // requests for the pods
	execs   int           // execs of the shell pod
}

// counts returns how many requests for the pods and execs of the shell
// pod reached f.
func (f *fakeAPI) counts() (pods, execs int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.pods, f.execs
}

func newFakeAPI(t *testing.T) *fakeAPI {
	t.Helper()
	f := &fakeAPI{release: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/namespaces/default/pods", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.pods++
		f.mu.Unlock()
		s := seen{User: r.Header.Get("Impersonate-User"), Groups: r.Header.Values("Impersonate-Group"),
			Authorization: r.Header.Get("Authorization"), Path: r.URL.Path}
		for k := range r.Header {
			if (strings.HasPrefix(strings.ToLower(k), "impersonate-") && k != "Impersonate-User" && k != "Impersonate-Group") ||
				strings.HasPrefix(k, "X-Remote-") {
				s.Others = append(s.Others, k)
			}
		}
		if r.URL.Query().Get("watch") == "true" {
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprintln(w, `{"type":"ADDED"}`)
			w.(http.Flusher).Flush()
			<-f.release
			fmt.Fprintln(w, `{"type":"DELETED"}`)
			return
		}
		json.NewEncoder(w).Encode(s)
	})
	mux.HandleFunc("/api/v1/namespaces/default/pods/p/exec", func(w http.ResponseWriter, r *http.Request) {
		up := r.Header.Get("Upgrade")
		if r.Header.Get("Impersonate-User") == "" || up == "" {
			http.Error(w, "want an impersonated upgrade", http.StatusBadRequest)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n", up)
		if key := r.Header.Get("Sec-WebSocket-Key"); key != "" {
			sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
			fmt.Fprintf(brw, "Sec-WebSocket-Accept: %s\r\n", base64.StdEncoding.EncodeToString(sum[:]))
		}
		fmt.Fprint(brw, "\r\n")
		brw.Flush()
		// Echo, upper-cased, so a reply cannot be the request looped back.
		buf := make([]byte, 4096)
		for {
			n, err := brw.Read(buf)
			if n > 0 {
				conn.Write([]byte(strings.ToUpper(string(buf[:n]))))
			}
			if err != nil {
				return
			}
		}
	})
	// A terminal over a remote command WebSocket, for the recordings.
	mux.HandleFunc("/api/v1/namespaces/default/pods/shell/exec", func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.execs++
		f.mu.Unlock()
		kubewiretest.FakeExec(w, r)
	})
	f.srv = httptest.NewUnstartedServer(mux)
	f.srv.EnableHTTP2 = false
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// writeKubeconfig writes a token kubeconfig for f and returns its path.
func writeKubeconfig(t *testing.T, dir string, f *fakeAPI, token string) string {
	t.Helper()
	path := filepath.Join(dir, "k3s.yaml")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: default
  cluster:
    server: %s
    certificate-authority-data: %s
contexts:
- name: default
  context: {cluster: default, user: default}
current-context: default
users:
- name: default
  user:
    token: %s
`, f.srv.URL, base64.StdEncoding.EncodeToString(pemCert(f.srv.Certificate().Raw)), token)
	if err := os.WriteFile(path, []byte(kc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// stream serves one kube stream for identity id through p and returns an
// HTTP client whose single connection is that stream.
func stream(t *testing.T, p *Proxy, id proto.Identity) (*http.Client, net.Conn) {
	t.Helper()
	c, conn, _ := streamWith(t, p, &proto.StreamHeader{Service: proto.ServiceKube, SessionID: "s1", Identity: id})
	return c, conn
}

// streamWith serves the kube stream h through p, and returns an HTTP
// client whose single connection is that stream, the connection, and a
// function that ends the stream's context with a cause (as the agent does
// when the fleet ends the session).
func streamWith(t *testing.T, p *Proxy, h *proto.StreamHeader) (*http.Client, net.Conn, context.CancelCauseFunc) {
	t.Helper()
	agentSide, fleetSide := net.Pipe()
	// The agent's stream context, marked so the trail can tell it.
	ctx, cancel := context.WithCancelCause(context.WithValue(context.Background(), ctxMark{}, true))
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.ServeStream(ctx, h, agentSide)
	}()
	t.Cleanup(func() {
		cancel(nil)
		<-done
	})
	var once sync.Once
	tr := &http.Transport{DialContext: func(context.Context, string, string) (net.Conn, error) {
		var c net.Conn
		once.Do(func() { c = fleetSide })
		if c == nil {
			return nil, fmt.Errorf("the stream was used already")
		}
		return c, nil
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}, fleetSide, cancel
}

func newProxy(t *testing.T, kubeconfig string, now func() time.Time) *Proxy {
	t.Helper()
	p, err := New(Config{Kubeconfig: kubeconfig, Logger: logtest.Logger(t), Now: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

var alice = proto.Identity{User: "alice", KubeUser: "alice", KubeGroups: []string{"developers", "viewers"}}

func TestImpersonationFromStreamHeaderOnly(t *testing.T) {
	f := newFakeAPI(t)
	p := newProxy(t, writeKubeconfig(t, t.TempDir(), f, "device-admin-token"), nil)
	c, _ := stream(t, p, alice)
	req, _ := http.NewRequest("GET", "http://kube/api/v1/namespaces/default/pods", nil)
	req.Header.Set("Impersonate-User", "admin")
	req.Header.Add("Impersonate-Group", "system:masters")
	req.Header.Set("Impersonate-Uid", "0")
	req.Header.Set("Impersonate-Extra-Scopes", "all")
	req.Header["impersonate-user"] = []string{"root"} // not canonical
	req.Header.Set("Authorization", "Bearer stolen-token")
	req.Header.Set("X-Remote-User", "admin")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got seen
	if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	want := seen{User: "alice", Groups: []string{"developers", "viewers"}, Authorization: "Bearer device-admin-token", Path: "/api/v1/namespaces/default/pods"}
	if got.User != want.User || !slices.Equal(got.Groups, want.Groups) || got.Authorization != want.Authorization || len(got.Others) > 0 || got.Path != want.Path {
		t.Errorf("API server saw %+v, want %+v", got, want)
	}
}

func TestRefusesStreamWithoutKubeUser(t *testing.T) {
	f := newFakeAPI(t)
	p := newProxy(t, writeKubeconfig(t, t.TempDir(), f, "tok"), nil)
	c, _ := stream(t, p, proto.Identity{User: "alice", KubeGroups: []string{"developers"}})
	resp, err := c.Get("http://kube/api/v1/namespaces/default/pods")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct{ Kind, Reason string }
	json.NewDecoder(resp.Body).Decode(&st)
	if resp.StatusCode != http.StatusForbidden || st.Kind != "Status" || st.Reason != "Forbidden" {
		t.Errorf("got %d %+v, want 403 and a Forbidden Status", resp.StatusCode, st)
	}
}

func TestWatchEventsFlowAtOnce(t *testing.T) {
	f := newFakeAPI(t)
	p := newProxy(t, writeKubeconfig(t, t.TempDir(), f, "tok"), nil)
	c, _ := stream(t, p, alice)
	resp, err := c.Get("http://kube/api/v1/namespaces/default/pods?watch=true")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	// The first event must arrive while the server still holds the second.
	line, err := r.ReadString('\n')
	if err != nil || !strings.Contains(line, "ADDED") {
		t.Fatalf("first event: got %q, %v", line, err)
	}
	close(f.release)
	line, err = r.ReadString('\n')
	if err != nil || !strings.Contains(line, "DELETED") {
		t.Fatalf("second event: got %q, %v", line, err)
	}
}

func TestUpgradesPassThrough(t *testing.T) {
	tests := []struct {
		name    string
		headers string
	}{
		{"spdy", "Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n"},
		{"websocket", "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeAPI(t)
			p := newProxy(t, writeKubeconfig(t, t.TempDir(), f, "tok"), nil)
			_, conn := stream(t, p, alice)
			fmt.Fprintf(conn, "POST /api/v1/namespaces/default/pods/p/exec?command=sh HTTP/1.1\r\nHost: kube\r\nConnection: Upgrade\r\n%s\r\n", tt.headers)
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusSwitchingProtocols {
				b, _ := io.ReadAll(resp.Body)
				t.Fatalf("got %s %s, want 101", resp.Status, b)
			}
			for _, msg := range []string{"hello", "second message"} {
				if _, err := conn.Write([]byte(msg)); err != nil {
					t.Fatal(err)
				}
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(br, got); err != nil {
					t.Fatal(err)
				}
				if want := strings.ToUpper(msg); string(got) != want {
					t.Errorf("got %q, want %q", got, want)
				}
			}
		})
	}
}

func TestReloadsChangedKubeconfig(t *testing.T) {
	f := newFakeAPI(t)
	dir := t.TempDir()
	path := writeKubeconfig(t, dir, f, "old-token")
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	p := newProxy(t, path, clock)
	writeKubeconfig(t, dir, f, "new-token-that-is-longer")
	mu.Lock()
	now = now.Add(time.Minute)
	mu.Unlock()
	c, _ := stream(t, p, alice)
	resp, err := c.Get("http://kube/api/v1/namespaces/default/pods")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got seen
	json.NewDecoder(resp.Body).Decode(&got)
	if want := "Bearer new-token-that-is-longer"; got.Authorization != want {
		t.Errorf("got Authorization %q, want %q", got.Authorization, want)
	}
}

func TestNewFailsWithoutKubeconfig(t *testing.T) {
	_, err := New(Config{Kubeconfig: filepath.Join(t.TempDir(), "missing.yaml")})
	if err == nil || !strings.Contains(err.Error(), "kubeproxy") {
		t.Fatalf("got %v, want a kubeproxy error", err)
	}
}

func TestParseKubeconfig(t *testing.T) {
	dir := t.TempDir()
	certPEM, keyPEM := pkitest.PEM(t, pkitest.NewCA(t).Client(t, "system:admin"))
	os.WriteFile(filepath.Join(dir, "client.crt"), certPEM, 0o600)
	os.WriteFile(filepath.Join(dir, "client.key"), keyPEM, 0o600)
	os.WriteFile(filepath.Join(dir, "ca.crt"), certPEM, 0o600)
	os.WriteFile(filepath.Join(dir, "token"), []byte("file-token\n"), 0o600)
	b64 := func(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
	k3s := fmt.Sprintf(`apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: %s
    server: https://127.0.0.1:6443
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {}
users:
- name: default
  user:
    client-certificate-data: %s
    client-key-data: %s
`, b64(certPEM), b64(certPEM), b64(keyPEM))
	files := `clusters:
- name: c
  cluster: {server: "https://10.0.0.1:6443", certificate-authority: ca.crt, tls-server-name: kubernetes}
contexts:
- name: only
  context: {cluster: c, user: u}
users:
- name: u
  user: {client-certificate: client.crt, client-key: client.key, tokenFile: token}
`
	tests := []struct {
		name       string
		kc         string
		wantErr    string
		wantServer string
		wantSNI    string
		wantCert   bool
		wantToken  string
	}{
		{"k3s", k3s, "", "https://127.0.0.1:6443", "127.0.0.1", true, ""},
		{"relative files, single context", files, "", "https://10.0.0.1:6443", "kubernetes", true, "file-token"},
		{"basic", `clusters: [{name: c, cluster: {server: "https://h:1", insecure-skip-tls-verify: true}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
users: [{name: u, user: {username: admin, password: pw}}]`, "", "https://h:1", "h", false, ""},
		{"not yaml", "{[", "decode", "", "", false, ""},
		{"no context", "clusters: []", "not exactly one context", "", "", false, ""},
		{"unknown current", "current-context: nope\ncontexts: [{name: x}]", `no context "nope"`, "", "", false, ""},
		{"unknown cluster", "contexts: [{name: x, context: {cluster: c, user: u}}]", "no known cluster", "", "", false, ""},
		{"plain http", `clusters: [{name: c, cluster: {server: "http://h:1"}}]
contexts: [{name: x, context: {cluster: c, user: u}}]`, "not https", "", "", false, ""},
		{"exec plugin", `clusters: [{name: c, cluster: {server: "https://h:1"}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
users: [{name: u, user: {exec: {command: aws}}}]`, "exec or auth-provider", "", "", false, ""},
		{"no credentials", `clusters: [{name: c, cluster: {server: "https://h:1"}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
users: [{name: u, user: {}}]`, "no client certificate, token", "", "", false, ""},
		{"bad base64", `clusters: [{name: c, cluster: {server: "https://h:1", certificate-authority-data: "!!"}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
users: [{name: u, user: {token: t}}]`, "bad base64", "", "", false, ""},
		{"token with newline", `clusters: [{name: c, cluster: {server: "https://h:1"}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
users: [{name: u, user: {token: "a\nb"}}]`, "line break", "", "", false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseKubeconfig([]byte(tt.kc), dir)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Server.String() != tt.wantServer || got.TLS.ServerName != tt.wantSNI ||
				(len(got.TLS.Certificates) > 0) != tt.wantCert || got.Token != tt.wantToken {
				t.Errorf("got server %s sni %q cert %v token %q, want %s %q %v %q", got.Server, got.TLS.ServerName,
					len(got.TLS.Certificates) > 0, got.Token, tt.wantServer, tt.wantSNI, tt.wantCert, tt.wantToken)
			}
			if !slices.Equal(got.TLS.NextProtos, []string{"http/1.1"}) {
				t.Errorf("got ALPN %q, want http/1.1 only", got.TLS.NextProtos)
			}
		})
	}
}

func FuzzParseKubeconfig(f *testing.F) {
	f.Add([]byte("clusters: [{name: c, cluster: {server: \"https://h:1\"}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {token: t}}]"))
	f.Add([]byte("current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]"))
	f.Add([]byte("{"))
	// File references resolve inside an empty directory.
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		tg, err := ParseKubeconfig(data, dir)
		if err == nil && (tg.Server == nil || tg.TLS == nil) {
			t.Fatalf("accepted %q without a server or TLS config", data)
		}
	})
}
