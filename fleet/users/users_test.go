package users

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/logtest"
)

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

type fixture struct {
	svc   *Service
	clock *clock
	store *memstore.Store
	log   *logtest.Recorder
}

// t0 is 10 s into a TOTP step.
var t0 = time.Unix(1_780_000_000-1_780_000_000%30+10, 0).UTC()

func newFixture(t *testing.T) *fixture {
	t.Helper()
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	c := &clock{now: t0}
	w := logtest.NewRecorder(t)
	return &fixture{
		svc:   &Service{Store: st, Now: c.Now, Logger: w.Logger(), HashParams: cheap},
		clock: c, store: st, log: w,
	}
}

func (f *fixture) add(t *testing.T, req api.AddUserRequest) api.AddUserResponse {
	t.Helper()
	resp, err := f.svc.Add(context.Background(), req)
	if err != nil {
		t.Fatalf("add %q: %v", req.Name, err)
	}
	return resp
}

// code returns the TOTP code for the step at time at.
func code(t *testing.T, secret string, at time.Time) string {
	t.Helper()
	c, err := totp.GenerateCodeCustom(secret, at, totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func secretOf(t *testing.T, url string) string {
	t.Helper()
	k, err := otp.NewKeyFromURL(url)
	if err != nil {
		t.Fatalf("parse TOTP URL %q: %v", url, err)
	}
	return k.Secret()
}

func TestAdd(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	resp := f.add(t, api.AddUserRequest{Name: "alice", Password: "s3cret-pass", Roles: []string{"access", "access"}, Logins: []string{"pi", "root", "pi"}})
	u := resp.User
	if u.Name != "alice" || len(u.Roles) != 1 || u.Roles[0] != "access" || u.TOTP || !u.CreatedAt.Equal(t0) {
		t.Errorf("got user %+v", u)
	}
	if got := u.Traits[LoginsTrait]; len(got) != 2 || got[0] != "pi" || got[1] != "root" {
		t.Errorf("got logins trait %q, want [pi root]", got)
	}
	if resp.TOTPURL != "" {
		t.Errorf("got TOTP URL %q without TOTP", resp.TOTPURL)
	}
	raw, err := f.store.Get(ctx, "users/alice")
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("s3cret-pass")) || !bytes.Contains(raw, []byte("$argon2id$")) {
		t.Errorf("stored record %s: want an argon2id hash and no password", raw)
	}
	if strings.Contains(f.log.String(), "s3cret-pass") {
		t.Error("the log holds the password")
	}
}

func TestAddRefuses(t *testing.T) {
	f := newFixture(t)
	f.add(t, api.AddUserRequest{Name: "alice", Password: "password1"})
	tests := []struct {
		name    string
		req     api.AddUserRequest
		wantErr string
		is      error
	}{
		{"duplicate", api.AddUserRequest{Name: "alice", Password: "password1"}, "already exists", ErrExists},
		{"empty name", api.AddUserRequest{Name: "", Password: "password1"}, "user name", nil},
		{"upper-case name", api.AddUserRequest{Name: "Alice", Password: "password1"}, "user name", nil},
		{"space in name", api.AddUserRequest{Name: "al ice", Password: "password1"}, "user name", nil},
		{"slash in name", api.AddUserRequest{Name: "a/b", Password: "password1"}, "user name", nil},
		{"dot-dot name", api.AddUserRequest{Name: "..", Password: "password1"}, "user name", nil},
		{"long name", api.AddUserRequest{Name: strings.Repeat("a", 65), Password: "password1"}, "user name", nil},
		{"short password", api.AddUserRequest{Name: "bob", Password: "1234567"}, "at least 8", nil},
		{"short in characters", api.AddUserRequest{Name: "bob", Password: "ééééééé"}, "at least 8", nil},
		{"long password", api.AddUserRequest{Name: "bob", Password: strings.Repeat("x", MaxPasswordBytes+1)}, "at most", nil},
		{"bad login", api.AddUserRequest{Name: "bob", Password: "password1", Logins: []string{"-oProxyCommand"}}, "login", nil},
		{"bad role", api.AddUserRequest{Name: "bob", Password: "password1", Roles: []string{"Admin"}}, "role", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.svc.Add(context.Background(), tt.req)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("got %v, want it to match %v", err, tt.is)
			}
		})
	}
	if !errors.Is(ErrExists, store.ErrExists) {
		t.Error("ErrExists does not match store.ErrExists")
	}
}

