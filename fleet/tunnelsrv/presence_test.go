package tunnelsrv

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"remoteler.dev/edge/firmware/tunnel"
	"remoteler.dev/edge/proto"
)

// TestDeadDeviceGoesOffline: an agent that dies without a word (kill -9)
// is offline within three keep-alive periods and a few seconds, with
// "last seen" the last packet heard, not when the fleet noticed; a user's
// connection to it fails at once, saying so.
func TestDeadDeviceGoesOffline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sf := newSimFleetOpts(t, simOpts{}) // the shipped keep-alive: 25 s
		defer sf.stop()
		sf.waitState(t, true)
		time.Sleep(3 * time.Minute) // idle: keep-alives and heartbeats only
		sf.killAgents()
		died := time.Now()
		window := silenceKeepalives*tunnel.DefaultKeepalive + silenceSlack
		var offlineAt time.Time
		for offlineAt.IsZero() {
			time.Sleep(time.Second)
			if !sf.srv.Online("pi-1") {
				offlineAt = time.Now()
			}
			if time.Since(died) > 10*time.Minute {
				t.Fatal("the dead device still counts as online after 10 minutes")
			}
		}
		info, ok := sf.srv.Info("pi-1")
		t.Logf("died at +0; offline at +%v (window %v); last heard %v before it died; connection still held: %v",
			offlineAt.Sub(died), window, died.Sub(info.LastHeard), ok)
		if offlineAt.Sub(died) > window+time.Second {
			t.Errorf("offline %v after the device died, want within %v", offlineAt.Sub(died), window)
		}
		if !ok || info.Online {
			t.Fatalf("Info = %+v, %v; want the lingering connection, offline", info, ok)
		}
		if info.LastHeard.After(died) || died.Sub(info.LastHeard) > tunnel.DefaultKeepalive+presenceSweep {
			t.Errorf("last heard %v before it died, want within one keep-alive period (%v)", died.Sub(info.LastHeard), tunnel.DefaultKeepalive)
		}
		if n := sf.srv.Count(); n != 0 {
			t.Errorf("Count = %d, want 0 online", n)
		}
		start := time.Now()
		_, err := sf.srv.Open(context.Background(), "pi-1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "s1"})
		var oe *OfflineError
		if !errors.As(err, &oe) || !errors.Is(err, ErrOffline) || !oe.LastHeard.Equal(info.LastHeard) {
			t.Fatalf("Open = %v, want an OfflineError with the last-heard time", err)
		}
		if took := time.Since(start); took != 0 {
			t.Errorf("Open took %v to say the device is offline, want no wait", took)
		}
	})
}

// TestSilentWhileIdleIsNotOffline: an idle device that only sends its
// keep-alives stays online (the fleet counts them as signs of life).
func TestSilentWhileIdleIsNotOffline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sf := newSimFleetOpts(t, simOpts{})
		defer sf.stop()
		sf.waitState(t, true)
		for range 30 {
			time.Sleep(30 * time.Second)
			if !sf.srv.Online("pi-1") {
				t.Fatalf("an idle, healthy device counted as offline at +%v", time.Since(time.Time{}))
			}
		}
	})
}

// TestOpenWhileAgentRestarts: a user's connection opened while the device's
// agent restarts goes through on the new agent, whether the old one stopped
// cleanly (systemctl restart) or died (kill -9, restarted by systemd 5 s
// later); it never fails with "replaced by a newer connection".
func TestOpenWhileAgentRestarts(t *testing.T) {
	tests := []struct {
		name  string
		crash bool
		after time.Duration // until the new agent starts
	}{
		{"clean stop, new agent at once", false, 100 * time.Millisecond},
		{"clean stop, new agent 5s later", false, 5 * time.Second},
		{"crash, new agent 5s later", true, 5 * time.Second},
		{"crash, new agent 20s later", true, 20 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				sf := newSimFleetOpts(t, simOpts{log: bulkLog(t)})
				defer sf.stop()
				sf.waitState(t, true)
				if tt.crash {
					sf.killAgents() // nothing it says from now on arrives
				}
				sf.stopClient()
				opened := make(chan error, 1)
				go func() {
					conn, err := sf.srv.Open(context.Background(), "pi-1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "s1"})
					if err == nil {
						echo(t, conn, "on the new agent")
						conn.Close()
					}
					opened <- err
				}()
				time.Sleep(tt.after)
				_, state, stopNew := sf.newAgent(simOpts{log: bulkLog(t)})
				defer stopNew()
				if up := <-state; !up {
					t.Fatal("the new agent did not come up")
				}
				if err := <-opened; err != nil {
					t.Fatalf("Open during the restart: %v", err)
				}
			})
		})
	}
}

// TestSilenceReported: a device that falls silent (its link dark) is
// reported silent once its silence window passes, and heard again at once
// when its keep-alives return on the same connection: fleetd records both
// where other replicas see them. A report that could not be recorded is
// made again at the next sweep.
func TestSilenceReported(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var calls []string
		var sinces []time.Time
		var lastAt time.Time
		failNext := false
		sf := newSimFleetOpts(t, simOpts{onSilence: func(_ context.Context, id string, since time.Time, silent bool) error {
			mu.Lock()
			defer mu.Unlock()
			if failNext {
				failNext = false
				calls = append(calls, fmt.Sprintf("%s:%v(failed)", id, silent))
				return errors.New("the store did not answer")
			}
			calls = append(calls, fmt.Sprintf("%s:%v", id, silent))
			sinces = append(sinces, since)
			lastAt = time.Now()
			return nil
		}})
		defer sf.stop()
		sf.waitState(t, true)
		seen := func() string {
			mu.Lock()
			defer mu.Unlock()
			return strings.Join(calls, ",")
		}
		time.Sleep(2 * time.Minute)
		if got := seen(); got != "" {
			t.Fatalf("silence reported for a healthy device: %s", got)
		}
		info, _ := sf.srv.Info("pi-1")
		mu.Lock()
		failNext = true // the first report is not recorded
		mu.Unlock()
		sf.router.mutedBelow.Store(1 << 30) // the link goes dark
		window := silenceKeepalives*tunnel.DefaultKeepalive + silenceSlack
		time.Sleep(window + 3*presenceSweep)
		if got := seen(); got != "pi-1:true(failed),pi-1:true" {
			t.Fatalf("after %v dark: reported %q, want a failed report made again", window+3*presenceSweep, got)
		}
		sf.router.mutedBelow.Store(0) // it comes back on the same connection
		returned := time.Now()
		for !strings.HasSuffix(seen(), ",pi-1:false") {
			if time.Since(returned) > tunnel.DefaultKeepalive+2*presenceSweep {
				t.Fatalf("after the link returned: reported %q, want it heard again", seen())
			}
			time.Sleep(100 * time.Millisecond)
		}
		back, _ := sf.srv.Info("pi-1")
		if got := seen(); got != "pi-1:true(failed),pi-1:true,pi-1:false" {
			t.Fatalf("after the link returned: reported %q", got)
		}
		mu.Lock()
		defer mu.Unlock()
		// Heard again is reported when the keep-alive arrives, not at
		// the next sweep.
		if d := lastAt.Sub(back.LastHeard); d < 0 || d >= time.Second {
			t.Errorf("heard again reported %v after the device was heard, want at once", d)
		}
		for _, s := range sinces {
			if !s.Equal(info.Since) {
				t.Errorf("reported since %v, want the connection's %v", s, info.Since)
			}
		}
		if !sf.srv.Online("pi-1") {
			t.Error("the device is not online again")
		}
	})
}
