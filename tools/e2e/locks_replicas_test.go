package e2e

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/harness"
)

// lockFleet is startReplicas with device pi-1 (its tunnel on replica A)
// and user alice, logged in through each replica: users[i] is her
// TSH_HOME logged in at replica i, ssh[i] the OpenSSH configuration that
// tsh config wrote there (so its ProxyCommand goes to replica i).
type lockFleet struct {
	*replicaFleet
	password string
	users    [3]*harness.User
	ssh      [3]string
}

// sessionCut bounds the time from a lock's write to the end of a session
// it matches, in the tests that assert it: the fleet aims at well under a
// second; the bound is wide so that a loaded 2-core machine cannot fail it.
const sessionCut = 5 * time.Second

func startLockFleet(t *testing.T) *lockFleet {
	t.Helper()
	lf := &lockFleet{replicaFleet: startReplicas(t)}
	lf.device(t, "pi-1")
	lf.password = lf.reps[repA].AddUser("alice", "access", "root")
	for i := range lf.reps {
		u, errOut, err := lf.tshLogin(i)
		if err != nil {
			t.Fatalf("tsh login through replica %c: %v\n%s", 'A'+i, err, errOut)
		}
		lf.users[i] = u
		lf.ssh[i] = openSSHConfig(t, u)
	}
	if got := replicaOf(lf.reps[repC], "pi-1"); got != "r-a" {
		t.Fatalf("pi-1 on %q, want r-a", got)
	}
	return lf
}

// tshLogin logs alice in, with a TSH_HOME of her own, through replica i.
func (lf *lockFleet) tshLogin(i int) (*harness.User, string, error) {
	u := lf.reps[repA].NewUser("alice")
	_, errOut, err := u.TshErr(lf.password+"\n", "login", "--proxy="+lf.reps[i].Addr, "--user=alice", "--ca-pin="+lf.reps[repA].Pin)
	return u, errOut, err
}

// openSSH starts a live OpenSSH session to pi-1 as alice through replica
// i (tsh proxy ssh) and waits until the device runs its command.
func (lf *lockFleet) openSSH(t *testing.T, i int) *harness.Proc {
	t.Helper()
	p := start(t, fmt.Sprintf("ssh via %c", 'A'+i), nil, "ssh", "-F", lf.ssh[i], "-o", "BatchMode=yes", "root@pi-1.fleet", "echo started; exec sleep 600")
	p.WaitLine(regexp.MustCompile(`^started$`), time.Minute)
	return p
}

// tshSSH starts a live tsh ssh session to pi-1 as alice through replica i.
func (lf *lockFleet) tshSSH(t *testing.T, i int) *harness.Proc {
	t.Helper()
	p := start(t, fmt.Sprintf("tsh ssh via %c", 'A'+i), lf.users[i].Env(), "tsh", "ssh", "root@pi-1", "echo started; exec sleep 600")
	p.WaitLine(regexp.MustCompile(`^started$`), time.Minute)
	return p
}

// lock runs fleetctl lock args... against replica i's API and returns
// the lock the fleet wrote (its Created is when the replica wrote it).
func (lf *lockFleet) lock(t *testing.T, i int, args ...string) api.Lock {
	t.Helper()
	out := lf.reps[i].Ctl("", append([]string{"lock", "--format=json"}, args...)...)
	var l api.Lock
	if err := json.Unmarshal([]byte(out), &l); err != nil || l.ID == "" || l.Created.IsZero() {
		t.Fatalf("fleetctl lock --format=json printed %q (%v), want the lock", out, err)
	}
	return l
}