func TestGetListDelete(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	for _, n := range []string{"bob", "alice"} {
		f.add(t, api.AddUserRequest{Name: n, Password: "password1"})
	}
	list, err := f.svc.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "alice" || list[1].Name != "bob" {
		t.Errorf("got %+v, want alice and bob in order", list)
	}
	if u, err := f.svc.Get(ctx, "bob"); err != nil || u.Name != "bob" {
		t.Errorf("Get(bob) = %+v, %v", u, err)
	}
	if err := f.svc.Delete(ctx, "bob"); err != nil {
		t.Fatal(err)
	}
	for name, err := range map[string]error{
		"get deleted":    func() error { _, err := f.svc.Get(ctx, "bob"); return err }(),
		"delete deleted": f.svc.Delete(ctx, "bob"),
		"get bad name":   func() error { _, err := f.svc.Get(ctx, "../x"); return err }(),
	} {
		if !errors.Is(err, ErrNotFound) || !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s: got %v, want ErrNotFound", name, err)
		}
	}
	if _, err := f.svc.Authenticate(ctx, "bob", "password1", ""); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("login of a deleted user: got %v, want ErrBadCredentials", err)
	}
}

func TestAuthenticatePassword(t *testing.T) {
	f := newFixture(t)
	f.add(t, api.AddUserRequest{Name: "alice", Password: "correct horse", Roles: []string{"access"}, Logins: []string{"pi"}})
	tests := []struct {
		name     string
		user     string
		password string
		want     error
	}{
		{"right", "alice", "correct horse", nil},
		{"wrong password", "alice", "wrong horse", ErrBadCredentials},
		{"empty password", "alice", "", ErrBadCredentials},
		{"unknown user", "mallory", "correct horse", ErrBadCredentials},
		{"invalid user name", "Alice", "correct horse", ErrBadCredentials},
		{"huge password", "alice", strings.Repeat("x", 10000), ErrBadCredentials},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := f.svc.Authenticate(context.Background(), tt.user, tt.password, "")
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if tt.want == nil && (u.Name != "alice" || u.Traits[LoginsTrait][0] != "pi") {
				t.Errorf("got user %+v", u)
			}
		})
	}
	if strings.Contains(f.log.String(), "horse") {
		t.Error("the log holds a password")
	}
}

func TestUnknownUserLooksLikeWrongPassword(t *testing.T) {
	f := newFixture(t)
	f.add(t, api.AddUserRequest{Name: "alice", Password: "correct horse"})
	ctx := context.Background()
	_, errWrong := f.svc.Authenticate(ctx, "alice", "wrong horse", "")
	_, errUnknown := f.svc.Authenticate(ctx, "bobby", "wrong horse", "")
	strip := func(err error, name string) string {
		return strings.Replace(err.Error(), `"`+name+`"`, "NAME", 1)
	}
	if a, b := strip(errWrong, "alice"), strip(errUnknown, "bobby"); a != b {
		t.Errorf("wrong password says %q, unknown user says %q: want the same", a, b)
	}
	// The same work: the unknown user's password was hashed (against the
	// dummy hash, which exists only once it has been used).
	if f.svc.dummy.key == nil {
		t.Error("an unknown user did not cost a password hash")
	}
	if f.svc.dummy.params != cheap.withDefaults() {
		t.Errorf("dummy hash params %+v, want the service's %+v", f.svc.dummy.params, cheap)
	}
}

