package tunnelsrv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/quic-go/quic-go/testutils/simnet"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/tools/logtest"
)

// linkOf returns the device's live connection and its link tag.
func (sf *simFleet) linkOf(t *testing.T, id string) (*deviceConn, []byte) {
	t.Helper()
	sf.srv.mu.Lock()
	defer sf.srv.mu.Unlock()
	dc := sf.srv.conns[id]
	for tag, c := range sf.srv.tags {
		if c == dc {
			return dc, []byte(tag)
		}
	}
	t.Fatalf("no live connection for %s", id)
	return nil, nil
}

// fromFleet sends b to the device's address from the fleet's address, as
// anyone who can forge that address can.
func (sf *simFleet) fromFleet(t *testing.T, b []byte) {
	t.Helper()
	info, ok := sf.srv.Info("pi-1")
	if !ok {
		t.Fatal("device not connected")
	}
	if _, err := sf.srvSock.WriteTo(b, info.Addr); err != nil {
		t.Fatal(err)
	}
}

// TestLinkResetNeedsTheToken: a link reset drops the agent's tunnel only
// when it carries the connection's reset token; the one-byte reset of the
// earlier revision, or a wrong token, from the fleet's (spoofable) address
// is ignored.
func TestLinkResetNeedsTheToken(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sf := newSimFleetOpts(t, simOpts{log: bulkLog(t)})
		defer sf.stop()
		sf.waitState(t, true)
		_, tag := sf.linkOf(t, "pi-1")
		forged := map[string][]byte{
			"a bare reset byte":             {proto.LinkResetByte},
			"a token under another key":     proto.AppendLinkReset(nil, proto.LinkResetToken(bytes.Repeat([]byte{1}, 32), tag)),
			"the token of another tag":      proto.AppendLinkReset(nil, proto.LinkResetToken(sf.srv.linkKey, []byte("12345678"))),
			"a token one bit off":           flipLast(proto.AppendLinkReset(nil, proto.LinkResetToken(sf.srv.linkKey, tag))),
			"a reset with nothing after it": {proto.LinkResetByte, 0},
		}
		for name, b := range forged {
			sf.fromFleet(t, b)
			time.Sleep(5 * time.Second)
			if n := sf.client.Reconnects(); n != 0 {
				t.Fatalf("after %s: the agent reconnected %d times", name, n)
			}
		}
		if !sf.srv.Online("pi-1") {
			t.Fatal("the device went offline after forged resets")
		}
		// The real one, as a fleet that lost the connection sends it.
		sf.fromFleet(t, proto.AppendLinkReset(nil, proto.LinkResetToken(sf.srv.linkKey, tag)))
		sf.waitState(t, false)
		sf.waitState(t, true)
		if n := sf.client.Reconnects(); n != 1 {
			t.Errorf("after the real reset: %d reconnects, want 1", n)
		}
	})
}

func flipLast(b []byte) []byte {
	b[len(b)-1] ^= 1
	return b
}

// TestResetForUnknownConnection: a keep-alive whose tag names no connection
// of this fleet draws a reset carrying the token that the fleet's link key
// gives that tag, so that a fleet restarted with the same key resets its
// predecessor's connections, no larger than the keep-alive; and the fleet
// says in its log how many it told to reconnect.
func TestResetForUnknownConnection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := logtest.NewRecorder(t)
		sf := newSimFleetOpts(t, simOpts{log: rec.Logger()})
		defer sf.stop()
		sf.waitState(t, true)
		sock := sf.agentSocks[len(sf.agentSocks)-1]
		tag := []byte("stale-01")
		keepalive := append([]byte{proto.NATKeepaliveByte}, tag...)
		if _, err := sock.WriteTo(keepalive, sf.srvSock.LocalAddr()); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		sock.SetReadDeadline(time.Now().Add(time.Second))
		n, _, err := sock.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no answer to a keep-alive for an unknown connection: %v", err)
		}
		want := proto.AppendLinkReset(nil, proto.LinkResetToken(sf.srv.linkKey, tag))
		if !bytes.Equal(buf[:n], want) {
			t.Errorf("answer %x, want the reset with the tag's token %x", buf[:n], want)
		}
		if n > len(keepalive) {
			t.Errorf("the reset is %d bytes, larger than the %d-byte keep-alive it answers", n, len(keepalive))
		}
		time.Sleep(linkStatsEvery) // the bubble's clock: the next summary
		synctest.Wait()
		if !strings.Contains(rec.String(), `msg="told devices whose connection this fleet does not have to reconnect" component=tunnel devices=1 `) {
			t.Errorf("no summary of the reset in the fleet's log:\n%s", rec.String())
		}
	})
}

