package broker

import (
	"context"
	"net"
	"testing"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/proto"
)

// rawTunnels are fakeTunnels that also open raw device streams, as the
// fleet's tunnels do (transportOpener).
type rawTunnels struct{ fakeTunnels }

func (*rawTunnels) OpenTransport(context.Context, string, *proto.StreamHeader) (net.Conn, error) {
	return nil, errOffline
}

// TestCanHold: which sessions the client may hold. A Kubernetes session
// through /v1/connect is always user-held where the device is reached
// through its tunnel (its bytes are kubectl's own: there is no
// fleet-held way to carry them); other services only where the fleet
// offers user-held sessions (several replicas).
func TestCanHold(t *testing.T) {
	tunnel := devices.Device{ID: "d1", Name: "pi-1"}
	direct := devices.Device{ID: "d2", Name: "node-1", DirectAddr: "192.0.2.7:22"}
	tests := []struct {
		name     string
		raw      bool // the tunnels open raw streams
		userHeld bool // Config.UserHeld: several replicas
		service  string
		cluster  string // a leaf cluster
		device   devices.Device
		want     bool
	}{
		{"ssh, replicas", true, true, proto.ServiceSSH, "", tunnel, true},
		{"ssh, one fleetd", true, false, proto.ServiceSSH, "", tunnel, false},
		{"kube, replicas", true, true, proto.ServiceKube, "", tunnel, true},
		{"kube, one fleetd", true, false, proto.ServiceKube, "", tunnel, true},
		{"kube, the fleet's own cluster", true, false, proto.ServiceKube, "", devices.Device{}, false},
		{"kube, a direct node", true, true, proto.ServiceKube, "", direct, false},
		{"kube, a leaf cluster's device", true, true, proto.ServiceKube, "leaf", tunnel, false},
		{"kube, tunnels without raw streams", false, true, proto.ServiceKube, "", tunnel, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var tun Tunnels = &fakeTunnels{}
			if tt.raw {
				tun = &rawTunnels{}
			}
			b := New(Config{Tunnels: tun, UserHeld: tt.userHeld})
			g := &Grant{Session: sessions.Session{Service: tt.service, Cluster: tt.cluster, DeviceID: tt.device.ID}, Device: tt.device}
			if got := b.CanHold(g); got != tt.want {
				t.Errorf("CanHold = %v, want %v", got, tt.want)
			}
		})
	}
}
