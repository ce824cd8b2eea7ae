package kubesrv

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/asciicast"
	"remoteler.dev/edge/proto/kubewire"
	"remoteler.dev/edge/proto/kubewire/kubewiretest"
	"remoteler.dev/edge/tools/logtest"
)

// memRecordings keeps recordings in memory.
type memRecordings struct {
	mu   sync.Mutex
	recs map[string]*memRecording
}

type memRecording struct {
	meta   proto.RecordingMeta
	device string
	buf    bytes.Buffer
	closed bool
}

func (m *memRecordings) Create(deviceID, id string, meta proto.RecordingMeta) (io.WriteCloser, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.recs == nil {
		m.recs = map[string]*memRecording{}
	}
	r := &memRecording{meta: meta, device: deviceID}
	m.recs[id] = r
	return memWriter{m, r}, nil
}

type memWriter struct {
	m *memRecordings
	r *memRecording
}

func (w memWriter) Write(p []byte) (int, error) {
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	return w.r.buf.Write(p)
}

func (w memWriter) Close() error {
	w.m.mu.Lock()
	defer w.m.mu.Unlock()
	w.r.closed = true
	return nil
}

func TestAuditFailsClosed(t *testing.T) {
	dev := newFakeDevice(t)
	var evs events
	s := newServer(t, dev, nil, Config{Audit: evs.add, Logger: logtest.Logger(t)})
	fe := frontend(t, s, func(*http.Request) *broker.Grant { return grantFor("alice", "developers") })
	evs.fail.Store(true)
	for _, tc := range []struct {
		name, method, path string
		forwarded          bool // the cluster sees it (a read: its answer is what is held back)
	}{
		{"read", "GET", "/api/v1/namespaces/default/pods", true},
		{"create", "POST", "/api/v1/namespaces/default/configmaps", false},
		{"delete", "DELETE", "/api/v1/namespaces/default/configmaps/c1", false},
		{"watch", "GET", "/api/v1/pods?watch=true", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(dev.opened())
			req, _ := http.NewRequest(tc.method, fe.URL+"/v1/kube/pi-1"+tc.path, strings.NewReader("{}"))
			resp, err := fe.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var st struct{ Kind, Message string }
			json.NewDecoder(resp.Body).Decode(&st)
			if resp.StatusCode != http.StatusServiceUnavailable || st.Kind != "Status" || !strings.Contains(st.Message, "cannot write its audit log") {
				t.Errorf("got %s %+v, want a 503 Status about the audit log", resp.Status, st)
			}
			if opened := len(dev.opened()) > before; opened && !tc.forwarded {
				t.Errorf("the request reached the device although it could not be recorded")
			}
		})
	}
	evs.fail.Store(false)
	resp, err := fe.Client().Get(fe.URL + "/v1/kube/pi-1/api/v1/namespaces/default/pods")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("once the audit log works again: %s, want 200", resp.Status)
	}
}

