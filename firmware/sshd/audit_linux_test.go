package sshd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/firmware/services"
	"remoteler.dev/edge/proto"
)

// auditLog collects events and recordings from the hooks.
type auditLog struct {
	mu     sync.Mutex // guards the rest
	events []proto.AuditEvent
	recs   []*memRecorder
	refuse bool
}

func (l *auditLog) audit(ctx context.Context, ev *proto.AuditEvent) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.refuse {
		return errors.New("queue full")
	}
	l.events = append(l.events, *ev)
	return nil
}

func (l *auditLog) record(ctx context.Context, info services.SessionInfo) services.Recorder {
	l.mu.Lock()
	defer l.mu.Unlock()
	r := &memRecorder{info: info}
	l.recs = append(l.recs, r)
	return r
}

func (l *auditLog) types() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, e := range l.events {
		out = append(out, e.Type)
	}
	return out
}

type memRecorder struct {
	info    services.SessionInfo
	mu      sync.Mutex // guards the rest
	out     bytes.Buffer
	resizes []string
	closed  bool
}

func (r *memRecorder) Output(p []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.out.Write(p)
}

func (r *memRecorder) Resize(cols, rows int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resizes = append(r.resizes, strconv.Itoa(cols)+"x"+strconv.Itoa(rows))
}

func (r *memRecorder) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.closed = true
	return nil
}

func TestAuditExec(t *testing.T) {
	f := newFixture(t)
	al := &auditLog{}
	f.cfg.Audit, f.cfg.Record = al.audit, al.record
	addr := f.serve(identity(f.login))
	c := f.mustDial(addr, f.login, f.userCert(f.login))
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	out, err := sess.Output("printf 12345; printf ab >&2")
	if err != nil || string(out) != "12345" {
		t.Fatalf("exec = %q, %v", out, err)
	}
	c.Close()
	if got := strings.Join(al.types(), ","); got != "exec,exec.end" {
		t.Fatalf("events = %s, want exec,exec.end", got)
	}
	al.mu.Lock()
	defer al.mu.Unlock()
	start, end := al.events[0], al.events[1]
	if start.Fields["command"] != "printf 12345; printf ab >&2" || start.Fields["kind"] != "exec" || start.Outcome != proto.OutcomeSuccess {
		t.Errorf("exec event = %+v", start)
	}
	if end.Fields["bytes_out"] != "7" || end.Fields["status"] != "0" {
		t.Errorf("exec.end fields = %v, want 7 bytes out and status 0", end.Fields)
	}
	if len(al.recs) != 1 {
		t.Fatalf("%d recordings of an exec without a terminal, want 1", len(al.recs))
	}
	r := al.recs[0]
	r.mu.Lock()
	defer r.mu.Unlock()
	if got := r.out.String(); (got != "12345ab" && got != "ab12345") || !r.closed || r.info.Kind != "exec" || r.info.Cols != 0 {
		t.Errorf("recording %q closed %v info %+v, want both streams of the exec, no terminal", got, r.closed, r.info)
	}
}

// TestShellWithoutTerminalIsRecorded: ssh -T host, then an interactive
// program, must not leave an unrecorded shell.
func TestShellWithoutTerminalIsRecorded(t *testing.T) {
	f := newFixture(t)
	al := &auditLog{}
	f.cfg.Audit, f.cfg.Record = al.audit, al.record
	addr := f.serve(identity(f.login))
	c := f.mustDial(addr, f.login, f.userCert(f.login))
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	stdin, _ := sess.StdinPipe()
	var out bytes.Buffer
	sess.Stdout = &out
	if err := sess.Shell(); err != nil {
		t.Fatal(err)
	}
	io.WriteString(stdin, "echo typed-$((6*7))\nexit 0\n")
	stdin.Close()
	sess.Wait()
	c.Close()
	al.mu.Lock()
	defer al.mu.Unlock()
	if len(al.recs) != 1 {
		t.Fatalf("%d recordings of a shell without a terminal, want 1", len(al.recs))
	}
	r := al.recs[0]
	r.mu.Lock()
	defer r.mu.Unlock()
	if !strings.Contains(r.out.String(), "typed-42") || r.info.Kind != "shell" {
		t.Errorf("recording %q (%+v), want the shell's output", r.out.String(), r.info)
	}
}

