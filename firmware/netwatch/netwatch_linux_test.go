package netwatch

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// TestMain runs the watcher instead of the tests when the test binary is
// started as the helper inside the test's network namespace.
func TestMain(m *testing.M) {
	if os.Getenv("NETWATCH_HELPER") == "1" {
		fmt.Println("watching")
		err := Watch(context.Background(), func() { fmt.Println("changed") })
		fmt.Println("error:", err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func scanLines(r io.Reader, lines chan<- string) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		lines <- sc.Text()
	}
	close(lines)
}

func waitFor(t *testing.T, lines <-chan string, want string) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("helper exited before printing %q", want)
			}
			if strings.HasPrefix(l, "error:") {
				t.Fatalf("helper: %s", l)
			}
			if l == want {
				return
			}
		case <-deadline:
			t.Fatalf("helper did not print %q", want)
		}
	}
}

// TestWatchSeesAddressChange adds a link and an address in a network
// namespace the test makes, and expects a change to be reported.
func TestWatchSeesAddressChange(t *testing.T) {
	if _, err := exec.LookPath("ip"); err != nil {
		t.Fatal("this test needs iproute2's ip (tools/setup/setup.sh installs it)")
	}
	// The watcher must run inside the namespace: run this test binary's
	// helper there.
	ns := "edge-netwatch-test"
	exec.Command("ip", "netns", "del", ns).Run()
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Run this test binary again inside the namespace. Under qemu (the
	// ARM tests), os.Executable is the emulator: go through the wrapper.
	self := []string{os.Args[0]}
	if target := os.Getenv("EDGE_QEMU_TARGET"); target != "" {
		self = []string{"bash", "../../cross/qemu-exec.sh", target, os.Args[0]}
	}
	helper := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, self...)...)
	helper.Env = append(helper.Environ(), "NETWATCH_HELPER=1")
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 16)
	go scanLines(out, lines)
	waitFor(t, lines, "watching")
	for _, args := range [][]string{
		{"link", "add", "edge0", "type", "veth", "peer", "name", "edge1"}, // both ends in our namespace
		{"link", "set", "edge0", "up"},
		{"addr", "add", "127.0.0.77/32", "dev", "edge0"}, // no traffic is sent anywhere
	} {
		if out, err := exec.Command("ip", append([]string{"-n", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	waitFor(t, lines, "changed")
	helper.Process.Kill()
	helper.Wait()
}
