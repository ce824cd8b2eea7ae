package httpapi

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

func (s *Server) apiDevice(d devices.Device) api.Device {
	out := d.API()
	if info, ok := s.Tunnels.Info(d.ID); ok {
		out.Online = info.Online
		out.Addr = info.Addr.String()
		out.LastSeen = info.LastHeard.UTC()
		l := &out.Link
		l.RTTMillis = float64(info.RTT.Microseconds()) / 1000
		l.BytesSent, l.BytesReceived = info.Stats.BytesSent, info.Stats.BytesReceived
		if loss, blackouts, ok := s.linkLoss(d.ID); ok {
			l.LossPercent, l.Blackouts = loss, blackouts
		} else if info.Stats.PacketsSent > 0 {
			l.LossPercent = 100 * float64(info.Stats.PacketsLost) / float64(info.Stats.PacketsSent)
		}
		l.ConnectedSince = info.Since.UTC()
		if info.AddrChangedAt.After(l.AddrChangedAt) {
			l.AddrChangedAt = info.AddrChangedAt.UTC()
		}
	}
	return out
}

// linkLoss is LinkLoss, when set.
func (s *Server) linkLoss(deviceID string) (float64, int, bool) {
	if s.LinkLoss == nil {
		return 0, 0, false
	}
	return s.LinkLoss(deviceID)
}

