package fleetd

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/fleet/presence"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/proto"
)

// TestClaimTunnel: a tunnel is recorded with its address and agent boot;
// one that ended while the device was checked (the tunnel server no
// longer has it), or that the store cannot record, is refused with a code
// that makes the agent connect again, and never crashes the replica (a
// 30,000-device restart crashed two replicas on the first case).
func TestClaimTunnel(t *testing.T) {
	addr := &net.UDPAddr{IP: net.IPv4(10, 0, 0, 7), Port: 4000}
	for _, tt := range []struct {
		name     string
		info     tunnelsrv.Info
		ok       bool
		claimErr error
		want     string // in the refusal; "" for none
		claimed  string
	}{
		{"recorded", tunnelsrv.Info{Addr: addr, Boot: "b1"}, true, nil, "", "d1 10.0.0.7:4000 b1"},
		{"the connection ended meanwhile", tunnelsrv.Info{}, false, nil, "the connection ended", ""},
		{"no lease", tunnelsrv.Info{Addr: addr}, true, presence.ErrNotReady, presence.ErrNotReady.Error(), "d1 10.0.0.7:4000 "},
		{"the store failed", tunnelsrv.Info{Addr: addr}, true, errors.New("etcd: timed out"), "could not record the tunnel (etcd: timed out)", "d1 10.0.0.7:4000 "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var claimed string
			claim := func(_ context.Context, id, a, boot string, _ time.Time) error {
				claimed = id + " " + a + " " + boot
				return tt.claimErr
			}
			err := claimTunnel(context.Background(), claim, "d1", tt.info, tt.ok)
			if claimed != tt.claimed {
				t.Errorf("claimed %q, want %q", claimed, tt.claimed)
			}
			if tt.want == "" {
				if err != nil {
					t.Fatalf("claimTunnel = %v, want nil", err)
				}
				return
			}
			var pe *proto.Error
			if !errors.As(err, &pe) || pe.Code != proto.CodeUnavailable || !strings.Contains(pe.Message, tt.want) {
				t.Errorf("claimTunnel = %v, want an unavailable refusal saying %q", err, tt.want)
			}
		})
	}
}