func TestAuthenticateTOTP(t *testing.T) {
	ctx := context.Background()
	step := 30 * time.Second
	tests := []struct {
		name string
		// codeAt gives the time whose code is sent; "" sends no code.
		codes []func(secret string) string
		want  []error
	}{
		{"missing", []func(string) string{func(string) string { return "" }}, []error{ErrTOTPRequired}},
		{"good", []func(string) string{func(s string) string { return code(t, s, t0) }}, []error{nil}},
		{"good with spaces", []func(string) string{func(s string) string { c := code(t, s, t0); return " " + c[:3] + " " + c[3:] }}, []error{nil}},
		{"wrong", []func(string) string{func(s string) string { return "000000" }}, []error{ErrBadCredentials}},
		{"malformed", []func(string) string{func(s string) string { return "12345" }}, []error{ErrBadCredentials}},
		{"replay refused", []func(string) string{
			func(s string) string { return code(t, s, t0) },
			func(s string) string { return code(t, s, t0) },
		}, []error{nil, ErrBadCredentials}},
		{"previous step accepted", []func(string) string{func(s string) string { return code(t, s, t0.Add(-step)) }}, []error{nil}},
		{"next step accepted", []func(string) string{func(s string) string { return code(t, s, t0.Add(step)) }}, []error{nil}},
		{"two steps back refused", []func(string) string{func(s string) string { return code(t, s, t0.Add(-2*step)) }}, []error{ErrBadCredentials}},
		{"two steps ahead refused", []func(string) string{func(s string) string { return code(t, s, t0.Add(2*step)) }}, []error{ErrBadCredentials}},
		{"older step after newer refused", []func(string) string{
			func(s string) string { return code(t, s, t0) },
			func(s string) string { return code(t, s, t0.Add(-step)) },
		}, []error{nil, ErrBadCredentials}},
		{"newer step after older accepted", []func(string) string{
			func(s string) string { return code(t, s, t0.Add(-step)) },
			func(s string) string { return code(t, s, t0) },
		}, []error{nil, nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			resp := f.add(t, api.AddUserRequest{Name: "alice", Password: "correct horse", TOTP: true})
			if !resp.User.TOTP || !strings.HasPrefix(resp.TOTPURL, "otpauth://totp/") || !strings.Contains(resp.TOTPURL, "issuer=Remoteler") {
				t.Fatalf("got user %+v and URL %q, want TOTP enrolled", resp.User, resp.TOTPURL)
			}
			secret := secretOf(t, resp.TOTPURL)
			for i, c := range tt.codes {
				sent := c(secret)
				_, err := f.svc.Authenticate(ctx, "alice", "correct horse", sent)
				if !errors.Is(err, tt.want[i]) {
					t.Errorf("attempt %d with code %q: got %v, want %v", i+1, sent, err, tt.want[i])
				}
			}
			if strings.Contains(f.log.String(), secret) {
				t.Error("the log holds the TOTP secret")
			}
		})
	}
}

