package e2e

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/balancer"
	"remoteler.dev/edge/tools/etcdcluster"
	"remoteler.dev/edge/tools/harness"
	"remoteler.dev/edge/tools/linksim"
	"remoteler.dev/edge/tools/logtest"
)

// replicaFleet is three fleetd replicas on a three-member etcd cluster
// behind one address (tools/balancer): devices go to replica A first,
// users to C first, each to the next when its replica is down.
type replicaFleet struct {
	etcd *etcdcluster.Cluster
	reps [3]*harness.Fleet
	lb   *balancer.Balancer
}

const (
	repA = 0
	repB = 1
	repC = 2
)

// replicaOptions adjust startReplicas.
type replicaOptions struct {
	// store returns replica i's --store; default the cluster's URL.
	store func(rf *replicaFleet, i int) string
	// devices and users are the replicas devices and users go to, in
	// order; default A, B, C for devices and C, B, A for users.
	devices, users []int
	// config is every replica's --config file (YAML); "" for none.
	config string
	// args are more arguments of every replica.
	args []string
	// appsDomain, when set, is every replica's apps domain, and the
	// balancer's address (bound before the replicas start) their public
	// URL's port: a browser reaches the fleet and its apps through the
	// balancer.
	appsDomain string
}

// startReplicas starts the cluster, the replicas and the balancer.
func startReplicas(t *testing.T) *replicaFleet {
	t.Helper()
	return startReplicasWith(t, replicaOptions{})
}

