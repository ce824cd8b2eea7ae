package e2e

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	edgeagent "remoteler.dev/edge/firmware/agent"
)

// TestAgentWithoutRealTimeClock runs the agent (in this process, its clock
// injected) as a board that boots in 1970: it still verifies the fleet,
// joins, connects, says so in its log, and checks users' certificates
// against the fleet's time, so tsh ssh works.
func TestAgentWithoutRealTimeClock(t *testing.T) {
	f := startFleet(t)
	pw := f.AddUser("alice", "access", "root")
	boot := time.Now()
	logs := &lockedBuffer{}
	cfg := edgeagent.Config{
		Fleet:   f.Addr,
		Token:   f.Token(),
		DataDir: t.TempDir(),
		Name:    "no-rtc",
		Logger:  slog.New(slog.NewTextHandler(logs, nil)),
		// The board's clock: 1970, ticking from boot.
		Now: func() time.Time { return time.Unix(0, 0).Add(time.Since(boot)) },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- edgeagent.Run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("agent log:\n%s", logs.String())
		}
	})
	f.WaitOnline("no-rtc")
	for _, want := range []string{"device clock is before 2026-01-01", "device clock is off; using the fleet's time"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("agent log lacks %q", want)
		}
	}
	u := f.Login("alice", pw)
	if out := u.Tsh("ssh", "root@no-rtc", "echo", "ok"); out != "ok\n" {
		t.Errorf("tsh ssh to a device without a clock = %q", out)
	}
}
