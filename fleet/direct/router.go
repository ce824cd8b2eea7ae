package direct

import (
	"context"
	"errors"
	"net"
	"time"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/proto"
)

// Tunnels opens streams down held tunnels (*tunnelsrv.Server).
type Tunnels interface {
	Open(ctx context.Context, id string, h *proto.StreamHeader) (net.Conn, error)
	Send(id string, m proto.Message) error
	Online(id string) bool
}

// Router opens the broker's streams: a direct node's through the Dialer,
// every other's down its tunnel. It is the broker's Tunnels. Tunnels,
// Direct and Devices are required.
type Router struct {
	Tunnels Tunnels
	Direct  *Dialer
	Devices Devices
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// node returns the device id when it is a direct node.
func (r *Router) node(ctx context.Context, id string) (devices.Device, bool) {
	if !devices.IsID(id) {
		return devices.Device{}, false // a leaf cluster's tunnel, say
	}
	dev, err := r.Devices.Get(ctx, id)
	return dev, err == nil && dev.Direct()
}

// Open opens a stream to device id: dialled for a direct node, down its
// tunnel otherwise.
func (r *Router) Open(ctx context.Context, id string, h *proto.StreamHeader) (net.Conn, error) {
	if dev, ok := r.node(ctx, id); ok {
		return r.Direct.Open(ctx, id, dev.DirectAddr, h)
	}
	return r.Tunnels.Open(ctx, id, h)
}

// ErrNoTransport: the tunnels cannot open raw streams.
var ErrNoTransport = errors.New("direct: the fleet's tunnels open no raw streams")

// OpenTransport opens a raw stream down device id's tunnel (see
// fleet/tunnelsrv's OpenTransport), for a session whose resume state the
// caller or the user's client holds. A direct node holds no tunnel: the
// broker does not ask for one (broker.CanHold).
func (r *Router) OpenTransport(ctx context.Context, id string, h *proto.StreamHeader) (net.Conn, error) {
	to, ok := r.Tunnels.(interface {
		OpenTransport(ctx context.Context, id string, h *proto.StreamHeader) (net.Conn, error)
	})
	if !ok {
		return nil, ErrNoTransport
	}
	return to.OpenTransport(ctx, id, h)
}

// Send sends m to device id: a session end goes to the direct
// connection that carries the session, if one does; anything else down
// the tunnel.
func (r *Router) Send(id string, m proto.Message) error {
	if _, ok := m.(*proto.SessionEnd); ok {
		if err := r.Direct.Send(m); !errors.Is(err, ErrNoSession) {
			return err
		}
	}
	return r.Tunnels.Send(id, m)
}

// Online reports whether device id is reachable: its tunnel is up, or it
// is a direct node that checked in within devices.DirectWindow.
func (r *Router) Online(id string) bool {
	if r.Tunnels.Online(id) {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	dev, ok := r.node(ctx, id)
	return ok && r.now().Sub(dev.LastSeen) < devices.DirectWindow
}

func (r *Router) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}
