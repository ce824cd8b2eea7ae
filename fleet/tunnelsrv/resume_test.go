package tunnelsrv

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/quic-go/quic-go"
	"github.com/quic-go/quic-go/testutils/simnet"

	"remoteler.dev/edge/firmware/tunnel"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/resume"
	"remoteler.dev/edge/tools/logtest"
)

// switchRouter is a simnet router whose link can be cut (a blackout), and
// that can put the agent behind a NAT whose mappings can be changed.
type switchRouter struct {
	simnet.PerfectRouter
	down atomic.Bool
	// mutedBelow drops what the agent sends from ports below it (a dead
	// agent process, whose later successor uses higher ports).
	mutedBelow atomic.Int32
	trace      atomic.Pointer[func(simnet.Packet)] // set and cleared while packets flow

	mu   sync.Mutex // guards the NAT, the loss and the bottleneck
	loss float64    // the share of packets dropped at random, each way
	rng  *rand.Rand
	// rate, when set, is the link's capacity each way in bytes a second,
	// with a drop-tail queue of up to queue's worth of sending.
	rate  float64
	queue time.Duration
	busy  [2]time.Time // until when each way (0: to the fleet) is sending

	nat     bool
	private net.IP                  // addresses behind the NAT
	out     map[string]*net.UDPAddr // private → public
	in      map[string]*net.UDPAddr // public → private
	next    int
}

func (r *switchRouter) SendPacket(p simnet.Packet) error {
	if trace := r.trace.Load(); trace != nil {
		(*trace)(p)
	}
	if r.down.Load() {
		return nil // dropped
	}
	if from := p.From.(*net.UDPAddr); from.IP.Equal(r.private) && from.Port < int(r.mutedBelow.Load()) {
		return nil // from a dead agent
	}
	r.mu.Lock()
	if r.loss > 0 && r.rng.Float64() < r.loss {
		r.mu.Unlock()
		return nil // lost
	}
	if r.nat {
		from := p.From.(*net.UDPAddr)
		to := p.To.(*net.UDPAddr)
		switch {
		case from.IP.Equal(r.private):
			pub := r.out[from.String()]
			if pub == nil {
				r.next++
				pub = &net.UDPAddr{IP: net.IPv4(127, 0, 0, 9), Port: 50000 + r.next}
				r.out[from.String()], r.in[pub.String()] = pub, from
			}
			p.From = pub
		case r.in[to.String()] != nil:
			p.To = r.in[to.String()]
		case to.IP.Equal(net.IPv4(127, 0, 0, 9)):
			r.mu.Unlock()
			return nil // a mapping the NAT forgot
		}
	}
	if r.rate == 0 {
		r.mu.Unlock()
		return r.PerfectRouter.SendPacket(p)
	}
	// A bottleneck: the packet leaves after those queued before it.
	way := 1
	if p.From.(*net.UDPAddr).IP.Equal(r.private) || p.To.(*net.UDPAddr).Port == 443 {
		way = 0
	}
	now := time.Now()
	start := now
	if r.busy[way].After(now) {
		start = r.busy[way]
	}
	if start.Sub(now) > r.queue {
		r.mu.Unlock()
		return nil // the queue is full
	}
	r.busy[way] = start.Add(time.Duration(float64(len(p.Data)+28) / r.rate * float64(time.Second)))
	wait := r.busy[way].Sub(now)
	r.mu.Unlock()
	time.AfterFunc(wait, func() { r.PerfectRouter.SendPacket(p) })
	return nil
}

// natRebind makes the NAT forget every mapping: the agent's next packets get
// new public ports, and packets to the old ones are dropped.
func (r *switchRouter) natRebind() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.out, r.in = map[string]*net.UDPAddr{}, map[string]*net.UDPAddr{}
}

