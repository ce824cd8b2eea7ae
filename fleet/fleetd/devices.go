package fleetd

import (
	"time"

	"github.com/quic-go/quic-go"

	"remoteler.dev/edge/fleet/linkhealth"
	"remoteler.dev/edge/fleet/tunnelsrv"
)

// linkSampler measures every tunnel's loss outside blackouts, for the
// device listing's LOSS.
func linkSampler(tunnels *tunnelsrv.Server) *linkhealth.Sampler {
	return &linkhealth.Sampler{Links: func(fn func(string, time.Time, linkhealth.Counters)) {
		tunnels.EachLink(func(id string, since time.Time, st quic.ConnectionStats) {
			fn(id, since, linkhealth.Counters{Sent: st.PacketsSent, Lost: st.PacketsLost, Received: st.PacketsReceived})
		})
	}}
}
