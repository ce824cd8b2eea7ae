package update

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"aead.dev/minisign"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/ota"
)

// files is a fake install: a target binary, the kept old binary and the
// update folder.
type files struct {
	dir, target, prev string
	old, new          []byte
}

func newFiles(t *testing.T) *files {
	t.Helper()
	root := t.TempDir()
	f := &files{dir: filepath.Join(root, "update"), target: filepath.Join(root, "bin", "edge-agent"),
		old: []byte("old binary"), new: []byte("new binary")}
	f.prev = prevPath(f.target)
	os.MkdirAll(f.dir, 0o700)
	os.MkdirAll(filepath.Dir(f.target), 0o755)
	return f
}

func (f *files) state(phase string, mod func(*state)) {
	s := &state{Phase: phase, Version: "v2.0.0", From: "v1.0.0", Target: f.target, Prev: f.prev,
		NewSHA256: ota.Sum256(f.new), OldSHA256: ota.Sum256(f.old), HealthMillis: 60000}
	if mod != nil {
		mod(s)
	}
	if err := saveState(f.dir, s); err != nil {
		panic(err)
	}
}

func (f *files) write(path string, b []byte) {
	if err := os.WriteFile(path, b, 0o755); err != nil {
		panic(err)
	}
}

func (f *files) at(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(f.target)
	if err != nil {
		return "missing"
	}
	return string(b)
}

func TestStartChecks(t *testing.T) {
	now := time.Date(2026, 12, 6, 3, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		// set up the files and the state
		setup func(f *files)
		// pre: run PreStart (the unit's check) rather than Startup
		pre         bool
		version     string
		wantRestart bool
		wantTrial   bool
		wantBinary  string // "old", "new"
		wantPhase   string
		wantReason  string
	}{
		{"idle", func(f *files) { f.write(f.target, f.old) }, true, "v1.0.0", false, false, "old", "", ""},
		{"killed between renames", func(f *files) {
			f.write(f.prev, f.old)
			f.write(newPath(f.target), f.new)
			f.state(phaseApplying, nil)
		}, true, "v1.0.0", true, false, "old", phaseRolledBack, "interrupted between its renames"},
		{"killed before the renames", func(f *files) {
			f.write(f.target, f.old)
			f.write(newPath(f.target), f.new)
			f.state(phaseApplying, nil)
		}, true, "v1.0.0", false, false, "old", phaseFailed, "before the new binary was in place"},
		{"killed after the renames", func(f *files) {
			f.write(f.target, f.new)
			f.write(f.prev, f.old)
			f.state(phaseApplying, nil)
		}, true, "v2.0.0", false, false, "new", phaseTrial, ""},
		{"trial: first pre-start check", func(f *files) {
			f.write(f.target, f.new)
			f.write(f.prev, f.old)
			f.state(phaseTrial, nil)
		}, true, "v2.0.0", false, false, "new", phaseTrial, ""},
		{"trial: new agent started and stopped (crash)", func(f *files) {
			f.write(f.target, f.new)
			f.write(f.prev, f.old)
			f.state(phaseTrial, func(s *state) { s.Started, s.PreChecks = true, 1 })
		}, true, "v2.0.0", true, false, "old", phaseRolledBack, "stopped before it was healthy"},
		{"trial: new agent never got to its own check", func(f *files) {
			f.write(f.target, f.new)
			f.write(f.prev, f.old)
			f.state(phaseTrial, func(s *state) { s.PreChecks = 1 })
		}, true, "v2.0.0", true, false, "old", phaseRolledBack, "did not start"},
		{"trial: deadline passed", func(f *files) {
			f.write(f.target, f.new)
			f.write(f.prev, f.old)
			f.state(phaseTrial, func(s *state) { s.Deadline = now.Add(-time.Minute).UnixMilli() })
		}, true, "v2.0.0", true, false, "old", phaseRolledBack, "not healthy in time"},
		{"startup: first start of the new agent", func(f *files) {
			f.write(f.target, f.new)
			f.write(f.prev, f.old)
			f.state(phaseTrial, nil)
		}, false, "v2.0.0", false, true, "new", phaseTrial, ""},
		{"startup: restarted without a commit", func(f *files) {
			f.write(f.target, f.new)
			f.write(f.prev, f.old)
			f.state(phaseTrial, func(s *state) { s.Started = true })
		}, false, "v2.0.0", true, false, "old", phaseRolledBack, "restarted before it was healthy"},
		{"startup: settles an interrupted apply without a pre-start check", func(f *files) {
			f.write(f.target, f.new)
			f.write(f.prev, f.old)
			f.state(phaseApplying, nil)
		}, false, "v2.0.0", false, true, "new", phaseTrial, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFiles(t)
			tt.setup(f)
			var res CheckResult
			var err error
			if tt.pre {
				res, err = PreStart(f.dir, now)
			} else {
				res, err = Startup(f.dir, tt.version, now)
			}
			if err != nil {
				t.Fatal(err)
			}
			if res.Restart != tt.wantRestart || res.Trial != tt.wantTrial {
				t.Errorf("result %+v, want restart %v trial %v", res, tt.wantRestart, tt.wantTrial)
			}
			want := map[string][]byte{"old": f.old, "new": f.new}[tt.wantBinary]
			if got := f.at(t); got != string(want) {
				t.Errorf("binary %q, want %q", got, want)
			}
			s, _ := loadState(f.dir)
			if s.Phase != tt.wantPhase || !strings.Contains(s.Reason, tt.wantReason) {
				t.Errorf("state %q %q, want %q %q", s.Phase, s.Reason, tt.wantPhase, tt.wantReason)
			}
			if tt.wantTrial && !res.Deadline.Equal(now.Add(time.Minute)) {
				t.Errorf("deadline %s, want the state's health time from now", res.Deadline)
			}
		})
	}
}

