package etcdleader_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"remoteler.dev/edge/fleet/leader"
	"remoteler.dev/edge/fleet/leader/etcdleader"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/etcdstore"
	"remoteler.dev/edge/tools/etcdcluster"
)

const wait = 2 * time.Minute

func randomPrefix() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "/test-" + hex.EncodeToString(b) + "/"
}

// replica opens a store on c under prefix, as one fleetd replica would.
func replica(t *testing.T, c *etcdcluster.Cluster, prefix string) *etcdstore.Store {
	t.Helper()
	s, err := etcdstore.Open(t.Context(), etcdstore.Config{Endpoints: c.Endpoints(), Prefix: prefix, TLS: c.ClientTLS(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// campaign runs e.Campaign in a goroutine; the term arrives on the
// channel (nil when the campaign failed).
func campaign(t *testing.T, ctx context.Context, e leader.Elector) <-chan leader.Term {
	ch := make(chan leader.Term, 1)
	go func() {
		term, err := e.Campaign(ctx)
		if err != nil {
			t.Errorf("campaign: %v", err)
		}
		ch <- term
	}()
	return ch
}

func receive(t *testing.T, ch <-chan leader.Term, what string) leader.Term {
	t.Helper()
	select {
	case term := <-ch:
		if term == nil {
			t.FailNow()
		}
		return term
	case <-time.After(wait):
		t.Fatalf("%s did not win within %s", what, wait)
	}
	return nil
}

// TestDeposedLeaderIsFenced deposes a leader behind its back (its lease is
// revoked from outside, as when it expires while the leader is paused):
// the next candidate wins, and the old leader's fenced write fails in
// etcd's transaction while the new leader's lands.
func TestDeposedLeaderIsFenced(t *testing.T) {
	c := etcdcluster.Start(t, etcdcluster.Options{Members: 3})
	ctx := t.Context()
	prefix := randomPrefix()
	a, b := replica(t, c, prefix), replica(t, c, prefix)
	ea := &etcdleader.Elector{Store: a, Name: "rollouts", ID: "a", TTL: time.Second}
	eb := &etcdleader.Elector{Store: b, Name: "rollouts", ID: "b", TTL: time.Second}
	ta := receive(t, campaign(t, ctx, ea), "a")
	if err := leader.Fenced(a, ta).Put(ctx, "owner", []byte("a")); err != nil {
		t.Fatalf("the leader's write: %v", err)
	}
	wonB := campaign(t, ctx, eb)
	// b queues behind a: its key appears, and it does not win.
	deadline := time.Now().Add(wait)
	for {
		resp, err := c.Client(t).Get(ctx, prefix+leader.KeyPrefix+"rollouts/", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err == nil && resp.Count == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("b never queued: %v %v", resp, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	select {
	case <-wonB:
		t.Fatal("b won while a leads")
	default:
	}

	// Revoke a's lease behind its back.
	resp, err := c.Client(t).Get(ctx, prefix+ta.Guard().Key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("a's election key: %v %v", resp, err)
	}
	if _, err := c.Client(t).Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	tb := receive(t, wonB, "b")
	defer tb.Resign(ctx)
	if err := leader.Fenced(b, tb).Put(ctx, "owner", []byte("b")); err != nil {
		t.Fatalf("the new leader's write: %v", err)
	}
	if err := leader.Fenced(a, ta).Put(ctx, "owner", []byte("a again")); !errors.Is(err, store.ErrFenced) {
		t.Fatalf("the deposed leader's write: err = %v, want ErrFenced", err)
	}
	if v, err := a.Get(ctx, "owner"); err != nil || string(v) != "b" {
		t.Errorf("owner = %q, %v; want %q", v, err, "b")
	}
	select {
	case <-ta.Done():
	case <-time.After(wait):
		t.Error("the deposed term's Done never closed")
	}
}

// TestResignHandsOver: the next candidate leads as soon as the leader
// resigns, without waiting for a lease to expire.
func TestResignHandsOver(t *testing.T) {
	c := etcdcluster.Start(t, etcdcluster.Options{Members: 1})
	ctx := t.Context()
	prefix := randomPrefix()
	a, b := replica(t, c, prefix), replica(t, c, prefix)
	ta := receive(t, campaign(t, ctx, &etcdleader.Elector{Store: a, Name: "j", TTL: time.Minute}), "a")
	wonB := campaign(t, ctx, &etcdleader.Elector{Store: b, Name: "j", TTL: time.Minute})
	start := time.Now()
	if err := ta.Resign(ctx); err != nil {
		t.Fatal(err)
	}
	tb := receive(t, wonB, "b")
	defer tb.Resign(ctx)
	t.Logf("b led %s after a resigned (lease TTL 1m)", time.Since(start).Round(time.Millisecond))
	if time.Since(start) >= time.Minute {
		t.Errorf("b took over only after a's lease expired")
	}
	if err := leader.Fenced(a, ta).Delete(ctx, "x"); !errors.Is(err, store.ErrFenced) {
		t.Errorf("write after Resign: err = %v, want ErrFenced", err)
	}
}

// helperEnv makes the test binary run pausedLeader instead of the tests.
const helperEnv = "ETCDLEADER_TEST_LEADER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(pausedLeader())
	}
	os.Exit(m.Run())
}

// pausedLeader is the leader process of TestPausedLeaderCannotWrite: it
// campaigns, prints "leader", then for each line "write KEY VALUE" on its
// stdin makes a fenced write and prints "ok" or "err ERROR".
func pausedLeader() int {
	var cfg struct{ endpoints, prefix string }
	cfg.endpoints, cfg.prefix = os.Getenv(helperEnv+"_ENDPOINTS"), os.Getenv(helperEnv+"_PREFIX")
	ctx := context.Background()
	st, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: strings.Split(cfg.endpoints, ","), Prefix: cfg.prefix})
	if err != nil {
		fmt.Println("err", err)
		return 1
	}
	defer st.Close()
	term, err := (&etcdleader.Elector{Store: st, Name: "checkpoints", ID: "paused", TTL: time.Second}).Campaign(ctx)
	if err != nil {
		fmt.Println("err", err)
		return 1
	}
	fenced := leader.Fenced(st, term)
	fmt.Println("leader")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 || f[0] != "write" {
			continue
		}
		if err := fenced.Put(ctx, f[1], []byte(f[2])); err != nil {
			fmt.Println("err", err)
			continue
		}
		fmt.Println("ok")
	}
	return 0
}

// TestPausedLeaderCannotWrite stops a real leader process (SIGSTOP) past
// its lease, lets another replica take over and write, resumes the old
// leader and has it write at once, before it can notice: the write fails
// with ErrFenced and the new leader's value stays.
func TestPausedLeaderCannotWrite(t *testing.T) {
	c := etcdcluster.Start(t, etcdcluster.Options{Members: 3})
	ctx := t.Context()
	prefix := randomPrefix()

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1",
		helperEnv+"_ENDPOINTS="+strings.Join(c.Endpoints(), ","), helperEnv+"_PREFIX="+prefix)
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		cmd.Wait()
	})
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	expectLine := func(what string) string {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("the leader process exited before %s", what)
			}
			return l
		case <-time.After(wait):
			t.Fatalf("no %s from the leader process within %s", what, wait)
		}
		return ""
	}
	if l := expectLine("leader"); l != "leader" {
		t.Fatalf("leader process: %q, want %q", l, "leader")
	}
	io.WriteString(stdin, "write owner paused\n")
	if l := expectLine("write result"); l != "ok" {
		t.Fatalf("the leader's first write: %q, want ok", l)
	}

	// Pause it: its lease renewals stop with it.
	if err := cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	b := replica(t, c, prefix)
	paused := time.Now()
	tb := receive(t, campaign(t, ctx, &etcdleader.Elector{Store: b, Name: "checkpoints", ID: "b", TTL: time.Second}), "b")
	defer tb.Resign(ctx)
	t.Logf("b leads %s after the leader was paused", time.Since(paused).Round(time.Millisecond))
	if err := leader.Fenced(b, tb).Put(ctx, "owner", []byte("b")); err != nil {
		t.Fatalf("the new leader's write: %v", err)
	}

	// Resume the old leader and have it write at once.
	if err := cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	io.WriteString(stdin, "write owner paused-again\n")
	l := expectLine("write result")
	t.Logf("the resumed leader's write: %s", l)
	if !strings.HasPrefix(l, "err ") || !strings.Contains(l, store.ErrFenced.Error()) {
		t.Errorf("the resumed leader's write: %q, want an error carrying %q", l, store.ErrFenced)
	}
	if v, err := b.Get(ctx, "owner"); err != nil || string(v) != "b" {
		t.Errorf("owner = %q, %v; want %q", v, err, "b")
	}
}
