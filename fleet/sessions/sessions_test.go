package sessions

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// ender records the reasons a session's end function was called with.
type ender struct {
	mu      sync.Mutex // guards reasons
	reasons []string
}

func (e *ender) end(reason string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.reasons = append(e.reasons, reason)
}

func (e *ender) got() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.reasons...)
}

func mustRegister(t *testing.T, r *Registry, s Session) (*Live, *ender) {
	t.Helper()
	e := &ender{}
	l, err := r.Register(s, e.end)
	if err != nil {
		t.Fatal(err)
	}
	return l, e
}

func TestExpiryEndsTheSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := New(Config{})
		defer r.Close()
		expires := time.Now().Add(10 * time.Minute)
		l, e := mustRegister(t, r, Session{ID: "s1", Service: "ssh", User: "alice", Expires: expires})
		time.Sleep(10*time.Minute - time.Millisecond)
		synctest.Wait()
		if got := e.got(); len(got) != 0 {
			t.Fatalf("ended before expiry: %q", got)
		}
		time.Sleep(time.Millisecond)
		synctest.Wait()
		got := e.got()
		if len(got) != 1 || !strings.Contains(got[0], "certificate expired") || !strings.Contains(got[0], "run tsh login") {
			t.Fatalf("reasons %q, want one that says the certificate expired", got)
		}
		if end, _ := r.Ended("s1"); end.Ended || end.Reason != got[0] {
			t.Errorf("while ending: %+v, want live with the reason", end)
		}
		l.Done("connection closed")
		end, ok := r.Ended("s1")
		if !ok || !end.Ended || end.Reason != got[0] {
			t.Errorf("Ended = %+v %v, want ended with the registry's reason", end, ok)
		}
		if n := len(r.List(Filter{})); n != 0 {
			t.Errorf("%d sessions listed after Done", n)
		}
	})
}

func TestDoneStopsTheExpiryTimer(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := New(Config{})
		defer r.Close()
		l, e := mustRegister(t, r, Session{ID: "s1", Expires: time.Now().Add(time.Minute)})
		l.Done("")
		time.Sleep(2 * time.Minute)
		synctest.Wait()
		if got := e.got(); len(got) != 0 {
			t.Errorf("a session that was done was ended: %q", got)
		}
		if end, _ := r.Ended("s1"); !end.Ended || end.Reason != "" {
			t.Errorf("Ended = %+v, want a normal end", end)
		}
	})
}

func TestChangedEndsWhatIsNoLongerAllowed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		removed := map[string]bool{}
		checks := 0
		r := New(Config{Check: func(ctx context.Context, s *Session) error {
			mu.Lock()
			defer mu.Unlock()
			checks++
			if removed[s.User] {
				return fmt.Errorf("user %q was removed from the fleet", s.User)
			}
			return nil
		}})
		defer r.Close()
		_, alice := mustRegister(t, r, Session{ID: "a", User: "alice"})
		_, bob := mustRegister(t, r, Session{ID: "b", User: "bob"})
		r.Changed()
		synctest.Wait()
		if len(alice.got())+len(bob.got()) != 0 {
			t.Fatalf("ended with nothing removed: %q %q", alice.got(), bob.got())
		}
		mu.Lock()
		removed["bob"] = true
		mu.Unlock()
		r.Changed()
		synctest.Wait()
		if got := bob.got(); len(got) != 1 || got[0] != `user "bob" was removed from the fleet` {
			t.Errorf("bob's session: %q, want ended with the check's reason", got)
		}
		if got := alice.got(); len(got) != 0 {
			t.Errorf("alice's session ended: %q", got)
		}
		// A session being ended is not checked again.
		mu.Lock()
		checks = 0
		mu.Unlock()
		r.Changed()
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		if checks != 1 {
			t.Errorf("%d checks, want 1 (alice; bob is already ending)", checks)
		}
	})
}

func TestChangedCoalesces(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var mu sync.Mutex
		passes := 0
		r := New(Config{Check: func(ctx context.Context, s *Session) error {
			mu.Lock()
			passes++
			mu.Unlock()
			<-release
			return nil
		}})
		defer r.Close()
		mustRegister(t, r, Session{ID: "a"})
		r.Changed()
		synctest.Wait() // the first pass is blocked in Check
		for range 10 {
			r.Changed()
		}
		close(release)
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		if passes != 2 {
			t.Errorf("%d passes for 11 changes during one pass, want 2", passes)
		}
	})
}

func TestUndecidedIsCheckedAgain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		storeUp := false
		r := New(Config{Retry: 3 * time.Second, Check: func(ctx context.Context, s *Session) error {
			mu.Lock()
			defer mu.Unlock()
			if !storeUp {
				return fmt.Errorf("load user: %w", ErrUndecided)
			}
			return errors.New("role removed")
		}})
		defer r.Close()
		_, e := mustRegister(t, r, Session{ID: "a"})
		r.Changed()
		synctest.Wait()
		if got := e.got(); len(got) != 0 {
			t.Fatalf("an undecided check ended the session: %q", got)
		}
		mu.Lock()
		storeUp = true
		mu.Unlock()
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if got := e.got(); len(got) != 1 || got[0] != "role removed" {
			t.Errorf("after the retry: %q, want ended", got)
		}
	})
}