// TestLinkHurryNeedsMACAndNewSequence: a link hurry makes the agent move
// its connection to a fresh path (the fleet then sees a new address) only
// with the connection's MAC and a sequence number it has not seen; a
// forged or replayed one changes nothing.
func TestLinkHurryNeedsMACAndNewSequence(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sf := newSimFleetOpts(t, simOpts{log: bulkLog(t)})
		defer sf.stop()
		sf.waitState(t, true)
		conn, err := sf.srv.Open(context.Background(), "pi-1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "s1"})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		echo(t, conn, "before")
		time.Sleep(5 * time.Second) // the agent validates a spare path while the session runs
		dc, _ := sf.linkOf(t, "pi-1")
		addr := func() string { i, _ := sf.srv.Info("pi-1"); return i.Addr.String() }
		first := addr()
		h := proto.LinkHurry{Seq: 1000, Reason: proto.HurrySending}
		sf.fromFleet(t, proto.AppendLinkHurry(nil, bytes.Repeat([]byte{7}, proto.LinkKeySize), h))
		echo(t, conn, "after a forged hurry")
		time.Sleep(time.Second)
		if a := addr(); a != first {
			t.Fatalf("a hurry with a forged MAC moved the connection from %s to %s", first, a)
		}
		real := proto.AppendLinkHurry(nil, dc.linkKey, h)
		sf.fromFleet(t, real)
		time.Sleep(time.Second)
		echo(t, conn, "after a real hurry")
		moved := addr()
		if moved == first {
			t.Fatal("a real hurry did not move the connection")
		}
		sf.fromFleet(t, real) // played again
		time.Sleep(time.Second)
		echo(t, conn, "after a replayed hurry")
		if a := addr(); a != moved {
			t.Errorf("a replayed hurry moved the connection again, from %s to %s", moved, a)
		}
		if n := sf.client.Reconnects(); n != 0 {
			t.Errorf("%d reconnects, want 0: a move keeps the connection", n)
		}
	})
}

// TestPokesAndWhoAsksAreRateLimited: pokes and who-asks are not
// authenticated, so whatever the agent sends for them is limited: a burst
// of twenty of each in a second draws at most two heartbeats and two
// tagged keep-alives.
func TestPokesAndWhoAsksAreRateLimited(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sf := newSimFleetOpts(t, simOpts{})
		defer sf.stop()
		sf.waitState(t, true)
		time.Sleep(time.Minute)
		var mu sync.Mutex
		var tagged, quic int
		trace := func(p simnet.Packet) {
			if from := p.From.(*net.UDPAddr); !from.IP.Equal(sf.router.private) {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			switch {
			case len(p.Data) == 1+proto.LinkTagSize && p.Data[0] == proto.NATKeepaliveByte:
				tagged++
			case p.Data[0]&0x40 != 0: // the QUIC fixed bit
				quic++
			}
		}
		sf.router.trace.Store(&trace)
		for range 20 {
			sf.fromFleet(t, []byte{proto.LinkPokeByte})
			sf.fromFleet(t, []byte{proto.LinkWhoByte})
			time.Sleep(50 * time.Millisecond)
		}
		time.Sleep(time.Second)
		sf.router.trace.Store(nil)
		mu.Lock()
		defer mu.Unlock()
		t.Logf("20 pokes and 20 who-asks in a second drew %d tagged keep-alives and %d QUIC packets", tagged, quic)
		if tagged < 1 || tagged > 2 {
			t.Errorf("%d tagged keep-alives, want 1 or 2", tagged)
		}
		if quic < 1 || quic > 2 {
			t.Errorf("%d QUIC packets (heartbeats), want 1 or 2", quic)
		}
	})
}

