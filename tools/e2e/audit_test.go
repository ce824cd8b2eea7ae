package e2e

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/asciicast"
	"remoteler.dev/edge/tools/linksim"

	"remoteler.dev/edge/tools/harness"
)

var (
	auditgenOnce sync.Once
	auditgenErr  error
)

// buildAuditgen builds tools/cmd/auditgen next to the other binaries.
func buildAuditgen(t *testing.T) {
	t.Helper()
	auditgenOnce.Do(func() {
		out, err := exec.Command("go", "build", "-o", string(bin)+"/", "remoteler.dev/edge/tools/cmd/auditgen").CombinedOutput()
		if err != nil {
			auditgenErr = fmt.Errorf("build auditgen: %v\n%s", err, out)
		}
	})
	if auditgenErr != nil {
		t.Fatal(auditgenErr)
	}
}

// search runs fleetctl audit search --format=json with args; the search
// must not be cut short.
func search(t *testing.T, f *harness.Fleet, args ...string) []api.AuditEvent {
	t.Helper()
	out := f.Ctl("", append([]string{"audit", "search", "--format=json", "--since=", "--limit=10000"}, args...)...)
	var evs api.List[api.AuditEvent]
	if err := json.Unmarshal([]byte(out), &evs); err != nil || evs.Kind != "audit_events" {
		t.Fatalf("audit search --format=json: %v\n%s", err, out)
	}
	if evs.Truncated {
		t.Fatalf("audit search --format=json: truncated at %d events", len(evs.Items))
	}
	return evs.Items
}

// verify runs fleetctl audit verify --format=json and returns its result
// and whether fleetctl succeeded.
func verify(t *testing.T, f *harness.Fleet) (api.AuditVerify, bool) {
	t.Helper()
	out, errOut, err := f.CtlErr("", "audit", "verify", "--format=json")
	var v api.AuditVerify
	if jerr := json.Unmarshal([]byte(out), &v); jerr != nil {
		t.Fatalf("audit verify --format=json: %v\n%s\n%s", jerr, out, errOut)
	}
	return v, err == nil
}

// chainOf returns the verify result for a device by name.
func chainOf(v api.AuditVerify, name string) (api.AuditChain, bool) {
	for _, c := range v.Sources {
		if c.DeviceName == name {
			return c, true
		}
	}
	return api.AuditChain{}, false
}

// waitDrained waits until the device, in a report made after since, says
// its queue is empty and the fleet holds every event it wrote, and returns
// the chain.
func waitDrained(t *testing.T, f *harness.Fleet, name string, since time.Time, timeout time.Duration) api.AuditChain {
	t.Helper()
	var c api.AuditChain
	ok := harness.Eventually(timeout, func() bool {
		v, _ := verify(t, f)
		var found bool
		c, found = chainOf(v, name)
		return found && c.Queue != nil && c.Queue.Reported.After(since) && c.Queue.Pending == 0 && c.Queue.Head == c.Last && c.Last > 0
	})
	if !ok {
		t.Fatalf("the fleet never held all of %s's events: %+v (queue %+v)", name, c, c.Queue)
	}
	return c
}

func types(evs []api.AuditEvent) map[string]int {
	out := map[string]int{}
	for _, e := range evs {
		out[e.Type]++
	}
	return out
}