func TestCommitAndRollBack(t *testing.T) {
	f := newFiles(t)
	f.write(f.target, f.new)
	f.write(f.prev, f.old)
	f.state(phaseTrial, func(s *state) { s.Started = true })
	if err := Commit(f.dir); err != nil {
		t.Fatal(err)
	}
	if s, _ := loadState(f.dir); s.Phase != phaseCommitted {
		t.Errorf("phase %q after commit", s.Phase)
	}
	// A committed update stays: the next starts change nothing.
	if res, err := PreStart(f.dir, time.Now()); err != nil || res.Restart {
		t.Errorf("pre-start after commit: %+v %v", res, err)
	}
	if f.at(t) != string(f.new) {
		t.Error("the new binary did not stay")
	}
	if err := RollBack(f.dir, "x"); err == nil {
		t.Error("RollBack outside a trial succeeded")
	}
}

// blobServer serves blobs with Range support, cutting the first response
// short after cut bytes (a blackout), and records the Range headers.
type blobServer struct {
	mu     sync.Mutex
	blobs  map[string][]byte
	cut    int
	ranges []string
}

func (b *blobServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	data := b.blobs[r.URL.Path]
	cut := b.cut
	b.cut = 0
	b.ranges = append(b.ranges, r.Header.Get("Range"))
	b.mu.Unlock()
	if data == nil {
		http.NotFound(w, r)
		return
	}
	if cut > 0 {
		// Send cut bytes of a full answer, then drop the connection.
		w.Header().Set("Content-Length", itoa(len(data)))
		w.WriteHeader(http.StatusOK)
		w.Write(data[:cut])
		w.(http.Flusher).Flush()
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
		return
	}
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(data))
}

func itoa(n int) string { return strings.TrimSpace(strings.Repeat(" ", 0) + string(appendInt(nil, n))) }

func appendInt(b []byte, n int) []byte {
	if n >= 10 {
		b = appendInt(b, n/10)
	}
	return append(b, byte('0'+n%10))
}

func TestDownloadResumes(t *testing.T) {
	data := make([]byte, 3*syncEvery+1234)
	rand.Read(data)
	sum := ota.Sum256(data)
	srv := &blobServer{blobs: map[string][]byte{"/b/" + sum: data}, cut: syncEvery + 100}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	dir := t.TempDir()
	raw, _ := hex.DecodeString(sum)
	f := &fetch{client: ts.Client(), url: ts.URL + "/b/" + sum, path: filepath.Join(dir, sum), size: int64(len(data)), sum: raw}
	retries := 0
	err := f.run(context.Background(), func(context.Context, int) error { retries++; return nil })
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(f.path)
	if !bytes.Equal(got, data) {
		t.Fatal("downloaded bytes differ")
	}
	// The second request asked for exactly what was missing: the bytes
	// received before the cut were synced when the request failed.
	if want := "bytes=" + itoa(syncEvery+100) + "-"; retries != 1 || len(srv.ranges) != 2 || srv.ranges[1] != want {
		t.Errorf("retries %d, ranges %q; want one retry with %q", retries, srv.ranges, want)
	}
}

