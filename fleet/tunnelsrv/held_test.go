package tunnelsrv

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/firmware/tunnel"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/resume"
)

// TestAgentReportsSessionsHeldForAwayUsers: when a user-held session's
// transport breaks, the agent tells the fleet on a stream of service
// "held" that it holds the session for its away user, with who and as
// whom; when the user's client re-attaches it, the agent's next list no
// longer has it; when it breaks again, it is listed again.
func TestAgentReportsSessionsHeldForAwayUsers(t *testing.T) {
	lists := make(chan []proto.HeldSession, 16)
	a := startServerWith(t, newPKI(t), "127.0.0.1:0", func(c *Config) {
		c.OnAgentStream = func(ctx context.Context, id, service string, conn net.Conn) {
			defer conn.Close()
			if id != "pi-1" || service != proto.ServiceHeld {
				t.Errorf("agent stream of %q for service %q", id, service)
				return
			}
			r := bufio.NewReader(conn)
			for {
				m, err := proto.ReadMsg(r, proto.MaxControlFrame)
				if err != nil {
					return
				}
				lists <- m.(*proto.HeldSessions).Sessions
			}
		}
	})
	// The agent's services end a session the fleet ends (as sshd does).
	var (
		agent    *tunnel.Client
		mu       sync.Mutex
		sessions = map[string]net.Conn{}
	)
	agent, state := startAgentWith(t, a, "pi-1", "pi-1", nil, func(c *tunnel.Config) {
		c.Handle = func(ctx context.Context, h *proto.StreamHeader, conn net.Conn) {
			defer conn.Close()
			mu.Lock()
			sessions[h.SessionID] = conn
			mu.Unlock()
			io.Copy(conn, conn)
		}
		c.OnMessage = func(m proto.Message) {
			if e, ok := m.(*proto.SessionEnd); ok {
				agent.SessionEnded(e.SessionID, e.Message)
				mu.Lock()
				if conn := sessions[e.SessionID]; conn != nil {
					conn.Close()
				}
				mu.Unlock()
			}
		}
	})
	waitState(t, state, true)
	next := func(what string) []proto.HeldSession {
		t.Helper()
		select {
		case l := <-lists:
			return l
		case <-time.After(10 * time.Second):
			t.Fatalf("no list from the agent within 10 s %s", what)
			return nil
		}
	}

	ctx := context.Background()
	expires := time.Now().Add(time.Hour).UnixMilli()
	hdr := proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "s1", Secret: []byte("0123456789abcdef0123456789abcdef"), UserHeld: true,
		Identity: proto.Identity{User: "alice", Login: "pi", Roles: []string{"access", "north"}, Expires: expires, NoFileCopy: true}}
	h := hdr
	leg, err := a.srv.OpenTransport(ctx, "pi-1", &h)
	if err != nil {
		t.Fatal(err)
	}
	user := resume.New(resume.Config{}) // the user's client's end
	defer user.Abort(io.EOF)
	if err := user.Attach(leg, 0); err != nil {
		t.Fatal(err)
	}
	echo(t, user, "attached")
	select {
	case l := <-lists:
		t.Fatalf("the agent listed %+v while the session's user is attached", l)
	default:
	}

	leg.Close() // the user's replica dies
	got := next("after the session's transport broke")
	want := []proto.HeldSession{{SessionID: "s1", Service: proto.ServiceSSH, User: "alice", Roles: []string{"access", "north"}, Login: "pi", Expires: expires, NoFileCopy: true}}
	if len(got) == 1 {
		if got[0].Started <= 0 || got[0].Started > time.Now().UnixMilli() {
			t.Errorf("started %d, want when the agent took the session", got[0].Started)
		}
		got[0].Started = 0
	}
	if !slices.EqualFunc(got, want, func(a, b proto.HeldSession) bool {
		return a.SessionID == b.SessionID && a.Service == b.Service && a.User == b.User && slices.Equal(a.Roles, b.Roles) &&
			a.Login == b.Login && a.Expires == b.Expires && a.NoFileCopy == b.NoFileCopy && !a.NoPortForwarding && a.Started == b.Started
	}) {
		t.Fatalf("the agent listed %+v, want %+v", got, want)
	}

	// The user's client re-attaches the session.
	h = hdr
	h.Resume, h.Received = true, user.Received()
	leg2, err := a.srv.OpenTransport(ctx, "pi-1", &h)
	if err != nil {
		t.Fatal(err)
	}
	m, err := proto.ReadMsg(proto.ByteAtATime(leg2), proto.MaxHeaderFrame)
	if err != nil {
		t.Fatal(err)
	}
	if err := user.Attach(leg2, m.(*proto.ResumeAccept).Received); err != nil {
		t.Fatal(err)
	}
	if got := next("after the re-attach"); len(got) != 0 {
		t.Fatalf("after the re-attach the agent listed %+v, want none", got)
	}
	echo(t, user, "re-attached")

	leg2.Close()
	if got := next("after the second break"); len(got) != 1 || got[0].SessionID != "s1" {
		t.Fatalf("after the second break the agent listed %+v, want s1", got)
	}

	// The fleet refused the user's resume (a lock): it ends the session,
	// showing its secret; another secret does not.
	end := func(secret string) error {
		h = hdr
		h.Resume, h.End, h.Secret = true, "locked", []byte(secret)
		conn, err := a.srv.OpenTransport(ctx, "pi-1", &h)
		if err == nil {
			conn.Close()
		}
		return err
	}
	if err := end("not the session's secret, 32 bytes"); err == nil {
		t.Fatal("an end with another secret was accepted")
	}
	select {
	case l := <-lists:
		t.Fatalf("after an end with another secret the agent listed %+v", l)
	default:
	}
	if err := end(string(hdr.Secret)); err != nil {
		t.Fatal(err)
	}
	if got := next("after the fleet ended the session"); len(got) != 0 {
		t.Fatalf("after the fleet ended the session the agent listed %+v, want none", got)
	}
	// Its client, asking to resume it, is told why it ended; a caller
	// without its secret is not.
	resume := func(secret string) error {
		h = hdr
		h.Resume, h.Received, h.Secret = true, user.Received(), []byte(secret)
		conn, err := a.srv.OpenTransport(ctx, "pi-1", &h)
		if err == nil {
			conn.Close()
		}
		return err
	}
	var pe *proto.Error
	err = resume(string(hdr.Secret))
	if !errors.As(err, &pe) || pe.Code != proto.CodeNotFound || !strings.Contains(pe.Message, "ended while its user was away: locked") {
		t.Errorf("resume of the ended session: %v, want not found, saying it ended while its user was away and why", err)
	}
	err = resume("not the session's secret, 32 bytes")
	if !errors.As(err, &pe) || pe.Code != proto.CodeNotFound || strings.Contains(pe.Message, "locked") {
		t.Errorf("resume with another secret: %v, want not found, without the reason", err)
	}
}

