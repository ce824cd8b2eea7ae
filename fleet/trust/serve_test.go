package trust

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/logtest"
)

// TestCheck: a root may only send its users' requests to this fleet's
// API (service "cluster", no target), for a user of its own, without
// deciding logins or Kubernetes users: it can never make this fleet dial
// a device or an address.
func TestCheck(t *testing.T) {
	u := &uplink{name: "root"}
	user := proto.Identity{User: "alice", Cluster: "root", Roles: []string{"admin"}}
	tests := []struct {
		name string
		h    proto.StreamHeader
		want string // "" accepts
	}{
		{"a user's request", proto.StreamHeader{Service: proto.ServiceCluster, SessionID: "s1", Identity: user}, ""},
		{"the root's admin", proto.StreamHeader{Service: proto.ServiceCluster, SessionID: "s1",
			Identity: proto.Identity{User: "admin:root", Cluster: "root", Admin: true}}, ""},
		{"ssh", proto.StreamHeader{Service: proto.ServiceSSH, Target: "root", Identity: user}, `not "ssh"`},
		{"kube", proto.StreamHeader{Service: proto.ServiceKube, Identity: user}, `not "kube"`},
		{"app", proto.StreamHeader{Service: proto.ServiceApp, Target: "http://127.0.0.1:80", Identity: user}, `not "app"`},
		{"no service", proto.StreamHeader{Identity: user}, `not ""`},
		{"an unknown service", proto.StreamHeader{Service: "tcp", Target: "127.0.0.1:22", Identity: user}, `not "tcp"`},
		{"a target", proto.StreamHeader{Service: proto.ServiceCluster, Target: "127.0.0.1:22", Identity: user}, "names no target"},
		{"nobody", proto.StreamHeader{Service: proto.ServiceCluster, Identity: proto.Identity{Cluster: "root"}}, "vouched for nobody"},
		{"another cluster's user", proto.StreamHeader{Service: proto.ServiceCluster,
			Identity: proto.Identity{User: "alice", Cluster: "other"}}, `vouched for a user of "other"`},
		{"a login", proto.StreamHeader{Service: proto.ServiceCluster,
			Identity: proto.Identity{User: "alice", Cluster: "root", Login: "root"}}, "the leaf does"},
		{"a Kubernetes user", proto.StreamHeader{Service: proto.ServiceCluster,
			Identity: proto.Identity{User: "alice", Cluster: "root", KubeUser: "system:admin"}}, "the leaf does"},
		{"Kubernetes groups", proto.StreamHeader{Service: proto.ServiceCluster,
			Identity: proto.Identity{User: "alice", Cluster: "root", KubeGroups: []string{"system:masters"}}}, "the leaf does"},
		{"user CA keys", proto.StreamHeader{Service: proto.ServiceCluster,
			Identity: proto.Identity{User: "alice", Cluster: "root", UserCAKeys: [][]byte{{1}}}}, "the leaf does"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := u.check(&tt.h)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("check = %v; want accepted", err)
				}
				return
			}
			pe, ok := err.(*proto.Error)
			if !ok || pe.Code != proto.CodeForbidden || !strings.Contains(pe.Message, tt.want) {
				t.Fatalf("check = %v; want forbidden saying %q", err, tt.want)
			}
		})
	}
}