func TestTOTPWrongPasswordFirst(t *testing.T) {
	f := newFixture(t)
	resp := f.add(t, api.AddUserRequest{Name: "alice", Password: "correct horse", TOTP: true})
	c := code(t, secretOf(t, resp.TOTPURL), t0)
	ctx := context.Background()
	tests := []struct {
		name, password, code string
		want                 error
	}{
		{"wrong password no code", "wrong horse", "", ErrBadCredentials},
		{"wrong password good code", "wrong horse", c, ErrBadCredentials},
		{"good code not spent by the failure", "correct horse", c, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := f.svc.Authenticate(ctx, "alice", tt.password, tt.code); !errors.Is(err, tt.want) {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestConcurrentTOTPReplay(t *testing.T) {
	f := newFixture(t)
	f.svc.Logger = nil
	f.svc.MaxHashes = 8
	resp := f.add(t, api.AddUserRequest{Name: "alice", Password: "correct horse", TOTP: true})
	c := code(t, secretOf(t, resp.TOTPURL), t0)
	var ok atomic.Int32
	var wg sync.WaitGroup
	for range 4 { // at most MaxFailures-1 may fail without a lock-out
		wg.Go(func() {
			_, err := f.svc.Authenticate(context.Background(), "alice", "correct horse", c)
			switch {
			case err == nil:
				ok.Add(1)
			case !errors.Is(err, ErrBadCredentials):
				t.Errorf("got %v, want nil or ErrBadCredentials", err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 1 {
		t.Errorf("one code logged in %d times concurrently, want once", ok.Load())
	}
}

func TestLockOut(t *testing.T) {
	ctx := context.Background()
	type attempt struct {
		user, password string
		advance        time.Duration // before the attempt
		want           error
	}
	wrong := func(user string) attempt { return attempt{user, "wrong horse", 0, ErrBadCredentials} }
	tests := []struct {
		name     string
		attempts []attempt
	}{
		{"locked after five, released after a minute", []attempt{
			wrong("alice"), wrong("alice"), wrong("alice"), wrong("alice"), wrong("alice"),
			{"alice", "correct horse", 0, ErrLocked},
			{"alice", "correct horse", 59 * time.Second, ErrLocked},
			{"alice", "correct horse", time.Second, nil},
		}},
		{"other users unaffected", []attempt{
			wrong("alice"), wrong("alice"), wrong("alice"), wrong("alice"), wrong("alice"),
			{"bob", "correct horse", 0, nil},
		}},
		{"success resets the run", []attempt{
			wrong("alice"), wrong("alice"), wrong("alice"), wrong("alice"),
			{"alice", "correct horse", 0, nil},
			wrong("alice"), wrong("alice"), wrong("alice"), wrong("alice"),
			{"alice", "correct horse", 0, nil},
		}},
		{"unknown users lock too", []attempt{
			wrong("nobody"), wrong("nobody"), wrong("nobody"), wrong("nobody"), wrong("nobody"),
			{"nobody", "wrong horse", 0, ErrLocked},
		}},
		{"a new run after release", []attempt{
			wrong("alice"), wrong("alice"), wrong("alice"), wrong("alice"), wrong("alice"),
			{"alice", "wrong horse", time.Minute, ErrBadCredentials},
			{"alice", "correct horse", 0, nil},
		}},
		{"old failures forgotten", []attempt{
			wrong("alice"), wrong("alice"), wrong("alice"), wrong("alice"),
			{"alice", "wrong horse", 16 * time.Minute, ErrBadCredentials},
			wrong("alice"), wrong("alice"), wrong("alice"),
			{"alice", "correct horse", 0, nil},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.add(t, api.AddUserRequest{Name: "alice", Password: "correct horse"})
			f.add(t, api.AddUserRequest{Name: "bob", Password: "correct horse"})
			for i, a := range tt.attempts {
				f.clock.Add(a.advance)
				_, err := f.svc.Authenticate(ctx, a.user, a.password, "")
				if !errors.Is(err, a.want) {
					t.Fatalf("attempt %d (%s): got %v, want %v", i+1, a.user, err, a.want)
				}
			}
		})
	}
}

func TestTOTPRequiredDoesNotResetRun(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	resp := f.add(t, api.AddUserRequest{Name: "alice", Password: "correct horse", TOTP: true})
	for i := range 4 {
		if _, err := f.svc.Authenticate(ctx, "alice", "correct horse", "000000"); !errors.Is(err, ErrBadCredentials) {
			t.Fatalf("guess %d: got %v, want ErrBadCredentials", i+1, err)
		}
	}
	if _, err := f.svc.Authenticate(ctx, "alice", "correct horse", ""); !errors.Is(err, ErrTOTPRequired) {
		t.Fatalf("without a code: got %v, want ErrTOTPRequired", err)
	}
	if _, err := f.svc.Authenticate(ctx, "alice", "correct horse", "000001"); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("fifth guess: got %v, want ErrBadCredentials", err)
	}
	good := code(t, secretOf(t, resp.TOTPURL), t0)
	if _, err := f.svc.Authenticate(ctx, "alice", "correct horse", good); !errors.Is(err, ErrLocked) {
		t.Errorf("after five wrong codes: got %v, want ErrLocked", err)
	}
}

func TestRehashOnParamChange(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.add(t, api.AddUserRequest{Name: "alice", Password: "correct horse"})
	stronger := HashParams{Time: 2, MemoryKiB: 128, Threads: 1}
	svc2 := &Service{Store: f.store, Now: f.clock.Now, HashParams: stronger}
	if _, err := svc2.Authenticate(ctx, "alice", "correct horse", ""); err != nil {
		t.Fatal(err)
	}
	raw, _ := f.store.Get(ctx, "users/alice")
	if !bytes.Contains(raw, []byte("m=128,t=2,p=1")) {
		t.Errorf("stored record %s, want the hash upgraded to m=128,t=2,p=1", raw)
	}
	for _, s := range []*Service{f.svc, svc2} {
		if _, err := s.Authenticate(ctx, "alice", "correct horse", ""); err != nil {
			t.Errorf("login after upgrade: %v", err)
		}
	}
}

// occupySlots takes every hashing slot and returns a function that gives
// one back.
func occupySlots(t *testing.T, svc *Service) (release func()) {
	t.Helper()
	svc.init()
	for range DefaultHashes {
		if err := svc.slots.acquire(context.Background(), laneNormal, 1, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	held := DefaultHashes
	t.Cleanup(func() {
		for ; held > 0; held-- {
			svc.slots.release()
		}
	})
	return func() {
		if held > 0 {
			held--
			svc.slots.release()
		}
	}
}

// waitQueued waits until n logins wait in lane.
func waitQueued(t *testing.T, svc *Service, lane, n int) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		q, more := svc.slots.waiting()
		if q[lane] >= n {
			return
		}
		select {
		case <-more:
		case <-timeout:
			t.Fatalf("%d logins waiting in lane %d, want %d", q[lane], lane, n)
		}
	}
}

func TestHashSlotsHonourContext(t *testing.T) {
	f := newFixture(t)
	occupySlots(t, f.svc)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	if err := f.svc.withHashSlot(ctx, func() { ran = true }); !errors.Is(err, context.Canceled) || ran {
		t.Errorf("got %v (ran %v), want context.Canceled without running", err, ran)
	}
}

func TestCancelledAttemptsAreNotFailures(t *testing.T) {
	f := newFixture(t)
	f.add(t, api.AddUserRequest{Name: "alice", Password: "correct horse"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for range 2 * DefaultMaxFailures {
		if _, err := f.svc.Authenticate(ctx, "alice", "wrong horse", ""); !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	}
	if _, err := f.svc.Authenticate(context.Background(), "alice", "correct horse", ""); err != nil {
		t.Errorf("after cancelled attempts: got %v, want a login", err)
	}
}

func TestThrottleEviction(t *testing.T) {
	th := newThrottle(5, time.Minute, time.Hour)
	now := t0
	for i := range maxTracked + 10 {
		name := fmt.Sprint("u", i)
		if err := th.begin(name, now); err != nil {
			t.Fatal(err)
		}
		th.end(name, failed, false, now)
		now = now.Add(time.Millisecond)
	}
	if n := len(th.names); n > maxTracked {
		t.Errorf("tracking %d names, want at most %d", n, maxTracked)
	}
}

// TestLockOutGrows: each lock-out of a run of failures lasts twice the one
// before, up to the ceiling; with the password known, an attacker who
// guesses one-time codes whenever the lock lifts gets a few dozen guesses
// a day (a fixed 1-minute lock-out allowed about 7,000).
func TestLockOutGrows(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.svc.Logger = nil
	resp := f.add(t, api.AddUserRequest{Name: "alice", Password: "correct horse", TOTP: true})
	secret := secretOf(t, resp.TOTPURL)
	start := f.clock.Now()
	guesses, locks := 0, []time.Duration{}
	var lockedAt time.Time
	for f.clock.Now().Sub(start) < 24*time.Hour {
		// A wrong code, never a right one: try a code from an hour ago.
		wrongCode := code(t, secret, f.clock.Now().Add(-time.Hour))
		_, err := f.svc.Authenticate(ctx, "alice", "correct horse", wrongCode)
		switch {
		case errors.Is(err, ErrBadCredentials):
			guesses++
			if lockedAt.IsZero() {
				continue
			}
			locks = append(locks, f.clock.Now().Sub(lockedAt))
			lockedAt = time.Time{}
		case errors.Is(err, ErrLocked):
			if lockedAt.IsZero() {
				lockedAt = f.clock.Now()
			}
			f.clock.Add(time.Second)
		default:
			t.Fatalf("guess %d: %v", guesses+1, err)
		}
	}
	want := []time.Duration{1, 2, 4, 8, 16, 32, 64, 128, 240, 240}
	for i, w := range want {
		w *= time.Minute
		if i >= len(locks) || locks[i] < w || locks[i] > w+2*time.Second {
			t.Fatalf("lock-outs lasted %v, want %v minutes then 4 h each", locks, want)
		}
	}
	t.Logf("%d guesses in a day, lock-outs %v", guesses, locks)
	if guesses > 100 {
		t.Errorf("%d guesses in a day, want at most 100", guesses)
	}
	// A day without failures forgets the doubling.
	f.clock.Add(4*time.Hour + 25*time.Hour)
	for range DefaultMaxFailures {
		f.svc.Authenticate(ctx, "alice", "wrong horse", "")
	}
	f.clock.Add(time.Minute)
	if _, err := f.svc.Authenticate(ctx, "alice", "correct horse", code(t, secret, f.clock.Now())); err != nil {
		t.Errorf("a minute after the first lock-out of a new day: %v, want a login", err)
	}
}

// TestSprayCannotUnlockAUser: failures for more made-up names than the
// throttle tracks do not evict a locked-out user.
func TestSprayCannotUnlockAUser(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.svc.Logger = nil
	f.add(t, api.AddUserRequest{Name: "alice", Password: "correct horse"})
	for range DefaultMaxFailures {
		f.svc.Authenticate(ctx, "alice", "wrong horse", "")
	}
	for i := range maxTracked + 100 {
		name := fmt.Sprint("spray", i)
		f.svc.throttle.begin(name, f.clock.Now())
		f.svc.throttle.end(name, failed, false, f.clock.Now())
	}
	if _, err := f.svc.Authenticate(ctx, "alice", "correct horse", ""); !errors.Is(err, ErrLocked) {
		t.Errorf("after a spray of %d names: got %v, want alice still locked", maxTracked+100, err)
	}
	if n := f.svc.throttle.unknown; n > maxTracked {
		t.Errorf("tracking %d unknown names, want at most %d", n, maxTracked)
	}
}

// TestHashQueueAnswersBusy: with every hashing slot taken and the queue
// full, a login is told at once to try again, a queued one after HashWait,
// and neither counts as a failure.
func TestHashQueueAnswersBusy(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t)
	f.add(t, api.AddUserRequest{Name: "alice", Password: "correct horse"})
	f.svc.MaxHashQueue, f.svc.HashWait = 2, 200*time.Millisecond
	release := occupySlots(t, f.svc)
	queued := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := f.svc.Authenticate(ctx, "alice", "correct horse", "")
			queued <- err
		}()
	}
	waitQueued(t, f.svc, laneNormal, 2)
	if _, err := f.svc.Authenticate(ctx, "alice", "correct horse", ""); !errors.Is(err, ErrBusy) {
		t.Fatalf("with the queue full: got %v, want ErrBusy", err)
	}
	for range 2 {
		if err := <-queued; !errors.Is(err, ErrBusy) {
			t.Errorf("a queued login: got %v, want ErrBusy after HashWait", err)
		}
	}
	for range DefaultHashes {
		release()
	}
	for range 2 * DefaultMaxFailures {
		if _, err := f.svc.Authenticate(ctx, "alice", "correct horse", ""); err != nil {
			t.Fatalf("once slots are free: %v (busy answers must not count as failures)", err)
		}
	}
}

// TestLowPriorityWaitsBehind: a freed hashing slot goes to a login waiting
// in the normal queue before one from a source marked low priority, even
// one that came later.
func TestLowPriorityWaitsBehind(t *testing.T) {
	f := newFixture(t)
	f.add(t, api.AddUserRequest{Name: "alice", Password: "correct horse"})
	f.svc.HashWait = time.Minute
	release := occupySlots(t, f.svc)
	done := make(chan string, 2)
	login := func(name string, ctx context.Context) {
		if _, err := f.svc.Authenticate(ctx, "alice", "correct horse", ""); err != nil {
			t.Errorf("%s login: %v", name, err)
		}
		done <- name
	}
	go login("low", WithLowPriority(context.Background()))
	waitQueued(t, f.svc, laneLow, 1)
	go login("normal", context.Background())
	waitQueued(t, f.svc, laneNormal, 1)
	release()
	if first := <-done; first != "normal" {
		t.Errorf("the %s login went first, want the normal one", first)
	}
	release()
	if second := <-done; second != "low" {
		t.Errorf("then %s, want the low-priority one", second)
	}
}
