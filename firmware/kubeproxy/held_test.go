package kubeproxy

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/firmware/services"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/kubewire"
	"remoteler.dev/edge/proto/kubewire/kubewiretest"
)

// fakeTrail is the agent's audit trail as the proxy sees it: it keeps the
// events and recordings, or refuses events while failing.
type fakeTrail struct {
	mu      sync.Mutex
	evs     []*proto.AuditEvent
	recs    []*memRec
	failing bool
	noCtx   bool // a call lacked the stream's context
}

type ctxMark struct{}

func (f *fakeTrail) trail() services.Trail {
	return services.Trail{
		Audit: func(ctx context.Context, ev *proto.AuditEvent) error {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.noCtx = f.noCtx || ctx.Value(ctxMark{}) == nil
			if f.failing {
				return errors.New("audit queue full")
			}
			f.evs = append(f.evs, ev)
			return nil
		},
		Record: func(ctx context.Context, info services.SessionInfo) services.Recorder {
			f.mu.Lock()
			defer f.mu.Unlock()
			f.noCtx = f.noCtx || ctx.Value(ctxMark{}) == nil
			r := &memRec{info: info}
			f.recs = append(f.recs, r)
			return r
		},
	}
}

// types returns the events' types and codes, "type:code".
func (f *fakeTrail) types() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, ev := range f.evs {
		out = append(out, ev.Type+":"+ev.Fields["code"])
	}
	return out
}

func (f *fakeTrail) events() []*proto.AuditEvent {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*proto.AuditEvent(nil), f.evs...)
}

// memRec is a recording in memory.
type memRec struct {
	mu      sync.Mutex
	info    services.SessionInfo
	out, in []byte
	sizes   []string
	closed  bool
}

func (r *memRec) Output(p []byte) { r.mu.Lock(); r.out = append(r.out, p...); r.mu.Unlock() }
func (r *memRec) Input(p []byte)  { r.mu.Lock(); r.in = append(r.in, p...); r.mu.Unlock() }
func (r *memRec) Resize(c, rows int) {
	r.mu.Lock()
	r.sizes = append(r.sizes, fmt.Sprintf("%dx%d", c, rows))
	r.mu.Unlock()
}
func (r *memRec) Close() error { r.mu.Lock(); r.closed = true; r.mu.Unlock(); return nil }

// heldProxy is a proxy on f whose audit trail is ft.
func heldProxy(t *testing.T, f *fakeAPI, ft *fakeTrail) *Proxy {
	t.Helper()
	p := newProxy(t, writeKubeconfig(t, t.TempDir(), f, "tok"), nil)
	p.UseTrail(ft.trail())
	return p
}

// heldHeader is the header of a user-held kube stream of alice's session
// s1.
func heldHeader() *proto.StreamHeader {
	return &proto.StreamHeader{Service: proto.ServiceKube, SessionID: "s1", UserHeld: true, ClientAddr: "192.0.2.7:5000", Identity: alice}
}

// heldStream serves a user-held kube stream of alice's session s1 through
// a proxy on f with trail ft.
func heldStream(t *testing.T, f *fakeAPI, ft *fakeTrail) (*http.Client, *Proxy, context.CancelCauseFunc) {
	t.Helper()
	p := heldProxy(t, f, ft)
	c, _, cancel := streamWith(t, p, heldHeader())
	return c, p, cancel
}

func do(t *testing.T, c *http.Client, method, path string, hdr http.Header) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://kube"+path, strings.NewReader("{}"))
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestHeldRequestsAudited: every request of a user-held stream is audited
// on the device, as the fleet audits the ones it forwards: a read once
// answered, a change before and after, a watch at its start and end;
// each names the session and the user, and the events are kept through
// the stream's context (so the agent knows the session).
func TestHeldRequestsAudited(t *testing.T) {
	f := newFakeAPI(t)
	ft := &fakeTrail{}
	c, _, _ := heldStream(t, f, ft)
	if code, body := do(t, c, "GET", "/api/v1/namespaces/default/pods", nil); code != http.StatusOK || !strings.Contains(body, `"user":"alice"`) {
		t.Fatalf("GET = %d %s", code, body)
	}
	if code, _ := do(t, c, "POST", "/api/v1/namespaces/default/pods", nil); code != http.StatusOK {
		t.Fatalf("POST = %d", code)
	}
	close(f.release)
	if code, body := do(t, c, "GET", "/api/v1/namespaces/default/pods?watch=true", nil); code != http.StatusOK || !strings.Contains(body, "DELETED") {
		t.Fatalf("watch = %d %s", code, body)
	}
	want := []string{"kube.request:200", "kube.request.start:", "kube.request:200", "kube.session.start:", "kube.session.end:200"}
	if got := ft.types(); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("events %v, want %v", got, want)
	}
	for _, ev := range ft.events() {
		if ev.Session != "s1" || ev.User != "alice" || ev.Addr != "192.0.2.7:5000" || ev.Fields["kube_user"] != "alice" || ev.Fields["resource"] != "pods" {
			t.Errorf("event %+v, want alice's session s1 on pods", ev)
		}
	}
	if evs := ft.events(); evs[1].Fields["verb"] != "create" || evs[3].Fields["kind"] != "watch" {
		t.Errorf("verbs and kinds: %+v %+v", evs[1].Fields, evs[3].Fields)
	}
	if ft.noCtx {
		t.Error("the trail was called without the stream's context")
	}
}

