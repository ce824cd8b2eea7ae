package broker

import (
	"context"
	"net"
	"time"

	"remoteler.dev/edge/fleet/authz"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/proto"
)

// deviceGetter finds a device by ID (*devices.Registry), for the name
// that session lists show.
type deviceGetter interface {
	Get(ctx context.Context, id string) (devices.Device, error)
}

// ServeHeld serves a device's stream of proto.ServiceHeld: the user-held
// sessions it holds while their user is away, each list the whole of
// them. Every listed session is in this replica's session registry (Away)
// for as long as the device lists it on this stream, so that what ends
// its user's access (a lock, a removed user or role, the certificate's
// expiry) ends it on the device (proto.SessionEnd). A session the device
// no longer lists was taken back by its user's client, or ended; it
// leaves the registry without an end on record. So does every session
// when the stream ends: the device reports them again wherever its
// tunnel goes. A device has one such stream on a replica: a newer one
// replaces the one before. ServeHeld returns when the stream ends, and
// closes conn.
func (b *Broker) ServeHeld(ctx context.Context, deviceID string, conn net.Conn) {
	defer conn.Close()
	// One stream a device: a newer one replaces the one before.
	b.heldMu.Lock()
	if b.held == nil {
		b.held = map[string]net.Conn{}
	}
	if old := b.held[deviceID]; old != nil {
		old.Close()
	}
	b.held[deviceID] = conn
	b.heldMu.Unlock()
	defer func() {
		b.heldMu.Lock()
		if b.held[deviceID] == conn {
			delete(b.held, deviceID)
		}
		b.heldMu.Unlock()
	}()
	name := deviceID
	if g, ok := b.cfg.Devices.(deviceGetter); ok {
		if d, err := g.Get(ctx, deviceID); err == nil {
			name = d.Name
		}
	}
	log := b.log.With("device", name)
	held := map[string]*sessions.Live{}
	defer func() {
		for _, l := range held {
			l.Withdraw()
		}
	}()
	r := proto.NewReader(conn)
	for {
		m, err := proto.ReadMsg(r, proto.MaxControlFrame)
		if err != nil {
			return
		}
		list, ok := m.(*proto.HeldSessions)
		if !ok {
			log.Warn("held sessions: the device sent something else; closing the stream", "kind", m.Kind())
			return
		}
		if err := list.Check(); err != nil {
			log.Warn("held sessions: the device's list is refused; closing the stream", "err", err)
			return
		}
		listed := make(map[string]bool, len(list.Sessions))
		for _, hs := range list.Sessions {
			listed[hs.SessionID] = true
			if held[hs.SessionID] != nil {
				continue
			}
			if l := b.holdAway(ctx, deviceID, name, hs); l != nil {
				held[hs.SessionID] = l
			}
		}
		for id, l := range held {
			if !listed[id] {
				l.Withdraw()
				delete(held, id)
			}
		}
	}
}

// holdAway registers hs, a session device deviceID holds for its away
// user; nil when the registry refuses it.
func (b *Broker) holdAway(ctx context.Context, deviceID, name string, hs proto.HeldSession) *sessions.Live {
	// The user's replica may be this one, its record of the session's
	// last connection not yet taken down.
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	b.cfg.Sessions.WaitDone(wctx, hs.SessionID)
	cancel()
	s := sessions.Session{
		ID: hs.SessionID, Service: hs.Service, Kind: hs.Service, User: hs.User, Roles: hs.Roles, Login: hs.Login,
		DeviceID: deviceID, DeviceName: name, PortForwarding: !hs.NoPortForwarding, FileCopy: !hs.NoFileCopy, Away: true,
		KubeUser: hs.KubeUser, KubeGroups: hs.KubeGroups,
	}
	if hs.Started > 0 {
		s.Started = time.UnixMilli(hs.Started)
	}
	if hs.Expires > 0 {
		s.Expires = time.UnixMilli(hs.Expires)
	}
	id := hs.SessionID
	l, err := b.cfg.Sessions.Register(s, func(reason string) { b.endOnDevice(deviceID, id, reason) })
	if err != nil {
		b.log.Info("a session held for its away user is not registered", "session", id, "device", name, "err", err)
		return nil
	}
	b.log.Info("the device holds a session for its away user", "session", id, "device", name, "user", hs.User)
	// A lock written since the user's last connection ended found no
	// session to end: it ends this one now. (Role and user changes are
	// checked again at the registry's next check.)
	if err := b.cfg.Locks.Check(authz.Subject(&s, nil)); err != nil {
		b.cfg.Sessions.End(func(x *sessions.Session) bool { return x.ID == id && x.Away }, err.Error())
	}
	return l
}