func startReplicasWith(t *testing.T, opts replicaOptions) *replicaFleet {
	t.Helper()
	if opts.store == nil {
		opts.store = func(rf *replicaFleet, _ int) string { return rf.etcd.StoreURL("fleet-replicas") }
	}
	if opts.devices == nil {
		opts.devices = []int{repA, repB, repC}
	}
	if opts.users == nil {
		opts.users = []int{repC, repB, repA}
	}
	var lbTCP net.Listener
	var lbUDP *net.UDPConn
	if d := opts.appsDomain; d != "" {
		var err error
		if lbTCP, lbUDP, err = balancer.Listen("127.0.0.1:0"); err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(lbTCP.Addr().String())
		opts.config += "apps_domain: " + d + "\npublic_addrs: [" + d + ", 127.0.0.1, localhost]\npublic_url: https://" + d + ":" + port + "\n"
	}
	var config []string
	if opts.config != "" {
		path := filepath.Join(t.TempDir(), "fleetd.yaml")
		if err := os.WriteFile(path, []byte(opts.config), 0o600); err != nil {
			t.Fatal(err)
		}
		config = []string{"--config", path}
	}
	rf := &replicaFleet{etcd: etcdcluster.Start(t, etcdcluster.Options{Members: 3})}
	for i := range rf.reps {
		rf.reps[i] = harness.StartFleet(t, harness.FleetConfig{Bin: bin, Args: append([]string{
			"--store", opts.store(rf, i), "--peer-listen", "127.0.0.1:0", "--replica-lease-ttl", "5s",
			"--replica-id", fmt.Sprintf("r-%c", 'a'+i),
		}, append(config, opts.args...)...)})
	}
	var addrs []string
	for _, f := range rf.reps {
		addrs = append(addrs, f.Addr)
	}
	lb, err := balancer.Start(balancer.Config{Backends: addrs, TCP: lbTCP, UDP: lbUDP, Logger: logtest.Logger(t), Rule: func(c balancer.Client) []int {
		if c.Network == "udp" {
			return opts.devices
		}
		return opts.users
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lb.Close)
	rf.lb = lb
	return rf
}

// login logs a user in through the balancer (on replica C).
func (rf *replicaFleet) login(t *testing.T, name string) *harness.User {
	t.Helper()
	return rf.loginVia(t, name, rf.lb.Addr())
}

// loginVia logs a user in with proxy addr: the balancer, or one replica.
func (rf *replicaFleet) loginVia(t *testing.T, name, addr string) *harness.User {
	t.Helper()
	f := rf.reps[repA]
	pw := f.AddUser(name, "access", "root")
	u := f.NewUser(name)
	if out, errOut, err := u.TshErr(pw+"\n", "login", "--proxy="+addr, "--user="+name, "--ca-pin="+f.Pin); err != nil {
		t.Fatalf("tsh login %s through %s: %v\n%s%s", name, addr, err, out, errOut)
	}
	return u
}

// device starts a device through the balancer (its tunnel on replica A).
func (rf *replicaFleet) device(t *testing.T, name string) *harness.Agent {
	t.Helper()
	return rf.deviceWith(t, harness.AgentConfig{Name: name})
}

// deviceWith starts the device cfg describes through the balancer (its
// tunnel on replica A), whatever cfg.Fleet says.
func (rf *replicaFleet) deviceWith(t *testing.T, cfg harness.AgentConfig) *harness.Agent {
	t.Helper()
	cfg.Fleet = rf.lb.Addr()
	return rf.reps[repA].StartAgentWith(cfg)
}

// onlineOn reports whether replica i lists device name online, and with
// which address.
func onlineOn(f *harness.Fleet, name string) bool {
	return f.Online(name)
}

// ready asks replica f's readiness check.
func ready(t *testing.T, f *harness.Fleet) api.Ready {
	t.Helper()
	out, _, err := run("", nil, "curl", "-sk", "https://"+f.Addr+api.PathReady)
	var r api.Ready
	if err == nil {
		json.Unmarshal([]byte(out), &r)
	}
	return r
}

// TestReplicasRoute: a device on replica A, a user on replica C: tsh ls on
// every replica shows the device online; tsh ssh and OpenSSH reach it
// through C and A; every replica is ready and names itself.
func TestReplicasRoute(t *testing.T) {
	rf := startReplicas(t)
	rf.device(t, "pi-1")
	alice := rf.login(t, "alice")
	for i, f := range rf.reps {
		if !onlineOn(f, "pi-1") {
			t.Errorf("replica %d lists pi-1 offline", i)
		}
		if r := ready(t, f); !r.Ready || r.Replica != fmt.Sprintf("r-%c", 'a'+i) {
			t.Errorf("replica %d readiness %+v", i, r)
		}
	}
	if out := alice.Tsh("ls"); !strings.Contains(out, "pi-1") || !strings.Contains(out, "online") {
		t.Errorf("tsh ls through replica C = %q, want pi-1 online", out)
	}
	// The dashboard on C lists pi-1 online, its tunnel on another replica,
	// and offers its terminal.
	// (C's picture reads presence once a second.)
	web := webLogin(t, rf.reps[repC], "alice", harness.Password("alice"))
	var body string
	if !harness.Eventually(30*time.Second, func() bool {
		body = webGet(t, web, rf.reps[repC], "/web/devices/pi-1")
		return strings.Contains(body, `class="badge online"`) && strings.Contains(body, "on another replica") && strings.Contains(body, `id="connect"`)
	}) {
		t.Errorf("replica C's dashboard does not show pi-1 online on another replica, with its Connect button:\n%s", body)
	}
	if out := alice.Tsh("ssh", "root@pi-1", "echo", "through C and A"); out != "through C and A\n" {
		t.Errorf("tsh ssh = %q", out)
	}
	cfg := openSSHConfig(t, alice)
	if out, errOut, err := run("", nil, "ssh", "-F", cfg, "-o", "BatchMode=yes", "root@pi-1.fleet", "echo", "openssh"); err != nil || out != "openssh\n" {
		t.Errorf("OpenSSH = %q, %v\n%s", out, err, errOut)
	}
	// The replicas' logs say the stream went from C to A.
	rf.reps[repA].Proc.WaitOutput("stream opened for a peer", 10*time.Second)

	// A recorded session: the device uploads the recording to A; tsh on C
	// lists it and plays it back.
	saw, errOut, err := alice.TshErr("", "ssh", "-t", "root@pi-1", "echo recorded on A")
	if err != nil {
		t.Fatalf("tsh ssh -t: %v\n%s", err, errOut)
	}
	rec := recordingOf(t, alice, time.Minute, `"echo recorded on A" (listed through C)`, func(r api.Recording) bool { return r.Command == "echo recorded on A" })
	if played := alice.Tsh("play", "--speed=0", rec.ID); played != saw {
		t.Errorf("played back through C %q, the user saw %q", played, saw)
	}
}

// replicaOf returns the replica that replica f says holds device name's
// tunnel ("" when f lists it offline, or cannot answer).
func replicaOf(f *harness.Fleet, name string) string {
	ds, err := f.DevicesErr()
	if err != nil {
		return ""
	}
	for _, d := range ds {
		if d.Name == name && d.Online {
			return d.Replica
		}
	}
	return ""
}

// TestReplicaKilled: replica A, which holds the device's tunnel, is
// killed (SIGKILL): the device is back on another replica within seconds,
// and C routes the next session there; A's restart takes nothing.
func TestReplicaKilled(t *testing.T) {
	rf := startReplicas(t)
	agent := rf.device(t, "pi-1")
	alice := rf.login(t, "alice")
	c := rf.reps[repC]
	if got := replicaOf(c, "pi-1"); got != "r-a" {
		t.Fatalf("pi-1 on %q, want r-a", got)
	}
	mark := agent.Proc.Mark()
	start := time.Now()
	rf.reps[repA].Kill()
	if !harness.Eventually(time.Minute, func() bool { return replicaOf(c, "pi-1") == "r-b" }) {
		t.Fatalf("pi-1 not on replica B within a minute of A's death: on %q", replicaOf(c, "pi-1"))
	}
	t.Logf("pi-1 back on replica B %v after A was killed", time.Since(start).Round(time.Millisecond))
	// B took the session ticket A issued: the keys are the fleet's.
	if _, _, err := agent.Proc.AwaitLine(t.Context(), mark, regexp.MustCompile(`tunnel up.* resumed=true 0rtt=true`), 30*time.Second); err != nil {
		t.Errorf("the device's reconnection to B was not a resumed 0-RTT handshake: %v\n%s", err, agent.Proc.Tail(20))
	}
	if out := alice.Tsh("ssh", "root@pi-1", "echo", "after A died"); out != "after A died\n" {
		t.Errorf("tsh ssh after A died = %q", out)
	}
}

// auditSearch runs fleetctl audit search --format=json on replica f.
func auditSearch(t *testing.T, f *harness.Fleet, args ...string) api.AuditSearch {
	t.Helper()
	var res api.List[api.AuditEvent]
	out := f.Ctl("", append([]string{"audit", "search", "--format=json", "--limit=1000"}, args...)...)
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("audit search --format=json: %v\n%s", err, out)
	}
	return api.AuditSearch{Events: res.Items, Truncated: res.Truncated}
}

// TestReplicasAudit: one trail per device over the replicas. A session
// brokered by C to a device on A, then the device moves to B and another
// session runs: a search on any replica shows every event once, the
// device's events verified against C's records, and audit verify finds
// every replica's chains whole and the device's stretches joined.
func TestReplicasAudit(t *testing.T) {
	rf := startReplicas(t)
	dev := rf.device(t, "pi-1")
	alice := rf.login(t, "alice")
	alice.Tsh("ssh", "root@pi-1", "echo", "one")
	execs := func(f *harness.Fleet) []api.AuditEvent {
		var out []api.AuditEvent
		for _, e := range auditSearch(t, f, "--device=pi-1").Events {
			if e.AssertedBy != api.SourceFleet && strings.HasPrefix(e.Type, "exec") {
				out = append(out, e)
			}
		}
		return out
	}
	b, c := rf.reps[repB], rf.reps[repC]
	if !harness.Eventually(time.Minute, func() bool { return len(execs(c)) >= 1 }) {
		t.Fatalf("the device's exec event never reached the trail: %+v", auditSearch(t, c, "--device=pi-1").Events)
	}
	// A stops: the device moves to B. A closes its tunnels before it
	// gives up its lease and fails its readiness check, so the balancer
	// still carries the close frame that tells the device to go.
	mark := dev.Proc.Mark()
	rf.reps[repA].Stop()
	if !harness.Eventually(time.Minute, func() bool { return replicaOf(c, "pi-1") == "r-b" }) {
		t.Fatalf("pi-1 did not move to B: on %q", replicaOf(c, "pi-1"))
	}
	if _, tail, err := dev.Proc.AwaitLine(context.Background(), mark, regexp.MustCompile(`tunnel down; reconnecting.*fleet shutting down; reconnect within`), 10*time.Second); err != nil {
		t.Errorf("the device was not told that A stopped: %v\n%s", err, strings.Join(tail, "\n"))
	}
	outA := rf.reps[repA].Proc.Output()
	closed, left := strings.Index(outA, `msg="device tunnels closed"`), strings.Index(outA, `msg="replica left the fleet`)
	if closed < 0 || left < 0 || closed > left {
		t.Errorf("A did not close its tunnels before it left the fleet (at %d and %d in its output):\n%s", closed, left, rf.reps[repA].Proc.Tail(30))
	}
	rf.reps[repA].Start()
	alice.Tsh("ssh", "root@pi-1", "echo", "two")
	if !harness.Eventually(time.Minute, func() bool { return len(execs(b)) >= 2 }) {
		t.Fatalf("the second exec never reached the trail: %+v", execs(b))
	}
	all := auditSearch(t, b, "--device=pi-1")
	seen := map[string]bool{}
	replicasOfDevice := map[string]bool{}
	for _, e := range all.Events {
		if e.AssertedBy != api.SourceFleet {
			key := fmt.Sprint(e.Source, e.Seq)
			if seen[key] {
				t.Errorf("device event %s shown twice", key)
			}
			seen[key] = true
			replicasOfDevice[e.Replica] = true
			if e.Unverified != "" {
				t.Errorf("device event %d (%s) unverified: %s", e.Seq, e.Type, e.Unverified)
			}
		}
	}
	if !replicasOfDevice["r-a"] || !replicasOfDevice["r-b"] {
		t.Errorf("the device's events are on replicas %v, want on r-a and r-b", replicasOfDevice)
	}
	var starts int
	for _, e := range all.Events {
		if e.Type == proto.EventSessionStart && e.Replica == "r-c" {
			starts++
		}
	}
	if starts < 2 {
		t.Errorf("%d session starts on C in the trail, want the two sessions'", starts)
	}

	out, errOut, err := c.CtlErr("", "audit", "verify")
	if err != nil || !strings.Contains(out, "All ") || !strings.Contains(out, "REPLICA") {
		t.Fatalf("audit verify on C: %v\n%s\n%s", err, out, errOut)
	}
	var v api.AuditVerify
	js := c.Ctl("", "audit", "verify", "--format=json")
	if err := json.Unmarshal([]byte(js), &v); err != nil {
		t.Fatal(err)
	}
	handoffs := 0
	for _, s := range v.Sources {
		handoffs += len(s.Handoffs)
	}
	if !v.OK || len(v.Replicas) != 3 || handoffs == 0 {
		t.Errorf("audit verify: ok %v, %d replicas' checkpoints, %d hand-offs; want ok, 3, at least one", v.OK, len(v.Replicas), handoffs)
	}
}

// startCutOffC starts the replicas (with args) so that replica C reaches
// etcd through a link the test can cut (the returned link's SetDown);
// devices connect to C first, users to A first.
func startCutOffC(t *testing.T, args ...string) (*replicaFleet, *linksim.Link) {
	t.Helper()
	link, err := linksim.New(linksim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { link.Close() })
	rf := startReplicasWith(t, replicaOptions{
		store: func(rf *replicaFleet, i int) string {
			if i != repC {
				return rf.etcd.StoreURL("fleet-replicas")
			}
			var eps []string
			for _, ep := range rf.etcd.Endpoints() {
				r, err := link.ListenTCP("", ep)
				if err != nil {
					t.Fatal(err)
				}
				eps = append(eps, r.Addr().String())
			}
			return "etcd://" + strings.Join(eps, ",") + "/fleet-replicas"
		},
		devices: []int{repC, repA, repB},
		users:   []int{repA, repB, repC},
		args:    args,
	})
	return rf, link
}

// TestReplicaPartitioned: replica C, which holds a device's tunnel, is cut
// off from etcd (its connections to the members go dark). Within its
// lease's TTL it stops taking work it cannot record: its readiness fails,
// its API answers 503 with why, and it sends its device away; the device
// comes back on another replica, where users reach it. When the link to
// etcd returns, C registers again and takes work.
func TestReplicaPartitioned(t *testing.T) {
	rf, link := startCutOffC(t)
	rf.device(t, "pi-1")
	alice := rf.login(t, "alice")
	a, c := rf.reps[repA], rf.reps[repC]
	if got := replicaOf(a, "pi-1"); got != "r-c" {
		t.Fatalf("pi-1 on %q, want r-c", got)
	}

	link.SetDown(true)
	start := time.Now()
	if !harness.Eventually(time.Minute, func() bool { return !ready(t, c).Ready }) {
		t.Fatal("C still ready a minute after it was cut off from etcd")
	}
	t.Logf("C not ready %v after the cut", time.Since(start).Round(time.Millisecond))
	_, errOut, err := c.CtlErr("", "users", "ls")
	if err == nil || !strings.Contains(errOut, "lost the fleet's store") {
		t.Errorf("fleetctl on the cut-off replica: err %v, %q; want it refused, saying why", err, errOut)
	}
	if !harness.Eventually(time.Minute, func() bool { got := replicaOf(a, "pi-1"); return got == "r-a" || got == "r-b" }) {
		t.Fatalf("pi-1 did not leave the cut-off replica: on %q", replicaOf(a, "pi-1"))
	}
	t.Logf("pi-1 on %s %v after the cut", replicaOf(a, "pi-1"), time.Since(start).Round(time.Millisecond))
	if out := alice.Tsh("ssh", "root@pi-1", "echo", "while C is cut off"); out != "while C is cut off\n" {
		t.Errorf("tsh ssh while C is cut off = %q", out)
	}

	link.SetDown(false)
	if !harness.Eventually(time.Minute, func() bool { return ready(t, c).Ready }) {
		t.Fatal("C not ready again a minute after etcd came back")
	}
	if out := c.Ctl("", "users", "ls"); !strings.Contains(out, "alice") {
		t.Errorf("fleetctl users ls on C after the partition = %q", out)
	}
}

// TestReplicaLeaseRegained: replica C, holding pi-1's tunnel, is cut off
// from etcd long enough to lose its lease (the other replicas see pi-1
// offline), and reaches etcd again within the grace (--replica-shed-after):
// it records pi-1 again under its new lease, and pi-1 never reconnected.
func TestReplicaLeaseRegained(t *testing.T) {
	rf, link := startCutOffC(t, "--replica-shed-after", "5m")
	agent := rf.device(t, "pi-1")
	alice := rf.login(t, "alice")
	a, c := rf.reps[repA], rf.reps[repC]
	if got := replicaOf(a, "pi-1"); got != "r-c" {
		t.Fatalf("pi-1 on %q, want r-c", got)
	}
	ups := agent.Proc.Count(harness.TunnelUpRE)
	cMark := c.Proc.Mark()

	link.SetDown(true)
	if !harness.Eventually(time.Minute, func() bool { return !ready(t, c).Ready }) {
		t.Fatal("C still ready a minute after it was cut off from etcd")
	}
	if !harness.Eventually(time.Minute, func() bool { return replicaOf(a, "pi-1") == "" }) {
		t.Fatalf("pi-1 still on %q for A after C lost its lease", replicaOf(a, "pi-1"))
	}
	link.SetDown(false)
	if !harness.Eventually(time.Minute, func() bool { return ready(t, c).Ready }) {
		t.Fatal("C not ready again a minute after etcd came back")
	}
	if _, _, err := c.Proc.AwaitLine(t.Context(), cMark, regexp.MustCompile(`recorded the tunnels it kept under the new lease.* recorded=1 now_elsewhere=0 not_recorded=0`), time.Minute); err != nil {
		t.Fatalf("C did not record pi-1 again: %v\n%s", err, c.Proc.Tail(30))
	}
	if !harness.Eventually(time.Minute, func() bool { return replicaOf(a, "pi-1") == "r-c" }) {
		t.Fatalf("pi-1 on %q for A, want back on r-c", replicaOf(a, "pi-1"))
	}
	if n := agent.Proc.Count(harness.TunnelUpRE); n != ups {
		t.Errorf("pi-1's agent brought its tunnel up %d times while C was cut off; want it kept\n%s", n-ups, agent.Proc.Tail(20))
	}
	if c.Proc.Count(regexp.MustCompile(`did not register again`)) > 0 {
		t.Error("C shed its tunnels though it registered again within the grace")
	}
	if out := alice.Tsh("ssh", "root@pi-1", "echo", "through A to C"); out != "through A to C\n" {
		t.Errorf("tsh ssh through A after C came back = %q", out)
	}
}

// TestReplicasEtcdLeaderAndRestart: the etcd leader is killed and the
// fleet keeps serving (a new user logs in, tsh ssh, tsh ls); then every
// process (three replicas, three etcd members) is restarted, and nothing
// is lost: the users, the device (back online by itself), the logins,
// and the audit trail, which verifies whole.
func TestReplicasEtcdLeaderAndRestart(t *testing.T) {
	// fleetd's own lease TTL (15 s), not the tests' 5 s: on a loaded
	// machine the new etcd leader took 4.8 s to be elected, the 5 s
	// leases lapsed, and the replicas sent their devices away, as a
	// replica cut off from the store must (TestReplicaPartitioned).
	rf := startReplicasWith(t, replicaOptions{args: []string{"--replica-lease-ttl", "15s"}})
	agent := rf.device(t, "pi-1")
	alice := rf.login(t, "alice")
	alice.Tsh("ssh", "root@pi-1", "echo", "before")

	leader := rf.etcd.Leader(t)
	t.Logf("killing the etcd leader, %s", leader.Name)
	leader.Kill()
	bob := rf.login(t, "bob")
	if out := bob.Tsh("ssh", "root@pi-1", "echo", "without the etcd leader"); out != "without the etcd leader\n" {
		t.Errorf("tsh ssh without the etcd leader = %q", out)
	}
	if out := alice.Tsh("ls"); !strings.Contains(out, "pi-1") || !strings.Contains(out, "online") {
		t.Errorf("tsh ls without the etcd leader = %q", out)
	}
	leader.Restart()
	rf.etcd.WaitHealthy(t)

	// Everything stops: the replicas, then etcd; then all comes back.
	for _, f := range rf.reps {
		f.Stop()
	}
	for _, m := range rf.etcd.Members {
		m.Kill()
	}
	for _, m := range rf.etcd.Members {
		m.Restart()
	}
	rf.etcd.WaitHealthy(t)
	for _, f := range rf.reps {
		f.Start()
	}
	if !harness.Eventually(2*time.Minute, func() bool { return rf.reps[repC].Online("pi-1") }) {
		t.Fatalf("pi-1 not back online after the restart:\n%s", agent.Proc.Output())
	}
	// The device's first tunnel after the restart may still move (the
	// replicas come up one after another, and one that is not yet
	// registered sheds what it takes): it settles by itself, and then
	// both users reach it.
	var out, errOut string
	if !harness.Eventually(time.Minute, func() bool {
		var err error
		out, errOut, err = alice.TshErr("", "ssh", "root@pi-1", "echo", "after the restart")
		return err == nil && out == "after the restart\n"
	}) {
		t.Fatalf("alice: tsh ssh after the restart = %q, %q\n%s", out, errOut, agent.Proc.Output())
	}
	if out := bob.Tsh("ssh", "root@pi-1", "echo", "after the restart"); out != "after the restart\n" {
		t.Errorf("bob: tsh ssh after the restart = %q", out)
	}
	if out := rf.reps[repB].Ctl("", "users", "ls"); !strings.Contains(out, "alice") || !strings.Contains(out, "bob") {
		t.Errorf("users after the restart: %q", out)
	}
	before := 0
	for _, e := range auditSearch(t, rf.reps[repB], "--type=session.start").Events {
		if e.User == "alice" || e.User == "bob" {
			before++
		}
	}
	if before < 4 {
		t.Errorf("%d session starts in the trail after the restart, want the 4 sessions'", before)
	}
	if out, errOut, err := rf.reps[repA].CtlErr("", "audit", "verify"); err != nil {
		t.Errorf("audit verify after the restart: %v\n%s%s", err, out, errOut)
	}
}

// webLogin logs user in to replica f's dashboard with the login form (the
// fleet's web origin is https://localhost:PORT when no apps_domain is
// set) and returns the client holding the session.
func webLogin(t *testing.T, f *harness.Fleet, user, password string) *http.Client {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar, Timeout: time.Minute, Transport: &http.Transport{
		// The replica's certificate is not what this checks; it is
		// reached on loopback by the name its web origin has.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, f.Addr)
		},
	}}
	body := webGet(t, c, f, "/web/login?next=/web/")
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(body)
	if m == nil {
		t.Fatalf("no login form on %s:\n%s", f.Addr, body)
	}
	req, _ := http.NewRequest("POST", webOrigin(f)+"/web/login", strings.NewReader(url.Values{
		"user": {user}, "password": {password}, "csrf": {m[1]}, "next": {"/web/"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", webOrigin(f))
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	c.CheckRedirect = nil
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("dashboard login on %s: %s", f.Addr, resp.Status)
	}
	return c
}

// webOrigin is replica f's web origin.
func webOrigin(f *harness.Fleet) string {
	_, port, _ := net.SplitHostPort(f.Addr)
	return "https://localhost:" + port
}

// webGet gets path from replica f's web origin.
func webGet(t *testing.T, c *http.Client, f *harness.Fleet, path string) string {
	t.Helper()
	resp, err := c.Get(webOrigin(f) + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s on %s: %s\n%s", path, f.Addr, resp.Status, b)
	}
	return string(b)
}

// TestSilentDeviceOfflineOnEveryReplica: a device whose link goes dark is
// listed offline on every replica once its silence window passes (its
// tunnel lingers on A in case it comes back on it), and online again on
// every replica when its link returns.
func TestSilentDeviceOfflineOnEveryReplica(t *testing.T) {
	rf := startReplicas(t)
	dev := rf.device(t, "pi-1")
	dev.Proc.Stop()
	link, err := linksim.New(linksim.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { link.Close() })
	relay, err := link.ListenUDP("127.0.0.1:0", rf.lb.Addr())
	if err != nil {
		t.Fatal(err)
	}
	// Keep-alives every 2 s: silent after 3 of them and 5 s, 11 s.
	dev.Proc = start(t, "edge-agent pi-1 (behind linksim)", nil, "edge-agent", "start",
		"--data-dir", dev.DataDir, "--fleet", relay.Addr().String(), "--keepalive", "2s")
	a, c := rf.reps[repA], rf.reps[repC]
	if !harness.Eventually(time.Minute, func() bool { return onlineOn(a, "pi-1") && onlineOn(c, "pi-1") && replicaOf(c, "pi-1") == "r-a" }) {
		t.Fatalf("pi-1 not online on A and C behind the link (on %q)", replicaOf(c, "pi-1"))
	}

	link.SetDown(true)
	dark := time.Now()
	for _, f := range []*harness.Fleet{c, a} {
		if !harness.Eventually(time.Minute, func() bool { return !onlineOn(f, "pi-1") }) {
			t.Fatalf("pi-1 still online on %s a minute after its link went dark", f.Addr)
		}
	}
	t.Logf("offline on C and A %v after the link went dark", time.Since(dark).Round(time.Millisecond))

	link.SetDown(false)
	back := time.Now()
	for _, f := range []*harness.Fleet{c, a} {
		if !harness.Eventually(time.Minute, func() bool { return onlineOn(f, "pi-1") }) {
			t.Fatalf("pi-1 not online on %s a minute after its link returned", f.Addr)
		}
	}
	t.Logf("online on C and A %v after the link returned", time.Since(back).Round(time.Millisecond))
}
