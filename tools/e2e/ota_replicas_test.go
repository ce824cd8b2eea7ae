package e2e

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/harness"
)

// TestReplicasOTA: OTA over three replicas on etcd. A release is uploaded
// through replica A only; replicas B and C fetch its artefact and its
// delta from A over the peer connection as soon as its record appears
// (`releases ls` on C says which replicas hold them). A is then killed
// (SIGKILL): a real agent whose tunnel is on C still updates, by the
// delta, downloaded from C, in a rollout created through C. Then a
// release whose only holder is down: C lists it unavailable, the device is
// told so and retries, and updates once the holder is back.
func TestReplicasOTA(t *testing.T) {
	ctl := &fleetCtl{t}
	key, pub := releaseKey(t, ctl, "release")
	root := t.TempDir()
	v100 := makeRelease(t, root, "v1.0.0", "", key)
	v110 := makeRelease(t, root, "v1.1.0", "", key)
	rf := startReplicasWith(t, replicaOptions{args: []string{"--release-key", pub}, devices: []int{repC, repB, repA}})
	a, c := rf.reps[repA], rf.reps[repC]
	onA, onC := &otaFleet{Fleet: a, t: t}, &otaFleet{Fleet: c, t: t}
	for _, r := range []otaRelease{v100, v110} {
		a.Ctl("", "releases", "add", "--version", r.version, r.dir)
	}

	// The device runs v1.0.0, its tunnel on C.
	dev := installDeviceAt(t, onA, rf.lb.Addr(), "ota-r1", v100.bin, pub, []string{"env"}, "")
	if !harness.Eventually(2*time.Minute, func() bool { return replicaOf(c, dev.name) == "r-c" }) {
		t.Fatalf("the device's tunnel is on %q, want r-c\n%s", replicaOf(c, dev.name), dev.out.Output())
	}

	// B and C hold v1.1.0's artefact and the delta from v1.0.0 (made on
	// A) without any device asking.
	target := agentTarget()
	both := func(rs []string) bool { return slices.Contains(rs, "r-b") && slices.Contains(rs, "r-c") }
	var rel api.Release
	var delta api.ReleaseDelta
	if !harness.Eventually(3*time.Minute, func() bool {
		rel = releaseOf(t, onC, v110.version)
		delta = api.ReleaseDelta{}
		for _, d := range rel.Deltas {
			if d.Target == target && d.From == v100.version && d.SHA256 != "" {
				delta = d
			}
		}
		return len(rel.Artifacts) == 1 && both(rel.Artifacts[0].Replicas) && both(delta.Replicas)
	}) {
		t.Fatalf("B and C did not fetch v1.1.0's artefact and delta; C lists %+v", rel)
	}
	for _, r := range []*harness.Fleet{rf.reps[repB], c} {
		r.Proc.WaitOutput("release blob fetched from a replica", 10*time.Second)
	}

	// A dies. Once its presence has lapsed, C says B and C hold the
	// release, and devices can download it.
	a.Kill()
	if !harness.Eventually(time.Minute, func() bool {
		rel = releaseOf(t, onC, v110.version)
		art := rel.Artifacts[0]
		return slices.Equal(art.Replicas, []string{"r-b", "r-c"}) && art.Unavailable == ""
	}) {
		t.Fatalf("after A's death C lists v1.1.0 as %+v, want it held by r-b and r-c", rel.Artifacts)
	}
	if out := c.Ctl("", "releases", "ls"); strings.Contains(out, "UNAVAILABLE") {
		t.Errorf("releases ls on C says a release is unavailable:\n%s", out)
	}

	mark := len(dev.out.Output())
	id := onC.rollout(v110.version)
	onC.waitUpdate(dev, v110.version, "committed", v110.version, 5*time.Minute)
	if got, want := binSum(t, dev.binPath), binSum(t, v110.bin); got != want {
		t.Errorf("the device's binary is %s, want v1.1.0's %s", got, want)
	}
	// It downloaded the delta (its size), not the whole artefact.
	m := regexp.MustCompile(`msg=downloading .*size=(\d+)`).FindStringSubmatch(dev.out.Output()[mark:])
	if m == nil || m[1] != strconv.FormatInt(delta.Size, 10) {
		t.Errorf("the device downloaded %v bytes, want the delta's %d", m, delta.Size)
	}
	// The leader (B or C) finishes the rollout from the status C heard.
	onC.waitRollout(id, "done with 1 committed", 2*time.Minute, func(ro api.Rollout) bool {
		return ro.State == api.RolloutDone && ro.Committed == 1
	})

	// No running replica holds a release: C is killed, v1.2.0 is added
	// through B alone, B is killed, C starts again. C says the release is
	// unavailable; the device, back on C, is told so and retries; when B
	// is back, C fetches it from B and the device updates.
	v120 := makeRelease(t, root, "v1.2.0", "", key)
	b := rf.reps[repB]
	c.Kill()
	if !harness.Eventually(2*time.Minute, func() bool { return replicaOf(b, dev.name) == "r-b" }) {
		t.Fatalf("the device did not move to B: on %q", replicaOf(b, dev.name))
	}
	b.Ctl("", "releases", "add", "--version", v120.version, v120.dir)
	b.Kill()
	c.Start()
	if !harness.Eventually(2*time.Minute, func() bool { return replicaOf(c, dev.name) == "r-c" }) {
		t.Fatalf("the device did not come back to C: on %q", replicaOf(c, dev.name))
	}
	var art api.ReleaseArtifact
	if !harness.Eventually(time.Minute, func() bool {
		art = releaseOf(t, onC, v120.version).Artifacts[0]
		return art.Unavailable != "" && len(art.Replicas) == 0
	}) {
		t.Fatalf("with B and A down C lists v1.2.0's artefact as %+v, want it unavailable", art)
	}
	if !strings.Contains(art.Unavailable, "r-b") {
		t.Errorf("unavailable %q does not name the replica that holds it", art.Unavailable)
	}
	if out := c.Ctl("", "releases", "ls"); !regexp.MustCompile(`v1\.2\.0 .*UNAVAILABLE: held only by replicas not running \(r-b\)`).MatchString(out) {
		t.Errorf("releases ls on C does not mark v1.2.0 unavailable:\n%s", out)
	}
	mark = len(dev.out.Output())
	onC.rollout(v120.version)
	if !harness.Eventually(3*time.Minute, func() bool {
		return strings.Contains(dev.out.Output()[mark:], "503 Service Unavailable: release blob "+art.SHA256+" is not available on this fleetd replica now")
	}) {
		t.Fatalf("the device was not told the release is unavailable:\n%s", dev.out.Output()[mark:])
	}
	if got := onC.device(dev.name).Update; got == nil || got.State != "downloading" || got.Target != v120.version {
		t.Errorf("while unavailable the device's update is %+v, want downloading v1.2.0", got)
	}
	b.Start()
	onC.waitUpdate(dev, v120.version, "committed", v120.version, 5*time.Minute)
	if got, want := binSum(t, dev.binPath), binSum(t, v120.bin); got != want {
		t.Errorf("the device's binary is %s, want v1.2.0's %s", got, want)
	}
}