// simFleet is a fleet and an agent on an in-process network in a synctest
// bubble: virtual time, so minutes of blackout take no real time.
type simFleet struct {
	agentSocks []*simnet.SimConn
	srvSock    *simnet.SimConn
	router     *switchRouter
	srv        *Server
	client     *tunnel.Client
	state      chan bool
	stop       func()
	// newAgent starts another agent process for the same device (a new
	// boot ID), with its own sockets; stop ends it at once.
	newAgent func(o simOpts) (c *tunnel.Client, state chan bool, stop func())
	// killAgents makes every agent started so far fall silent, as if its
	// process died: nothing it sends arrives any more.
	killAgents func()
	// stopClient stops the first agent (client).
	stopClient func()
}

const simRTT = 50 * time.Millisecond

// simOpts tunes newSimFleet; zero fields take the test defaults.
type simOpts struct {
	hold, keepalive, liveness, idle time.Duration
	// handle serves streams on the agent; default: echo.
	handle func(ctx context.Context, h *proto.StreamHeader, conn net.Conn)
	// nat puts the agent behind a NAT (switchRouter.natRebind).
	nat bool
	// noPings turns the agent's link pings off (tunnel.Config.NoLinkPings).
	noPings bool
	// maxBackoff bounds the agent's redial back-off; default 10 s.
	maxBackoff time.Duration
	// onSilence is the server's Config.OnSilence.
	onSilence func(ctx context.Context, id string, since time.Time, silent bool) error
	log       *slog.Logger
}

func newSimFleet(t *testing.T, hold time.Duration) *simFleet {
	return newSimFleetOpts(t, simOpts{hold: hold, keepalive: 2 * time.Second, liveness: 3 * time.Second, idle: 10 * time.Second})
}

// processStart is when the test process started, read outside any bubble.
var processStart = time.Now()

// skipPastProcessStart moves a synctest bubble's clock (which starts at
// 2000-01-01) past the process's start: quic-go's monotonic clock counts
// from an hour before the process started, and before that instant its
// values are negative, where its loss detection spins on a path-probe
// placeholder sent at time zero (which in real time is long past). Virtual
// time: the sleep takes no time.
func skipPastProcessStart() {
	time.Sleep(time.Until(processStart.Add(time.Hour)))
}

func newSimFleetOpts(t *testing.T, o simOpts) *simFleet {
	t.Helper()
	skipPastProcessStart()
	pki := newPKI(t)
	router := &switchRouter{private: net.IPv4(127, 0, 0, 2), out: map[string]*net.UDPAddr{}, in: map[string]*net.UDPAddr{}}
	router.nat = o.nat
	net0 := &simnet.Simnet{Router: router}
	link := simnet.NodeBiDiLinkSettings{Latency: simRTT / 2}
	srvAddr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 443}
	srvConn := net0.NewEndpoint(srvAddr, link)
	// A fresh socket (new port) per agent dial, as on a real device.
	sf := &simFleet{router: router, srvSock: srvConn}
	var pool []net.PacketConn
	for i := range 256 {
		c := net0.NewEndpoint(&net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 40000 + i}, link)
		pool = append(pool, c)
		sf.agentSocks = append(sf.agentSocks, c)
	}
	net0.Start()

	sf.srv = New(Config{
		TLSConfig:    &tls.Config{Certificates: []tls.Certificate{pki.server}, ClientCAs: pki.Pool},
		Authenticate: func(cs tls.ConnectionState) (string, error) { return cs.PeerCertificates[0].Subject.CommonName, nil },
		OnHello: func(ctx context.Context, id string, _ net.Addr, h *proto.Hello) (*proto.HelloAck, error) {
			return &proto.HelloAck{DeviceID: id, ServerTime: time.Now().UnixMilli()}, nil
		},
		SessionHold: o.hold,
		IdleTimeout: o.idle,
		OnSilence:   o.onSilence,
		Logger:      o.log,
	})
	var next atomic.Int32
	cert := pki.Client(t, "pi-1")
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	sf.newAgent = func(ao simOpts) (*tunnel.Client, chan bool, func()) {
		state := make(chan bool, 64)
		c := tunnel.New(tunnel.Config{
			Addr:      srvAddr.String(),
			TLSConfig: pki.clientTLS(cert),
			Hello:     func() *proto.Hello { return &proto.Hello{Name: "pi-1"} },
			Handle: func(ctx context.Context, h *proto.StreamHeader, conn net.Conn) {
				if ao.handle != nil {
					ao.handle(ctx, h, conn)
					return
				}
				io.Copy(conn, conn)
				conn.Close()
			},
			OnState:     func(up bool) { state <- up },
			Keepalive:   ao.keepalive,
			Liveness:    ao.liveness,
			IdleTimeout: ao.idle,
			MinBackoff:  100 * time.Millisecond,
			MaxBackoff:  cmp.Or(ao.maxBackoff, 10*time.Second),
			SessionHold: ao.hold,
			NoLinkPings: ao.noPings,
			Logger:      ao.log,
			ListenPacket: func() (net.PacketConn, error) {
				i := int(next.Add(1)) - 1
				if i >= len(pool) {
					return nil, errors.New("out of simulated sockets")
				}
				return pool[i], nil
			},
		})
		actx, acancel := context.WithCancel(ctx)
		done := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done)
			c.Run(actx)
		}()
		return c, state, func() { acancel(); <-done }
	}
	sf.killAgents = func() { router.mutedBelow.Store(40000 + next.Load()) }
	wg.Add(1)
	go func() { defer wg.Done(); sf.srv.Serve(ctx, srvConn) }()
	sf.client, sf.state, sf.stopClient = sf.newAgent(o)
	sf.stop = func() {
		cancel()
		srvConn.Close()
		wg.Wait()
		net0.Close()
	}
	return sf
}