func TestAuditSessionsAndRecordings(t *testing.T) {
	f, _, u := setup(t)
	began := time.Now()

	// An interactive session with a terminal, whose output tsh writes to
	// a pipe: that is exactly what the user saw.
	script := `printf 'hello \303\251t\303\251 \342\202\254\n'; for i in 1 2 3; do echo line $i; sleep 0.1; done; printf '\033[1mbold\033[0m\n'`
	saw, errOut, err := u.TshErr("", "ssh", "-t", "root@pi-1", script)
	if err != nil {
		t.Fatalf("tsh ssh -t: %v\n%s", err, errOut)
	}
	if !strings.Contains(saw, "hello été €") || !strings.Contains(saw, "line 3") {
		t.Fatalf("session output = %q", saw)
	}
	if out := u.Tsh("ssh", "root@pi-1", "echo", "plain"); out != "plain\n" {
		t.Fatalf("exec = %q", out)
	}

	// The recording reaches the fleet and plays back byte for byte.
	var rec api.Recording
	if !harness.Eventually(30*time.Second, func() bool {
		var list api.List[api.Recording]
		json.Unmarshal([]byte(u.Tsh("recordings", "ls", "--format=json")), &list)
		for _, r := range list.Items {
			if r.Complete && r.Kind == "exec" && r.DeviceName == "pi-1" && r.Command == script {
				rec = r
				return true
			}
		}
		return false
	}) {
		t.Fatalf("no complete recording listed: %s", u.Tsh("recordings", "ls"))
	}
	if rec.User != "alice" || rec.Login != "root" || rec.Command != script || rec.Duration < 300*time.Millisecond {
		t.Errorf("recording = %+v", rec)
	}
	played := u.Tsh("play", "--speed=0", rec.ID)
	if played != saw {
		t.Errorf("played back %q\nthe user saw %q", played, saw)
	}
	start := time.Now()
	if realTime := u.Tsh("play", "--speed=1", rec.ID); realTime != saw {
		t.Errorf("real-time playback differs: %q", realTime)
	}
	if d := time.Since(start); d < 250*time.Millisecond {
		t.Errorf("real-time playback took %v, the session %v", d, rec.Duration)
	}
	cast := u.Tsh("play", "--format=json", rec.ID)
	sum, err := asciicast.ReadAll(strings.NewReader(cast))
	if err != nil || string(sum.Output) != saw || sum.Header.Width == 0 {
		t.Errorf("--format=json is not the asciicast recording: %v, header %+v", err, sum.Header)
	}
	// Another user may not see it.
	f.AddUser("bob", "access", "root")
	bob := f.Login("bob", "pw-bob-0123456789")
	if out := bob.Tsh("recordings", "ls", "--format=json"); strings.Contains(out, rec.ID) {
		t.Errorf("bob sees alice's recording: %s", out)
	}
	if _, _, err := bob.TshErr("", "play", rec.ID); err == nil {
		t.Error("bob played alice's recording")
	}

	// The audit trail has the session from both sides.
	waitDrained(t, f, "pi-1", began, 30*time.Second)
	byDevice := search(t, f, "--device=pi-1")
	got := types(byDevice)
	for _, want := range []string{proto.EventAgentStart, proto.EventDeviceOnline, proto.EventSessionStart, proto.EventExec, proto.EventExecEnd, proto.EventSessionEnd} {
		if got[want] == 0 {
			t.Errorf("no %s event for pi-1: %v", want, got)
		}
	}
	var execCmd, execEnd bool
	for _, e := range byDevice {
		if e.Type == proto.EventExec && e.Fields["command"] == script && e.Session == rec.Session && e.User == "alice" && e.Source != api.SourceFleet {
			execCmd = true
		}
		if e.Type == proto.EventExecEnd && e.Fields["command"] == "echo plain" && e.Fields["bytes_out"] == "6" {
			execEnd = true
		}
	}
	if !execCmd || !execEnd {
		t.Errorf("exec events lack the command, session or output size (%v %v): %+v", execCmd, execEnd, byDevice)
	}
	logins := search(t, f, "--type=user.login", "--user=alice")
	if len(logins) != 1 || logins[0].Source != api.SourceFleet {
		t.Errorf("alice's logins = %+v", logins)
	}
	// Refusals are recorded too.
	u.TshErr("", "ssh", "nobody@pi-1", "true")
	if denied := search(t, f, "--type=access.denied", "--user=alice"); len(denied) == 0 {
		t.Error("a refused connection left no access.denied event")
	}
	text := f.Ctl("", "audit", "search", "--since=1h", "--type=session.*")
	if !strings.Contains(text, "session.start") || !strings.Contains(text, "pi-1") {
		t.Errorf("audit search text output:\n%s", text)
	}
	if out := f.Ctl("", "audit", "verify"); !strings.Contains(out, "audit chains verified") {
		t.Errorf("audit verify:\n%s", out)
	}
	// The device's audit status is in its listing.
	for _, d := range f.Devices() {
		if d.Name == "pi-1" && (d.Audit == nil || d.Audit.Head == 0) {
			t.Errorf("pi-1 listed without its audit status: %+v", d.Audit)
		}
	}
}

