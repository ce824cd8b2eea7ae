package route

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/peer"
	"remoteler.dev/edge/fleet/presence"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/tools/logtest"
)

// fakeTunnels stands in for a replica's tunnel server: the devices it
// holds answer each stream with an echo that names the device, and record
// the control messages sent to them.
type fakeTunnels struct {
	mu      sync.Mutex
	devices map[string]bool
	refuse  map[string]*proto.Error
	fail    map[string]error // Open's error for a device it holds
	sent    []string
	gone    []string
	raw     []string        // sessions OpenTransport opened (relayed for a peer)
	via     []string        // sessions OpenVia holds here
	held    map[string]bool // sessions ResumeRelayed re-attaches
}

func newFake(devices ...string) *fakeTunnels {
	f := &fakeTunnels{devices: map[string]bool{}, refuse: map[string]*proto.Error{}, fail: map[string]error{}, held: map[string]bool{}}
	for _, d := range devices {
		f.devices[d] = true
	}
	return f
}

func (f *fakeTunnels) Open(ctx context.Context, id string, h *proto.StreamHeader) (net.Conn, error) {
	f.mu.Lock()
	ok, pe, ferr := f.devices[id], f.refuse[id], f.fail[id]
	f.mu.Unlock()
	if pe != nil {
		return nil, pe
	}
	if ferr != nil {
		return nil, ferr
	}
	if !ok {
		return nil, tunnelsrv.ErrOffline
	}
	us, them, err := tcpPair()
	if err != nil {
		return nil, err
	}
	go func() {
		defer them.Close()
		io.WriteString(them, id+" "+h.SessionID+": ")
		io.Copy(them, them)
		them.CloseWrite()
	}()
	return us, nil
}

func (f *fakeTunnels) OpenTransport(ctx context.Context, id string, h *proto.StreamHeader) (net.Conn, error) {
	if len(h.Secret) == 0 {
		return nil, errors.New("fake: a relayed stream without a secret")
	}
	f.mu.Lock()
	f.raw = append(f.raw, h.SessionID)
	f.mu.Unlock()
	return f.Open(ctx, id, h)
}

func (f *fakeTunnels) OpenVia(ctx context.Context, id string, h *proto.StreamHeader, dial func(context.Context, *proto.StreamHeader) (net.Conn, string, error)) (net.Conn, error) {
	hdr := *h
	hdr.Secret = []byte("secret")
	c, boot, err := dial(ctx, &hdr)
	if err == nil {
		f.mu.Lock()
		f.via = append(f.via, h.SessionID+"@"+boot)
		f.mu.Unlock()
	}
	return c, err
}

// ResumeRelayed takes the sessions in held: it answers with an echo that
// names the session.
func (f *fakeTunnels) ResumeRelayed(id string, req *proto.Resume, accept func() (net.Conn, error)) (bool, error) {
	f.mu.Lock()
	ok := f.held[req.SessionID]
	f.mu.Unlock()
	if !ok {
		return false, nil
	}
	c, err := accept()
	if err != nil {
		return true, err
	}
	go func() {
		defer c.Close()
		io.WriteString(c, "resumed "+id+" "+req.SessionID+": ")
		io.Copy(c, c)
		c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	return true, nil
}

// tcpPair returns the two ends of a loopback TCP connection: a stream with
// half-closes, as a tunnel stream is.
func tcpPair() (*net.TCPConn, *net.TCPConn, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	defer ln.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return nil, nil, err
	}
	s, err := ln.Accept()
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c.(*net.TCPConn), s.(*net.TCPConn), nil
}

func (f *fakeTunnels) Send(id string, m proto.Message) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.devices[id] {
		return tunnelsrv.ErrOffline
	}
	f.sent = append(f.sent, id+":"+m.Kind().String())
	return nil
}

func (f *fakeTunnels) Online(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.devices[id]
}

func (f *fakeTunnels) Info(id string) (tunnelsrv.Info, bool) {
	if !f.Online(id) {
		return tunnelsrv.Info{}, false
	}
	return tunnelsrv.Info{RTT: time.Millisecond, Boot: "boot-of-" + id}, true
}

func (f *fakeTunnels) Count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.devices)
}