func (sf *simFleet) waitState(t *testing.T, want bool) {
	t.Helper()
	for got := range sf.state {
		if got == want {
			return
		}
	}
}

func TestSessionSurvivesBlackoutInVirtualTime(t *testing.T) {
	for _, blackout := range []time.Duration{5 * time.Second, time.Minute, 9 * time.Minute} {
		t.Run(blackout.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				sf := newSimFleet(t, 10*time.Minute)
				defer sf.stop()
				sf.waitState(t, true)
				conn, err := sf.srv.Open(context.Background(), "pi-1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "s1"})
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()

				sf.router.down.Store(true)
				payload := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
				go conn.Write(payload)
				got := make(chan []byte, 1)
				go func() {
					b := make([]byte, len(payload))
					n, err := io.ReadFull(conn, b)
					if err != nil {
						t.Errorf("read %d of %d echoed bytes: %v", n, len(b), err)
					}
					got <- b
				}()
				sf.waitState(t, false) // the agent noticed the link is gone
				time.Sleep(blackout)
				sf.router.down.Store(false)
				back := time.Now()
				echoed := <-got
				if !bytes.Equal(echoed, payload) {
					t.Fatalf("echo after a %v blackout differs from what was sent", blackout)
				}
				t.Logf("blackout %v: 1 MiB echoed %v after the link came back; reconnects %d",
					blackout, time.Since(back), sf.client.Reconnects())
				if sf.client.Reconnects() < 1 {
					t.Errorf("reconnects = %d, want >= 1", sf.client.Reconnects())
				}
			})
		})
	}
}

func TestSessionEndsAfterHold(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sf := newSimFleet(t, 2*time.Minute)
		defer sf.stop()
		sf.waitState(t, true)
		conn, err := sf.srv.Open(context.Background(), "pi-1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "s1"})
		if err != nil {
			t.Fatal(err)
		}
		sf.router.down.Store(true)
		start := time.Now()
		_, err = conn.Read(make([]byte, 1))
		if !errors.Is(err, resume.ErrHoldExpired) {
			t.Fatalf("read = %v, want ErrHoldExpired", err)
		}
		// The hold runs from when the fleet saw the tunnel die (its idle
		// timeout), so it ends between 2m and 2m + the idle timeout.
		if held := time.Since(start); held < 2*time.Minute || held > 2*time.Minute+15*time.Second {
			t.Errorf("session held %v, want about 2m", held)
		}
		sf.router.down.Store(false)
		sf.waitState(t, true)
		synctest.Wait()
		if n := sf.client.Sessions(); n != 0 {
			t.Errorf("agent still holds %d sessions after the hold time", n)
		}
	})
}