func TestDownloadResumesAfterRestart(t *testing.T) {
	data := make([]byte, 2*syncEvery)
	rand.Read(data)
	sum := ota.Sum256(data)
	srv := &blobServer{blobs: map[string][]byte{"/b/" + sum: data}}
	ts := httptest.NewServer(srv)
	defer ts.Close()
	dir := t.TempDir()
	raw, _ := hex.DecodeString(sum)
	path := filepath.Join(dir, sum)
	// A previous run synced the first half, and wrote some unsynced bytes.
	os.WriteFile(path+".part", append(bytes.Clone(data[:syncEvery]), 1, 2, 3), 0o600)
	writeSynced(path+".part", syncEvery)
	f := &fetch{client: ts.Client(), url: ts.URL + "/b/" + sum, path: path, size: int64(len(data)), sum: raw}
	if err := f.run(context.Background(), func(context.Context, int) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); !bytes.Equal(got, data) {
		t.Fatal("downloaded bytes differ")
	}
	if len(srv.ranges) != 1 || srv.ranges[0] != "bytes="+itoa(syncEvery)+"-" {
		t.Errorf("ranges %q, want one request from byte %d", srv.ranges, syncEvery)
	}
}

// refusalSetup is an Updater against a blob server, with its sent
// statuses recorded.
type refusalSetup struct {
	u      *Updater
	f      *files
	priv   minisign.PrivateKey
	srv    *blobServer
	mu     sync.Mutex
	status []proto.UpdateStatus
}