// TestServeStream: a root's stream reaches this fleet's API with the
// caller the root vouched for (CallerFrom) and the user's address; the
// stream's handler returns once the API is done with it.
func TestServeStream(t *testing.T) {
	type seen struct {
		Caller *Caller
		OK     bool
		Remote string
	}
	api := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := CallerFrom(r.Context())
		json.NewEncoder(w).Encode(seen{Caller: c, OK: ok, Remote: r.RemoteAddr})
	})
	s := New(Config{Cluster: "leaf", Handler: api, Logger: logtest.Logger(t)})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() { defer close(served); s.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-served })

	u := &uplink{s: s, name: "root", streams: map[string]*streamConn{}}
	id := proto.Identity{User: "alice", Cluster: "root", Roles: []string{"site-north"}, Expires: time.Now().Add(time.Hour).UnixMilli()}
	tests := []struct {
		name       string
		clientAddr string
		wantRemote string
	}{
		{"with the user's address", "127.0.0.1:5555", "127.0.0.1:5555"},
		{"without one", "", "pipe"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rootEnd, leafEnd := net.Pipe()
			defer rootEnd.Close()
			h := &proto.StreamHeader{Service: proto.ServiceCluster, SessionID: "via-1", Identity: id, ClientAddr: tt.clientAddr}
			handled := make(chan struct{})
			go func() { defer close(handled); s.handle(ctx, u, h, leafEnd) }()
			fmt.Fprint(rootEnd, "GET /v1/whoami HTTP/1.1\r\nHost: leaf\r\nConnection: close\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(rootEnd), nil)
			if err != nil {
				t.Fatal(err)
			}
			var got seen
			err = json.NewDecoder(resp.Body).Decode(&got)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if !got.OK || got.Caller.Root != "root" || got.Caller.Via != "via-1" || got.Caller.Identity.User != "alice" ||
				got.Caller.Identity.Roles[0] != "site-north" || !got.Caller.Expires().Equal(time.UnixMilli(id.Expires)) {
				t.Errorf("the API saw caller %+v (ok %v); want alice of root via via-1", got.Caller, got.OK)
			}
			if got.Remote != tt.wantRemote {
				t.Errorf("the API saw the remote address %q; want %q", got.Remote, tt.wantRemote)
			}
			select {
			case <-handled:
			case <-time.After(time.Minute):
				t.Fatal("the stream's handler did not return once the API closed the connection")
			}
			u.mu.Lock()
			n := len(u.streams)
			u.mu.Unlock()
			if n != 0 {
				t.Errorf("%d streams still listed after they ended", n)
			}
		})
	}

	t.Run("a request of this fleet's own has no caller", func(t *testing.T) {
		w := httptest.NewRecorder()
		api.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/v1/whoami", nil))
		var got seen
		json.NewDecoder(w.Body).Decode(&got)
		if got.OK || got.Caller != nil {
			t.Errorf("CallerFrom found %+v in a request that came from no root", got.Caller)
		}
	})
	t.Run("the service stops", func(t *testing.T) {
		rootEnd, leafEnd := net.Pipe()
		defer rootEnd.Close()
		sctx, scancel := context.WithCancel(ctx)
		handled := make(chan struct{})
		h := &proto.StreamHeader{Service: proto.ServiceCluster, SessionID: "via-2", Identity: id}
		go func() { defer close(handled); s.handle(sctx, u, h, leafEnd) }()
		// A request in flight, then the uplink goes away.
		fmt.Fprint(rootEnd, "GET /v1/whoami HTTP/1.1\r\nHost: leaf\r\n\r\n")
		if _, err := http.ReadResponse(bufio.NewReader(rootEnd), nil); err != nil {
			t.Fatal(err)
		}
		scancel()
		select {
		case <-handled:
		case <-time.After(time.Minute):
			t.Fatal("the stream's handler outlived its uplink")
		}
		if _, err := rootEnd.Read(make([]byte, 1)); err != io.EOF {
			t.Errorf("the root's end reads %v; want io.EOF (the stream closed)", err)
		}
	})
}

// FuzzRecord feeds a stored trust (disk bytes) to what reads it: decode
// takes it or leaves it, and a taken one gives a TLS config or an error,
// never a panic.
func FuzzRecord(f *testing.F) {
	good, _ := json.Marshal(record{Name: "root", Spec: api.TrustedClusterSpec{RootAddr: "127.0.0.1:1"}, Key: []byte{1}, Cert: []byte{2}, CACerts: [][]byte{{3}}})
	f.Add(good)
	f.Add([]byte(`{"name":"root","spec":{"root_addr":"nohost"}}`))
	f.Add([]byte(`{"name":""}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := decode(b)
		if r == nil {
			return
		}
		if r.Name == "" {
			t.Fatal("decode took a trust without a name")
		}
		u := &uplink{name: r.Name}
		u.rec.Store(r)
		if c, err := u.tlsConfig(); err == nil && (len(c.Certificates) != 1 || c.Certificates[0].Leaf == nil || c.RootCAs == nil) {
			t.Fatalf("tlsConfig gave %+v without an error", c)
		}
	})
}