// rawDevice dials the fleet as device cn and says hello, returning the
// connection for hand-made streams.
func rawDevice(t *testing.T, h *harness, cn, bootID string) *quic.Conn {
	t.Helper()
	qc, st := rawHello(t, h, cn, &proto.Hello{Name: cn, BootID: bootID})
	if _, err := proto.ReadMsg(proto.NewReader(st), proto.MaxControlFrame); err != nil {
		t.Fatal(err)
	}
	return qc
}

func TestResumeOnlyByOwnerWithSecret(t *testing.T) {
	h := startServer(t, newPKI(t), "127.0.0.1:0")
	agent, state := startAgent(t, h, "pi-1", "pi-1", nil)
	waitState(t, state, true)
	conn, err := h.srv.Open(context.Background(), "pi-1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	h.srv.mu.Lock()
	secret := h.srv.sessions["pi-1"]["s1"].secret
	boot := h.srv.boots["pi-1"]
	h.srv.mu.Unlock()
	// The agent goes away; the fleet holds the session for it.
	agentStops[agent]()

	tests := []struct {
		name, device string
		secret       []byte
	}{
		{"another device with the right secret", "pi-2", secret},
		{"the owner with a wrong secret", "pi-1", []byte("not the secret")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The same boot ID: as if the agent process itself tried.
			qc := rawDevice(t, h, tt.device, boot)
			st, err := qc.OpenStreamSync(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			proto.WriteMsg(st, &proto.Resume{SessionID: "s1", Secret: tt.secret})
			m, err := proto.ReadMsg(proto.NewReader(st), proto.MaxHeaderFrame)
			acc, ok := m.(*proto.ResumeAccept)
			if err != nil || !ok || acc.Code != proto.CodeNotFound {
				t.Fatalf("answer = %#v, %v; want not found", m, err)
			}
		})
	}
	// The session is still held: the owner with the secret resumes it.
	qc := rawDevice(t, h, "pi-1", boot)
	st, err := qc.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	proto.WriteMsg(st, &proto.Resume{SessionID: "s1", Secret: secret})
	m, err := proto.ReadMsg(proto.NewReader(st), proto.MaxHeaderFrame)
	if acc, ok := m.(*proto.ResumeAccept); err != nil || !ok || acc.Code != proto.CodeOK {
		t.Fatalf("answer to the owner = %#v, %v; want ok", m, err)
	}
}

func TestAgentRestartDropsHeldSessions(t *testing.T) {
	h := startServer(t, newPKI(t), "127.0.0.1:0")
	agent, state := startAgent(t, h, "pi-1", "pi-1", nil)
	waitState(t, state, true)
	conn, err := h.srv.Open(context.Background(), "pi-1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The agent process ends, and a new one (new boot ID) comes up.
	agentStops[agent]()
	rawDevice(t, h, "pi-1", "another-boot")
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, ErrAgentRestarted) {
		t.Fatalf("read = %v, want ErrAgentRestarted", err)
	}
}

// udpOverhead is what IPv4 and UDP add to every datagram on the wire.
const udpOverhead = 28

// wireBytes counts the bytes all agent sockets and the fleet socket sent,
// with IP and UDP headers.
func (sf *simFleet) wireBytes() (up, down int64) {
	for _, c := range sf.agentSocks {
		st := c.Stats()
		up += int64(st.BytesSent) + int64(st.PacketsSent)*udpOverhead
	}
	st := sf.srvSock.Stats()
	down = int64(st.BytesSent) + int64(st.PacketsSent)*udpOverhead
	return up, down
}

// TestIdleDataPerDay runs an idle device for a simulated day with the
// shipped timers, connecting afresh 0, 6 and 24 times in the day (the fleet
// drops the connection; the agent dials again and resumes its TLS
// session), and checks DESIGN.md's budget, everything counted (IP and UDP
// headers, keep-alives, heartbeats, handshakes, closes), at most 0.2 MB a
// day for a device that reconnects six times. Path-MTU probes are off by
// default (quic-go cannot probe on the simulated network anyway).
func TestIdleDataPerDay(t *testing.T) {
	for _, n := range []int{0, 6, 24} {
		t.Run(fmt.Sprintf("%d reconnects", n), func(t *testing.T) {
			up, down, reconnects := idleDay(t, n, simOpts{log: bulkLog(t)})
			total := up + down
			t.Logf("idle for 24h, %d reconnects: %d bytes up, %d down, %.3f MB in all", reconnects, up, down, float64(total)/1e6)
			if reconnects != int64(n) {
				t.Errorf("the idle tunnel reconnected %d times, want %d", reconnects, n)
			}
			if n <= 6 && total > 200_000 {
				t.Errorf("idle data = %d bytes a day, want at most 200000", total)
			}
		})
	}
}

// idleDay runs an idle device for a simulated day, dropping its
// connection n times, and returns the bytes on the wire each way.
func idleDay(t *testing.T, n int, o simOpts) (up, down, reconnects int64) {
	synctest.Test(t, func(t *testing.T) {
		sf := newSimFleetOpts(t, o)
		defer sf.stop()
		sf.waitState(t, true)
		up0, down0 := sf.wireBytes()
		for i := range n + 1 {
			time.Sleep(24 * time.Hour / time.Duration(n+1))
			if i < n {
				sf.srv.Disconnect("pi-1", "test: dropping the connection")
				sf.waitState(t, false)
				sf.waitState(t, true)
			}
		}
		up, down = sf.wireBytes()
		up, down = up-up0, down-down0
		reconnects = sf.client.Reconnects()
	})
	return up, down, reconnects
}

// TestRecoveryAfterBlackout measures, in virtual time, how soon a session's
// bytes flow again after the link returns, with the shipped timers (the
// connection outlives the blackout): an interactive session (a keystroke
// every 100 ms, echoed by the device) and bytes only the fleet sends (a user
// uploading to the device). DESIGN.md's target is one RTT + 100 ms; bytes
// go every 100 ms, so the test fails past RTT + 200 ms. Time is virtual:
// the figures are exact and repeatable.
func TestRecoveryAfterBlackout(t *testing.T) {
	for _, echo := range []bool{true, false} {
		kind := "interactive"
		if !echo {
			kind = "fleet→device"
		}
		for _, blackout := range []time.Duration{2 * time.Second, 10 * time.Second, 30 * time.Second, 2 * time.Minute} {
			t.Run(kind+"/"+blackout.String(), func(t *testing.T) {
				rec, reconnects := tickRecovery(t, blackout, echo)
				t.Logf("%s, blackout %v: first byte back %v after the link returned (RTT %v); reconnects %d",
					kind, blackout, rec, simRTT, reconnects)
				if rec > simRTT+200*time.Millisecond {
					t.Errorf("recovery took %v, want at most %v", rec, simRTT+200*time.Millisecond)
				}
			})
		}
	}
}

// tickRecovery sends a byte every 100 ms from the fleet through a blackout
// and returns how long after the link came back the next one arrived: the
// echo at the fleet when echo is set, else the byte at the device.
func tickRecovery(t *testing.T, blackout time.Duration, echo bool) (rec time.Duration, reconnects int64) {
	return tickRecoveryOpts(t, blackout, echo, simOpts{})
}

// tickRecoveryOpts is tickRecovery with the agent's timers in o.
func tickRecoveryOpts(t *testing.T, blackout time.Duration, echo bool, o simOpts) (rec time.Duration, reconnects int64) {
	synctest.Test(t, func(t *testing.T) {
		arrived := make(chan time.Time, 4096)
		stop := make(chan struct{})
		defer close(stop)
		note := func(r io.Reader) {
			b := make([]byte, 1)
			for {
				if _, err := io.ReadFull(r, b); err != nil {
					return
				}
				select {
				case arrived <- time.Now():
				case <-stop:
					return
				}
			}
		}
		if !echo {
			o.handle = func(ctx context.Context, h *proto.StreamHeader, conn net.Conn) {
				defer conn.Close()
				note(conn)
			}
		}
		if o.log == nil {
			o.log = bulkLog(t)
		}
		sf := newSimFleetOpts(t, o)
		defer sf.stop()
		sf.waitState(t, true)
		conn, err := sf.srv.Open(context.Background(), "pi-1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "s1"})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if echo {
			go note(conn)
		}
		go func() {
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for {
				select {
				case <-stop:
					return
				case <-tick.C:
					conn.Write([]byte{'k'})
				}
			}
		}()
		<-arrived
		sf.router.down.Store(true)
		time.Sleep(blackout)
		for len(arrived) > 0 { // from before the cut
			<-arrived
		}
		sf.router.down.Store(false)
		back := time.Now()
		rec = (<-arrived).Sub(back)
		reconnects = sf.client.Reconnects()
	})
	return rec, reconnects
}

// TestRecoveryWhileDialPending: with a short idle timeout the connection
// dies during a long blackout and the agent dials again and again into it;
// a dial pending when the link returns must not hold recovery until its
// handshake's retransmission back-off or timeout (seconds): the agent
// keeps pinging while it dials, and dials afresh when the fleet answers.
func TestRecoveryWhileDialPending(t *testing.T) {
	// Redials back off at most 1 s, so the agent is dialling most of the
	// time; the link returns at several points of that cycle.
	for _, blackout := range []time.Duration{60 * time.Second, 61300 * time.Millisecond, 62600 * time.Millisecond, 5 * time.Minute} {
		t.Run(blackout.String(), func(t *testing.T) {
			rec, reconnects := tickRecoveryOpts(t, blackout, true, simOpts{keepalive: 2 * time.Second, liveness: 3 * time.Second,
				idle: 10 * time.Second, maxBackoff: time.Second})
			t.Logf("blackout %v with a 10 s idle timeout: first echo %v after the link returned (RTT %v); %d reconnects",
				blackout, rec, simRTT, reconnects)
			if reconnects == 0 {
				t.Fatal("the connection outlived the blackout: the test does not test a pending dial")
			}
			// A ping finds the link, the pending dial is dropped, a new
			// one (a handshake and the resume) and the echo: about 4 RTT.
			// The slack allows for the order in which the bubble runs
			// timers due at the same instant (it varies with scheduling:
			// 476 ms was seen on a loaded machine); what this guards
			// against, a dial held by its handshake's back-off, costs
			// seconds.
			if limit := 5*simRTT + linkProbe + 250*time.Millisecond; rec > limit {
				t.Errorf("first echo %v after the link returned, want at most %v", rec, limit)
			}
		})
	}
}

// TestRecoveryBulk: one side streams bytes as fast as it can, the device
// (a download) or the fleet (an upload); how soon do they flow again after
// a blackout? It measures the agent as shipped and, in the same run, with
// link pings and hurries off (QUIC's own back-off, the peer), and logs the
// ratio. DESIGN.md's target is one RTT + 100 ms after the link returns.
// Time is virtual: the figures repeat exactly.
func TestRecoveryBulk(t *testing.T) {
	for _, dir := range []string{"download", "upload"} {
		for _, blackout := range []time.Duration{2 * time.Second, 30 * time.Second, 2 * time.Minute} {
			t.Run(dir+"/"+blackout.String(), func(t *testing.T) {
				ours := bulkRecovery(t, blackout, false, dir == "upload")
				peer := bulkRecovery(t, blackout, true, dir == "upload")
				t.Logf("bulk %s, blackout %v, RTT %v: bytes flow again %v after the link returns (%.1f RTT); with QUIC's back-off alone %v (%.1f RTT); %.1fx faster",
					dir, blackout, simRTT, ours, float64(ours)/float64(simRTT), peer, float64(peer)/float64(simRTT), float64(peer)/float64(ours))
				// The target itself: the fleet's hurry, every 25 ms, finds
				// the link within 25 ms plus half a round trip.
				if limit := simRTT + 100*time.Millisecond; ours > limit {
					t.Errorf("recovery took %v, want at most %v (one RTT + 100 ms)", ours, limit)
				}
			})
		}
	}
}

// linkProbe bounds how long after the link returns a stalled connection
// finds it, however long the stall: the agent's link pings go every 50 ms
// (firmware/tunnel), the fleet's hurries every 25 ms (link.go).
const linkProbe = 50 * time.Millisecond

// bulkRecovery runs one bulk transfer through a blackout and returns how
// long after the link came back bytes flowed again: from the device to
// the fleet, or from the fleet to the device when upload is set.
func bulkRecovery(t *testing.T, blackout time.Duration, noPings, upload bool) (rec time.Duration) {
	synctest.Test(t, func(t *testing.T) {
		stop := make(chan struct{})
		var mu sync.Mutex
		var armed bool        // the link is back: note the next arrival
		var firstAt time.Time // the first arrival after the link came back
		// count reads r until it fails, noting the first arrival once armed.
		count := func(r io.Reader) {
			buf := make([]byte, 64<<10)
			for {
				if _, err := r.Read(buf); err != nil {
					return
				}
				mu.Lock()
				if armed && firstAt.IsZero() {
					firstAt = time.Now()
				}
				mu.Unlock()
			}
		}
		// flood writes to w until stop.
		flood := func(w io.Writer) {
			buf := make([]byte, 32<<10)
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := w.Write(buf); err != nil {
					return
				}
			}
		}
		sf := newSimFleetOpts(t, simOpts{noPings: noPings, log: bulkLog(t), handle: func(ctx context.Context, h *proto.StreamHeader, conn net.Conn) {
			defer conn.Close()
			if upload {
				count(conn)
			} else {
				flood(conn)
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
		if upload {
			go flood(conn)
		} else {
			go count(conn)
		}
		time.Sleep(2 * time.Second)
		sf.router.down.Store(true)
		time.Sleep(blackout)
		synctest.Wait() // what arrived before the cut has been read
		mu.Lock()
		armed = true
		mu.Unlock()
		sf.router.down.Store(false)
		back := time.Now()
		for {
			time.Sleep(10 * time.Millisecond)
			mu.Lock()
			at := firstAt
			mu.Unlock()
			if !at.IsZero() {
				rec = at.Sub(back)
				return
			}
			if time.Since(back) > 5*time.Minute {
				t.Fatal("no bytes five minutes after the link came back")
			}
		}
	})
	return rec
}

// bulkLog logs to t when EDGE_TEST_LOG is set.
func bulkLog(t *testing.T) *slog.Logger {
	if os.Getenv("EDGE_TEST_LOG") == "" {
		return nil
	}
	return logtest.Logger(t)
}

// TestNoMoveOnALossyLink: bulk transfers both ways on a link that loses
// packets at random but never falls silent. Sessions stall now and then
// behind a lost packet; that is QUIC's to repair, and the agent must
// neither move the connection nor redial (a move resends what is in flight
// and restarts congestion control: an earlier build moved on such stalls
// and lost three quarters of its throughput on linkbench's lossy links).
func TestNoMoveOnALossyLink(t *testing.T) {
	type link struct {
		name  string
		loss  float64
		rate  float64 // bytes a second; 0: unlimited
		queue time.Duration
	}
	for _, l := range []link{
		{name: "3% loss", loss: 0.03},
		// linkbench's lte: 12 Mbit/s with a 250 ms queue
		{name: "12 Mbit/s, 250 ms queue, 1% loss", loss: 0.01, rate: 12e6 / 8, queue: 250 * time.Millisecond},
		{name: "12 Mbit/s, 250 ms queue, 5% loss", loss: 0.05, rate: 12e6 / 8, queue: 250 * time.Millisecond},
		// its 3g uplink: 768 kbit/s with a 1 s queue
		{name: "768 kbit/s, 1 s queue, 1% loss", loss: 0.01, rate: 768e3 / 8, queue: time.Second},
		{name: "768 kbit/s, 1 s queue, 5% loss", loss: 0.05, rate: 768e3 / 8, queue: time.Second},
	} {
		for _, upload := range []bool{false, true} {
			dir := "download"
			if upload {
				dir = "upload"
			}
			t.Run(l.name+"/"+dir, func(t *testing.T) {
				synctest.Test(t, func(t *testing.T) {
					stop := make(chan struct{})
					var got atomic.Int64
					count := func(r io.Reader) {
						buf := make([]byte, 64<<10)
						for {
							n, err := r.Read(buf)
							got.Add(int64(n))
							if err != nil {
								return
							}
						}
					}
					flood := func(w io.Writer) {
						buf := make([]byte, 32<<10)
						for {
							select {
							case <-stop:
								return
							default:
							}
							if _, err := w.Write(buf); err != nil {
								return
							}
						}
					}
					rec := logtest.NewRecorder(t)
					log := slog.New(slog.NewTextHandler(rec, &slog.HandlerOptions{Level: slog.LevelInfo}))
					sf := newSimFleetOpts(t, simOpts{log: log, handle: func(ctx context.Context, h *proto.StreamHeader, conn net.Conn) {
						defer conn.Close()
						if upload {
							count(conn)
						} else {
							flood(conn)
						}
					}})
					defer sf.stop()
					defer close(stop)
					sf.waitState(t, true)
					sf.router.mu.Lock()
					sf.router.loss, sf.router.rng = l.loss, rand.New(rand.NewPCG(1, 2))
					sf.router.rate, sf.router.queue = l.rate, l.queue
					sf.router.mu.Unlock()
					conn, err := sf.srv.Open(context.Background(), "pi-1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "s1"})
					if err != nil {
						t.Fatal(err)
					}
					defer conn.Close()
					if upload {
						go flood(conn)
					} else {
						go count(conn)
					}
					time.Sleep(time.Minute)
					moves := strings.Count(rec.String(), "link is back")
					t.Logf("bulk %s for a minute, %s: %.1f MB, %d moves, %d reconnects", dir, l.name, float64(got.Load())/1e6, moves, sf.client.Reconnects())
					if moves > 0 || sf.client.Reconnects() > 0 {
						t.Errorf("%d moves and %d reconnects on a link that never fell silent, want none", moves, sf.client.Reconnects())
					}
					if got.Load() == 0 {
						t.Error("nothing arrived")
					}
				})
			})
		}
	}
}

// TestIdleDeviceReachableAfterNATRebind: the NAT forgets an idle device's
// mapping (a long outage, or a carrier NAT moving it). The agent's next
// keep-alive comes from a new port; the fleet pokes it and the agent's
// answer moves the QUIC connection, so a user can connect within about one
// keep-alive period, not the 2 minutes until the next heartbeat.
func TestIdleDeviceReachableAfterNATRebind(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sf := newSimFleetOpts(t, simOpts{nat: true, log: logtest.Logger(t)})
		defer sf.stop()
		sf.waitState(t, true)
		time.Sleep(time.Minute)
		before, _ := sf.srv.Info("pi-1")
		sf.router.natRebind()
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		conn, err := sf.srv.Open(ctx, "pi-1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "s1"})
		if err != nil {
			t.Fatalf("open after the NAT rebind: %v", err)
		}
		defer conn.Close()
		took := time.Since(start)
		after, _ := sf.srv.Info("pi-1")
		t.Logf("NAT rebind: stream opened %v later; device address %v -> %v; reconnects %d", took, before.Addr, after.Addr, sf.client.Reconnects())
		if before.Addr.String() == after.Addr.String() {
			t.Errorf("the fleet still sees the device at %v", after.Addr)
		}
		if took > tunnel.DefaultKeepalive+5*time.Second {
			t.Errorf("took %v to reach the device, want about one keep-alive period (%v)", took, tunnel.DefaultKeepalive)
		}
	})
}
