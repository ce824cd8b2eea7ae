package lifecycle

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/apps"
	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/fleet/tokens"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/tools/audittest"
	"remoteler.dev/edge/tools/logtest"
	"remoteler.dev/edge/tools/pkitest"
)

type fixture struct {
	l     *Lifecycle
	devs  *devices.Registry
	toks  *tokens.Service
	trail *audittest.Recorder
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	st := memstore.New()
	auth, err := ca.LoadOrCreate(ctx, st, "fleet", time.Now)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{devs: &devices.Registry{Store: st}, toks: &tokens.Service{Store: st}, trail: &audittest.Recorder{}}
	f.l = New(Config{CA: auth, Devices: f.devs, Tokens: f.toks, Cluster: "fleet", Audit: f.trail,
		Apps: apps.Policy{Hosts: []string{"*.lan"}}, Logger: logtest.Logger(t)})
	return f
}

func (f *fixture) token(t *testing.T, labels map[string]string) string {
	t.Helper()
	tok, err := f.toks.Add(context.Background(), api.AddTokenRequest{Uses: 1, Labels: labels})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Token
}

func joinRequest(t *testing.T, name, token string) *api.JoinRequest {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	pub := pkitest.SSHSigner(t).PublicKey()
	return &api.JoinRequest{Token: token, Name: name, CSR: csr, SSHPublicKey: string(ssh.MarshalAuthorizedKey(pub)),
		Labels: map[string]string{"site": "device-says", "model": "pi4"}}
}

func TestJoin(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	resp, err := f.l.Join(ctx, joinRequest(t, "pi-1", f.token(t, map[string]string{"site": "north"})), "192.0.2.1:5")
	if err != nil {
		t.Fatal(err)
	}
	if resp.Name != "pi-1" || resp.Cluster != "fleet" || len(resp.Cert) == 0 || resp.SSHHostCert == "" || len(resp.CACerts) == 0 || len(resp.UserCAKeys) == 0 {
		t.Errorf("join response %+v lacks the identity", resp)
	}
	dev, err := f.devs.ByName(ctx, "pi-1")
	if err != nil {
		t.Fatal(err)
	}
	if dev.Labels["site"] != "north" || dev.Labels["model"] != "pi4" {
		t.Errorf("labels %v: want the token's site and the device's model", dev.Labels)
	}
	if len(f.trail.FindAll(proto.EventDeviceJoin, proto.OutcomeSuccess)) != 1 {
		t.Error("the join was not recorded")
	}
	tests := []struct {
		name     string
		req      *api.JoinRequest
		wantCode string
		wantMsg  string
	}{
		{"name taken", joinRequest(t, "pi-1", f.token(t, nil)), api.CodeConflict, "already in the fleet"},
		{"bad token", joinRequest(t, "pi-2", "jt_nope"), api.CodeUnauthorized, "token"},
		{"bad name", joinRequest(t, "Pi 2", f.token(t, nil)), api.CodeBadRequest, "device name"},
		{"bad key", func() *api.JoinRequest { r := joinRequest(t, "pi-3", f.token(t, nil)); r.SSHPublicKey = "x"; return r }(), api.CodeBadRequest, "ssh_public_key"},
		{"bad csr", func() *api.JoinRequest { r := joinRequest(t, "pi-4", f.token(t, nil)); r.CSR = []byte("x"); return r }(), api.CodeBadRequest, "csr"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(f.trail.FindAll(proto.EventDeviceJoin, proto.OutcomeDenied))
			_, err := f.l.Join(ctx, tt.req, "192.0.2.1:6")
			var je *JoinError
			if !errors.As(err, &je) || je.Code != tt.wantCode || !strings.Contains(je.Msg, tt.wantMsg) {
				t.Fatalf("got %v, want %s with %q", err, tt.wantCode, tt.wantMsg)
			}
			if after := len(f.trail.FindAll(proto.EventDeviceJoin, proto.OutcomeDenied)); after != before+1 {
				t.Errorf("the refusal was not recorded")
			}
		})
	}
	if _, err := f.devs.ByName(ctx, "pi-4"); err == nil {
		t.Error("a device whose certificate could not be issued stayed registered")
	}
	// A refused join leaves its token's use: the same one-use token then
	// joins the device.
	tok := f.token(t, nil)
	bad := joinRequest(t, "pi-5", tok)
	bad.CSR = []byte("x")
	if _, err := f.l.Join(ctx, bad, "192.0.2.1:7"); err == nil {
		t.Fatal("a join with a bad CSR was accepted")
	}
	if _, err := f.l.Join(ctx, joinRequest(t, "pi-5", tok), "192.0.2.1:7"); err != nil {
		t.Errorf("the token's use was spent by the refused join: %v", err)
	}
}