// viewLocks returns the locks in replica i's live view: GET
// /v1/locks?after=0 answers from the view the replica enforces (at once,
// its revision being past 0), where a plain GET reads the store.
func (lf *lockFleet) viewLocks(t *testing.T, i int) []api.Lock {
	t.Helper()
	f := lf.reps[i]
	pemBytes, err := os.ReadFile(filepath.Join(f.DataDir, "admin", "identity.pem"))
	if err != nil {
		t.Fatal(err)
	}
	// The admin identity holds the admin's certificate, the fleet's CAs
	// and the key: X509KeyPair takes the certificates and the key from it.
	id, err := tls.X509KeyPair(pemBytes, pemBytes)
	if err != nil {
		t.Fatalf("admin identity of replica %c: %v", 'A'+i, err)
	}
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{id},
		// What this asks is the replica's view; its certificate is what
		// fleetctl checks, by the fleet's pin, in every other call here.
		InsecureSkipVerify: true,
	}}}
	defer c.CloseIdleConnections()
	resp, err := c.Get("https://" + f.Addr + api.PathLocks + "?after=0&wait=1s")
	if err != nil {
		t.Fatalf("GET %s on replica %c: %v", api.PathLocks, 'A'+i, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var list api.LockList
	if resp.StatusCode != http.StatusOK || json.Unmarshal(b, &list) != nil {
		t.Fatalf("GET %s on replica %c: %s\n%s", api.PathLocks, 'A'+i, resp.Status, b)
	}
	return list.Items
}

// awaitViews waits until every replica's view holds lock id (in) or no
// longer holds it (!in), and returns how long that took.
func (lf *lockFleet) awaitViews(t *testing.T, id string, in bool) time.Duration {
	t.Helper()
	start := time.Now()
	for i := range lf.reps {
		has := func() bool {
			return slices.ContainsFunc(lf.viewLocks(t, i), func(l api.Lock) bool { return l.ID == id })
		}
		if !harness.Eventually(time.Minute, func() bool { return has() == in }) {
			t.Fatalf("replica %c's view of the locks: holds %s = %v a minute on, want %v", 'A'+i, id, has(), in)
		}
	}
	return time.Since(start)
}

// cutBy waits for session p to end because of lock l, checks that its user
// was shown the lock and its message, and returns the time from the
// lock's write to the session's client exiting.
func cutBy(t *testing.T, p *harness.Proc, l api.Lock) time.Duration {
	t.Helper()
	select {
	case <-p.Done():
	case <-time.After(time.Minute):
		t.Fatalf("%s outlived lock %s by a minute:\n%s", p.Name(), l.ID, p.Output())
	}
	took := p.ExitedAt().Sub(l.Created)
	// tsh (tsh ssh, or tsh proxy ssh under OpenSSH) prints the reason the
	// fleet gives in-band at the cut; AwaitOutput reads to the end.
	if err := p.AwaitOutput(t.Context(), "tsh: the session to pi-1 ended: ", 10*time.Second); err != nil {
		t.Errorf("%s: %v", p.Name(), err)
	} else if out := p.Output(); !strings.Contains(out, "lock "+l.ID) || !strings.Contains(out, l.Message) {
		t.Errorf("%s's user saw %q, want lock %s and its message %q", p.Name(), out, l.ID, l.Message)
	}
	if p.Err() == nil {
		t.Errorf("%s exited 0 after lock %s cut its session", p.Name(), l.ID)
	}
	return took
}

// TestLocksReplicas: three replicas on etcd, pi-1's tunnel on replica A.
// Alice holds an OpenSSH session (tsh proxy ssh) through replica C and a
// tsh ssh session through replica B; a lock on her written through
// replica A's API ends both, each within sessionCut of the lock's write
// (the times are logged), with the lock's message shown. While the lock
// holds, every replica's view has it, and a new tsh login, tsh ssh or
// OpenSSH through any replica is refused with the message. Removing the
// lock through replica B gives her access back through every replica.
func TestLocksReplicas(t *testing.T) {
	lf := startLockFleet(t)
	sshC := lf.openSSH(t, repC)
	tshB := lf.tshSSH(t, repB)

	const msg = "laptop reported stolen; call the help desk"
	l := lf.lock(t, repA, "--user=alice", "--message="+msg)
	for _, p := range []*harness.Proc{sshC, tshB} {
		took := cutBy(t, p, l)
		t.Logf("%s ended %s after the lock's write on replica A", p.Name(), took.Round(time.Millisecond))
		if took > sessionCut {
			t.Errorf("%s ended %s after the lock's write, want within %s", p.Name(), took.Round(time.Millisecond), sessionCut)
		}
	}
	t.Logf("every replica's view held the lock %s after the sessions ended", lf.awaitViews(t, l.ID, true).Round(time.Millisecond))

	// Under the lock, nothing new gets through any replica.
	refused := func(what string, errOut string, err error) {
		t.Helper()
		if err == nil || !strings.Contains(errOut, msg) {
			t.Errorf("%s under the lock: %v %q, want a refusal saying %q", what, err, errOut, msg)
		}
	}
	for i := range lf.reps {
		_, errOut, err := lf.tshLogin(i)
		refused(fmt.Sprintf("tsh login through replica %c", 'A'+i), errOut, err)
		_, errOut, err = lf.users[i].TshErr("", "ssh", "root@pi-1", "echo", "again")
		refused(fmt.Sprintf("tsh ssh through replica %c", 'A'+i), errOut, err)
		_, errOut, err = run("", nil, "ssh", "-F", lf.ssh[i], "-o", "BatchMode=yes", "root@pi-1.fleet", "echo", "again")
		refused(fmt.Sprintf("OpenSSH through replica %c", 'A'+i), errOut, err)
	}

	lf.reps[repB].Ctl("", "locks", "rm", l.ID)
	lf.awaitViews(t, l.ID, false)
	for i := range lf.reps {
		if _, errOut, err := lf.tshLogin(i); err != nil {
			t.Errorf("tsh login through replica %c after locks rm: %v\n%s", 'A'+i, err, errOut)
		}
		if out, errOut, err := lf.users[i].TshErr("", "ssh", "root@pi-1", "echo", "again"); err != nil || out != "again\n" {
			t.Errorf("tsh ssh through replica %c after locks rm: %v %q\n%s", 'A'+i, err, out, errOut)
		}
		if out, errOut, err := run("", nil, "ssh", "-F", lf.ssh[i], "-o", "BatchMode=yes", "root@pi-1.fleet", "echo", "again"); err != nil || out != "again\n" {
			t.Errorf("OpenSSH through replica %c after locks rm: %v %q\n%s", 'A'+i, err, out, errOut)
		}
	}
}
