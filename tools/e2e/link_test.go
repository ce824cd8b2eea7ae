package e2e

import (
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/creack/pty"

	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/linksim"

	"remoteler.dev/edge/tools/harness"
)

// behindLink restarts agent a with its tunnel going through a linksim link
// towards the fleet, and waits until it is online again.
func behindLink(t *testing.T, f *harness.Fleet, a *harness.Agent, cfg linksim.Config) *linksim.Link {
	t.Helper()
	a.Proc.Stop()
	link, relay := udpRelay(t, f, cfg)
	a.Proc = start(t, "edge-agent "+a.Name+" (behind linksim)", nil, "edge-agent", "start",
		"--data-dir", a.DataDir, "--fleet", relay, "--log-level", "debug")
	f.WaitOnline(a.Name)
	return link
}

// udpRelay starts a linksim link with a UDP relay to the fleet, closed at
// the end of the test, and returns the link and the relay's address.
func udpRelay(t *testing.T, f *harness.Fleet, cfg linksim.Config) (*linksim.Link, string) {
	t.Helper()
	link, err := linksim.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { link.Close() })
	relay, err := link.ListenUDP("127.0.0.1:0", f.Addr)
	if err != nil {
		t.Fatal(err)
	}
	return link, relay.Addr().String()
}

// TestInteractiveOpenSSHThroughBlackoutAndMove: a real OpenSSH session on
// an LTE-like link survives a 60 s blackout followed by a change of the
// device's address, and is still interactive afterwards.
func TestInteractiveOpenSSHThroughBlackoutAndMove(t *testing.T) {
	f, a, u := setup(t)
	lte, _ := linksim.ProfileByName("lte")
	lte = lte.Both(func(i *linksim.Impairment) { i.Loss = 0 })
	link := behindLink(t, f, a, linksim.Config{Profile: lte, Seed: 1, NATTimeout: 30 * time.Second})
	cfg := openSSHConfig(t, u)

	cmd := exec.Command("ssh", "-F", cfg, "-o", "BatchMode=yes", "-tt", "root@pi-1.fleet")
	tty, err := pty.StartWithSize(cmd, &pty.Winsize{Rows: 24, Cols: 80})
	if err != nil {
		t.Fatal(err)
	}
	defer tty.Close()
	out := &lockedBuffer{}
	go io.Copy(out, tty)
	expect := func(s string, within time.Duration) {
		t.Helper()
		if !harness.Eventually(within, func() bool { return strings.Contains(out.String(), s) }) {
			t.Fatalf("no %q within %v; screen:\n%s", s, within, out.String())
		}
	}
	io.WriteString(tty, "echo a$((1+1))b\r")
	expect("a2b", 20*time.Second)

	link.Blackout(60 * time.Second)
	io.WriteString(tty, "echo c$((2+2))d\r") // typed during the blackout
	if !harness.Eventually(75*time.Second, func() bool { return !link.Out() }) {
		t.Fatal("the blackout did not end")
	}
	if err := link.MoveTo(netip.MustParseAddr("127.0.0.2")); err != nil {
		t.Fatal(err)
	}
	// What was typed during the blackout arrives once the fleet finds the
	// device at its new address: at its next NAT keep-alive (25 s).
	expect("c4d", 40*time.Second)
	start := time.Now()
	io.WriteString(tty, "echo e$((3+3))f\r")
	expect("e6f", 10*time.Second)
	t.Logf("after the blackout and the move, a command's echo took %v", time.Since(start))
	io.WriteString(tty, "exit\r")
	if err := cmd.Wait(); err != nil {
		t.Errorf("ssh exit: %v", err)
	}
	dev := f.Devices()[0]
	if !strings.HasPrefix(dev.Addr, "127.0.0.2:") {
		t.Errorf("fleet sees the device at %s, want 127.0.0.2", dev.Addr)
	}
	st := link.Stats()
	t.Logf("link: up %d packets forwarded, %d dropped in the blackout; down %d forwarded, %d dropped in the blackout",
		st.Up.Forwarded.Packets, st.Up.Dropped.Blackout, st.Down.Forwarded.Packets, st.Down.Dropped.Blackout)
}

