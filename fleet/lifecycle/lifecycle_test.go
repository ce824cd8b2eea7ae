package lifecycle

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/apps"
	"remoteler.dev/edge/fleet/ca"
	"remoteler.dev/edge/fleet/devices"
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