func (s *Server) listDevices(w http.ResponseWriter, r *http.Request, c *caller) {
	all, err := s.Devices.List(r.Context())
	if err != nil {
		s.storeError(w, "list devices", err)
		return
	}
	out := []api.Device{}
	for _, d := range all {
		ad := s.apiDevice(d)
		s.deviceAudit(c, &ad)
		if s.Rollouts != nil {
			ad.Update = s.Rollouts.DeviceUpdate(d.ID)
		}
		if c.checker != nil {
			if !c.checker.CanSeeDevice(d.Labels) {
				continue
			}
			ad.Logins = c.checker.DeviceLogins(d.Labels)
		}
		out = append(out, ad)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	writeJSON(w, http.StatusOK, out)
}

func newSessionID() string {
	var b [16]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// connect brokers one connection: it checks the user's roles, opens a
// stream down the device's tunnel, registers the live session, answers
// 101 and splices the two.
func (s *Server) connect(w http.ResponseWriter, r *http.Request, c *caller) {
	q := r.URL.Query()
	name, login, service := q.Get("device"), q.Get("login"), q.Get("service")
	if service == "" {
		service = proto.ServiceSSH
	}
	sid := newSessionID()
	log := s.audit().With("user", c.name(), "device", name, "login", login,
		"service", service, "session", sid, "remote", r.RemoteAddr)
	// deny refuses the request; fields say, for the audit, which rule
	// refused when the user is not told.
	deny := func(status int, code, msg string, fields map[string]string) {
		log.Warn("access denied", "event", "access.denied", "reason", msg, "rule", fields["rule"], "role", fields["role"])
		f := map[string]string{"device_name": name, "service": service, "action": "connect"}
		for k, v := range fields {
			f[k] = v
		}
		s.record(r.Context(), &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, User: c.name(), Login: login,
			Session: sid, Addr: r.RemoteAddr, Message: msg, Fields: f})
		writeError(w, status, code, msg)
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), api.UpgradeProto) {
		deny(http.StatusBadRequest, api.CodeBadRequest, "connect needs Upgrade: "+api.UpgradeProto, nil)
		return
	}
	if c.checker == nil {
		deny(http.StatusForbidden, api.CodeForbidden, "only users can connect to devices", nil)
		return
	}
	if service != proto.ServiceSSH {
		deny(http.StatusBadRequest, api.CodeBadRequest, fmt.Sprintf("unknown service %q", service), nil)
		return
	}
	// The same answer for unknown and hidden devices.
	notFound := fmt.Sprintf("no device %q that you can reach: see tsh ls", name)
	dev, err := s.Devices.ByName(r.Context(), name)
	if err != nil {
		deny(http.StatusNotFound, api.CodeNotFound, notFound, map[string]string{"rule": "no such device"})
		return
	}
	if err := c.checker.CheckDevice(dev.Name, dev.Labels, login); err != nil {
		var fields map[string]string
		var ad *rbac.AccessDenied
		if errors.As(err, &ad) {
			fields = ad.AuditFields()
			if ad.Rule == rbac.RuleDenyLogins || ad.Rule == rbac.RuleAllowLogins {
				fields["login"] = login
			}
		}
		if !c.checker.CanSeeDevice(dev.Labels) {
			deny(http.StatusNotFound, api.CodeNotFound, notFound, fields)
			return
		}
		deny(http.StatusForbidden, api.CodeForbidden, err.Error(), fields)
		return
	}
	ident := proto.Identity{
		User: c.user.Name, Roles: c.user.Roles, Login: login, Cluster: s.Cluster,
		RecordInput:      c.checker.RecordInput(),
		Expires:          c.id.Expires.UnixMilli(),
		NoPortForwarding: !c.checker.PortForwarding(),
		NoFileCopy:       !c.checker.FileCopy(),
	}
	sessionEvent := func(typ string, f map[string]string) *proto.AuditEvent {
		f["service"], f["device_name"] = service, dev.Name
		return &proto.AuditEvent{Type: typ, User: c.name(), Login: login, Session: sid, Device: dev.ID, Addr: r.RemoteAddr, Fields: f}
	}
	// Recorded before the device hears of the session: the device's own
	// events about it are checked against this record (fleet/audit,
	// claims.go). A session the device cannot take ends in an
	// access.denied for it.
	if s.record(r.Context(), sessionEvent(proto.EventSessionStart, map[string]string{})) != nil {
		errAuditDown(w) // an unrecorded session is not brokered
		return
	}
	// An idle device whose NAT mapping changed answers at its next
	// keep-alive (25 s by default): wait a little longer than that.
	ctx, cancel := context.WithTimeout(r.Context(), api.ConnectWait)
	conn, err := s.Tunnels.Open(ctx, dev.ID, &proto.StreamHeader{
		Service:    service,
		SessionID:  sid,
		Identity:   ident,
		ClientAddr: r.RemoteAddr,
	})
	cancel()
	if err != nil {
		var pe *proto.Error
		switch {
		case errors.Is(err, tunnelsrv.ErrOffline):
			deny(http.StatusServiceUnavailable, api.CodeDeviceOffline, fmt.Sprintf("device %q is offline: last seen %s", dev.Name, s.lastSeen(err, dev.LastSeen)), nil)
		case errors.As(err, &pe) && pe.Code == proto.CodeForbidden:
			deny(http.StatusForbidden, api.CodeForbidden, "the device refused: "+pe.Message, map[string]string{"rule": "device"})
		case errors.As(err, new(*tunnelsrv.NoAnswerError)):
			deny(http.StatusGatewayTimeout, api.CodeDeviceOffline, fmt.Sprintf("device %q did not answer within %v (last seen %s); its link may be down", dev.Name, api.ConnectWait, s.lastSeen(err, dev.LastSeen)), nil)
		default:
			deny(http.StatusBadGateway, api.CodeDeviceOffline, fmt.Sprintf("device %q did not answer: %v", dev.Name, err), nil)
		}
		return
	}
	defer conn.Close()
	hj, ok := w.(http.Hijacker)
	if !ok {
		deny(http.StatusInternalServerError, api.CodeInternal, "connection cannot be upgraded (HTTP/2?): use HTTP/1.1", nil)
		return
	}
	// The session is live from here: the registry may end it (expiry,
	// access removed) by telling the device, which tells the user and
	// closes; the fleet closes both sides itself shortly after.
	var clientConn atomic.Pointer[net.Conn]
	live, err := s.sessions().Register(sessions.Session{
		ID: sid, Service: service, Kind: "ssh", User: c.user.Name, Roles: c.user.Roles, Login: login,
		DeviceID: dev.ID, DeviceName: dev.Name, ClientAddr: r.RemoteAddr, Expires: c.id.Expires, Started: s.now(),
		PortForwarding: !ident.NoPortForwarding, FileCopy: !ident.NoFileCopy,
	}, func(reason string) {
		if err := s.Tunnels.Send(dev.ID, &proto.SessionEnd{SessionID: sid, Message: reason}); err != nil {
			log.Info("could not tell the device to end the session; closing it", "err", err)
		}
		time.AfterFunc(s.endGrace(), func() {
			conn.Close()
			if cc := clientConn.Load(); cc != nil {
				(*cc).Close()
			}
		})
	})
	if err != nil {
		deny(http.StatusUnauthorized, api.CodeUnauthorized, err.Error(), nil)
		return
	}
	reason := ""
	defer func() { live.Done(reason) }()
	client, brw, err := hj.Hijack()
	if err != nil {
		log.Error("hijack failed", "err", err)
		return
	}
	defer client.Close()
	clientConn.Store(&client)
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n%s: %s\r\n%s: %s\r\n\r\n",
		api.UpgradeProto, api.HeaderSession, sid, api.HeaderSessionToken, live.Token())
	if err := brw.Flush(); err != nil {
		return
	}
	if why := live.Ending(); why != "" {
		// Ended between the check and now (its certificate expired).
		reason = why
		return
	}
	start := s.now()
	log.Info("session started", "event", "session.start")
	// When the device's side fails, the reason is recorded before the
	// user's connection is closed: the user's client asks for it as soon
	// as it sees the close.
	up, down, devErr := splice(client, brw.Reader, conn, func(err error) { live.Done(s.Tunnels.EndReason(err)) })
	if devErr != nil {
		reason = s.Tunnels.EndReason(devErr)
	}
	if why := live.Ending(); why != "" {
		reason = why
	}
	log.Info("session ended", "event", "session.end", "bytes_up", up, "bytes_down", down, "duration", s.now().Sub(start).Round(time.Millisecond).String(), "reason", reason)
	f := map[string]string{
		"bytes_up": strconv.FormatInt(up, 10), "bytes_down": strconv.FormatInt(down, 10),
		"duration": s.now().Sub(start).Round(time.Millisecond).String()}
	if reason != "" {
		f["reason"] = reason
	}
	s.record(r.Context(), sessionEvent(proto.EventSessionEnd, f))
}