func TestEndMatching(t *testing.T) {
	r := New(Config{})
	defer r.Close()
	_, a := mustRegister(t, r, Session{ID: "a", User: "alice", DeviceID: "d1"})
	_, b := mustRegister(t, r, Session{ID: "b", User: "alice", DeviceID: "d2"})
	_, c := mustRegister(t, r, Session{ID: "c", User: "carol", DeviceID: "d1"})
	n := r.End(func(s *Session) bool { return s.DeviceID == "d1" }, "device d1 is locked")
	if n != 2 {
		t.Errorf("End ended %d sessions, want 2", n)
	}
	if len(a.got()) != 1 || len(b.got()) != 0 || len(c.got()) != 1 {
		t.Errorf("ended: a %q b %q c %q, want a and c", a.got(), b.got(), c.got())
	}
	if n := r.End(func(s *Session) bool { return true }, "again"); n != 1 {
		t.Errorf("second End ended %d, want 1 (b): a session is ended once", n)
	}
}

func TestRegister(t *testing.T) {
	r := New(Config{})
	l, _ := mustRegister(t, r, Session{ID: "a", User: "alice", Service: "ssh"})
	mustRegister(t, r, Session{ID: "b", User: "bob", Service: "kube", DeviceID: "d1"})
	for _, tc := range []struct {
		name string
		s    Session
		want string
	}{
		{"no id", Session{}, "no ID"},
		{"duplicate", Session{ID: "a"}, "a live session has that ID"},
		{"expired", Session{ID: "x", Expires: time.Now().Add(-time.Second)}, "certificate expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := r.Register(tc.s, func(string) {}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Register: %v, want %q", err, tc.want)
			}
		})
	}
	if got := r.List(Filter{Service: "kube"}); len(got) != 1 || got[0].ID != "b" {
		t.Errorf("List(kube) = %+v", got)
	}
	if got := r.List(Filter{User: "alice"}); len(got) != 1 || got[0].ID != "a" {
		t.Errorf("List(alice) = %+v", got)
	}
	if _, ok := r.EndedWithToken("a", "wrong"); ok {
		t.Error("EndedWithToken answered a wrong token")
	}
	l.Done("the device did not come back")
	if end, ok := r.EndedWithToken("a", l.Token()); !ok || end.Reason != "the device did not come back" || end.User != "alice" {
		t.Errorf("EndedWithToken = %+v %v", end, ok)
	}
	r.Close()
	if _, err := r.Register(Session{ID: "c"}, func(string) {}); !errors.Is(err, ErrClosed) {
		t.Errorf("Register after Close: %v, want ErrClosed", err)
	}
}

func TestEndedIsBounded(t *testing.T) {
	r := New(Config{KeepEnded: 3})
	defer r.Close()
	for i := range 5 {
		l, _ := mustRegister(t, r, Session{ID: fmt.Sprint(i)})
		l.Done("")
	}
	for i, want := range []bool{false, false, true, true, true} {
		if _, ok := r.Ended(fmt.Sprint(i)); ok != want {
			t.Errorf("Ended(%d) known %v, want %v", i, ok, want)
		}
	}
}

// TestWaitDone: a resumed session's new connection waits for its earlier
// one to be done with the ID, and no longer than its context allows.
func TestWaitDone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := New(Config{})
		defer r.Close()
		if err := r.WaitDone(t.Context(), "none"); err != nil {
			t.Fatalf("no such session: %v", err)
		}
		l, _ := mustRegister(t, r, Session{ID: "s1", Service: "ssh", User: "alice"})
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		if err := r.WaitDone(ctx, "s1"); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("live session: %v, want the deadline", err)
		}
		waited := make(chan error, 1)
		go func() { waited <- r.WaitDone(t.Context(), "s1") }()
		synctest.Wait()
		select {
		case err := <-waited:
			t.Fatalf("returned while the session is live: %v", err)
		default:
		}
		l.Done("")
		if err := <-waited; err != nil {
			t.Fatalf("after Done: %v", err)
		}
		if _, err := r.Register(Session{ID: "s1", Service: "ssh", User: "alice"}, func(string) {}); err != nil {
			t.Fatalf("register the ID again: %v", err)
		}
	})
}

// TestWithdraw: a withdrawn session leaves the registry without an end on
// record, and wakes WaitDone; one the registry is ending is recorded.
func TestWithdraw(t *testing.T) {
	r := New(Config{})
	defer r.Close()
	l, _ := mustRegister(t, r, Session{ID: "s1", Service: "ssh", User: "alice", Away: true})
	l.Withdraw()
	if err := r.WaitDone(t.Context(), "s1"); err != nil {
		t.Fatalf("WaitDone after Withdraw: %v", err)
	}
	if n := len(r.List(Filter{})); n != 0 {
		t.Fatalf("%d sessions listed after Withdraw", n)
	}
	if end, ok := r.Ended("s1"); ok {
		t.Fatalf("a withdrawn session has an end on record: %+v", end)
	}
	l.Withdraw() // twice is harmless
	l.Done("")
	if _, ok := r.Ended("s1"); ok {
		t.Fatal("Done after Withdraw recorded an end")
	}

	ended := make(chan string, 1)
	l2, err := r.Register(Session{ID: "s2", Service: "ssh", User: "bob", Away: true}, func(reason string) { ended <- reason })
	if err != nil {
		t.Fatal(err)
	}
	if n := r.End(func(s *Session) bool { return s.User == "bob" }, "locked"); n != 1 {
		t.Fatalf("End matched %d sessions", n)
	}
	if got := <-ended; got != "locked" {
		t.Fatalf("end told %q", got)
	}
	l2.Withdraw()
	if end, ok := r.Ended("s2"); !ok || !end.Ended || end.Reason != "locked" {
		t.Fatalf("a session withdrawn while ending: %+v, %v; want its end on record", end, ok)
	}
}