// TestHeldImpersonation: a user-held stream acts as the session's
// Kubernetes user and groups only; asking for another is refused (and
// audited), never ignored; asking for the session's own is allowed.
func TestHeldImpersonation(t *testing.T) {
	tests := []struct {
		name string
		hdr  http.Header
		want int
	}{
		{"none", nil, http.StatusOK},
		{"the session's user", http.Header{"Impersonate-User": {"alice"}}, http.StatusOK},
		{"the session's groups", http.Header{"Impersonate-Group": {"viewers", "developers"}}, http.StatusOK},
		{"another user", http.Header{"Impersonate-User": {"admin"}}, http.StatusForbidden},
		{"fewer groups", http.Header{"Impersonate-Group": {"viewers"}}, http.StatusForbidden},
		{"another group", http.Header{"Impersonate-Group": {"system:masters", "developers", "viewers"}}, http.StatusForbidden},
		{"uid", http.Header{"Impersonate-Uid": {"0"}}, http.StatusForbidden},
		{"another user, in lower case", http.Header{"impersonate-user": {"admin"}}, http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeAPI(t)
			ft := &fakeTrail{}
			c, _, _ := heldStream(t, f, ft)
			code, body := do(t, c, "GET", "/api/v1/namespaces/default/pods", tt.hdr)
			if code != tt.want {
				t.Fatalf("got %d %s, want %d", code, body, tt.want)
			}
			pods, _ := f.counts()
			evs := ft.events()
			if len(evs) != 1 || evs[0].Type != kubewire.EventRequest || evs[0].Fields["code"] != fmt.Sprint(tt.want) {
				t.Fatalf("events %v, want one request with code %d", ft.types(), tt.want)
			}
			if tt.want == http.StatusForbidden {
				var st struct{ Kind, Message string }
				json.Unmarshal([]byte(body), &st)
				if pods != 0 || st.Kind != "Status" || st.Message == "" || evs[0].Outcome != proto.OutcomeDenied || evs[0].Message != st.Message {
					t.Errorf("refusal: cluster saw %d requests, answer %s, event %+v", pods, body, evs[0])
				}
			} else if !strings.Contains(body, `"groups":["developers","viewers"]`) {
				t.Errorf("the cluster saw %s, want the session's groups", body)
			}
		})
	}
}

// TestHeldRefusedUnaudited: when the trail refuses the event (the agent
// cannot keep it and refuses such actions), the request is refused with
// 503, and one that changes the cluster does not reach it; without a
// trail, nothing goes through.
func TestHeldRefusedUnaudited(t *testing.T) {
	f := newFakeAPI(t)
	ft := &fakeTrail{failing: true}
	c, _, _ := heldStream(t, f, ft)
	for _, method := range []string{"POST", "GET"} {
		code, body := do(t, c, method, "/api/v1/namespaces/default/pods", nil)
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "audit trail") {
			t.Errorf("%s = %d %s, want 503 saying why", method, code, body)
		}
	}
	if pods, _ := f.counts(); pods != 1 {
		t.Errorf("the cluster saw %d requests, want only the read (its answer held back)", pods)
	}
	// Without a trail at all, nothing goes through.
	f2 := newFakeAPI(t)
	p := newProxy(t, writeKubeconfig(t, t.TempDir(), f2, "tok"), nil)
	c2, _, _ := streamWith(t, p, &proto.StreamHeader{Service: proto.ServiceKube, SessionID: "s2", UserHeld: true, Identity: alice})
	if code, _ := do(t, c2, "GET", "/api/v1/namespaces/default/pods", nil); code != http.StatusServiceUnavailable {
		t.Errorf("without a trail: %d, want 503", code)
	}
	if pods, _ := f2.counts(); pods != 0 {
		t.Errorf("without a trail the cluster saw %d requests", pods)
	}
}

