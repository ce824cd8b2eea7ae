package kubesrv

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/asciicast"
	"remoteler.dev/edge/tools/logtest"
)

// fakeExec stands in for a kubelet's exec over WebSocket (v5.channel.k8s.io)
// with a terminal: what comes on stdin goes back on stdout upper-cased, as
// a terminal echoes it; "exit" ends the command with success.
func fakeExec(w http.ResponseWriter, r *http.Request) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n")
	brw.Flush()
	var mu sync.Mutex
	send := func(ch byte, p []byte) {
		mu.Lock()
		defer mu.Unlock()
		conn.Write(wsFrame(wsBinary, append([]byte{ch}, p...)))
	}
	done := false
	tap := newChannelTap(func(ch int, p []byte) {
		if ch != chStdin || done {
			return
		}
		if strings.Contains(string(p), "exit") {
			done = true
			send(chError, []byte(`{"metadata":{},"status":"Success"}`))
			mu.Lock()
			conn.Write(wsFrame(wsClose, []byte{0x03, 0xe8}))
			mu.Unlock()
			return
		}
		send(chStdout, bytes.ToUpper(p))
	}, nil)
	buf := make([]byte, 4096)
	for !done {
		n, err := brw.Read(buf)
		if n > 0 && tap.ws.feed(buf[:n]) != nil {
			return
		}
		if err != nil {
			return
		}
	}
}

// clientFrame builds a masked (client-to-server) WebSocket frame.
func clientFrame(op byte, payload []byte) []byte {
	key := [4]byte{0x12, 0x34, 0x56, 0x78}
	b := []byte{0x80 | op}
	switch n := len(payload); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126, byte(n>>8), byte(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	b = append(b, key[:]...)
	for i, c := range payload {
		b = append(b, c^key[i%4])
	}
	return b
}

// wsClient is a remote command client on an upgraded connection: it
// collects what arrives on each channel.
type wsClient struct {
	conn net.Conn
	mu   sync.Mutex // guards got
	got  map[int][]byte
	done chan struct{} // closed when the connection ends
}

func dialExec(t *testing.T, addr, path string) *wsClient {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n", path)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("got %v %v, want 101", resp, err)
	}
	c := &wsClient{conn: conn, got: map[int][]byte{}, done: make(chan struct{})}
	ws := &wsStream{}
	ch := -1
	ws.data = func(start bool, p []byte) {
		if start {
			ch = -1
		}
		if ch == -1 && len(p) > 0 {
			ch, p = int(p[0]), p[1:]
		}
		c.mu.Lock()
		c.got[ch] = append(c.got[ch], p...)
		c.mu.Unlock()
	}
	go func() {
		defer close(c.done)
		buf := make([]byte, 4096)
		for {
			n, err := br.Read(buf)
			if n > 0 {
				ws.feed(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}()
	return c
}

func (c *wsClient) send(ch byte, p string) {
	c.conn.Write(clientFrame(wsBinary, append([]byte{ch}, p...)))
}

func (c *wsClient) channel(ch int) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.got[ch])
}

func (c *wsClient) waitFor(t *testing.T, ch int, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(c.channel(ch), want) {
		if time.Now().After(deadline) {
			t.Fatalf("channel %d has %q, want %q", ch, c.channel(ch), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

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
	if len(all) != 2 || all[0].Type != EventRequestStart || all[1].Type != EventRequest || all[1].Code != 200 ||
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
	c := dialExec(t, strings.TrimPrefix(fe.URL, "http://"), path)
	c.conn.Write(clientFrame(wsBinary, append([]byte{chResize}, `{"Width":100,"Height":40}`...)))
	c.send(chStdin, "echo hi\r")
	c.waitFor(t, chStdout, "ECHO HI\r")
	const why = "your fleet certificate expired at 2026-12-06T10:00:00Z: run tsh login"
	reg.End(func(s *sessions.Session) bool { return s.Kind == "exec" }, why)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the exec did not end")
	}
	var st struct{ Kind, Status, Message string }
	if err := json.Unmarshal([]byte(c.channel(chError)), &st); err != nil || st.Status != "Failure" || st.Message != why {
		t.Errorf("error channel %q (%v), want a Failure Status with the reason", c.channel(chError), err)
	}
	// The end event is written as the handler returns.
	deadline := time.Now().Add(10 * time.Second)
	var ended *Event
	for ended == nil && time.Now().Before(deadline) {
		for _, ev := range evs.all() {
			if ev.Type == EventSessionEnd {
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
