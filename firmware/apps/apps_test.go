package apps

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/tools/logtest"
)

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		apps    []App
		wantErr string
	}{
		{"none", nil, ""},
		{"two", []App{{Name: "nodered", URI: "http://127.0.0.1:1880"}, {Name: "router", URI: "https://192.168.1.1", InsecureSkipVerify: true}}, ""},
		{"twice", []App{{Name: "a", URI: "http://127.0.0.1:1"}, {Name: "a", URI: "http://127.0.0.1:2"}}, "declared twice"},
		{"bad name", []App{{Name: "Node Red", URI: "http://127.0.0.1:1"}}, "app name"},
		{"path", []App{{Name: "a", URI: "http://127.0.0.1:1/admin"}}, "only scheme://host[:port]"},
		{"scheme", []App{{Name: "a", URI: "ftp://127.0.0.1"}}, "http or https"},
		{"skip verify on http", []App{{Name: "a", URI: "http://127.0.0.1:1", InsecureSkipVerify: true}}, "https URIs only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(Config{Apps: tt.apps})
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("got %v, want accepted", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("got %v, want an error with %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseFlag(t *testing.T) {
	tests := []struct {
		name, v string
		want    string // fmt of the App, or the error
	}{
		{"plain", "nodered=http://127.0.0.1:1880", "nodered http://127.0.0.1:1880 false map[]"},
		{"options", "router=https://192.168.1.1,insecure-skip-verify,label:team=ops,label:env=prod", "router https://192.168.1.1 true map[env:prod team:ops]"},
		{"no uri", "nodered", "want NAME=URI"},
		{"bad option", "a=http://127.0.0.1,verify=no", `unknown option "verify=no"`},
		{"bad label", "a=http://127.0.0.1,label:x", "not label:KEY=VALUE"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := ParseFlag(tt.v)
			got := fmt.Sprintf("%s %s %v %v", a.Name, a.URI, a.InsecureSkipVerify, a.Labels)
			if err != nil {
				got = err.Error()
			}
			if !strings.Contains(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// roundTrip serves one stream for app with s and sends req down it, as
// the fleet does, returning the answer.
func roundTrip(t *testing.T, s *Service, app string, req *http.Request) *http.Response {
	t.Helper()
	h := &proto.StreamHeader{Service: proto.ServiceApp, Target: app, SessionID: "s1", Identity: proto.Identity{User: "alice"}}
	if err := s.Check(h); err != nil {
		t.Fatalf("check: %v", err)
	}
	fleet, dev := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(context.Background(), h, dev)
	}()
	t.Cleanup(func() {
		fleet.Close()
		<-done
	})
	fleet.SetDeadline(time.Now().Add(30 * time.Second))
	go req.Write(fleet)
	resp, err := http.ReadResponse(bufio.NewReader(fleet), req)
	if err != nil {
		t.Fatalf("read the answer: %v", err)
	}
	return resp
}

func body(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestServe(t *testing.T) {
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "plain %s %s", r.Host, r.URL.Path)
	}))
	t.Cleanup(plain.Close)
	selfSigned := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "tls %s", r.Proto)
	}))
	t.Cleanup(selfSigned.Close)
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedAddr := closed.Addr().String()
	closed.Close()
	s, err := New(Config{Logger: logtest.Logger(t), Apps: []App{
		{Name: "plain", URI: plain.URL},
		{Name: "vendor", URI: selfSigned.URL, InsecureSkipVerify: true},
		{Name: "strict", URI: selfSigned.URL},
		{Name: "down", URI: "http://" + closedAddr},
	}})
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string) *http.Request {
		req, _ := http.NewRequest("GET", "http://app"+path, nil)
		return req
	}
	tests := []struct {
		name, app  string
		wantStatus int
		wantBody   string
	}{
		{"http app", "plain", 200, "plain app /x"},
		{"self-signed, opted in", "vendor", 200, "tls HTTP/1.1"},
		{"self-signed, not opted in", "strict", 502, "set insecure_skip_verify for this app"},
		{"app down", "down", 502, `the app "down" on this device`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := roundTrip(t, s, tt.app, get("/x"))
			if got := body(t, resp); resp.StatusCode != tt.wantStatus || !strings.Contains(got, tt.wantBody) {
				t.Errorf("got %d %q, want %d with %q", resp.StatusCode, got, tt.wantStatus, tt.wantBody)
			}
		})
	}
	// Only declared apps: the fleet cannot name anything else.
	h := &proto.StreamHeader{Service: proto.ServiceApp, Target: "elsewhere", Identity: proto.Identity{User: "alice"}}
	if err := s.Check(h); err == nil || !strings.Contains(err.Error(), `declares no app "elsewhere"`) {
		t.Errorf("a stream for an undeclared app: %v", err)
	}
	var hello proto.Hello
	s.Hello(&hello)
	if len(hello.Apps) != 4 || hello.Apps[0].Name != "plain" {
		t.Errorf("hello apps %+v, want the four declared", hello.Apps)
	}
}
