package httpapi

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/kubesrv"
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
		// Silent for a few keep-alive periods: offline, though the
		// connection lingers (tunnelsrv.Info.Online); a direct node's
		// recent check-in counts too.
		out.Online = out.Online || info.Online
		if w, ok := s.Tunnels.(interface{ Replica(string) string }); ok {
			out.Replica = w.Replica(d.ID)
		}
		out.Addr = info.Addr.String()
		out.LastSeen = info.LastHeard.UTC()
		if info.LastHeard.IsZero() {
			// A tunnel on another replica: that replica holds it, live.
			out.LastSeen = s.now().UTC()
		}
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
	ask := connectAsk(r, "")
	service := ask.Service
	ask.User, ask.Checker, ask.Expires = c.user, c.checker, c.id.Expires
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
	case service != proto.ServiceSSH && service != proto.ServiceKube:
		deny(&broker.Refusal{Status: broker.StatusBadRequest, Msg: fmt.Sprintf("unknown service %q", service)})
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		deny(&broker.Refusal{Status: broker.StatusInternal, Msg: "connection cannot be upgraded (HTTP/2?): use HTTP/1.1"})
		return
	}
	if id := resumedSession(r); id != "" {
		// A refusal names the session it would have resumed.
		ask.Action = "resume"
		ask.Fields = withField(ask.Fields, "resumed_session", id)
	}
	g, err := b.Authorize(r.Context(), ask)
	if err != nil {
		ref := err.(*broker.Refusal)
		if ref.Status == broker.StatusForbidden || ref.Status == broker.StatusUnauthorized {
			s.endRefusedResume(r, ask, ref.Msg)
		}
		refuse(ref)
		return
	}
	if service == proto.ServiceKube {
		if ref := kubeHeld(r, b, g); ref != nil {
			if ref.Status == broker.StatusForbidden {
				// A resume whose user may no longer act as the session
				// does: it ends on the device too.
				s.endRefusedResume(r, ask, ref.Msg)
			}
			deny(ref)
			return
		}
	}
	if id := r.Header.Get(api.HeaderResume); id != "" && id != "1" {
		s.resumeHeld(w, r, hj, g, id, deny)
		return
	}
	// A client that asks to hold the session's resume state gets it when
	// the device is reached through its tunnel (broker.CanHold).
	held := r.Header.Get(api.HeaderResume) == "1" && b.CanHold(g)
	if held {
		g.Ask.Fields = withField(g.Ask.Fields, "user_held", "true")
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
	var conn net.Conn
	var extra string
	if held {
		secret := make([]byte, 32)
		rand.Read(secret)
		conn, _, err = b.OpenUserHeld(r.Context(), g, secret, false, 0)
		extra = api.HeaderResumeSecret + ": " + base64.RawURLEncoding.EncodeToString(secret) + "\r\n"
	} else {
		conn, err = b.Open(r.Context(), g, "")
	}
	if err != nil {
		var ref *broker.Refusal
		if !errors.As(err, &ref) {
			ref = &broker.Refusal{Status: broker.StatusNoAnswer, Msg: err.Error()}
		}
		sess.DoneSilently(ref.Msg)
		deny(ref)
		return
	}
	s.spliceUser(w, r, hj, sess, conn, held, extra)
}

// kubeHeld prepares g, a Kubernetes connection (tsh proxy kube): its
// bytes are kubectl's own, which only the device sees (firmware/kubeproxy
// audits and records them there), so it must be a session the client
// holds, to a device's cluster. The Kubernetes user and groups it acts as
// are chosen now, among what the user's roles allow, with the request's
// impersonation headers (kubesrv.Resolve: tsh proxy kube --as,
// --as-group), for the whole session.
func kubeHeld(r *http.Request, b *broker.Broker, g *broker.Grant) *broker.Refusal {
	if r.Header.Get(api.HeaderResume) == "" || !b.CanHold(g) {
		return &broker.Refusal{Status: broker.StatusBadRequest, Msg: "this fleet carries kubectl's own connections only in sessions tsh holds (tsh proxy kube), to the cluster of a device reached through its tunnel; for this cluster, use tsh kube login"}
	}
	user, groups, err := kubesrv.Resolve(g.Session.User, g.KubeUsers, g.KubeGroups, r.Header)
	if err != nil {
		return &broker.Refusal{Status: broker.StatusForbidden, Msg: err.Error(), Fields: map[string]string{"rule": "impersonation"}}
	}
	g.Session.KubeUser, g.Session.KubeGroups = user, groups
	return nil
}