func newRefusalSetup(t *testing.T) *refusalSetup {
	t.Helper()
	pub, priv, _ := minisign.GenerateKey(rand.Reader)
	rs := &refusalSetup{f: newFiles(t), priv: priv, srv: &blobServer{blobs: map[string][]byte{}}}
	rs.f.write(rs.f.target, rs.f.old)
	ts := httptest.NewServer(rs.srv)
	t.Cleanup(ts.Close)
	addr := ts.Listener.Addr().String()
	u, err := New(Config{
		Settings: Settings{ReleaseKeys: []string{ota.KeyString(pub)}},
		Dir:      rs.f.dir, Target: rs.f.target, Version: "v1.0.0", BuildTarget: "linux-arm64",
		Dial: func(ctx context.Context) (net.Conn, error) { return (&net.Dialer{}).DialContext(ctx, "tcp", addr) },
		Send: func(m proto.Message) error {
			rs.mu.Lock()
			rs.status = append(rs.status, *m.(*proto.UpdateStatus))
			rs.mu.Unlock()
			return nil
		},
		Restart: func(string) { t.Error("restarted") },
		MinFree: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	rs.u = u
	return rs
}

// offer makes a signed offer of bin as version.
func (rs *refusalSetup) offer(version string, bin []byte, signer minisign.PrivateKey) *proto.UpdateOffer {
	m := &ota.Manifest{Product: ota.Product, Version: version, Artifacts: []ota.Artifact{
		{Name: "edge-agent-linux-arm64", Target: "linux-arm64", Size: int64(len(bin)), SHA256: ota.Sum256(bin)}}}
	mb := m.Marshal()
	rs.srv.mu.Lock()
	rs.srv.blobs["/ota/blobs/"+ota.Sum256(bin)] = bin
	rs.srv.mu.Unlock()
	return &proto.UpdateOffer{Rollout: "r-1", Version: version, Manifest: mb, ManifestSig: ota.Sign(signer, mb, "manifest.json"),
		ArtifactPath: "/ota/blobs/" + ota.Sum256(bin), ArtifactSig: ota.Sign(signer, bin, "edge-agent-linux-arm64")}
}

func TestRefusedBeforeAnythingIsWritten(t *testing.T) {
	_, stranger, _ := minisign.GenerateKey(rand.Reader)
	tests := []struct {
		name   string
		offer  func(rs *refusalSetup) *proto.UpdateOffer
		state  string
		reason string
	}{
		{"bad artefact signature", func(rs *refusalSetup) *proto.UpdateOffer {
			o := rs.offer("v2.0.0", rs.f.new, rs.priv)
			o.ArtifactSig = ota.Sign(rs.priv, []byte("other bytes"), "x")
			return o
		}, proto.StateRefused, "does not verify"},
		{"manifest by an unknown key", func(rs *refusalSetup) *proto.UpdateOffer {
			return rs.offer("v2.0.0", rs.f.new, stranger)
		}, proto.StateRefused, "does not trust"},
		{"tampered manifest", func(rs *refusalSetup) *proto.UpdateOffer {
			o := rs.offer("v2.0.0", rs.f.new, rs.priv)
			o.Manifest = bytes.Replace(o.Manifest, []byte("v2.0.0"), []byte("v3.0.0"), 1)
			o.Version = "v3.0.0"
			return o
		}, proto.StateRefused, "signature does not verify"},
		{"downgrade", func(rs *refusalSetup) *proto.UpdateOffer {
			return rs.offer("v0.9.0", rs.f.new, rs.priv)
		}, proto.StateRefused, "downgrades are refused"},
		{"same version", func(rs *refusalSetup) *proto.UpdateOffer {
			return rs.offer("v1.0.0", rs.f.new, rs.priv)
		}, proto.StateRefused, "not newer"},
		{"corrupted artefact", func(rs *refusalSetup) *proto.UpdateOffer {
			o := rs.offer("v2.0.0", rs.f.new, rs.priv)
			rs.srv.blobs[o.ArtifactPath] = []byte("new binarx")
			return o
		}, proto.StateRefused, "SHA-256"},
		{"corrupted delta", func(rs *refusalSetup) *proto.UpdateOffer {
			o := rs.offer("v2.0.0", rs.f.new, rs.priv)
			d, _ := ota.MakeDelta(rs.f.old, rs.f.new)
			good := ota.Sum256(d)
			d[len(d)/2] ^= 0xff
			rs.srv.blobs["/ota/blobs/delta"] = d
			from, _ := hex.DecodeString(ota.Sum256(rs.f.old))
			sum, _ := hex.DecodeString(good)
			o.Delta = &proto.UpdateDelta{FromSHA256: from, Path: "/ota/blobs/delta", Size: int64(len(d)), SHA256: sum}
			// A delta pays only below the artefact's size.
			o.Manifest = nil
			return withBigArtefact(rs, o)
		}, proto.StateRefused, "corrupted"},
		{"self-update off", func(rs *refusalSetup) *proto.UpdateOffer {
			rs.u.cfg.Off = true
			return rs.offer("v2.0.0", rs.f.new, rs.priv)
		}, proto.StateRefused, "off"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := newRefusalSetup(t)
			o := tt.offer(rs)
			rs.u.handle(context.Background(), o)
			rs.mu.Lock()
			last := rs.status[len(rs.status)-1]
			rs.mu.Unlock()
			if last.State != tt.state || !strings.Contains(last.Reason, tt.reason) {
				t.Errorf("status %s %q, want %s saying %q", last.State, last.Reason, tt.state, tt.reason)
			}
			if rs.f.at(t) != string(rs.f.old) {
				t.Error("the binary changed")
			}
			for _, p := range []string{newPath(rs.f.target), rs.f.prev} {
				if _, err := os.Stat(p); err == nil {
					t.Errorf("%s was written", p)
				}
			}
		})
	}
}

// withBigArtefact re-signs o's release with an artefact larger than its
// delta (a delta is used only when smaller).
func withBigArtefact(rs *refusalSetup, o *proto.UpdateOffer) *proto.UpdateOffer {
	big := append(bytes.Clone(rs.f.new), make([]byte, 4096)...)
	rs.f.new = big
	d, _ := ota.MakeDelta(rs.f.old, big)
	good := ota.Sum256(d)
	d[len(d)/2] ^= 0xff
	rs.srv.blobs["/ota/blobs/delta"] = d
	n := rs.offer("v2.0.0", big, rs.priv)
	sum, _ := hex.DecodeString(good)
	n.Delta = &proto.UpdateDelta{FromSHA256: o.Delta.FromSHA256, Path: "/ota/blobs/delta", Size: int64(len(d)), SHA256: sum}
	return n
}

func TestApplyAndTrial(t *testing.T) {
	rs := newRefusalSetup(t)
	restarted := make(chan string, 1)
	rs.u.cfg.Restart = func(r string) { restarted <- r }
	o := rs.offer("v2.0.0", rs.f.new, rs.priv)
	rs.u.handle(context.Background(), o)
	select {
	case <-restarted:
	default:
		t.Fatalf("no restart; statuses %+v", rs.status)
	}
	if rs.f.at(t) != string(rs.f.new) {
		t.Fatal("the new binary is not in place")
	}
	if b, _ := os.ReadFile(rs.f.prev); string(b) != string(rs.f.old) {
		t.Fatal("the old binary was not kept")
	}
	// The new agent's start: on trial; a commit ends it.
	res, err := Startup(rs.f.dir, "v2.0.0", time.Now())
	if err != nil || !res.Trial {
		t.Fatalf("startup: %+v %v", res, err)
	}
	if err := Commit(rs.f.dir); err != nil {
		t.Fatal(err)
	}
}

func (rs *refusalSetup) states() []string {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	var out []string
	for _, s := range rs.status {
		out = append(out, s.State)
	}
	return out
}

func TestNoUpdateWithoutRoom(t *testing.T) {
	rs := newRefusalSetup(t)
	rs.u.cfg.MinFree = 1 << 62
	rs.u.handle(context.Background(), rs.offer("v2.0.0", rs.f.new, rs.priv))
	last := rs.status[len(rs.status)-1]
	if last.State != proto.StateFailed || !strings.Contains(last.Reason, "free some space") {
		t.Errorf("status %s %q, want failed for want of room", last.State, last.Reason)
	}
	if rs.f.at(t) != string(rs.f.old) {
		t.Error("the binary changed")
	}
}

func TestMaintenanceWindowAndBandwidthCap(t *testing.T) {
	rs := newRefusalSetup(t)
	restarted := make(chan string, 1)
	rs.u.cfg.Restart = func(r string) { restarted <- r }
	// The device clock stands one second before the window opens, and
	// moves on once the updater has said it waits.
	var mu sync.Mutex
	now := time.Date(2026, 12, 6, 1, 59, 59, 0, time.UTC)
	rs.u.cfg.Now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	go func() {
		for !slices.Contains(rs.states(), proto.StateWaiting) {
			time.Sleep(10 * time.Millisecond)
		}
		mu.Lock()
		now = now.Add(2 * time.Second)
		mu.Unlock()
	}()
	big := make([]byte, 192<<10)
	rand.Read(big)
	o := rs.offer("v2.0.0", big, rs.priv)
	o.Window = "02:00-05:00"
	o.BandwidthBytes = 256 << 10 // 192 KiB at 256 KiB/s, after a 32 KiB burst: at least 0.6 s
	start := time.Now()
	rs.u.handle(context.Background(), o)
	took := time.Since(start)
	select {
	case <-restarted:
	default:
		t.Fatalf("the update did not go through: %v", rs.states())
	}
	st := rs.states()
	if st[0] != proto.StateWaiting {
		t.Errorf("statuses %v: want waiting for the window first", st)
	}
	// Only a lower bound: a busy machine makes it longer, never shorter.
	if took < 600*time.Millisecond {
		t.Errorf("192 KiB under a 256 KiB/s cap took %s", took)
	}
}

// FuzzStartChecks feeds arbitrary bytes as the state file (a damaged
// disk, a power cut mid-write): the start-up checks return an error or a
// result, never panic, and never leave the folder without a binary that
// was there.
func FuzzStartChecks(f *testing.F) {
	f.Add([]byte(`{"phase":"trial","version":"v2.0.0","started":true}`))
	f.Add([]byte(`{"phase":"applying","target":"/nonexistent","prev":"/nonexistent"}`))
	f.Add([]byte(`{`))
	f.Add([]byte(`{"phase":"trial","pre_checks":-5,"deadline":-1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		fs := newFiles(t)
		fs.write(fs.target, fs.new)
		fs.write(fs.prev, fs.old)
		// The state names this install's files whatever else it says.
		var s state
		if json.Unmarshal(b, &s) == nil {
			s.Target, s.Prev = fs.target, fs.prev
			b, _ = json.Marshal(&s)
		}
		os.WriteFile(filepath.Join(fs.dir, stateFile), b, 0o600)
		PreStart(fs.dir, time.Now())
		Startup(fs.dir, "v2.0.0", time.Now())
		if fs.at(t) == "missing" {
			t.Fatal("no binary left at the target path")
		}
		readSynced(filepath.Join(fs.dir, "x"))
	})
}

// TestStatusOnEveryConnection: the fleet hears the update status on every
// new connection, also when the tunnel went down and came up again (to
// another fleetd replica, say) before Run took a turn.
func TestStatusOnEveryConnection(t *testing.T) {
	rs := newRefusalSetup(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); rs.u.Run(ctx) }()
	defer func() { cancel(); <-done }()
	sent := func(n int) bool {
		deadline := time.Now().Add(time.Minute)
		for time.Now().Before(deadline) {
			rs.mu.Lock()
			got := len(rs.status)
			rs.mu.Unlock()
			if got >= n {
				return true
			}
			time.Sleep(5 * time.Millisecond)
		}
		return false
	}
	rs.u.LinkUp(true)
	if !sent(1) {
		t.Fatal("no status on the first connection")
	}
	for i := 2; i <= 3; i++ {
		rs.u.LinkUp(false)
		rs.u.LinkUp(true)
		if !sent(i) {
			t.Fatalf("no status on connection %d", i)
		}
	}
}
