package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/harness"
)

// recordings lists the recordings u may see.
func recordings(t *testing.T, u *harness.User) []api.Recording {
	t.Helper()
	var list api.List[api.Recording]
	if err := json.Unmarshal([]byte(u.Tsh("recordings", "ls", "--format=json")), &list); err != nil {
		t.Fatalf("tsh recordings ls --format=json: %v", err)
	}
	return list.Items
}

// waitRecording waits until u may see a recording that match accepts.
func waitRecording(t *testing.T, u *harness.User, timeout time.Duration, match func(api.Recording) bool) (api.Recording, bool) {
	t.Helper()
	var found api.Recording
	ok := harness.Eventually(timeout, func() bool {
		for _, r := range recordings(t, u) {
			if match(r) {
				found = r
				return true
			}
		}
		return false
	})
	return found, ok
}

// plantRecording writes a finished recording into an agent's data dir, as
// a compromised device would, with a description naming user and session.
func plantRecording(t *testing.T, dataDir, id, session, user string) {
	t.Helper()
	dir := filepath.Join(dataDir, "recordings")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	meta, _ := json.Marshal(proto.RecordingMeta{Session: session, User: user, Login: "root", Cluster: "fleet", Start: time.Now().UnixMilli(), Kind: "shell"})
	cast := `{"version":2,"width":80,"height":24}` + "\n" + `[0.1,"o","alice typed: rm -rf /\r\n"]` + "\n"
	for name, b := range map[string][]byte{id + ".json": meta, id + ".cast": []byte(cast)} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDevicesCannotSpeakForUsers: a device's events and recordings that
// name a user count only for sessions the fleet brokered to that device
// for that user. A compromised device ("evil") plants events naming alice
// and one of her real sessions (on another device), events naming her
// without a session, and recordings filed under her: none shows as her
// activity, her recordings list only her real one, and every event says
// who asserted it.
func TestDevicesCannotSpeakForUsers(t *testing.T) {
	buildAuditgen(t)
	f, _, alice := setup(t)
	if out, errOut, err := alice.TshErr("", "ssh", "-t", "root@pi-1", "echo real session"); err != nil {
		t.Fatalf("alice's session: %v\n%s%s", err, out, errOut)
	}
	real, ok := waitRecording(t, alice, 30*time.Second, func(r api.Recording) bool { return r.Complete && r.DeviceName == "pi-1" })
	if !ok {
		t.Fatal("alice's real session was never listed")
	}

	// The evil device joins, then writes events in alice's name.
	dir := t.TempDir()
	join := start(t, "auditgen join", nil, "auditgen", "--fleet", f.Addr, "--token", f.Token(), "--data-dir", dir, "--name", "evil", "--workers", "0")
	f.WaitOnline("evil")
	join.Stop()
	began := time.Now()
	for _, claim := range [][]string{
		{"--claim-user", "alice", "--claim-session", real.Session}, // her real session, on pi-1
		{"--claim-user", "alice"},                                  // her name, no session
	} {
		gen := start(t, "auditgen evil", nil, append([]string{"auditgen", "--fleet", f.Addr, "--data-dir", dir, "--name", "evil",
			"--workers", "1", "--count", "2"}, claim...)...)
		gen.WaitOutput("generated 2", 60*time.Second)
		waitDrained(t, f, "evil", began, 30*time.Second)
		gen.Stop()
	}

	// Then uploads recordings filed under her: one with her real
	// session's ID, one with a made-up session.
	var b [16]byte
	rand.Read(b[:])
	madeUp := hex.EncodeToString(b[:])
	plantRecording(t, dir, real.Session, real.Session, "alice")
	plantRecording(t, dir, madeUp, madeUp, "alice")
	evil := start(t, "edge-agent evil", nil, "edge-agent", "start", "--fleet", f.Addr, "--data-dir", dir, "--name", "evil", "--log-level", "debug")
	if !harness.Eventually(60*time.Second, func() bool { return strings.Count(evil.Output(), "the fleet refused a recording") >= 2 }) {
		t.Fatalf("the planted recordings were not both refused:\n%s", evil.Output())
	}

	if list := recordings(t, alice); len(list) != 1 || list[0].ID != real.ID || list[0].DeviceName != "pi-1" {
		t.Errorf("alice's recordings = %+v, want only her real one on pi-1", recordings(t, alice))
	}
	if out := alice.Tsh("play", "--speed=0", real.ID); !strings.Contains(out, "real session") || strings.Contains(out, "rm -rf") {
		t.Errorf("alice's recording plays %q", out)
	}

	var evilID string
	for _, d := range f.Devices() {
		if d.Name == "evil" {
			evilID = d.ID
		}
	}
	for _, q := range [][]string{{"--user=alice"}, {"--session=" + real.Session}} {
		for _, e := range search(t, f, q...) {
			if e.Source == evilID {
				t.Errorf("search %v shows the evil device's event: %+v", q, e)
			}
			if e.AssertedBy == "" || (e.Source == api.SourceFleet) != (e.AssertedBy == api.SourceFleet) {
				t.Errorf("event %s/%d asserted by %q", e.Source, e.Seq, e.AssertedBy)
			}
			if e.Unverified != "" {
				t.Errorf("a verified search returned an unverified event: %+v", e)
			}
		}
	}
	planted := 0
	for _, e := range search(t, f, "--device=evil", "--type=test.generated") {
		planted++
		if e.Unverified == "" || e.AssertedBy != "device:"+evilID {
			t.Errorf("planted event not marked: asserted by %q, unverified %q", e.AssertedBy, e.Unverified)
		}
	}
	if planted != 4 {
		t.Errorf("%d planted events kept, want 4 (kept and marked, not dropped)", planted)
	}
	// pi-1's events of alice's real session verified.
	for _, e := range search(t, f, "--session="+real.Session) {
		if e.Source != api.SourceFleet && e.Unverified != "" {
			t.Errorf("pi-1's event of alice's real session is unverified: %+v", e)
		}
	}
	out := f.Ctl("", "audit", "verify")
	if !strings.Contains(out, "4 of the device's events named a user or session") || !strings.Contains(out, "audit chains verified") {
		t.Errorf("audit verify does not report the planted events, or failed:\n%s", out)
	}
	text := f.Ctl("", "audit", "search", "--device=evil", "--type=test.generated")
	if !strings.Contains(text, "UNVERIFIED") || !strings.Contains(text, "device") {
		t.Errorf("audit search text does not mark the planted events:\n%s", text)
	}
}