// lastSeen says when an offline device was last heard from: the tunnel
// server knows (err is its *tunnelsrv.OfflineError), else the registry.
func (s *Server) lastSeen(err error, registry time.Time) string {
	at := registry
	if oe, ok := errors.AsType[*tunnelsrv.OfflineError](err); ok && !oe.LastHeard.IsZero() {
		at = oe.LastHeard
	}
	if ne, ok := errors.AsType[*tunnelsrv.NoAnswerError](err); ok && !ne.LastHeard.IsZero() {
		at = ne.LastHeard
	}
	if at.IsZero() {
		return "never"
	}
	return fmt.Sprintf("%s ago (%s)", s.now().Sub(at).Round(time.Second), at.UTC().Format(time.RFC3339))
}

type closeWriter interface{ CloseWrite() error }

// splice copies both ways until both directions end, passing half-closes
// on. It returns the bytes sent to the device and back, and why the
// device's side failed (nil when it ended normally). When the device's side
// fails (the device did not come back within the hold time, say), it calls
// devFailed and then closes the user's connection at once.
func splice(client net.Conn, clientBuf *bufio.Reader, dev net.Conn, devFailed func(error)) (up, down int64, devErr error) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		// What the HTTP server's reader holds, then the connection itself:
		// through that reader (4 KB) every read and write would be small.
		var src io.Reader = client
		if n := clientBuf.Buffered(); n > 0 {
			held, _ := clientBuf.Peek(n)
			src = io.MultiReader(bytes.NewReader(held), client)
		}
		up, _ = io.Copy(dev, src)
		if cw, ok := dev.(closeWriter); ok {
			cw.CloseWrite()
		} else {
			dev.Close()
		}
	}()
	go func() {
		defer wg.Done()
		var err error
		down, err = io.Copy(client, dev)
		if err != nil {
			devErr = err
			devFailed(err)
			client.Close()
			return
		}
		if cw, ok := client.(closeWriter); ok {
			cw.CloseWrite()
		} else {
			client.Close()
		}
	}()
	wg.Wait()
	return up, down, devErr
}

// sessionEnd answers GET /v1/sessions/ID: how a brokered session ended. The
// session's own client may ask with the token it got in the 101 answer
// (api.HeaderSessionToken) and no certificate, which may have expired or
// been revoked by then; otherwise the caller must be the session's user or
// an admin.
func (s *Server) sessionEnd(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if tok := r.Header.Get(api.HeaderSessionToken); tok != "" {
		end, ok := s.sessions().EndedWithToken(id, tok)
		if !ok {
			writeError(w, http.StatusNotFound, api.CodeNotFound, "no such session")
			return
		}
		writeJSON(w, http.StatusOK, end)
		return
	}
	s.authed(func(w http.ResponseWriter, r *http.Request, c *caller) {
		end, ok := s.sessions().Ended(id)
		if !ok || (!c.isAdmin() && end.User != c.user.Name) {
			writeError(w, http.StatusNotFound, api.CodeNotFound, "no such session")
			return
		}
		writeJSON(w, http.StatusOK, end)
	}).ServeHTTP(w, r)
}