// TestReattachKeepsTheKubernetesIdentity: a user-held Kubernetes session
// (tsh proxy kube) is listed with whom it acts as while its user is away,
// and is re-attached only by a header that acts as it began: the same
// Kubernetes user and groups (in any order). One that the fleet chose
// otherwise (the user's roles changed meanwhile) is refused, and so is
// another service's.
func TestReattachKeepsTheKubernetesIdentity(t *testing.T) {
	lists := make(chan []proto.HeldSession, 16)
	a := startServerWith(t, newPKI(t), "127.0.0.1:0", func(c *Config) {
		c.OnAgentStream = func(ctx context.Context, id, service string, conn net.Conn) {
			defer conn.Close()
			r := bufio.NewReader(conn)
			for {
				m, err := proto.ReadMsg(r, proto.MaxControlFrame)
				if err != nil {
					return
				}
				lists <- m.(*proto.HeldSessions).Sessions
			}
		}
	})
	_, state := startAgentWith(t, a, "pi-1", "pi-1", nil, func(c *tunnel.Config) {
		c.Handle = func(ctx context.Context, h *proto.StreamHeader, conn net.Conn) {
			defer conn.Close()
			io.Copy(conn, conn)
		}
	})
	waitState(t, state, true)
	ctx := context.Background()
	hdr := proto.StreamHeader{Service: proto.ServiceKube, SessionID: "k1", Secret: []byte("0123456789abcdef0123456789abcdef"), UserHeld: true,
		Identity: proto.Identity{User: "alice", KubeUser: "alice", KubeGroups: []string{"developers", "viewers"}}}
	h := hdr
	leg, err := a.srv.OpenTransport(ctx, "pi-1", &h)
	if err != nil {
		t.Fatal(err)
	}
	user := resume.New(resume.Config{})
	defer user.Abort(io.EOF)
	if err := user.Attach(leg, 0); err != nil {
		t.Fatal(err)
	}
	echo(t, user, "attached")
	leg.Close()
	select {
	case l := <-lists:
		if len(l) != 1 || l[0].KubeUser != "alice" || !slices.Equal(l[0].KubeGroups, []string{"developers", "viewers"}) {
			t.Fatalf("the agent listed %+v, want k1 acting as alice in developers and viewers", l)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no list from the agent after the session's transport broke")
	}
	for _, tt := range []struct {
		name   string
		change func(h *proto.StreamHeader)
	}{
		{"another Kubernetes user", func(h *proto.StreamHeader) { h.Identity.KubeUser = "admin" }},
		{"fewer groups", func(h *proto.StreamHeader) { h.Identity.KubeGroups = []string{"viewers"} }},
		{"more groups", func(h *proto.StreamHeader) {
			h.Identity.KubeGroups = []string{"developers", "system:masters", "viewers"}
		}},
		{"another service", func(h *proto.StreamHeader) { h.Service = proto.ServiceSSH }},
	} {
		h := hdr
		h.Resume, h.Received = true, user.Received()
		tt.change(&h)
		var pe *proto.Error
		if _, err := a.srv.OpenTransport(ctx, "pi-1", &h); !errors.As(err, &pe) || pe.Code != proto.CodeForbidden {
			t.Errorf("re-attach with %s: %v, want refused (forbidden)", tt.name, err)
		}
	}
	h = hdr
	h.Resume, h.Received = true, user.Received()
	h.Identity.KubeGroups = []string{"viewers", "developers"}
	leg2, err := a.srv.OpenTransport(ctx, "pi-1", &h)
	if err != nil {
		t.Fatalf("re-attach with the session's identity (groups in another order): %v", err)
	}
	m, err := proto.ReadMsg(proto.ByteAtATime(leg2), proto.MaxHeaderFrame)
	if err != nil {
		t.Fatal(err)
	}
	if err := user.Attach(leg2, m.(*proto.ResumeAccept).Received); err != nil {
		t.Fatal(err)
	}
	echo(t, user, "re-attached")
}