func (f *fakeTunnels) EndReason(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (f *fakeTunnels) Disconnect(id, reason string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.devices[id] {
		f.gone = append(f.gone, id+": "+reason)
		delete(f.devices, id)
	}
}

// replica is one replica's presence, peer node and router.
type replica struct {
	pres     *presence.Registry
	router   *Router
	local    *fakeTunnels
	stopPeer func() // the replica stops answering its peers; its lease lives on
}

func startReplica(t *testing.T, st store.Store, auth *ca.Authority, id string, local *fakeTunnels) *replica {
	t.Helper()
	return startReplicaWith(t, st, auth, id, local, false)
}

// startReplicaWith is startReplica; old makes the replica answer only
// the peer endpoints of a fleetd from before relayed sessions.
func startReplicaWith(t *testing.T, st store.Store, auth *ca.Authority, id string, local *fakeTunnels, old bool) *replica {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	node, err := peer.New(peer.Config{CA: auth, ID: id, Hosts: []string{"127.0.0.1"}, Handler: mux, Logger: logtest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	pres := presence.New(presence.Config{Store: st, Self: presence.Replica{ID: id, Addr: ln.Addr().String()}, TTL: time.Second, Logger: logtest.Logger(t)})
	r := New(Config{Local: local, Presence: pres, Peers: node, Logger: logtest.Logger(t)})
	if old {
		mux.HandleFunc("POST "+pathOpen, r.serveOpen)
		mux.HandleFunc("POST "+pathSend, r.serveSend)
		mux.HandleFunc("POST "+pathDisconnect, r.serveDisconnect)
	} else {
		r.Register(mux)
	}
	ctx, cancel := context.WithCancel(context.Background())
	pctx, pcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { pres.Run(ctx) })
	var pwg sync.WaitGroup
	pwg.Go(func() { node.Serve(pctx, ln) })
	stopPeer := func() {
		node.CloseIdle()
		pcancel()
		pwg.Wait()
	}
	t.Cleanup(func() {
		stopPeer()
		cancel()
		wg.Wait()
	})
	if err := pres.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	return &replica{pres: pres, router: r, local: local, stopPeer: stopPeer}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func setup(t *testing.T) (st store.Store, a, b *replica) {
	t.Helper()
	ms := memstore.New()
	t.Cleanup(func() { ms.Close() })
	auth, err := ca.LoadOrCreate(context.Background(), ms, "fleet", time.Now)
	if err != nil {
		t.Fatal(err)
	}
	a = startReplica(t, ms, auth, "a", newFake())
	b = startReplica(t, ms, auth, "b", newFake("d1", "d2"))
	ctx := context.Background()
	for _, d := range []string{"d1", "d2"} {
		if err := b.pres.Claim(ctx, d, "10.1.1.1:999", "", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "a sees b and its devices", func() bool {
		_, ok := a.pres.Replica("b")
		return ok && a.pres.Count() == 2
	})
	return ms, a, b
}

func readEcho(t *testing.T, c net.Conn, send string) string {
	t.Helper()
	go func() {
		io.WriteString(c, send)
		c.(interface{ CloseWrite() error }).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read the stream: %v", err)
	}
	return string(got)
}

func TestOpenOnAnotherReplica(t *testing.T) {
	_, a, b := setup(t)
	ctx := context.Background()

	c, err := a.router.Open(ctx, "d1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	payload := strings.Repeat("x", 200<<10)
	if got, want := readEcho(t, c, payload), "d1 s1: "+payload; got != want {
		t.Errorf("stream through replica b: %d bytes back, want %d (the device's echo)", len(got), len(want))
	}
	c.Close()
	a.local.mu.Lock()
	via := strings.Join(a.local.via, ",")
	a.local.mu.Unlock()
	b.local.mu.Lock()
	raw := strings.Join(b.local.raw, ",")
	b.local.mu.Unlock()
	if via != "s1@boot-of-d1" || raw != "s1" {
		t.Errorf("the session is held on %q and relayed by %q; want it held where the user is (a) and relayed by the device's replica (b)", via, raw)
	}

	if !a.router.Online("d2") || a.router.Online("d3") {
		t.Errorf("a: d2 online %v, d3 online %v; want true, false", a.router.Online("d2"), a.router.Online("d3"))
	}
	if info, ok := a.router.Info("d2"); !ok || info.Addr.String() != "10.1.1.1:999" {
		t.Errorf("a.Info(d2) = %+v, %v; want the address b recorded", info, ok)
	}
	if n := a.router.Count(); n != 2 {
		t.Errorf("a.Count() = %d, want 2", n)
	}

	if err := a.router.Send("d2", &proto.SessionEnd{SessionID: "s9", Message: "locked"}); err != nil {
		t.Fatal(err)
	}
	b.local.mu.Lock()
	sent := strings.Join(b.local.sent, ",")
	b.local.mu.Unlock()
	if !strings.Contains(sent, "d2:") {
		t.Errorf("messages b's tunnels got: %q, want one for d2", sent)
	}

	a.router.Disconnect("d2", "removed")
	if b.local.Online("d2") {
		t.Error("d2 still on b after a disconnected it")
	}
}

func TestRefusals(t *testing.T) {
	_, a, b := setup(t)
	ctx := context.Background()
	b.local.mu.Lock()
	b.local.refuse["d2"] = &proto.Error{Code: proto.CodeForbidden, Message: "login root refused"}
	delete(b.local.devices, "d1") // b has d1 as gone silent
	b.local.mu.Unlock()

	_, err := a.router.Open(ctx, "d2", &proto.StreamHeader{SessionID: "s2"})
	var pe *proto.Error
	if !errors.As(err, &pe) || pe.Code != proto.CodeForbidden || pe.Message != "login root refused" {
		t.Errorf("refused by the device: %v, want its *proto.Error", err)
	}
	start := time.Now()
	_, err = a.router.Open(ctx, "d1", &proto.StreamHeader{SessionID: "s3"})
	if !errors.Is(err, tunnelsrv.ErrOffline) {
		t.Errorf("device offline on its replica: %v, want ErrOffline", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("offline took %v to say", d)
	}
	if err := a.router.Send("d1", &proto.SessionEnd{}); !errors.Is(err, tunnelsrv.ErrOffline) {
		t.Errorf("Send to a device offline on its replica: %v, want ErrOffline", err)
	}
}

// TestUnreachableSaysWhenLastHeard: a device its replica has as silent
// too long, or that did not take the stream in time there, is offline or
// unanswering through another replica too, at once, with when its replica
// last heard from it (the broker tells the user).
func TestUnreachableSaysWhenLastHeard(t *testing.T) {
	_, a, b := setup(t)
	ctx := context.Background()
	silent := time.Now().Add(-90 * time.Second).Truncate(time.Millisecond)
	slow := time.Now().Add(-40 * time.Second).Truncate(time.Millisecond)
	b.local.mu.Lock()
	b.local.fail["d1"] = &tunnelsrv.OfflineError{LastHeard: silent}
	b.local.fail["d2"] = &tunnelsrv.NoAnswerError{LastHeard: slow, Err: errors.New("timed out")}
	b.local.mu.Unlock()

	for _, tt := range []struct {
		name, device string
		is           error
		heard        time.Time
	}{
		{"offline", "d1", tunnelsrv.ErrOffline, silent},
		{"no answer", "d2", tunnelsrv.ErrNoAnswer, slow},
	} {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			_, err := a.router.Open(ctx, tt.device, &proto.StreamHeader{SessionID: "s-" + tt.device})
			if !errors.Is(err, tt.is) {
				t.Fatalf("Open: %v, want %v", err, tt.is)
			}
			lh, ok := errors.AsType[interface {
				error
				LastHeardAt() time.Time
			}](err)
			if !ok || !lh.LastHeardAt().Equal(tt.heard) {
				t.Errorf("Open: %v, want it to say the device was last heard at %v", err, tt.heard)
			}
			if d := time.Since(start); d > 10*time.Second {
				t.Errorf("took %v to say, want no wait for the device to move", d)
			}
		})
	}
}

// TestDeviceMovesOffDeadReplica: b stops answering while its presence
// entries live on (it died, and its lease has not expired); a stream
// opened meanwhile waits for the device to come back on a.
func TestDeviceMovesOffDeadReplica(t *testing.T) {
	_, a, b := setup(t)
	b.stopPeer()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := a.router.Open(ctx, "d1", &proto.StreamHeader{SessionID: "s4"})
		ch <- result{c, err}
	}()
	select {
	case res := <-ch:
		t.Fatalf("Open returned before the device moved: %v", res.err)
	case <-time.After(300 * time.Millisecond):
	}
	// The device reconnects to a.
	a.local.mu.Lock()
	a.local.devices["d1"] = true
	a.local.mu.Unlock()
	if err := a.pres.Claim(ctx, "d1", "10.1.1.1:1000", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	res := <-ch
	if res.err != nil {
		t.Fatalf("Open while the device moved: %v", res.err)
	}
	if got := readEcho(t, res.c, "hi"); got != "d1 s4: hi" {
		t.Errorf("stream after the move = %q", got)
	}
	if info, ok := a.router.Info("d1"); !ok || info.RTT != time.Millisecond {
		t.Errorf("Info after the move = %+v, %v; want the local tunnel's", info, ok)
	}
}

// TestRelayResume: a device's resume of a session that its new replica
// does not hold reaches the replica that holds it, and the two relay the
// stream both ways; a session no replica holds is refused at once.
func TestRelayResume(t *testing.T) {
	_, a, b := setup(t)
	a.local.mu.Lock()
	a.local.held["s7"] = true
	a.local.mu.Unlock()
	ctx := context.Background()

	dev, relayed, err := tcpPair()
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	done := make(chan bool, 1)
	go func() {
		taken, _ := b.router.RelayResume(ctx, "d1", &proto.Resume{SessionID: "s7", Received: 3}, relayed)
		done <- taken
	}()
	payload := strings.Repeat("y", 100<<10)
	if got, want := readEcho(t, dev, payload), "resumed d1 s7: "+payload; got != want {
		t.Errorf("relayed resume: %d bytes back, want %d (the holder's echo)", len(got), len(want))
	}
	if !<-done {
		t.Error("RelayResume = false for a session replica a holds")
	}

	dev2, relayed2, err := tcpPair()
	if err != nil {
		t.Fatal(err)
	}
	defer dev2.Close()
	defer relayed2.Close()
	if taken, err := b.router.RelayResume(ctx, "d1", &proto.Resume{SessionID: "nobody's"}, relayed2); taken || err != nil {
		t.Errorf("RelayResume for a session no replica holds = %v, %v; want false, nil (nobody holds it)", taken, err)
	}

	// A replica that cannot be asked may hold the session: the agent
	// must be told to try again, not that the session is gone.
	a.stopPeer()
	dev3, relayed3, err := tcpPair()
	if err != nil {
		t.Fatal(err)
	}
	defer dev3.Close()
	defer relayed3.Close()
	if taken, err := b.router.RelayResume(ctx, "d1", &proto.Resume{SessionID: "s7"}, relayed3); taken || err == nil {
		t.Errorf("RelayResume with the holder unreachable = %v, %v; want false and an error", taken, err)
	}
}

// TestOpenOnAnOlderReplica: a device's replica from before relayed
// sessions (a rolling upgrade) does not know the relay; the stream is
// opened the old way, the session held there.
func TestOpenOnAnOlderReplica(t *testing.T) {
	ms := memstore.New()
	t.Cleanup(func() { ms.Close() })
	auth, err := ca.LoadOrCreate(context.Background(), ms, "fleet", time.Now)
	if err != nil {
		t.Fatal(err)
	}
	a := startReplica(t, ms, auth, "a", newFake())
	b := startReplicaWith(t, ms, auth, "b", newFake("d1"), true)
	ctx := context.Background()
	if err := b.pres.Claim(ctx, "d1", "10.1.1.1:999", "", time.Now()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a sees d1 on b", func() bool { e, ok := a.pres.Lookup("d1"); return ok && e.Replica == "b" })
	c, err := a.router.Open(ctx, "d1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "s1"})
	if err != nil {
		t.Fatalf("Open through an older replica: %v", err)
	}
	defer c.Close()
	if got := readEcho(t, c, "hi"); got != "d1 s1: hi" {
		t.Errorf("stream through the older replica = %q", got)
	}
	a.local.mu.Lock()
	via := len(a.local.via)
	a.local.mu.Unlock()
	b.local.mu.Lock()
	raw := len(b.local.raw)
	b.local.mu.Unlock()
	if via != 0 || raw != 0 {
		t.Errorf("a holds %d relayed sessions, b relayed %d raw streams; want none (the older replica holds the session)", via, raw)
	}
}

// TestSilentOnAnotherReplica: a device whose replica reports it silent is
// offline on every replica, though its tunnel lingers there.
func TestSilentOnAnotherReplica(t *testing.T) {
	_, a, b := setup(t)
	ctx := context.Background()
	since := time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC)
	if err := b.pres.Claim(ctx, "d3", "10.1.1.3:999", "", since); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a sees d3 online", func() bool { return a.router.Online("d3") && a.router.Count() == 3 })
	if err := b.pres.Mark(ctx, "d3", since, true); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a sees d3 offline", func() bool { return !a.router.Online("d3") && a.router.Count() == 2 })
	if info, ok := a.router.Info("d3"); !ok || info.Online || !info.Since.Equal(since) {
		t.Errorf("a.Info(d3) = %+v, %v; want its lingering tunnel, offline", info, ok)
	}
	if err := b.pres.Mark(ctx, "d3", since, false); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a sees d3 online again", func() bool { return a.router.Online("d3") })
}