func TestMutationIsRecordedBeforeAndAfter(t *testing.T) {
	dev := newFakeDevice(t)
	evs := events{added: make(chan struct{}, 4)}
	s := newServer(t, dev, nil, Config{Audit: evs.add, Logger: logtest.Logger(t)})
	fe := frontend(t, s, func(*http.Request) *broker.Grant { return grantFor("alice", "developers") })
	resp, err := fe.Client().Post(fe.URL+"/v1/kube/pi-1/api/v1/namespaces/team/configmaps", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	all := evs.all()
	if len(all) != 2 || all[0].Type != kubewire.EventRequestStart || all[1].Type != kubewire.EventRequest || all[1].Code != 200 ||
		all[1].Request.Verb != "create" || all[1].Request.Namespace != "team" {
		t.Errorf("got %+v, want the request's start and its answer, both recorded before the answer came", all)
	}
}

func TestWatchEndedByTheRegistry(t *testing.T) {
	dev := newFakeDevice(t)
	reg := sessions.New(sessions.Config{})
	t.Cleanup(reg.Close)
	evs := events{added: make(chan struct{}, 4)}
	s := newServer(t, dev, reg, Config{Audit: evs.add, Logger: logtest.Logger(t)})
	fe := frontend(t, s, func(*http.Request) *broker.Grant { return grantFor("alice", "developers") })
	resp, err := fe.Client().Get(fe.URL + "/v1/kube/pi-1/api/v1/pods?watch=true")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	if l, err := r.ReadString('\n'); err != nil || !strings.Contains(l, "ADDED") {
		t.Fatalf("first event: %q, %v", l, err)
	}
	live := reg.List(sessions.Filter{User: "alice"})
	if len(live) != 1 || live[0].Kind != "watch" || live[0].DeviceName != "pi-1" || live[0].KubeUser != "alice" {
		t.Fatalf("live sessions %+v, want alice's watch on pi-1", live)
	}
	const why = `access changed: role "no-kube" denies Kubernetes access on device "pi-1"`
	if n := reg.End(func(*sessions.Session) bool { return true }, why); n != 1 {
		t.Fatalf("ended %d sessions, want 1", n)
	}
	l, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("after the end: %q, %v; want an ERROR event", l, err)
	}
	var ev struct {
		Type   string
		Object struct{ Kind, Status, Message string }
	}
	if err := json.Unmarshal([]byte(l), &ev); err != nil || ev.Type != "ERROR" || ev.Object.Kind != "Status" || ev.Object.Message != why {
		t.Errorf("last event %q (%v), want an ERROR with a Status saying why", l, err)
	}
	if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
		t.Errorf("after the ERROR event: %q, %v; want a clean end", rest, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(reg.List(sessions.Filter{})) != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if end, ok := reg.Ended(live[0].ID); !ok || !end.Ended || end.Reason != why {
		t.Errorf("Ended = %+v %v, want ended with the reason", end, ok)
	}
}

func TestExecRecordedAndEndedWithStatus(t *testing.T) {
	dev := newFakeDevice(t)
	reg := sessions.New(sessions.Config{})
	t.Cleanup(reg.Close)
	evs := events{added: make(chan struct{}, 8)}
	recs := &memRecordings{}
	s := newServer(t, dev, reg, Config{Audit: evs.add, Recordings: recs, Logger: logtest.Logger(t)})
	fe := frontend(t, s, func(*http.Request) *broker.Grant {
		g := grantFor("alice", "developers")
		g.Session.RecordInput = true
		return g
	})
	path := "/v1/kube/pi-1/api/v1/namespaces/team/pods/p/exec?command=sh&stdin=true&stdout=true&tty=true"
	c := kubewiretest.DialExec(t, strings.TrimPrefix(fe.URL, "http://"), path)
	c.Resize(100, 40)
	c.Send(kubewire.ChStdin, "echo hi\r")
	c.WaitFor(t, kubewire.ChStdout, "ECHO HI\r")
	const why = "your fleet certificate expired at 2026-12-06T10:00:00Z: run tsh login"
	reg.End(func(s *sessions.Session) bool { return s.Kind == "exec" }, why)
	select {
	case <-c.Done:
	case <-time.After(10 * time.Second):
		t.Fatal("the exec did not end")
	}
	var st struct{ Kind, Status, Message string }
	if err := json.Unmarshal([]byte(c.Channel(kubewire.ChError)), &st); err != nil || st.Status != "Failure" || st.Message != why {
		t.Errorf("error channel %q (%v), want a Failure Status with the reason", c.Channel(kubewire.ChError), err)
	}
	// The end event is written as the handler returns.
	deadline := time.Now().Add(10 * time.Second)
	var ended *kubewire.Event
	for ended == nil && time.Now().Before(deadline) {
		for _, ev := range evs.all() {
			if ev.Type == kubewire.EventSessionEnd {
				ended = &ev
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if ended == nil || ended.Reason != why || !ended.Recorded || ended.Kind != "exec" {
		t.Fatalf("end event %+v, want a recorded exec ended with the reason", ended)
	}
	recs.mu.Lock()
	rec := recs.recs[ended.Session]
	recs.mu.Unlock()
	if rec == nil || !rec.closed || rec.device != "dev1" || rec.meta.User != "alice" || rec.meta.Kind != "kube.exec" {
		t.Fatalf("recording %+v, want alice's closed exec recording on dev1", rec)
	}
	sum, err := asciicast.ReadAll(bytes.NewReader(rec.buf.Bytes()))
	if err != nil {
		t.Fatalf("recording does not parse: %v\n%s", err, rec.buf.String())
	}
	if !strings.Contains(string(sum.Output), "ECHO HI") || string(sum.Input) != "echo hi\r" || !strings.Contains(rec.buf.String(), `"r", "100x40"`) {
		t.Errorf("recording %q, want the output, the input and the size", rec.buf.String())
	}
}