// TestHeldExecRecordedAndEnded: a kubectl exec -it on a user-held stream
// is recorded on the device (output, input, terminal size), and when the
// fleet ends the session the user's kubectl gets the reason on the error
// channel; the session's end is audited with it.
func TestHeldExecRecordedAndEnded(t *testing.T) {
	f := newFakeAPI(t)
	ft := &fakeTrail{}
	_, conn, end := streamWith(t, heldProxy(t, f, ft), heldHeader())
	c := kubewiretest.Upgrade(t, conn, "/api/v1/namespaces/default/pods/shell/exec?command=sh&stdin=true&stdout=true&tty=true")
	c.Resize(100, 40)
	c.Send(kubewire.ChStdin, "echo hi\r")
	c.WaitFor(t, kubewire.ChStdout, "ECHO HI\r")
	const why = "locked: laptop stolen"
	end(&services.Ended{Message: why})
	select {
	case <-c.Done:
	case <-time.After(10 * time.Second):
		t.Fatal("the exec did not end")
	}
	var st struct{ Status, Message string }
	if err := json.Unmarshal([]byte(c.Channel(kubewire.ChError)), &st); err != nil || st.Status != "Failure" || st.Message != why {
		t.Errorf("error channel %q (%v), want a Failure Status with the reason", c.Channel(kubewire.ChError), err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(ft.events()) < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	evs := ft.events()
	if len(evs) != 2 || evs[0].Type != kubewire.EventSessionStart || evs[1].Type != kubewire.EventSessionEnd ||
		evs[1].Message != why || evs[1].Fields["recorded"] != "true" || evs[1].Fields["kind"] != "exec" || evs[1].Fields["code"] != "101" {
		t.Fatalf("events %v (%+v), want the exec's start and its recorded end with the reason", ft.types(), evs)
	}
	ft.mu.Lock()
	recs := ft.recs
	ft.mu.Unlock()
	if len(recs) != 1 {
		t.Fatalf("%d recordings, want 1", len(recs))
	}
	r := recs[0]
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.info.Kind != "kube.exec" || r.info.Command != "sh" || !strings.Contains(string(r.out), "ECHO HI") || string(r.in) != "echo hi\r" ||
		strings.Join(r.sizes, ",") != "100x40" || !r.closed {
		t.Errorf("recording %+v out %q in %q sizes %v closed %v", r.info, r.out, r.in, r.sizes, r.closed)
	}
	if ft.noCtx {
		t.Error("the trail was called without the stream's context")
	}
}

// TestHeldWatchEndedWithTheReason: when the fleet ends a user-held
// session in the middle of a watch, the watch ends as an API server ends
// one it cannot go on with: an ERROR event whose Status says why (kubectl
// prints it), and the session's end is audited with the reason.
func TestHeldWatchEndedWithTheReason(t *testing.T) {
	f := newFakeAPI(t)
	t.Cleanup(func() { close(f.release) })
	ft := &fakeTrail{}
	c, _, end := streamWith(t, heldProxy(t, f, ft), heldHeader())
	resp, err := c.Get("http://kube/api/v1/namespaces/default/pods?watch=true")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	if line, err := r.ReadString('\n'); err != nil || !strings.Contains(line, "ADDED") {
		t.Fatalf("first event: %q, %v", line, err)
	}
	const why = "locked: laptop stolen"
	end(&services.Ended{Message: why})
	line, err := r.ReadString('\n')
	var ev struct {
		Type   string
		Object struct{ Status, Message string }
	}
	if err != nil || json.Unmarshal([]byte(line), &ev) != nil || ev.Type != "ERROR" || ev.Object.Status != "Failure" || ev.Object.Message != why {
		t.Fatalf("after the end: %q, %v; want an ERROR event with the reason", line, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(ft.events()) < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if evs := ft.events(); len(evs) != 2 || evs[1].Type != kubewire.EventSessionEnd || evs[1].Message != why || evs[1].Fields["kind"] != "watch" {
		t.Errorf("events %v, want the watch's start and its end with the reason", ft.types())
	}
}