// TestScpThroughLossAndBlackouts: a 20 MB scp each way through 5% loss and
// two blackouts arrives intact.
func TestScpThroughLossAndBlackouts(t *testing.T) {
	f, a, u := setup(t)
	lossy, _ := linksim.ProfileByName("perfect")
	lossy = lossy.Both(func(i *linksim.Impairment) {
		i.Delay = 10 * time.Millisecond
		i.Loss = 0.05
	})
	link := behindLink(t, f, a, linksim.Config{Profile: lossy, Seed: 2})
	cfg := openSSHConfig(t, u)
	local := t.TempDir()
	src, sum := randomFile(t, local, 20<<20)
	remote := filepath.Join(t.TempDir(), "up")

	// Two 5 s blackouts, cut in when 5 MB and then 10 MB of the upload
	// (fleet → device: linksim's down direction) have crossed the link.
	base := link.Stats().Down.Forwarded.Bytes
	blackouts := make(chan int, 1)
	go func() {
		n := 0
		defer func() { blackouts <- n }()
		for _, at := range []uint64{5 << 20, 10 << 20} {
			if !harness.Eventually(5*time.Minute, func() bool { return link.Stats().Down.Forwarded.Bytes-base > at }) {
				return
			}
			link.Blackout(5 * time.Second)
			n++
			t.Logf("blackout with %d MB forwarded", (link.Stats().Down.Forwarded.Bytes-base)>>20)
		}
	}()
	start := time.Now()
	if out, errOut, err := run("", nil, "scp", "-F", cfg, "-o", "BatchMode=yes", "-q", src, "root@pi-1.fleet:"+remote); err != nil {
		t.Fatalf("scp up: %v\n%s%s", err, out, errOut)
	}
	t.Logf("20 MB up through 5%% loss and two blackouts in %v", time.Since(start))
	if n := <-blackouts; n != 2 {
		t.Errorf("%d blackouts cut in during the upload, want 2", n)
	}
	if fileSum(t, remote) != sum {
		t.Fatal("scp up: checksum differs")
	}
	st := link.Stats()
	if st.Down.Dropped.Blackout == 0 || st.Down.Dropped.Loss == 0 {
		t.Errorf("the link dropped nothing (blackout %d, loss %d): the test did not test", st.Down.Dropped.Blackout, st.Down.Dropped.Loss)
	}
	down := filepath.Join(local, "down")
	link.Blackout(5 * time.Second)
	start = time.Now()
	if out, errOut, err := run("", nil, "scp", "-F", cfg, "-o", "BatchMode=yes", "-q", "root@pi-1.fleet:"+remote, down); err != nil {
		t.Fatalf("scp down: %v\n%s%s", err, out, errOut)
	}
	t.Logf("20 MB down through 5%% loss and a blackout at the start in %v", time.Since(start))
	if fileSum(t, down) != sum {
		t.Fatal("scp down: checksum differs")
	}
	os.Remove(remote)
}

// TestLossLeavesOutBlackouts: a session sends to a device on a link that
// loses nothing but goes dark for 8 s. The fleet sees the blackout, and the
// LOSS of tsh ls -v does not count the packets it swallowed.
func TestLossLeavesOutBlackouts(t *testing.T) {
	f, a, u := setup(t)
	clean := linksim.Profile{Name: "clean"}.Both(func(i *linksim.Impairment) { i.Delay = 20 * time.Millisecond })
	link := behindLink(t, f, a, linksim.Config{Profile: clean, Seed: 3})

	cmd := exec.Command(bin.Path("tsh"), "ssh", "root@pi-1", "cat > /dev/null")
	cmd.Env = append(os.Environ(), u.Env()...)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	chunk := strings.Repeat("x", 1000)
	send := func(d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); {
			if _, err := io.WriteString(in, chunk); err != nil {
				t.Fatalf("write to tsh ssh: %v\n%s", err, out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	send(5 * time.Second)
	link.Blackout(8 * time.Second)
	send(15 * time.Second)
	in.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("tsh ssh: %v\n%s", err, out.String())
	}
	var dev api.Device
	if !harness.Eventually(10*time.Second, func() bool {
		for _, d := range f.Devices() {
			if d.Name == "pi-1" && d.Link.Blackouts > 0 {
				dev = d
				return true
			}
		}
		return false
	}) {
		t.Fatalf("the fleet saw no blackout: %+v", f.Devices())
	}
	if dev.Link.LossPercent > 0.5 {
		t.Errorf("LOSS is %.2f%% on a link that lost packets only in its blackout", dev.Link.LossPercent)
	}
	t.Logf("link after the blackout: %+v", dev.Link)
}
