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
// delta, downloaded from C, in a rollout created through C.
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
}
