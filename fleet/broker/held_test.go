package broker

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/authz"
	"remoteler.dev/edge/fleet/locks"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// TestServeHeld: the sessions a device holds for away users are in the
// registry while it lists them, with who and as whom; ending one (a lock
// matches it) tells the device to end it; one the device no longer lists
// leaves without an end on record; all leave when the stream ends; a bad
// list closes the stream.
func TestServeHeld(t *testing.T) {
	f := newFixture(t)
	ended := make(chan *proto.SessionEnd, 4)
	f.tun.onSend = func(m proto.Message) {
		if e, ok := m.(*proto.SessionEnd); ok {
			ended <- e
		}
	}
	dev, fleet := net.Pipe()
	served := make(chan struct{})
	go func() {
		defer close(served)
		f.b.ServeHeld(context.Background(), f.pi1.ID, fleet)
	}()
	send := func(l ...proto.HeldSession) {
		t.Helper()
		dev.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if err := proto.WriteMsg(dev, &proto.HeldSessions{Sessions: l}); err != nil {
			t.Fatal(err)
		}
	}
	// listed waits until the registry lists exactly ids as away on pi-1.
	listed := func(ids ...string) []sessions.Session {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			var got []string
			list := f.reg.List(sessions.Filter{DeviceID: f.pi1.ID})
			for _, s := range list {
				if s.Away {
					got = append(got, s.ID)
				}
			}
			slices.Sort(got)
			if slices.Equal(got, ids) {
				return list
			}
			if time.Now().After(deadline) {
				t.Fatalf("the registry lists %v away on pi-1, want %v", got, ids)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	started := time.Now().Add(-time.Minute).Truncate(time.Millisecond)
	s1 := proto.HeldSession{SessionID: "s1", Service: proto.ServiceSSH, User: "alice", Roles: []string{"north"}, Login: "pi",
		Started: started.UnixMilli(), Expires: time.Now().Add(time.Hour).UnixMilli(), NoFileCopy: true}
	s2 := proto.HeldSession{SessionID: "s2", Service: proto.ServiceSSH, User: "bob", Login: "root"}
	send(s1, s2)
	got := listed("s1", "s2")
	for _, s := range got {
		if s.ID == "s1" && (s.User != "alice" || s.Login != "pi" || !slices.Equal(s.Roles, []string{"north"}) || s.DeviceName != "pi-1" ||
			!s.Started.Equal(started) || s.FileCopy || !s.PortForwarding || s.Expires.IsZero()) {
			t.Errorf("s1 registered as %+v", s)
		}
	}

	// A lock on alice ends s1 on the device, not s2.
	l := api.Lock{ID: "l1", Target: api.LockTarget{User: "alice"}, Message: "laptop stolen"}
	n := f.reg.End(func(s *sessions.Session) bool { return locks.Matches(&l, authz.Subject(s, nil)) }, locks.Reason(&l))
	if n != 1 {
		t.Fatalf("the lock ended %d sessions, want 1", n)
	}
	select {
	case e := <-ended:
		if e.SessionID != "s1" || e.Message != locks.Reason(&l) {
			t.Errorf("the device was told %+v", e)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the device was not told to end s1")
	}
	// The device ended s1: its next list lacks it; s1's end is on record
	// with the lock's reason.
	send(s2)
	listed("s2")
	if end, ok := f.reg.Ended("s1"); !ok || end.Reason != locks.Reason(&l) {
		t.Errorf("s1's end on record: %+v, %v", end, ok)
	}
	// s2's user came back for it: no end on record.
	send()
	listed()
	if end, ok := f.reg.Ended("s2"); ok {
		t.Errorf("s2, taken back by its user, has an end on record: %+v", end)
	}
	// Listed again, then the stream ends: it leaves the registry.
	send(s2)
	listed("s2")
	dev.Close()
	<-served
	listed()

	// A lock written while no replica knew of the session: it ends when
	// the device lists it.
	l2 := f.lock(t, api.LockTarget{User: "carol"}, "contract ended")
	dev, fleet = net.Pipe()
	served = make(chan struct{})
	go func() {
		defer close(served)
		f.b.ServeHeld(context.Background(), f.pi1.ID, fleet)
	}()
	send(proto.HeldSession{SessionID: "s4", Service: proto.ServiceSSH, User: "carol", Login: "pi"})
	select {
	case e := <-ended:
		if e.SessionID != "s4" || !strings.Contains(e.Message, "contract ended") || !strings.Contains(e.Message, l2.ID) {
			t.Errorf("the device was told %+v, want s4 ended by lock %s", e, l2.ID)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the device was not told to end s4, whose user is locked")
	}
	dev.Close()
	<-served

	// A list the fleet refuses closes the stream.
	dev, fleet = net.Pipe()
	served = make(chan struct{})
	go func() {
		defer close(served)
		f.b.ServeHeld(context.Background(), f.pi1.ID, fleet)
	}()
	send(proto.HeldSession{SessionID: "s3", Service: proto.ServiceSSH, User: "eve\x1b[2J"})
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("a bad list did not close the stream")
	}
	listed()
}