// genLine is what auditgen prints for each committed event.
var genLine = regexp.MustCompile(`(?m)^committed run=(\S+) i=(\d+) seq=(\d+)$`)

// committed returns the "run/i" keys an auditgen output says it committed.
func committed(out string) []string {
	var keys []string
	for _, m := range genLine.FindAllStringSubmatch(out, -1) {
		keys = append(keys, m[1]+"/"+m[2])
	}
	return keys
}

// checkExactlyOnce checks the fleet's test events for a device against
// what the generators said they committed: every one there, none twice, and
// at most maxExtra more (committed when a kill cut the line that says so).
func checkExactlyOnce(t *testing.T, f *harness.Fleet, name string, since time.Time, said []string, maxExtra int) {
	t.Helper()
	c := waitDrained(t, f, name, since, 60*time.Second)
	if !c.OK || c.Events != c.Last || c.First != 1 {
		t.Errorf("chain of %s: %+v", name, c)
	}
	evs := search(t, f, "--device="+name, "--type=test.generated")
	seen := map[string]int{}
	for _, e := range evs {
		seen[e.Fields["run"]+"/"+e.Fields["i"]]++
	}
	for k, n := range seen {
		if n > 1 {
			t.Errorf("event %s is in the fleet %d times", k, n)
		}
	}
	missing := 0
	for _, k := range said {
		if seen[k] == 0 {
			missing++
			if missing < 5 {
				t.Errorf("event %s was committed on the device but is not in the fleet", k)
			}
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d committed events missing", missing, len(said))
	}
	if extra := len(seen) - len(said); extra < 0 || extra > maxExtra {
		t.Errorf("the fleet holds %d test events, the device said it committed %d (at most %d more expected)", len(seen), len(said), maxExtra)
	}
	t.Logf("%s: %d events in the chain, %d test events, %d reported committed", name, c.Events, len(seen), len(said))
}

// TestAuditExactlyOnceAcrossKillsAndFlaps kills the agent 100 times while
// it writes events and while its link goes down and up; the fleet must end
// with exactly the events written, in one verified chain.
func TestAuditExactlyOnceAcrossKillsAndFlaps(t *testing.T) {
	buildAuditgen(t)
	f := startFleet(t)
	dir := t.TempDir()
	first := start(t, "auditgen join", nil, "auditgen", "--fleet", f.Addr, "--token", f.Token(), "--data-dir", dir,
		"--name", "gen-1", "--workers", "0")
	f.WaitOnline("gen-1")
	first.Stop()

	link, relayAddr := udpRelay(t, f, linksim.Config{Seed: 7})

	rng := rand.New(rand.NewPCG(11, 12))
	stopFlap := make(chan struct{})
	flapped := make(chan int)
	go func() {
		n := 0
		defer func() { flapped <- n }()
		frng := rand.New(rand.NewPCG(13, 14))
		for {
			select {
			case <-stopFlap:
				link.SetDown(false)
				return
			case <-time.After(time.Duration(100+frng.IntN(400)) * time.Millisecond):
			}
			link.SetDown(true)
			n++
			select {
			case <-stopFlap:
				link.SetDown(false)
				return
			case <-time.After(time.Duration(50+frng.IntN(250)) * time.Millisecond):
			}
			link.SetDown(false)
		}
	}()

	const kills, workers = 100, 4
	var said []string
	began := time.Now()
	for i := range kills {
		p := start(t, "auditgen "+strconv.Itoa(i), nil, "auditgen", "--fleet", relayAddr, "--data-dir", dir, "--name", "gen-1",
			"--workers", strconv.Itoa(workers), "--interval", "20ms", "--log-level", "error")
		time.Sleep(time.Duration(30+rng.IntN(400)) * time.Millisecond) // the moment of the kill, not a wait for anything
		p.Kill()
		said = append(said, committed(p.Output())...)
	}
	close(stopFlap)
	t.Logf("%d kills in %v, link down %d times, %d events reported committed", kills, time.Since(began).Round(time.Millisecond), <-flapped, len(said))

	if v, _ := verify(t, f); true {
		c, _ := chainOf(v, "gen-1")
		t.Logf("the fleet held %d events before the last run", c.Events)
	}
	// One last run, writing nothing, ships what is left.
	final := time.Now()
	start(t, "auditgen final", nil, "auditgen", "--fleet", relayAddr, "--data-dir", dir, "--name", "gen-1", "--workers", "0")
	checkExactlyOnce(t, f, "gen-1", final, said, kills*workers)
	if _, ok := verify(t, f); !ok {
		t.Error("fleetctl audit verify failed")
	}
}

// TestAuditFleetKilledDuringIngestion kills fleetd while a device's backlog
// is being ingested; after the restart nothing is lost or doubled.
func TestAuditFleetKilledDuringIngestion(t *testing.T) {
	buildAuditgen(t)
	f := startFleet(t)
	dir := t.TempDir()
	first := start(t, "auditgen join", nil, "auditgen", "--fleet", f.Addr, "--token", f.Token(), "--data-dir", dir,
		"--name", "gen-2", "--workers", "0")
	f.WaitOnline("gen-2")
	first.Stop()

	// A slow link (1 Mbit/s up), so the backlog takes seconds to ship.
	link, err := linksim.New(linksim.Config{Seed: 3, Profile: linksim.Profile{Up: linksim.Impairment{Bandwidth: 1_000_000}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { link.Close() })
	relay, err := link.ListenUDP("127.0.0.1:0", f.Addr)
	if err != nil {
		t.Fatal(err)
	}
	link.SetDown(true)
	const n = 6000
	gen := start(t, "auditgen backlog", nil, "auditgen", "--fleet", relay.Addr().String(), "--data-dir", dir, "--name", "gen-2",
		"--workers", "64", "--count", strconv.Itoa(n), "--log-level", "error")
	gen.WaitOutput(fmt.Sprintf("generated %d\n", n), 60*time.Second)
	link.SetDown(false)

	// Kill fleetd twice while it ingests.
	for round := range 2 {
		var held uint64
		if !harness.Eventually(60*time.Second, func() bool {
			v, _ := verify(t, f)
			c, _ := chainOf(v, "gen-2")
			held = c.Events
			return held > uint64(round+1)*500
		}) {
			t.Fatalf("ingestion never started (round %d)", round)
		}
		f.Proc.Kill()
		t.Logf("fleetd killed with %d events ingested", held)
		f.Restart()
	}
	restarted := time.Now()
	said := committed(gen.Output())
	if len(said) != n {
		t.Fatalf("auditgen reported %d committed events, want %d", len(said), n)
	}
	checkExactlyOnce(t, f, "gen-2", restarted, said, 0)
	v, ok := verify(t, f)
	c, _ := chainOf(v, "gen-2")
	if !ok || c.Events < n {
		t.Errorf("verify after the kills: ok %v, %+v", ok, c)
	}
}

// TestAuditFullQueue fills a small queue while the fleet is unreachable:
// events are dropped visibly, in the audit and in the device's status.
func TestAuditFullQueue(t *testing.T) {
	buildAuditgen(t)
	f := startFleet(t)
	dir := t.TempDir()
	first := start(t, "auditgen join", nil, "auditgen", "--fleet", f.Addr, "--token", f.Token(), "--data-dir", dir,
		"--name", "gen-3", "--workers", "0")
	f.WaitOnline("gen-3")
	first.Stop()

	link, err := linksim.New(linksim.Config{Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { link.Close() })
	relay, err := link.ListenUDP("127.0.0.1:0", f.Addr)
	if err != nil {
		t.Fatal(err)
	}
	link.SetDown(true)
	began := time.Now()
	gen := start(t, "auditgen full", nil, "auditgen", "--fleet", relay.Addr().String(), "--data-dir", dir, "--name", "gen-3",
		"--workers", "4", "--count", "400", "--audit-max-bytes", "32768", "--log-level", "error")
	gen.WaitOutput("generated ", 60*time.Second)
	dropped := strings.Count(gen.Output(), "dropped run=")
	if dropped == 0 {
		t.Fatalf("nothing was dropped from a 32 KiB queue:\n%s", gen.Output())
	}
	link.SetDown(false)
	waitDrained(t, f, "gen-3", began, 30*time.Second)
	markers := search(t, f, "--device=gen-3", "--type="+proto.EventAuditDropped)
	total := 0
	for _, m := range markers {
		n, _ := strconv.Atoi(m.Fields["count"])
		total += n
		if m.Fields["reason"] == "" || m.Outcome != proto.OutcomeFailure {
			t.Errorf("marker = %+v", m)
		}
	}
	if total != dropped {
		t.Errorf("markers count %d dropped events, auditgen saw %d", total, dropped)
	}
	var status *api.DeviceAudit
	for _, d := range f.Devices() {
		if d.Name == "gen-3" {
			status = d.Audit
		}
	}
	if status == nil || status.Dropped != uint64(dropped) || status.Cap != 32768 {
		t.Errorf("device status = %+v, want %d dropped", status, dropped)
	}
	if out, _, _ := f.CtlErr("", "audit", "verify"); !strings.Contains(out, fmt.Sprintf("dropped %d audit events", dropped)) {
		t.Errorf("audit verify does not report the drops:\n%s", out)
	}
	checkExactlyOnce(t, f, "gen-3", began, committed(gen.Output()), 0)
}

// TestAuditDamagedQueue starts an agent on a truncated, then a corrupted,
// queue file: it starts, keeps what is readable and reports the damage.
func TestAuditDamagedQueue(t *testing.T) {
	buildAuditgen(t)
	f := startFleet(t)
	dir := t.TempDir()
	join := start(t, "auditgen join", nil, "auditgen", "--fleet", f.Addr, "--token", f.Token(), "--data-dir", dir,
		"--name", "gen-4", "--workers", "0")
	f.WaitOnline("gen-4")
	join.Stop()
	queue := filepath.Join(dir, "audit.db")
	damages := []struct {
		name   string
		damage func() error
	}{
		{"truncated", func() error {
			fi, err := os.Stat(queue)
			if err != nil {
				return err
			}
			return os.Truncate(queue, fi.Size()/3)
		}},
		{"garbage", func() error {
			b, err := os.ReadFile(queue)
			if err != nil {
				return err
			}
			for i := 4096; i < len(b); i += 7 {
				b[i] ^= 0x5a
			}
			return os.WriteFile(queue, b, 0o600)
		}},
	}
	var said []string
	for _, d := range damages {
		// Offline, write a backlog, then damage the file.
		gen := start(t, "auditgen "+d.name, nil, "auditgen", "--fleet", "127.0.0.1:1", "--data-dir", dir, "--name", "gen-4",
			"--workers", "8", "--count", "300", "--log-level", "error")
		gen.WaitOutput("generated 300", 60*time.Second)
		gen.Stop()
		said = append(said, committed(gen.Output())...)
		if err := d.damage(); err != nil {
			t.Fatal(err)
		}
		restarted := time.Now()
		a := start(t, "agent after "+d.name, nil, "edge-agent", "start", "--fleet", f.Addr, "--data-dir", dir, "--name", "gen-4")
		a.WaitOutput("audit queue file is damaged", 20*time.Second)
		waitDrained(t, f, "gen-4", restarted, 30*time.Second)
		a.Stop()
	}
	damaged := search(t, f, "--device=gen-4", "--type="+proto.EventAuditDamaged)
	if len(damaged) != 2 {
		t.Fatalf("%d audit.damaged events, want 2: %+v", len(damaged), damaged)
	}
	for _, d := range damaged {
		t.Logf("reported: %s", d.Message)
	}
	kept := search(t, f, "--device=gen-4", "--type=test.generated")
	if len(kept) == 0 || len(kept) >= len(said) {
		t.Errorf("the fleet has %d of the %d events written before the damage; want some kept, some lost", len(kept), len(said))
	}
	for _, d := range f.Devices() {
		if d.Name == "gen-4" && (d.Audit == nil || d.Audit.Damaged != 2) {
			t.Errorf("device status = %+v, want damaged 2", d.Audit)
		}
	}
	// Lost events are a visible gap, never a silent one.
	v, _ := verify(t, f)
	c, _ := chainOf(v, "gen-4")
	t.Logf("chain after the damage: ok %v, problems %v", c.OK, c.Problems)
}

// TestAuditVerifyDetectsTampering edits and deletes events in the fleet's
// audit store; fleetctl audit verify finds both.
func TestAuditVerifyDetectsTampering(t *testing.T) {
	f, _, u := setup(t)
	began := time.Now()
	for i := range 3 {
		u.Tsh("ssh", "root@pi-1", "echo", strconv.Itoa(i))
	}
	waitDrained(t, f, "pi-1", began, 30*time.Second)
	if _, ok := verify(t, f); !ok {
		t.Fatal("verify failed before any tampering")
	}
	var deviceID string
	for _, d := range f.Devices() {
		deviceID = d.ID
	}
	f.Proc.Stop()
	// What an attacker with the disk does: the audit store is a bbolt
	// file with one bucket of events per source ("events"/SOURCE), keyed
	// by big-endian sequence number.
	db, err := bolt.Open(filepath.Join(f.DataDir, "audit.db"), 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		dev := tx.Bucket([]byte("events")).Bucket([]byte(deviceID))
		seq := func(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }
		e, err := proto.UnmarshalEvent(dev.Get(seq(2))) // edit the second event
		if err != nil {
			return err
		}
		e.User = "someone-else"
		nv, _ := proto.MarshalEvent(e)
		if err := dev.Put(seq(2), nv); err != nil {
			return err
		}
		if err := dev.Delete(seq(4)); err != nil { // delete the fourth
			return err
		}
		fl := tx.Bucket([]byte("events")).Bucket([]byte(api.SourceFleet))
		fk, fv := fl.Cursor().Last() // the fleet's last event: rewrite its message
		fe, _ := proto.UnmarshalEvent(fv)
		fe.Message = "nothing happened"
		nfv, _ := proto.MarshalEvent(fe)
		return fl.Put(append([]byte{}, fk...), nfv)
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	f.Restart()
	out, _, err := f.CtlErr("", "audit", "verify")
	if err == nil {
		t.Fatalf("audit verify succeeded on a tampered store:\n%s", out)
	}
	for _, want := range []string{"event 2 was altered", "event 4 is missing", "pi-1", "BROKEN"} {
		if !strings.Contains(out, want) {
			t.Errorf("audit verify output lacks %q:\n%s", want, out)
		}
	}
	v, _ := verify(t, f)
	for _, c := range v.Sources {
		if c.OK {
			t.Errorf("source %s verified after tampering", c.Source)
		}
	}
}

// TestRecordInputByRole: what a user types is recorded only when one of
// their roles says record_input; what they see always is.
func TestRecordInputByRole(t *testing.T) {
	f, _, alice := setup(t)
	rolePath := filepath.Join(t.TempDir(), "typist.yaml")
	os.WriteFile(rolePath, []byte(`kind: role
version: v1
metadata:
  name: typist
spec:
  allow:
    logins: [root]
    device_labels: {"*": ["*"]}
  options:
    record_input: true
`), 0o600)
	f.Ctl("", "create", "-f", rolePath)
	carol := f.Login("carol", f.AddUser("carol", "typist", ""))

	recorded := func(u *harness.User, name string) *asciicast.Summary {
		t.Helper()
		out, errOut, err := u.TshErr("typed-by-"+name+"\n", "ssh", "-t", "root@pi-1", "read x; echo got-$x")
		if err != nil || !strings.Contains(out, "got-typed-by-"+name) {
			t.Fatalf("%s's session: %v %q %s", name, err, out, errOut)
		}
		var id string
		if !harness.Eventually(30*time.Second, func() bool {
			var list api.List[api.Recording]
			json.Unmarshal([]byte(u.Tsh("recordings", "ls", "--format=json")), &list)
			for _, r := range list.Items {
				if r.Complete && r.User == name {
					id = r.ID
					return true
				}
			}
			return false
		}) {
			t.Fatalf("no recording of %s's session", name)
		}
		sum, err := asciicast.ReadAll(strings.NewReader(u.Tsh("play", "--format=json", id)))
		if err != nil {
			t.Fatal(err)
		}
		return sum
	}
	if sum := recorded(carol, "carol"); !strings.Contains(string(sum.Input), "typed-by-carol") {
		t.Errorf("carol's role records input, but the recording's input is %q", sum.Input)
	}
	if sum := recorded(alice, "alice"); len(sum.Input) != 0 || !strings.Contains(string(sum.Output), "got-typed-by-alice") {
		t.Errorf("alice's recording: input %q (want none), output %q", sum.Input, sum.Output)
	}
}
