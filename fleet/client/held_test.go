package client_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/resume"
	"remoteler.dev/edge/proto/userframe"
)

// heldFleet is a fake fleet for user-held sessions: it relays one
// session's frames to a resume.Conn standing in for the device's agent (an
// echo server), and lets the test break the client's connection, refuse
// a resume, or end the session in-band.
type heldFleet struct {
	t      *testing.T
	dev    *resume.Conn
	secret []byte

	mu      sync.Mutex
	leg     net.Conn // the client's current connection
	frames  *userframe.Writer
	resumes int
	refuse  *api.Error // answer the next resumes with this
	legs    chan struct{}
	asked   []string // each connect's service and impersonation headers
}

func newHeldFleet(t *testing.T) (*heldFleet, *client.Client) {
	f := &heldFleet{t: t, dev: resume.New(resume.Config{}), secret: []byte("0123456789abcdef0123456789abcdef"), legs: make(chan struct{}, 16)}
	t.Cleanup(func() { f.dev.Abort(io.EOF) })
	go io.Copy(f.dev, f.dev) // the device echoes
	srv := httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()
	conf, _ := client.InsecureTLS(addr, nil, nil)
	c, err := client.New(client.Config{Addr: addr, TLS: conf, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return f, c
}

// legConn is the fleet's side of a client connection: the client's
// bytes up, the device's framed down.
type legConn struct {
	net.Conn
	r io.Reader
	w *userframe.Writer
}

func (l *legConn) Read(p []byte) (int, error)  { return l.r.Read(p) }
func (l *legConn) Write(p []byte) (int, error) { return l.w.Write(p) }

func (f *heldFleet) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.asked = append(f.asked, fmt.Sprintf("%s as %q %q", r.URL.Query().Get("service"), r.Header.Values("Impersonate-User"), r.Header.Values("Impersonate-Group")))
	f.mu.Unlock()
	want := r.Header.Get(api.HeaderResume)
	peerReceived := uint64(0)
	if want != "1" {
		f.mu.Lock()
		refuse := f.refuse
		f.mu.Unlock()
		if refuse != nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprintf(w, `{"code":%q,"error":%q}`, refuse.Code, refuse.Message)
			return
		}
		secret, _ := base64.RawURLEncoding.DecodeString(r.Header.Get(api.HeaderResumeSecret))
		n, err := strconv.ParseUint(r.Header.Get(api.HeaderResumeReceived), 10, 64)
		if want != "s1" || !bytes.Equal(secret, f.secret) || err != nil {
			f.t.Errorf("resume asked with session %q, secret %q, received %q", want, secret, r.Header.Get(api.HeaderResumeReceived))
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		peerReceived = n
	}
	conn, brw, err := w.(http.Hijacker).Hijack()
	if err != nil {
		f.t.Error(err)
		return
	}
	f.dev.Detach()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n%s: s1\r\n%s: 1\r\n", api.UpgradeProto, api.HeaderSession, api.HeaderFrames)
	if want == "1" {
		fmt.Fprintf(brw, "%s: %s\r\n", api.HeaderResumeSecret, base64.RawURLEncoding.EncodeToString(f.secret))
	} else {
		fmt.Fprintf(brw, "%s: %d\r\n", api.HeaderResumeReceived, f.dev.Received())
	}
	io.WriteString(brw, "\r\n")
	brw.Flush()
	fw := userframe.NewWriter(conn)
	f.mu.Lock()
	f.leg, f.frames = conn, fw
	if want != "1" {
		f.resumes++
	}
	f.mu.Unlock()
	if err := f.dev.Attach(&legConn{Conn: conn, r: brw.Reader, w: fw}, peerReceived); err != nil {
		f.t.Errorf("device attach: %v", err)
		conn.Close()
	}
	f.legs <- struct{}{}
}

// connectHeld opens a user-held session to the fake fleet.
func connectHeld(t *testing.T) (*heldFleet, net.Conn) {
	t.Helper()
	f, c := newHeldFleet(t)
	conn, err := c.ConnectHeld(context.Background(), "gw1", "pi", "ssh", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	<-f.legs
	return f, conn
}

// breakLeg closes the client's current connection, as a replica that dies.
func (f *heldFleet) breakLeg() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.leg.Close()
}

func (f *heldFleet) resumed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.resumes
}