func TestHello(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	resp, err := f.l.Join(ctx, joinRequest(t, "pi-1", f.token(t, map[string]string{"site": "north"})), "192.0.2.1:5")
	if err != nil {
		t.Fatal(err)
	}
	id := resp.DeviceID
	addr := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 7}
	hello := &proto.Hello{Name: "pi-1", AgentVersion: "v1", Labels: map[string]string{"site": "south", "rack": "3"},
		Services: []string{"ssh", "app", "Bad Name", "ssh"},
		Apps: []proto.App{
			{Name: "nodered", URI: "http://127.0.0.1:1880", Labels: map[string]string{"team": "ops"}},
			{Name: "router", URI: "https://router.lan", InsecureSkipVerify: true},
			{Name: "outside", URI: "http://93.184.216.34"},
		}}
	ack, err := f.l.Hello(ctx, id, addr, hello)
	if err != nil || ack.DeviceID != id {
		t.Fatalf("hello: %+v, %v", ack, err)
	}
	dev, _ := f.devs.Get(ctx, id)
	if dev.Labels["site"] != "north" || dev.Labels["rack"] != "3" {
		t.Errorf("labels %v: the token's site must win, the device's rack stay", dev.Labels)
	}
	if !slices.Equal(dev.Services, []string{"app", "ssh"}) {
		t.Errorf("services %v, want app and ssh", dev.Services)
	}
	if len(dev.Apps) != 2 || dev.App("nodered") == nil || dev.App("router") == nil || dev.App("outside") != nil {
		t.Errorf("apps %+v, want nodered and router, not outside", dev.Apps)
	}
	refused := f.trail.FindAll(proto.EventAccessDenied, proto.OutcomeDenied)
	if len(refused) != 1 || refused[0].Fields["app"] != "outside" || !strings.Contains(refused[0].Message, "does not allow apps at") {
		t.Errorf("refusals recorded: %+v, want outside's", refused)
	}
	// A later hello without apps takes them away.
	hello.Apps = nil
	if _, err := f.l.Hello(ctx, id, addr, hello); err != nil {
		t.Fatal(err)
	}
	if dev, _ := f.devs.Get(ctx, id); len(dev.Apps) != 0 {
		t.Errorf("apps %+v after a hello without any", dev.Apps)
	}
	// A hello naming another device, and one from a removed device.
	if _, err := f.l.Hello(ctx, id, addr, &proto.Hello{Name: "pi-2"}); err == nil || !strings.Contains(err.Error(), `belongs to device "pi-1"`) {
		t.Errorf("hello as another device: %v", err)
	}
	if _, err := f.devs.Delete(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := f.l.Hello(ctx, id, addr, hello); err == nil || !strings.Contains(err.Error(), "removed from the fleet") {
		t.Errorf("hello of a removed device: %v", err)
	}
}