func TestAuditRefusesWhenTheEventCannotBeWritten(t *testing.T) {
	f := newFixture(t)
	al := &auditLog{refuse: true}
	f.cfg.Audit = al.audit
	addr := f.serve(identity(f.login))
	c := f.mustDial(addr, f.login, f.userCert(f.login))
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.Run("true"); err == nil {
		t.Error("exec ran although its audit event could not be written")
	}
}

func TestRecordingMatchesWhatTheUserSaw(t *testing.T) {
	f := newFixture(t)
	al := &auditLog{}
	f.cfg.Audit, f.cfg.Record = al.audit, al.record
	addr := f.serve(identity(f.login))
	c := f.mustDial(addr, f.login, f.userCert(f.login))
	sess, err := c.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.RequestPty("xterm", 24, 80, nil); err != nil {
		t.Fatal(err)
	}
	stdin, _ := sess.StdinPipe()
	stdout, _ := sess.StdoutPipe()
	var seen bytes.Buffer
	copied := make(chan struct{})
	go func() {
		io.Copy(&seen, stdout)
		close(copied)
	}()
	if err := sess.Shell(); err != nil {
		t.Fatal(err)
	}
	sess.SendRequest("window-change", true, ssh.Marshal(windowChange{Cols: 100, Rows: 30}))
	io.WriteString(stdin, "printf 'caf\\303\\251 \\342\\202\\254 done\\n'; exit 0\n")
	sess.Wait()
	<-copied
	c.Close()
	al.mu.Lock()
	defer al.mu.Unlock()
	if len(al.recs) != 1 {
		t.Fatalf("%d recordings, want 1", len(al.recs))
	}
	r := al.recs[0]
	r.mu.Lock()
	defer r.mu.Unlock()
	if !bytes.Equal(r.out.Bytes(), seen.Bytes()) {
		t.Errorf("recorded %q\nuser saw  %q", r.out.String(), seen.String())
	}
	if !strings.Contains(seen.String(), "café € done") {
		t.Errorf("output %q lacks the command's output", seen.String())
	}
	if !r.closed || r.info.Kind != "shell" || r.info.Cols != 80 || r.info.Rows != 24 || r.info.Term != "xterm" {
		t.Errorf("recorder = %+v closed %v", r.info, r.closed)
	}
	if strings.Join(r.resizes, ",") != "100x30" {
		t.Errorf("resizes = %v", r.resizes)
	}
}

func TestAuditDenials(t *testing.T) {
	f := newFixture(t)
	al := &auditLog{}
	f.cfg.Audit = al.audit
	addr := f.serve(identity(f.login))
	if _, err := f.dial(addr, "root-not-allowed", f.userCert(f.login)); err == nil {
		t.Fatal("login with another login succeeded")
	}
	signer := certSigner(t, f.userCA, certSpec{keyID: "alice", principals: []string{f.login}})
	c := f.mustDial(addr, f.login, signer)
	if _, _, err := c.OpenChannel("direct-tcpip", ssh.Marshal(directTCPIPRequest{Host: "127.0.0.1", Port: 9})); err == nil {
		t.Error("forwarding without the permit succeeded")
	}
	c.Close()
	// The refused login is recorded as the server's handshake ends, which
	// can be after the client has given up.
	got := al.types()
	for deadline := time.Now().Add(10 * time.Second); len(got) < 2 && time.Now().Before(deadline); got = al.types() {
		time.Sleep(5 * time.Millisecond)
	}
	if len(got) != 2 || got[0] != proto.EventAccessDenied || got[1] != proto.EventAccessDenied {
		t.Errorf("events = %v, want two denials", got)
	}
}