// TestConnectHeldResumesAcrossBrokenConnections: the client's connection
// to the fleet breaks three times in the middle of a 2 MB echo; each time
// the client connects again with the session's ID, secret and count, and
// every byte comes back once, in order.
func TestConnectHeldResumesAcrossBrokenConnections(t *testing.T) {
	f, conn := connectHeld(t)
	said := make(chan string, 16)
	client.OnResume(conn, func(msg string) { said <- msg })
	if got := client.SessionID(conn); got != "s1" {
		t.Errorf("SessionID = %q, want s1", got)
	}
	data := make([]byte, 2<<20)
	for i := range data {
		data[i] = byte(rand.Uint32())
	}
	go func() {
		for p := data; len(p) > 0; {
			n := min(len(p), 32<<10)
			if _, err := conn.Write(p[:n]); err != nil {
				return
			}
			p = p[n:]
		}
	}()
	got := make([]byte, 0, len(data))
	buf := make([]byte, 64<<10)
	breaks := []int{256 << 10, 900 << 10, 1500 << 10}
	for len(got) < len(data) {
		n, err := conn.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("read after %d bytes: %v", len(got), err)
		}
		if len(breaks) > 0 && len(got) >= breaks[0] {
			breaks = breaks[1:]
			f.breakLeg()
			<-f.legs // the client came back
		}
	}
	if !bytes.Equal(got, data) {
		t.Fatal("the echo differs from what was sent")
	}
	if n := f.resumed(); n != 3 {
		t.Errorf("the client resumed %d times, want 3", n)
	}
	// The client says it resumed once the new connection is attached,
	// which may be after the echo is back.
	var heard []string
	for resumes := 0; resumes < 3; {
		select {
		case msg := <-said:
			heard = append(heard, msg)
			if strings.Contains(msg, "session resumed") {
				resumes++
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the client said %q, want three resumes", heard)
		}
	}
}

// TestConnectKubeResendsItsChoice: a Kubernetes session (tsh proxy kube)
// asks for the Kubernetes user and groups it was started with on its
// first connect and again on every resume, so that the replica it resumes
// through checks the same choice.
func TestConnectKubeResendsItsChoice(t *testing.T) {
	f, c := newHeldFleet(t)
	conn, err := c.ConnectKube(context.Background(), "gw1", "deployer", []string{"developers", "viewers"}, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	<-f.legs
	f.breakLeg()
	<-f.legs
	if _, err := conn.Write([]byte("after the break")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len("after the break"))
	if _, err := io.ReadFull(conn, got); err != nil || string(got) != "after the break" {
		t.Fatalf("echo after the resume: %q, %v", got, err)
	}
	f.mu.Lock()
	asked := f.asked
	f.mu.Unlock()
	const want = `kube as ["deployer"] ["developers" "viewers"]`
	if len(asked) != 2 || asked[0] != want || asked[1] != want {
		t.Errorf("the connects asked %q, want two of %q", asked, want)
	}
}

// TestConnectHeldStops: a resume the fleet refuses for good ends the
// session with the fleet's reason; a session the fleet ended in-band is
// not resumed at all.
func TestConnectHeldStops(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		f, conn := connectHeld(t)
		f.mu.Lock()
		f.refuse = &api.Error{Code: api.CodeForbidden, Message: "alice is locked: stolen laptop"}
		f.mu.Unlock()
		f.breakLeg()
		_, err := io.ReadAll(conn)
		if err == nil || !strings.Contains(err.Error(), "stolen laptop") {
			t.Errorf("read after a refused resume: %v, want the fleet's reason", err)
		}
		if got := client.EndReason(conn); !strings.Contains(got, "stolen laptop") {
			t.Errorf("EndReason = %q, want the fleet's reason", got)
		}
	})
	t.Run("ended in-band", func(t *testing.T) {
		f, conn := connectHeld(t)
		ended := make(chan string, 1)
		client.OnEnd(conn, func(reason string) { ended <- reason })
		f.mu.Lock()
		f.frames.End("your access ended")
		f.mu.Unlock()
		if r := <-ended; r != "your access ended" {
			t.Errorf("OnEnd(%q)", r)
		}
		f.breakLeg()
		_, err := io.ReadAll(conn)
		if err == nil || !strings.Contains(err.Error(), "your access ended") {
			t.Errorf("read after the fleet ended the session: %v, want its reason", err)
		}
		if n := f.resumed(); n != 0 {
			t.Errorf("the client resumed %d times a session the fleet ended", n)
		}
		if got := client.EndReason(conn); got != "your access ended" {
			t.Errorf("EndReason = %q", got)
		}
	})
}
