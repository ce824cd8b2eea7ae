package httpapi

import (
	"bufio"
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
	"time"

	"remoteler.dev/edge/fleet/devices"
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
		if info.Stats.PacketsSent > 0 {
			l.LossPercent = 100 * float64(info.Stats.PacketsLost) / float64(info.Stats.PacketsSent)
		}
		l.ConnectedSince = info.Since.UTC()
		if info.AddrChangedAt.After(l.AddrChangedAt) {
			l.AddrChangedAt = info.AddrChangedAt.UTC()
		}
	}
	return out
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
// stream down the device's tunnel, answers 101 and splices the two.
func (s *Server) connect(w http.ResponseWriter, r *http.Request, c *caller) {
	q := r.URL.Query()
	name, login, service := q.Get("device"), q.Get("login"), q.Get("service")
	if service == "" {
		service = proto.ServiceSSH
	}
	sid := newSessionID()
	log := s.audit().With("user", c.name(), "device", name, "login", login,
		"service", service, "session", sid, "remote", r.RemoteAddr)
	deny := func(status int, code, msg string) {
		log.Warn("access denied", "event", "access.denied", "reason", msg)
		s.record(r.Context(), &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, User: c.name(), Login: login,
			Session: sid, Addr: r.RemoteAddr, Message: msg, Fields: map[string]string{"device_name": name, "service": service, "action": "connect"}})
		writeError(w, status, code, msg)
	}
	if !strings.EqualFold(r.Header.Get("Upgrade"), api.UpgradeProto) {
		deny(http.StatusBadRequest, api.CodeBadRequest, "connect needs Upgrade: "+api.UpgradeProto)
		return
	}
	if c.checker == nil {
		deny(http.StatusForbidden, api.CodeForbidden, "only users can connect to devices")
		return
	}
	if service != proto.ServiceSSH {
		deny(http.StatusBadRequest, api.CodeBadRequest, fmt.Sprintf("unknown service %q", service))
		return
	}
	dev, err := s.Devices.ByName(r.Context(), name)
	if err != nil || !c.checker.CanSeeDevice(dev.Labels) {
		// The same answer for unknown and hidden devices.
		deny(http.StatusNotFound, api.CodeNotFound, fmt.Sprintf("no device %q that you can reach: see tsh ls", name))
		return
	}
	if err := c.checker.CheckDevice(dev.Name, dev.Labels, login); err != nil {
		deny(http.StatusForbidden, api.CodeForbidden, err.Error())
		return
	}
	// An idle device whose NAT mapping changed answers at its next
	// keep-alive (25 s by default): wait a little longer than that.
	ctx, cancel := context.WithTimeout(r.Context(), api.ConnectWait)
	conn, err := s.Tunnels.Open(ctx, dev.ID, &proto.StreamHeader{
		Service:   service,
		SessionID: sid,
		Identity: proto.Identity{
			User: c.user.Name, Roles: c.user.Roles, Login: login, Cluster: s.Cluster,
			RecordInput: c.checker.RecordInput(),
			Expires:     c.id.Expires.UnixMilli(),
		},
		ClientAddr: r.RemoteAddr,
	})
	cancel()
	if err != nil {
		var pe *proto.Error
		switch {
		case errors.Is(err, tunnelsrv.ErrOffline):
			deny(http.StatusServiceUnavailable, api.CodeDeviceOffline, fmt.Sprintf("device %q is offline: last seen %s", dev.Name, s.lastSeen(err, dev.LastSeen)))
		case errors.As(err, &pe) && pe.Code == proto.CodeForbidden:
			deny(http.StatusForbidden, api.CodeForbidden, "the device refused: "+pe.Message)
		case errors.As(err, new(*tunnelsrv.NoAnswerError)):
			deny(http.StatusGatewayTimeout, api.CodeDeviceOffline, fmt.Sprintf("device %q did not answer within %v (last seen %s); its link may be down", dev.Name, api.ConnectWait, s.lastSeen(err, dev.LastSeen)))
		default:
			deny(http.StatusBadGateway, api.CodeDeviceOffline, fmt.Sprintf("device %q did not answer: %v", dev.Name, err))
		}
		return
	}
	defer conn.Close()
	sessionEvent := func(typ string, f map[string]string) *proto.AuditEvent {
		f["service"], f["device_name"] = service, dev.Name
		return &proto.AuditEvent{Type: typ, User: c.name(), Login: login, Session: sid, Device: dev.ID, Addr: r.RemoteAddr, Fields: f}
	}
	if s.record(r.Context(), sessionEvent(proto.EventSessionStart, map[string]string{})) != nil {
		errAuditDown(w) // an unrecorded session is not brokered
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		deny(http.StatusInternalServerError, api.CodeInternal, "connection cannot be upgraded (HTTP/2?): use HTTP/1.1")
		return
	}
	client, brw, err := hj.Hijack()
	if err != nil {
		log.Error("hijack failed", "err", err)
		return
	}
	defer client.Close()
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n%s: %s\r\n\r\n",
		api.UpgradeProto, api.HeaderSession, sid)
	if err := brw.Flush(); err != nil {
		return
	}
	start := s.now()
	end := api.SessionEnd{ID: sid, User: c.user.Name, Device: dev.Name, Login: login}
	s.ends.put(end)
	log.Info("session started", "event", "session.start")
	up, down, devErr := splice(client, brw.Reader, conn)
	end.Ended, end.EndedAt = true, s.now().UTC()
	end.Reason = s.Tunnels.EndReason(devErr)
	s.ends.put(end)
	log.Info("session ended", "event", "session.end", "bytes_up", up, "bytes_down", down, "duration", s.now().Sub(start).Round(time.Millisecond).String(), "reason", end.Reason)
	s.record(r.Context(), sessionEvent(proto.EventSessionEnd, map[string]string{
		"bytes_up": strconv.FormatInt(up, 10), "bytes_down": strconv.FormatInt(down, 10),
		"duration": s.now().Sub(start).Round(time.Millisecond).String()}))
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
// fails (the device did not come back within the hold time, say), the
// user's connection is closed at once.
func splice(client net.Conn, clientBuf *bufio.Reader, dev net.Conn) (up, down int64, devErr error) {
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		up, _ = io.Copy(dev, io.MultiReader(clientBuf, client))
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

// sessionEnds remembers how recent sessions ended, for GET /v1/sessions/ID:
// the user's tsh asks when its connection ends unexpectedly.
type sessionEnds struct {
	mu    sync.Mutex // guards m and order
	m     map[string]api.SessionEnd
	order []string
}

// maxSessionEnds bounds the sessions remembered.
const maxSessionEnds = 4096

func (e *sessionEnds) put(end api.SessionEnd) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.m == nil {
		e.m = map[string]api.SessionEnd{}
	}
	if _, ok := e.m[end.ID]; !ok {
		e.order = append(e.order, end.ID)
		if len(e.order) > maxSessionEnds {
			delete(e.m, e.order[0])
			e.order = e.order[1:]
		}
	}
	e.m[end.ID] = end
}

func (e *sessionEnds) get(id string) (api.SessionEnd, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	end, ok := e.m[id]
	return end, ok
}

func (s *Server) sessionEnd(w http.ResponseWriter, r *http.Request, c *caller) {
	end, ok := s.ends.get(r.PathValue("id"))
	if !ok || (!c.isAdmin() && end.User != c.user.Name) {
		writeError(w, http.StatusNotFound, api.CodeNotFound, "no such session")
		return
	}
	writeJSON(w, http.StatusOK, end)
}
