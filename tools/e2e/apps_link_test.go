package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"remoteler.dev/edge/tools/harness"
	"remoteler.dev/edge/tools/linksim"
)

// TestAppsThroughBlackout: an app request in flight (a slow download) and
// an open websocket, both through tsh proxy app and the fleet, ride the
// same resumable layer as SSH: a 30 s blackout of the device's link delays
// them; it does not break them.
func TestAppsThroughBlackout(t *testing.T) {
	s := startAppFleet(t, "")
	// The device goes behind a simulated link (no loss, just the
	// blackout), with its apps.
	s.agent.Proc.Stop()
	perfect, _ := linksim.ProfileByName("perfect")
	link, err := linksim.New(linksim.Config{Profile: perfect, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { link.Close() })
	relay, err := link.ListenUDP("127.0.0.1:0", s.f.Addr)
	if err != nil {
		t.Fatal(err)
	}
	s.agent.Proc = start(t, "edge-agent pi-1 (behind linksim)", nil, "edge-agent", "start", "--data-dir", s.agent.DataDir,
		"--fleet", relay.Addr().String(), "--log-level", "debug", "--app", "hello="+s.app.URL)
	s.f.WaitOnline("pi-1")

	alice := s.user(t, "alice", "access")
	alice.Tsh("apps", "login", "hello")
	base := proxyApp(t, alice, "hello")

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, strings.Replace(base, "http://", "ws://", 1)+"/ws", nil)
	if err != nil {
		t.Fatalf("websocket through the fleet: %v", err)
	}
	defer ws.CloseNow()
	echo := func(msg string) {
		t.Helper()
		if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatalf("websocket write %q: %v", msg, err)
		}
		_, b, err := ws.Read(ctx)
		if err != nil || string(b) != msg {
			t.Fatalf("websocket echo of %q: %q, %v", msg, b, err)
		}
	}
	echo("before the blackout")

	// A 24 MiB download at 1 MiB/s: in flight for the whole blackout.
	const size = 24 << 20
	_, sum := patternFile(t, size)
	got := filepath.Join(t.TempDir(), "download.bin")
	dl := harness.Start(t, harness.Cmd{Name: "curl download", Path: "curl",
		Args: []string{"-sS", "--limit-rate", "1M", "-o", got, "-w", "%{http_code} %{size_download}\n", fmt.Sprintf("%s/download?size=%d", base, size)}})
	if !harness.Eventually(time.Minute, func() bool {
		fi, err := os.Stat(got)
		return err == nil && fi.Size() > 1<<20
	}) {
		t.Fatalf("the download did not start: %s", dl.Output())
	}

	link.Blackout(30 * time.Second)
	blackoutAt := time.Now()
	// Sent into the blackout: delayed, not lost.
	if err := ws.Write(ctx, websocket.MessageText, []byte("during the blackout")); err != nil {
		t.Fatalf("websocket write during the blackout: %v", err)
	}
	_, b, err := ws.Read(ctx)
	if err != nil || string(b) != "during the blackout" {
		t.Fatalf("the echo of what was sent in the blackout: %q, %v", b, err)
	}
	t.Logf("the echo of a message sent into the 30 s blackout came back after %v", time.Since(blackoutAt).Round(time.Millisecond))
	if link.Out() {
		t.Error("an echo came back while the link was still out")
	}
	echo("after the blackout")

	select {
	case <-dl.Done():
	case <-time.After(3 * time.Minute):
		t.Fatalf("the download did not finish after the blackout: %s", dl.Output())
	}
	if dl.Err() != nil || !strings.HasPrefix(dl.Output(), "200 ") {
		t.Fatalf("download: %v %s", dl.Err(), dl.Output())
	}
	if fileSum(t, got) != sum {
		t.Error("the download that rode through the blackout does not match the app's bytes")
	}
	st := link.Stats()
	if st.Down.Dropped.Blackout == 0 && st.Up.Dropped.Blackout == 0 {
		t.Error("the blackout dropped nothing: it did not happen")
	}
	ws.Close(websocket.StatusNormalClosure, "")
}
