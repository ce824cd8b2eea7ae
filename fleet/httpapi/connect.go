package httpapi

import (
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/userframe"
)

func (s *Server) apiDevice(d devices.Device) api.Device {
	out := d.API()
	if d.Direct() {
		// A direct node holds no tunnel: it is online while its last
		// check-in is recent (its check-in's tunnel counts as one).
		out.Online = s.now().Sub(d.LastSeen) < devices.DirectWindow
	}
	if info, ok := s.Tunnels.Info(d.ID); ok {
		out.Online = true
		if w, ok := s.Tunnels.(interface{ Replica(string) string }); ok {
			out.Replica = w.Replica(d.ID)
		}
		out.Addr = info.Addr.String()
		out.LastSeen = s.now().UTC()
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

// connect brokers one connection (fleet/broker): it checks the user's
// roles, opens a stream down the device's tunnel, registers the live
// session, answers 101 and splices the two.
func (s *Server) connect(w http.ResponseWriter, r *http.Request, c *caller) {
	q := r.URL.Query()
	service := q.Get("service")
	if service == "" {
		service = proto.ServiceSSH
	}
	ask := broker.Ask{Service: service, Kind: "ssh", User: c.user, Checker: c.checker, Device: q.Get("device"), Login: q.Get("login"),
		ClientAddr: r.RemoteAddr, Expires: c.id.Expires}
	if c.checker == nil {
		ask.User.Name = c.name()
	}
	c.fill(&ask)
	b := s.broker()
	refuse := func(ref *broker.Refusal) {
		status, code := refusalStatus(ref.Status)
		writeError(w, status, code, ref.Msg)
	}
	deny := func(ref *broker.Refusal) {
		b.Deny(r.Context(), ask, ref)
		refuse(ref)
	}
	switch {
	case !strings.EqualFold(r.Header.Get("Upgrade"), api.UpgradeProto):
		deny(&broker.Refusal{Status: broker.StatusBadRequest, Msg: "connect needs Upgrade: " + api.UpgradeProto})
		return
	case c.checker == nil:
		deny(&broker.Refusal{Status: broker.StatusForbidden, Msg: "only users can connect to devices"})
		return
	case service != proto.ServiceSSH:
		deny(&broker.Refusal{Status: broker.StatusBadRequest, Msg: fmt.Sprintf("unknown service %q", service)})
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		deny(&broker.Refusal{Status: broker.StatusInternal, Msg: "connection cannot be upgraded (HTTP/2?): use HTTP/1.1"})
		return
	}
	g, err := b.Authorize(r.Context(), ask)
	if err != nil {
		refuse(err.(*broker.Refusal))
		return
	}
	// Recorded (and registered) before the device hears of the session:
	// the device's own events about it are checked against this record
	// (fleet/audit, claims.go). A session the device cannot take ends in
	// an access.denied for it.
	sess, err := b.Start(r.Context(), g, broker.StartOptions{})
	if err != nil {
		refuse(err.(*broker.Refusal))
		return
	}
	conn, err := b.Open(r.Context(), g, "")
	if err != nil {
		var ref *broker.Refusal
		if !errors.As(err, &ref) {
			ref = &broker.Refusal{Status: broker.StatusNoAnswer, Msg: err.Error()}
		}
		sess.DoneSilently(ref.Msg)
		deny(ref)
		return
	}
	defer conn.Close()
	// The session is live from here: the registry may end it (expiry,
	// access removed) by telling the device, which tells the user and
	// closes; the broker closes both sides itself shortly after.
	sess.OnEnd(func() { conn.Close() })
	reason := ""
	var st broker.Stats
	defer func() { sess.Done(r.Context(), reason, st) }()
	client, brw, err := hj.Hijack()
	if err != nil {
		s.log().Error("hijack failed", "err", err)
		reason = "hijack failed"
		return
	}
	defer client.Close()
	sess.OnEnd(func() { client.Close() })
	framed := r.Header.Get(api.HeaderFrames) == "1"
	extra := ""
	if framed {
		extra = api.HeaderFrames + ": 1\r\n"
	}
	fmt.Fprintf(brw, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %s\r\n%s: %s\r\n%s: %s\r\n%s\r\n",
		api.UpgradeProto, api.HeaderSession, sess.ID(), api.HeaderSessionToken, sess.Token(), extra)
	if err := brw.Flush(); err != nil {
		return
	}
	if why := sess.Ending(); why != "" {
		// Ended between the check and now (its certificate expired).
		reason = why
		if framed {
			userframe.NewWriter(client).End(why)
		}
		return
	}
	var devErr error
	// When the device's side fails, the reason is in the registry before
	// the user's connection is closed: the user's client asks for it as
	// soon as it sees the close.
	opt := broker.SpliceOptions{Buffered: brw.Reader, DevFailed: func(err error) { sess.MarkDone(err.Error()) }}
	if framed {
		opt.Frames = userframe.NewWriter(client)
	}
	sp := broker.NewSplicer(client, conn, opt)
	// When the fleet ends the session, the user's input stops and a
	// framing client hears why at once; the device has the grace to say
	// it too (see broker.Splicer).
	sess.OnCut(sp.Cut)
	st.Up, st.Down, devErr = sp.Run()
	if devErr != nil {
		reason = devErr.Error()
	}
}

// refusalStatus maps a broker refusal to the API's answer: its status
// and code.
func refusalStatus(st broker.Status) (int, string) {
	switch st {
	case broker.StatusBadRequest:
		return http.StatusBadRequest, api.CodeBadRequest
	case broker.StatusUnauthorized:
		return http.StatusUnauthorized, api.CodeUnauthorized
	case broker.StatusForbidden:
		return http.StatusForbidden, api.CodeForbidden
	case broker.StatusNotFound:
		return http.StatusNotFound, api.CodeNotFound
	case broker.StatusOffline:
		return http.StatusServiceUnavailable, api.CodeDeviceOffline
	case broker.StatusUnavailable:
		return http.StatusServiceUnavailable, api.CodeInternal
	case broker.StatusInternal:
		return http.StatusInternalServerError, api.CodeInternal
	}
	return http.StatusBadGateway, api.CodeDeviceOffline
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
