package e2e

import (
	"regexp"
	"remoteler.dev/edge/tools/harness"
	"strconv"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/tools/linksim"
)

// TestOTADownloadOver3G: a full agent download through tools/linksim on
// the 3G profile (1.6 Mbit/s down, 300 ms RTT, 1% loss), with a 20 s
// blackout and a kill -9 of the agent part-way, resumes where it stopped
// and finishes; then a delta update over the same link. It logs the bytes
// each update cost on the link (docs/benchmarks.md).
func TestOTADownloadOver3G(t *testing.T) {
	key, pub := releaseKey(t, &fleetCtl{t}, "release")
	root := t.TempDir()
	from := makeRelease(t, root, "v3.0.0", "env", key)
	to := makeRelease(t, root, "v3.1.0", "env", key)
	next := makeRelease(t, root, "v3.2.0", "env", key)
	f := startOTAFleet(t, pub)
	// v3.0.0 is not a fleet release: no delta to v3.1.0, the whole
	// artefact goes down the link.
	f.ctl("", "releases", "add", to.dir)
	link, addr := linkTo(t, f.Addr)
	dev := installDeviceAt(t, f, addr, "ota-3g", from.bin, pub, []string{"env"}, "")
	f.waitOnline(dev.name)
	p, _ := linksim.ProfileByName("3g")
	if err := link.SetProfile(p); err != nil {
		t.Fatal(err)
	}
	size := int64(len(readFile(t, to.bin)))
	before := link.Stats()
	f.rollout(to.version)
	waitDone := func(n int64) {
		t.Helper()
		if !harness.Eventually(5*time.Minute, func() bool {
			u := f.device(dev.name).Update
			return u != nil && u.State == "downloading" && u.Done >= n
		}) {
			t.Fatalf("the download never reached %d bytes: %+v\n%s", n, f.device(dev.name).Update, dev.out.Output())
		}
	}
	waitDone(size / 5)
	link.Blackout(20 * time.Second)
	waitDone(size / 2)
	dev.kill() // a power cut: the restarted agent resumes from its part file
	f.waitUpdate(dev, to.version, "committed", to.version, 8*time.Minute)
	after := link.Stats()

	// The restarted agent asked for the rest, not the whole.
	froms := regexp.MustCompile(`msg=downloading .*from_byte=(\d+)`).FindAllStringSubmatch(dev.out.Output(), -1)
	resumed := false
	for _, m := range froms {
		if n, _ := strconv.ParseInt(m[1], 10, 64); n >= size/2 {
			resumed = true
		}
	}
	if !resumed {
		t.Errorf("no request resumed past half the artefact; requests started at %v", froms)
	}
	down := after.Down.Forwarded.Bytes - before.Down.Forwarded.Bytes
	if float64(down) > 1.3*float64(size) {
		t.Errorf("%d bytes went down the link for a %d-byte artefact: the download did not resume", down, size)
	}
	if after.Down.Dropped.Blackout == before.Down.Dropped.Blackout {
		t.Error("the blackout dropped nothing: the test did not test")
	}
	t.Logf("3G full update (%d-byte artefact, a blackout and a restart): %d bytes down, %d up on the link",
		size, down, after.Up.Forwarded.Bytes-before.Up.Forwarded.Bytes)

	// A delta update over the same link.
	f.ctl("", "releases", "add", next.dir)
	if !harness.Eventually(2*time.Minute, func() bool { return strings.Contains(f.ctl("", "releases", "ls"), "from v3.1.0: ") }) {
		t.Fatal("no delta prepared")
	}
	before = link.Stats()
	start := time.Now()
	f.rollout(next.version)
	f.waitUpdate(dev, next.version, "committed", next.version, 5*time.Minute)
	after = link.Stats()
	t.Logf("3G delta update: %d bytes down, %d up on the link, %s from rollout to commit",
		after.Down.Forwarded.Bytes-before.Down.Forwarded.Bytes, after.Up.Forwarded.Bytes-before.Up.Forwarded.Bytes, time.Since(start).Round(time.Second))
}