// TestManyBlackoutsOnOneConnection: a bulk download through twenty
// blackouts in a row. Each recovery moves the connection to another path;
// the sockets those paths are on must stay open while the connection
// lives (closing one closes the connection), so they are a small pool,
// reused once full: the fleet sees old addresses come back as new paths.
// Bytes flow again within 1 RTT + 100 ms after every one, none is lost,
// and the connection is never dialled again. (Before the pool, the ninth
// blackout cost a redial, two round trips more.)
func TestManyBlackoutsOnOneConnection(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		stop := make(chan struct{})
		sf := newSimFleetOpts(t, simOpts{log: bulkLog(t), handle: func(ctx context.Context, h *proto.StreamHeader, conn net.Conn) {
			defer conn.Close()
			buf := make([]byte, 32<<10)
			for n := byte(0); ; n++ {
				for i := range buf {
					buf[i] = n
				}
				select {
				case <-stop:
					return
				default:
				}
				if _, err := conn.Write(buf); err != nil {
					return
				}
			}
		}})
		defer sf.stop()
		defer close(stop)
		sf.waitState(t, true)
		conn, err := sf.srv.Open(context.Background(), "pi-1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "s1"})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var mu sync.Mutex
		var got int64
		var bad error
		go func() {
			buf := make([]byte, 32<<10)
			var off int64
			for {
				n, err := conn.Read(buf)
				for i := range n {
					if want := byte((off + int64(i)) / (32 << 10)); buf[i] != want {
						mu.Lock()
						bad = fmt.Errorf("byte %d is %d, want %d", off+int64(i), buf[i], want)
						mu.Unlock()
						return
					}
				}
				off += int64(n)
				mu.Lock()
				got = off
				mu.Unlock()
				if err != nil {
					return
				}
			}
		}()
		progress := func() int64 {
			mu.Lock()
			defer mu.Unlock()
			if bad != nil {
				t.Fatal(bad)
			}
			return got
		}
		const blackouts = 20
		for i := range blackouts {
			time.Sleep(3 * time.Second)
			sf.router.down.Store(true)
			time.Sleep(5 * time.Second)
			synctest.Wait()
			before := progress()
			sf.router.down.Store(false)
			back := time.Now()
			for progress() == before {
				time.Sleep(10 * time.Millisecond)
				if time.Since(back) > time.Minute {
					t.Fatalf("blackout %d: no bytes a minute after the link came back", i+1)
				}
			}
			t.Logf("blackout %d: bytes flowing %v after the link came back; %d reconnects so far", i+1, time.Since(back), sf.client.Reconnects())
			if took, want := time.Since(back), simRTT+100*time.Millisecond; took > want {
				t.Errorf("blackout %d: bytes flowed %v after the link came back, want at most %v", i+1, took, want)
			}
		}
		if n := sf.client.Reconnects(); n != 0 {
			t.Errorf("%d reconnects in %d blackouts, want none: a move must not cost the connection", n, blackouts)
		}
	})
}

// TestHurryCadence: while a session stalls, a hurry goes on every one of
// watchStalls' ticks, however late each tick runs, so that the link's
// return finds one within hurryEvery; and never twice within half a tick.
// (Before, a tick that ran less late than the one before waited a whole
// tick more: every other hurry came 100 ms after the last.)
func TestHurryCadence(t *testing.T) {
	const us = time.Microsecond
	tests := []struct {
		name string
		late []time.Duration // how late each tick runs
	}{
		{"on time", []time.Duration{0, 0, 0, 0, 0, 0}},
		{"less late each time", []time.Duration{900 * us, 700 * us, 500 * us, 300 * us, 100 * us, 0}},
		{"alternating", []time.Duration{400 * us, 100 * us, 400 * us, 100 * us, 400 * us, 100 * us}},
		{"one very late tick", []time.Duration{0, stallCheck * 2 / 5, 0, 0, stallCheck / 10, 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dc := &deviceConn{}
			start := time.Unix(1_000_000, 0)
			for i, late := range tt.late {
				now := start.Add(time.Duration(i)*stallCheck + late)
				seq, ok := dc.hurryDue(now, true)
				if !ok || seq != uint64(i+1) {
					t.Fatalf("tick %d (%v late): hurry %d due %v, want hurry %d due", i, late, seq, ok, i+1)
				}
				// A second look within the same tick sends nothing more.
				if _, again := dc.hurryDue(now.Add(stallCheck/2-us), true); again {
					t.Fatalf("tick %d: a second hurry within half a tick", i)
				}
			}
		})
	}
	t.Run("a new stall hurries at once, with a later sequence", func(t *testing.T) {
		dc := &deviceConn{}
		now := time.Unix(1_000_000, 0)
		dc.hurryDue(now, true)
		if _, ok := dc.hurryDue(now.Add(time.Millisecond), false); ok {
			t.Fatal("a hurry with no session stalled")
		}
		seq, ok := dc.hurryDue(now.Add(2*time.Millisecond), true)
		if !ok || seq != 2 {
			t.Fatalf("new stall: hurry %d due %v, want hurry 2 at once", seq, ok)
		}
	})
}
