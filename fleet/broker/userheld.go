package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"remoteler.dev/edge/proto"
)

// A user-held session is one whose fleet end of the resume state
// (proto/resume) the user's client holds (api.HeaderResume): the fleet
// opens the device's stream raw and relays the session's frames both
// ways, so the session outlives the replica the user is connected to, as
// it outlives the device's. When the user's connection breaks, the client
// connects again, to any replica, which authorises the user afresh and
// re-attaches the session on the device (OpenUserHeld with resume set).

// transportOpener opens raw device streams wherever the device's tunnel is
// (fleet/route's Router, fleet/tunnelsrv's Server).
type transportOpener interface {
	OpenTransport(ctx context.Context, deviceID string, h *proto.StreamHeader) (net.Conn, error)
}

// CanHold reports whether g's session can be user-held: the fleet opens
// raw device streams, g reaches a device through its tunnel (not a direct
// node, which the fleet dials, nor a leaf cluster, which holds its own
// sessions), and the fleet offers it for g's service. A Kubernetes
// session is held by the user's client whenever it passes the fleet's
// /v1/connect (tsh proxy kube): its bytes are kubectl's own, which only
// the device reads, so there is no fleet-held way to carry them. Other
// services are held by the client only where Config.UserHeld offers it.
func (b *Broker) CanHold(g *Grant) bool {
	_, ok := b.cfg.Tunnels.(transportOpener)
	offered := b.cfg.UserHeld || g.Session.Service == proto.ServiceKube
	return ok && offered && g.Session.Cluster == "" && g.Session.DeviceID != "" && !g.Device.Direct()
}

// ErrNoUserHeld: the fleet's tunnels cannot open raw streams.
var ErrNoUserHeld = errors.New("broker: this fleet cannot open sessions held by the client")

// OpenUserHeld opens the stream of g's user-held session, with secret the
// session's resume secret. With resume false the session is new; with
// resume true it re-attaches g.Session.ID, whose bytes the user's client
// has received this many of. It returns the raw stream (the session's
// frames from here on) and how many of the session's bytes the device has
// (0 for a new session). Failures are a *Refusal, as Open's.
func (b *Broker) OpenUserHeld(ctx context.Context, g *Grant, secret []byte, resume bool, received uint64) (net.Conn, uint64, error) {
	to, ok := b.cfg.Tunnels.(transportOpener)
	if !ok || !b.CanHold(g) {
		return nil, 0, ErrNoUserHeld
	}
	ctx, cancel := context.WithTimeout(ctx, b.cfg.OpenTimeout)
	defer cancel()
	conn, err := to.OpenTransport(ctx, g.Session.DeviceID, &proto.StreamHeader{
		Service:    g.Session.Service,
		SessionID:  g.Session.ID,
		Identity:   g.Identity(),
		ClientAddr: g.Session.ClientAddr,
		Secret:     secret,
		UserHeld:   true,
		Resume:     resume,
		Received:   received,
	})
	if err != nil {
		var pe *proto.Error
		if resume && errors.As(err, &pe) && pe.Code == proto.CodeNotFound {
			// The user's client names the device already.
			return nil, 0, &Refusal{Status: StatusNotFound, Msg: pe.Message}
		}
		return nil, 0, b.openError(ctx, g, err)
	}
	if !resume {
		return b.counted(g, conn), 0, nil
	}
	// The agent says how much it has before the session's frames, which
	// ReadMsg must leave unread.
	conn.SetReadDeadline(time.Now().Add(b.cfg.OpenTimeout)) // a deadline is on the real clock
	m, err := proto.ReadMsg(proto.ByteAtATime(conn), proto.MaxHeaderFrame)
	conn.SetReadDeadline(time.Time{})
	if err != nil {
		conn.Close()
		return nil, 0, &Refusal{Status: StatusNoAnswer, Msg: fmt.Sprintf("device %q did not say where the session was: %v", g.Device.Name, err)}
	}
	acc, ok := m.(*proto.ResumeAccept)
	if !ok {
		conn.Close()
		return nil, 0, &Refusal{Status: StatusNoAnswer, Msg: fmt.Sprintf("device %q answered a session re-attach with %s", g.Device.Name, m.Kind())}
	}
	return b.counted(g, conn), acc.Received, nil
}

// EndOnDevice tells g's device that g's session has ended, with reason
// (proto.SessionEnd): how the registry ends a session by default, and how
// a user-held session the fleet refused to resume after the device took
// it back (a lock came in between) ends on the device now, not when its
// hold runs out.
func (b *Broker) EndOnDevice(g *Grant, reason string) {
	b.endOnDevice(g.Session.DeviceID, g.Session.ID, reason)
}

// endOnDevice tells device deviceID that its session id has ended, with
// reason (proto.SessionEnd).
func (b *Broker) endOnDevice(deviceID, id, reason string) {
	if err := b.cfg.Tunnels.Send(deviceID, &proto.SessionEnd{SessionID: id, Message: reason}); err != nil {
		b.log.Info("could not tell the device to end the session", "session", id, "device_id", deviceID, "err", err)
	}
}

// EndRefusedResume ends, on its device, the user-held session id that ask
// asked to resume, when the fleet refused (reason): the user's access
// ended while their client was away, and the device, which holds the
// session for the hold time, would otherwise keep its commands running
// until then. The device ends it only when secret, user and login are the
// session's: a refused caller cannot end another's session.
func (b *Broker) EndRefusedResume(ctx context.Context, ask Ask, id string, secret []byte, reason string) error {
	to, ok := b.cfg.Tunnels.(transportOpener)
	if !ok {
		return ErrNoUserHeld
	}
	dev, err := b.cfg.Devices.ByName(ctx, ask.Device)
	if err != nil {
		return err
	}
	conn, err := to.OpenTransport(ctx, dev.ID, &proto.StreamHeader{
		Service:   ask.Service,
		SessionID: id,
		Identity:  proto.Identity{User: ask.User.Name, Login: ask.Login, Cluster: b.cfg.Cluster},
		Secret:    secret,
		UserHeld:  true,
		Resume:    true,
		End:       reason,
	})
	if err != nil {
		return err
	}
	return conn.Close()
}