func TestCleanServices(t *testing.T) {
	tests := []struct {
		name string
		in   []string
		want []string
	}{
		{"sorted and deduplicated", []string{"ssh", "kube", "ssh"}, []string{"kube", "ssh"}},
		{"bad names dropped", []string{"kube", "Bad Name", "", "x\n"}, []string{"kube"}},
		{"none", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := cleanServices(tt.in); !slices.Equal(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

// TestDirectAddr: a direct node's hello names where the fleet dials it;
// the fleet takes only an IP on its own network (loopback, private,
// link-local, or a prefix of DirectNetworks), so that no device can make
// it dial an address outside.
func TestDirectAddr(t *testing.T) {
	from := &net.UDPAddr{IP: net.ParseIP("10.1.2.3"), Port: 50000}
	public := &net.UDPAddr{IP: net.ParseIP("203.0.113.9"), Port: 50000}
	tests := []struct {
		name    string
		listen  string
		from    net.Addr
		nets    []string
		want    string
		wantErr string
	}{
		{"private address", "192.168.1.20:4433", from, nil, "192.168.1.20:4433", ""},
		{"loopback", "127.0.0.1:4433", from, nil, "127.0.0.1:4433", ""},
		{"link-local IPv6", "[fe80::1]:4433", from, nil, "[fe80::1]:4433", ""},
		{"any address: the one it checked in from", ":4433", from, nil, "10.1.2.3:4433", ""},
		{"public address refused", "198.51.100.7:4433", from, nil, "", "not on the fleet's own network"},
		{"public address in direct_networks", "198.51.100.7:4433", from, []string{"198.51.100.0/24"}, "198.51.100.7:4433", ""},
		{"any address from a public one refused", ":4433", public, nil, "", "not on the fleet's own network"},
		{"host name refused", "fleet.internal:4433", from, nil, "", "IP address, not a host name"},
		{"no port", "10.0.0.1", from, nil, "", "not IP:PORT"},
		{"port zero", "10.0.0.1:0", from, nil, "", "no valid port"},
		{"port out of range", "10.0.0.1:70000", from, nil, "", "no valid port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var l Lifecycle
			for _, p := range tt.nets {
				l.cfg.DirectNetworks = append(l.cfg.DirectNetworks, netip.MustParsePrefix(p))
			}
			got, err := l.directAddr(tt.listen, tt.from)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("directAddr(%q) = %q, %v; want an error with %q", tt.listen, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("directAddr(%q) = %q, %v; want %q", tt.listen, got, err, tt.want)
			}
		})
	}
}

// failingCreates is a store whose Create fails for keys under prefix: the
// device registry cannot register a device.
type failingCreates struct {
	store.Store
	prefix string
}

func (f failingCreates) Create(ctx context.Context, key string, value []byte, opts ...store.WriteOption) error {
	if strings.HasPrefix(key, f.prefix) {
		return errors.New("disk full")
	}
	return f.Store.Create(ctx, key, value, opts...)
}

// TestRefusedJoinGivesTheUseBack: a join refused after its token's use was
// spent (the device could not be registered) gives the use back.
func TestRefusedJoinGivesTheUseBack(t *testing.T) {
	ctx := context.Background()
	st := memstore.New()
	t.Cleanup(func() { st.Close() })
	auth, err := ca.LoadOrCreate(ctx, st, "fleet", time.Now)
	if err != nil {
		t.Fatal(err)
	}
	toks := &tokens.Service{Store: st}
	l := New(Config{CA: auth, Devices: &devices.Registry{Store: failingCreates{Store: st, prefix: "devices/"}}, Tokens: toks,
		Cluster: "fleet", Audit: &audittest.Recorder{}, Logger: logtest.Logger(t)})
	tok, err := toks.Add(ctx, api.AddTokenRequest{Uses: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Join(ctx, joinRequest(t, "pi-1", tok.Token), "192.0.2.1:5"); err == nil {
		t.Fatal("a join whose device could not be registered succeeded")
	}
	list, err := toks.List(ctx)
	if err != nil || len(list) != 1 || list[0].UsesLeft != 1 {
		t.Fatalf("tokens after the refused join: %+v, %v; want the one use back", list, err)
	}
}

// TestDisconnect: a disconnect writes when the fleet last heard from the
// device and records it offline; while draining (a stop), it records it
// offline at once and leaves the write to Flush, which writes what its
// budget allows. A record that already says later (the device connected
// again, to another replica) keeps its last seen.
func TestDisconnect(t *testing.T) {
	heard := time.Now().UTC().Add(time.Hour) // after the join's last seen
	spent := func() context.Context {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		return ctx
	}
	tests := []struct {
		name        string
		drain       bool
		flush       context.Context // nil: no Flush
		seenLater   bool            // the record says the device was seen after heard
		wantSeen    bool
		wantSkipped int
	}{
		{"running", false, nil, false, true, 0},
		{"draining, before the flush", true, nil, false, false, 0},
		{"draining, flushed", true, context.Background(), false, true, 0},
		{"draining, budget spent", true, spent(), false, false, 1},
		{"running, back elsewhere since", false, nil, true, false, 0},
		{"draining, back elsewhere since", true, context.Background(), true, false, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			ctx := context.Background()
			resp, err := f.l.Join(ctx, joinRequest(t, "pi-1", f.token(t, nil)), "192.0.2.1:5")
			if err != nil {
				t.Fatal(err)
			}
			later := heard.Add(time.Minute)
			if tt.seenLater {
				if _, err := f.devs.Update(ctx, resp.DeviceID, func(d *devices.Device) error { d.LastSeen = later; return nil }); err != nil {
					t.Fatal(err)
				}
			}
			if tt.drain {
				f.l.Drain()
			}
			f.l.Disconnect(resp.DeviceID, heard, errors.New("link lost"))
			off := f.trail.FindAll(proto.EventDeviceOffline, proto.OutcomeSuccess)
			if len(off) != 1 || off[0].Device != resp.DeviceID || off[0].Message != "link lost" {
				t.Errorf("offline events %+v, want one for the device with the reason, at once", off)
			}
			if tt.flush != nil {
				if got := f.l.Flush(tt.flush); got != tt.wantSkipped {
					t.Errorf("Flush skipped %d, want %d", got, tt.wantSkipped)
				}
			}
			dev, err := f.devs.Get(ctx, resp.DeviceID)
			if err != nil {
				t.Fatal(err)
			}
			if got := dev.LastSeen.Equal(heard); got != tt.wantSeen {
				t.Errorf("last seen = %v, written = %v, want written = %v", dev.LastSeen, got, tt.wantSeen)
			}
			if tt.seenLater && !dev.LastSeen.Equal(later) {
				t.Errorf("last seen = %v, want the later %v kept", dev.LastSeen, later)
			}
		})
	}
}

// stallingStore holds every compare-and-swap until release is closed or
// the write's context ends; entered receives one value per swap begun.
type stallingStore struct {
	store.Store
	entered chan struct{}
	release chan struct{}
}

func (s *stallingStore) CompareAndSwap(ctx context.Context, key string, old, next []byte, opts ...store.WriteOption) error {
	s.entered <- struct{}{}
	select {
	case <-s.release:
		return s.Store.CompareAndSwap(ctx, key, old, next, opts...)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// TestFlushCutShortByAStop: a flush (after a shed) that a stop cuts short
// hands what it did not write to the stop's own flush, which writes it.
func TestFlushCutShortByAStop(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	resp, err := f.l.Join(ctx, joinRequest(t, "pi-1", f.token(t, nil)), "192.0.2.1:5")
	if err != nil {
		t.Fatal(err)
	}
	heard := time.Now().UTC().Add(time.Hour)
	stall := &stallingStore{Store: f.devs.Store, entered: make(chan struct{}, 4), release: make(chan struct{})}
	f.devs.Store = stall
	f.l.Drain() // the shed
	f.l.Disconnect(resp.DeviceID, heard, errors.New("lease lost"))
	fctx, cancel := context.WithCancel(ctx)
	skipped := make(chan int, 1)
	go func() { skipped <- f.l.Flush(fctx) }() // registered again: the shed's flush
	<-stall.entered
	f.l.Drain() // the stop begins...
	cancel()    // ...and cuts the shed's flush short
	if n := <-skipped; n != 1 {
		t.Fatalf("the cut flush left out %d, want 1", n)
	}
	close(stall.release)
	if n := f.l.Flush(ctx); n != 0 { // the stop's flush
		t.Fatalf("the stop's flush left out %d, want 0", n)
	}
	dev, err := f.devs.Get(ctx, resp.DeviceID)
	if err != nil {
		t.Fatal(err)
	}
	if !dev.LastSeen.Equal(heard) {
		t.Errorf("last seen = %v, want %v, written by the stop's flush", dev.LastSeen, heard)
	}
}