// resumeHeld re-attaches the user-held session id (api.HeaderResume): the
// user, authorised afresh in g, shows the session's secret and how much of
// it their client has; the device answers how much it has, and the
// session's frames flow again through this replica, whichever replica
// carried them before.
func (s *Server) resumeHeld(w http.ResponseWriter, r *http.Request, hj http.Hijacker, g *broker.Grant, id string, deny func(*broker.Refusal)) {
	b := s.broker()
	secret, errS := base64.RawURLEncoding.DecodeString(r.Header.Get(api.HeaderResumeSecret))
	received, errR := strconv.ParseUint(r.Header.Get(api.HeaderResumeReceived), 10, 64)
	switch {
	case !validSessionID(id):
		deny(&broker.Refusal{Status: broker.StatusBadRequest, Msg: "the session to resume is not a session ID"})
		return
	case errS != nil || len(secret) == 0 || errR != nil:
		deny(&broker.Refusal{Status: broker.StatusBadRequest, Msg: "resuming a session needs its secret (" + api.HeaderResumeSecret + ") and how much of it the client has (" + api.HeaderResumeReceived + ")"})
		return
	case !b.CanHold(g):
		deny(&broker.Refusal{Status: broker.StatusBadRequest, Msg: "this fleet cannot resume a session held by the client to this device"})
		return
	}
	g.Session.ID = id
	g.Ask.Fields = withField(withField(g.Ask.Fields, "user_held", "true"), "resumed", "true")
	conn, devReceived, err := b.OpenUserHeld(r.Context(), g, secret, true, received)
	if err != nil {
		var ref *broker.Refusal
		if !errors.As(err, &ref) {
			ref = &broker.Refusal{Status: broker.StatusNoAnswer, Msg: err.Error()}
		}
		deny(ref)
		return
	}
	// The session's earlier connection here, if any, ends as the device
	// takes the new one: wait for it to be done with the ID.
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	err = b.Sessions().WaitDone(ctx, id)
	cancel()
	if err != nil {
		conn.Close()
		deny(&broker.Refusal{Status: broker.StatusUnavailable, Msg: "the session's earlier connection is still being taken down; try again"})
		return
	}
	sess, err := b.Start(r.Context(), g, broker.StartOptions{})
	if err != nil {
		// Refused since the device took it back (a lock, say): the device
		// ends its side now, not when its hold runs out.
		conn.Close()
		ref := err.(*broker.Refusal)
		if ref.Status == broker.StatusForbidden || ref.Status == broker.StatusUnauthorized {
			b.EndOnDevice(g, ref.Msg)
		}
		status, code := refusalStatus(ref.Status)
		writeError(w, status, code, ref.Msg)
		return
	}
	s.spliceUser(w, r, hj, sess, conn, true, api.HeaderResumeReceived+": "+strconv.FormatUint(devReceived, 10)+"\r\n")
}

// resumedSession returns the ID of the user-held session that r asks to
// resume (api.HeaderResume), or "".
func resumedSession(r *http.Request) string {
	if r.URL.Path != api.PathConnect {
		return ""
	}
	if id := r.Header.Get(api.HeaderResume); id != "1" && validSessionID(id) {
		return id
	}
	return ""
}

// endRefusedResume ends on its device the user-held session that r asked
// to resume, if it did, when the fleet refused it for good with reason
// (the user's access ended while their client was away: a lock, a role
// change), so that the session does not run on until the device's hold
// time ends. It does not wait: the user hears the refusal at once.
func (s *Server) endRefusedResume(r *http.Request, ask broker.Ask, reason string) {
	id := resumedSession(r)
	if id == "" {
		return
	}
	secret, err := base64.RawURLEncoding.DecodeString(r.Header.Get(api.HeaderResumeSecret))
	if err != nil || len(secret) == 0 {
		return
	}
	b := s.broker()
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), api.ConnectWait)
		defer cancel()
		if err := b.EndRefusedResume(ctx, ask, id, secret, reason); err != nil {
			s.log().Info("could not end a refused session on its device", "session", id, "device", ask.Device, "err", err)
		}
	}()
}

// connectAsk is the broker's ask of a connect request r by user, as far as
// the request says it.
func connectAsk(r *http.Request, user string) broker.Ask {
	q := r.URL.Query()
	ask := broker.Ask{Service: q.Get("service"), Kind: "ssh", Device: q.Get("device"), Login: q.Get("login"), ClientAddr: r.RemoteAddr}
	switch ask.Service {
	case "":
		ask.Service = proto.ServiceSSH
	case proto.ServiceKube:
		ask.Kind, ask.Login = "kube", ""
	}
	ask.User.Name = user
	return ask
}

// withField returns f with k set to v, making f when it is nil.
func withField(f map[string]string, k, v string) map[string]string {
	if f == nil {
		f = map[string]string{}
	}
	f[k] = v
	return f
}

// validSessionID reports whether id looks like a session ID the broker
// makes (broker.NewID).
func validSessionID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, c := range id {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// spliceUser answers 101 (with extra header lines) and splices the user's
// connection with the device's stream conn until the session ends. held
// says the session is user-held: a device side that fails is then not the
// session's end, only this connection's, which the client resumes.
func (s *Server) spliceUser(w http.ResponseWriter, r *http.Request, hj http.Hijacker, sess *broker.Session, conn net.Conn, held bool, extra string) {
	defer conn.Close()
	// The session is live from here: the registry may end it (expiry,
	// access removed) by telling the device, which tells the user and
	// closes; the broker closes both sides itself shortly after.
	sess.OnEnd(func() { conn.Close() })
	reason := ""
	var st broker.Stats
	if held {
		st.Fields = map[string]string{"user_held": "true"}
	}
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
	if framed {
		extra += api.HeaderFrames + ": 1\r\n"
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
	opt := broker.SpliceOptions{Buffered: brw.Reader, DevFailed: func(err error) { sess.MarkDone(s.devEnd(err, held)) }}
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
		reason = s.devEnd(devErr, held)
	}
}

// heldLinkLost is the end reason of a user-held session's connection whose
// device side broke: the session itself goes on when the client resumes it.
const heldLinkLost = "the fleet's stream to the device broke; the client may resume the session"

// devEnd says why a session's connection ended when its device side failed.
func (s *Server) devEnd(err error, held bool) string {
	if held {
		return heldLinkLost
	}
	return s.Tunnels.EndReason(err)
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
