package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"remoteler.dev/edge/firmware/auditq"
	"remoteler.dev/edge/firmware/recording"
	"remoteler.dev/edge/firmware/services"
	"remoteler.dev/edge/internal/buildinfo"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/asciicast"
)

// What the agent does with an action whose audit event cannot be kept.
const (
	// AuditAllow lets the action go ahead; the drop is counted, reported
	// to the fleet and marked in the audit trail.
	AuditAllow = "allow"
	// AuditRefuse refuses sessions, commands and forwards whose events
	// cannot be kept.
	AuditRefuse = "refuse"
)

// auditor is the agent's audit trail: the queue of events, the shipper that
// sends them to the fleet, and the session recordings and their uploader.
type auditor struct {
	q       *auditq.Queue
	recs    *recording.Store // nil when recording is off
	ship    atomic.Pointer[auditq.Shipper]
	upload  atomic.Pointer[recording.Uploader]
	refuse  bool
	dropped atomic.Int64 // drops logged so far, to log each new one once
}

// openAudit opens the audit queue and the recordings in the data dir.
func (a *Agent) openAudit() error {
	q, err := auditq.Open(auditq.Config{
		Path:     filepath.Join(a.cfg.DataDir, "audit.db"),
		Source:   a.identity().DeviceID,
		MaxBytes: a.cfg.AuditMaxBytes,
		Logger:   a.log,
		Now:      a.clock.Now,
	})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	au := &auditor{q: q, refuse: a.cfg.AuditWhenFull == AuditRefuse}
	if !a.cfg.NoRecording {
		au.recs, err = recording.Open(recording.Config{
			Dir: filepath.Join(a.cfg.DataDir, "recordings"), MaxBytes: a.cfg.RecordingsMaxBytes,
			Logger: a.log, Now: a.clock.Now,
		})
		if err != nil {
			q.Close()
			return fmt.Errorf("agent: %w", err)
		}
	}
	a.audit = au
	return nil
}

// runAudit ships events and uploads recordings until ctx is done, and
// records the agent's start (and any change of its configuration).
func (a *Agent) runAudit(ctx context.Context, wg *sync.WaitGroup) {
	au := a.audit
	ship := auditq.NewShipper(au.q, a.tunnel, auditq.ShipperConfig{Logger: a.log})
	au.ship.Store(ship)
	wg.Go(func() { ship.Run(ctx) })
	if au.recs != nil {
		up := recording.NewUploader(au.recs, a.tunnel, 0)
		au.upload.Store(up)
		wg.Go(func() { up.Run(ctx) })
	}
	a.emit(ctx, &proto.AuditEvent{Type: proto.EventAgentStart, Fields: map[string]string{"version": buildinfo.String()}})
	if conf, sum := a.configFingerprint(); sum != "" {
		old, err := au.q.Remember(ctx, "agent.config", sum)
		if err == nil && old != "" && old != sum {
			a.emit(ctx, &proto.AuditEvent{Type: proto.EventAgentConfig, Message: "the agent's configuration changed",
				Fields: map[string]string{"config": conf, "sha256": sum}})
		}
	}
	if a.cfg.EventSource != nil {
		wg.Go(func() {
			a.cfg.EventSource(ctx, func(ev *proto.AuditEvent) (uint64, error) {
				defer a.queued()
				return au.q.Append(context.WithoutCancel(ctx), a.fill(ctx, ev))
			})
		})
	}
}

// linkUp tells the shipper and uploader the tunnel came up.
func (a *Agent) linkUp() {
	if a.audit == nil {
		return
	}
	if s := a.audit.ship.Load(); s != nil {
		s.Wake()
	}
	if u := a.audit.upload.Load(); u != nil {
		u.Wake()
	}
}

// onMessage is the tunnel's OnMessage: the fleet's audit acks go to the
// shipper, and its session ends to the sessions.
func (a *Agent) onMessage(m proto.Message) {
	switch m := m.(type) {
	case *proto.UpdateOffer:
		if a.updater != nil {
			a.updater.Offer(m)
		}
	case *proto.AuditAck:
		if a.audit != nil {
			if s := a.audit.ship.Load(); s != nil {
				s.Deliver(m)
			}
		}
	case *proto.SessionEnd:
		if a.tunnel != nil {
			a.tunnel.SessionEnded(m.SessionID, m.Message)
		}
		if a.live.end(m.SessionID, m.Message) {
			a.log.Info("the fleet ended a session", "session", m.SessionID, "reason", m.Message)
		}
	}
}

// stopAudit records the agent's stop; the event ships at the next start.
func (a *Agent) stopAudit() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a.emit(ctx, &proto.AuditEvent{Type: proto.EventAgentStop})
}

// configFingerprint describes what of the configuration the audit tracks.
func (a *Agent) configFingerprint() (string, string) {
	c := struct {
		Fleet         string            `json:"fleet"`
		TunnelAddr    string            `json:"tunnel_addr,omitempty"`
		Name          string            `json:"name"`
		Labels        map[string]string `json:"labels"`
		Keepalive     string            `json:"keepalive"`
		AuditMaxBytes int64             `json:"audit_max_bytes"`
		AuditWhenFull string            `json:"audit_when_full"`
		NoRecording   bool              `json:"no_recording"`
	}{a.cfg.Fleet, a.cfg.TunnelAddr, a.identity().Name, a.cfg.Labels, a.cfg.Keepalive.String(), a.cfg.AuditMaxBytes, a.cfg.AuditWhenFull, a.cfg.NoRecording}
	b, err := json.Marshal(c)
	if err != nil {
		return "", ""
	}
	sum := sha256.Sum256(b)
	return string(b), hex.EncodeToString(sum[:])
}

// sessionCtx is what the agent knows of the brokered session a context
// belongs to.
type sessionCtx struct {
	h     *proto.StreamHeader
	chans atomic.Int64 // recordings made in the session
}

type sessionKey struct{}

func withSession(ctx context.Context, h *proto.StreamHeader) context.Context {
	return context.WithValue(ctx, sessionKey{}, &sessionCtx{h: h})
}

func sessionOf(ctx context.Context) *sessionCtx {
	s, _ := ctx.Value(sessionKey{}).(*sessionCtx)
	return s
}

// fill completes ev with the time and, inside a session, who and which.
func (a *Agent) fill(ctx context.Context, ev *proto.AuditEvent) *proto.AuditEvent {
	e := *ev
	if e.Time == 0 {
		e.Time = a.clock.Now().UnixMilli()
	}
	if e.Outcome == "" {
		e.Outcome = proto.OutcomeSuccess
	}
	if s := sessionOf(ctx); s != nil {
		id := s.h.Identity
		if e.Session == "" {
			e.Session = s.h.SessionID
		}
		if e.User == "" {
			e.User, e.Login, e.Cluster = id.User, id.Login, id.Cluster
		}
		if e.Addr == "" {
			e.Addr = s.h.ClientAddr
		}
	}
	return &e
}

// emit writes an audit event to the queue before the action it records
// goes ahead. It fails only when the event could not be kept and the
// agent refuses such actions (AuditRefuse).
func (a *Agent) emit(ctx context.Context, ev *proto.AuditEvent) error {
	au := a.audit
	if au == nil {
		return nil
	}
	_, err := au.q.Append(context.WithoutCancel(ctx), a.fill(ctx, ev))
	a.queued()
	if err == nil {
		return nil
	}
	if au.dropped.Add(1) == 1 || !errors.Is(err, auditq.ErrFull) {
		a.log.Error("audit event not kept", "type", ev.Type, "err", err, "when_full", a.cfg.AuditWhenFull)
	}
	if au.refuse {
		return fmt.Errorf("agent: the audit event could not be kept: %w", err)
	}
	return nil
}

// sshAudit is sshd's Audit hook.
func (a *Agent) sshAudit(ctx context.Context, ev *proto.AuditEvent) error {
	return a.emit(ctx, ev)
}

// record is sshd's Record hook: it starts the session's recording.
func (a *Agent) record(ctx context.Context, info services.SessionInfo) services.Recorder {
	au := a.audit
	s := sessionOf(ctx)
	if au == nil || au.recs == nil || s == nil {
		return nil
	}
	id := s.h.SessionID
	if n := s.chans.Add(1); n > 1 {
		id += "." + strconv.FormatInt(n, 10)
	}
	ident := s.h.Identity
	as := ident.Login
	if as == "" {
		as = ident.KubeUser // a kubectl exec or attach
	}
	meta := proto.RecordingMeta{
		Session: s.h.SessionID, User: ident.User, Login: as, Cluster: ident.Cluster,
		Start: a.clock.Now().UnixMilli(), Kind: info.Kind, Command: info.Command,
	}
	if info.Cols <= 0 || info.Rows <= 0 {
		info.Cols, info.Rows = 80, 24 // no terminal: what players show
	}
	h := asciicast.Header{Width: info.Cols, Height: info.Rows, Command: info.Command,
		Title: fmt.Sprintf("%s@%s (%s)", as, a.identity().Name, ident.User)}
	if info.Term != "" {
		h.Env = map[string]string{"TERM": info.Term}
	}
	r, err := au.recs.Start(id, meta, h)
	if err != nil {
		a.log.Warn("session not recorded", "session", s.h.SessionID, "err", err)
		a.emit(ctx, &proto.AuditEvent{Type: proto.EventRecordingSkipped, Outcome: proto.OutcomeFailure, Message: err.Error(),
			Fields: map[string]string{"recording": id}})
		return nil
	}
	var rec services.Recorder = r
	if !ident.RecordInput {
		// Only what the user sees, unless a role asks for their input.
		rec = outputOnly{r}
	}
	return &cutNotice{Recorder: rec, r: r, cut: func() {
		msg := fmt.Sprintf("the recording stopped at the device's cap for recordings (%d bytes); the session went on unrecorded", au.recs.Cap())
		a.log.Warn("session recording cut", "session", s.h.SessionID, "recording", id)
		a.emit(ctx, &proto.AuditEvent{Type: proto.EventRecordingSkipped, Outcome: proto.OutcomeFailure, Message: msg,
			Fields: map[string]string{"recording": id, "truncated": "true"}})
	}}
}

// cutNotice audits, when the recording ends, that it stopped at the cap.
type cutNotice struct {
	services.Recorder
	r   *recording.Recording
	cut func()
}

func (c *cutNotice) Close() error {
	err := c.Recorder.Close()
	if c.r.Truncated() {
		c.cut()
	}
	return err
}

// Input passes input on when the recorder records it.
func (c *cutNotice) Input(p []byte) {
	if ir, ok := c.Recorder.(services.InputRecorder); ok {
		ir.Input(p)
	}
}

// sessionStart records a brokered session before it is served.
func (a *Agent) sessionStart(ctx context.Context, h *proto.StreamHeader) error {
	return a.emit(ctx, &proto.AuditEvent{Type: proto.EventSessionStart,
		Fields: map[string]string{"service": h.Service, "roles": fmt.Sprint(h.Identity.Roles)}})
}

// sessionEnd records a brokered session's end, and why when the fleet
// ended it.
func (a *Agent) sessionEnd(ctx context.Context, h *proto.StreamHeader, began time.Time) {
	f := map[string]string{"service": h.Service, "duration": a.clock.Now().Sub(began).Round(time.Millisecond).String()}
	var end *services.Ended
	if errors.As(context.Cause(ctx), &end) {
		f["reason"] = end.Message
	}
	a.emit(ctx, &proto.AuditEvent{Type: proto.EventSessionEnd, Fields: f})
}

// streamDenied records a stream the agent refused.
func (a *Agent) streamDenied(h *proto.StreamHeader, reason error) {
	ctx := withSession(context.Background(), h)
	a.emit(ctx, &proto.AuditEvent{Type: proto.EventAccessDenied, Outcome: proto.OutcomeDenied, Message: reason.Error(),
		Fields: map[string]string{"service": h.Service, "action": "stream"}})
}

// AuditStatus reports the device's audit queue and recordings waiting for
// upload.
func (a *Agent) AuditStatus() (proto.AuditQueueStatus, int) {
	if a.audit == nil {
		return proto.AuditQueueStatus{}, 0
	}
	n := 0
	if a.audit.recs != nil {
		n = a.audit.recs.Pending()
	}
	return a.audit.q.Status(), n
}

// closeAudit closes the queue.
func (a *Agent) closeAudit() error {
	if a.audit == nil {
		return nil
	}
	return a.audit.q.Close()
}

// checkAudited is the tunnel's Check: a refused stream is recorded.
func (a *Agent) checkAudited(h *proto.StreamHeader) error {
	err := a.services.Check(h)
	if err != nil {
		a.streamDenied(h, err)
	}
	return err
}

// handleAudited is the tunnel's Handle: the session's start is queued
// before it is served, and its end after.
func (a *Agent) handleAudited(ctx context.Context, h *proto.StreamHeader, conn net.Conn) {
	ctx = withSession(ctx, h)
	if err := a.sessionStart(ctx, h); err != nil {
		a.log.Warn("session refused: its audit event could not be kept", "session", h.SessionID, "err", err)
		conn.Close()
		return
	}
	// The fleet may end the session (proto.SessionEnd): sshd tells the
	// user why, other services just close.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	a.live.add(h.SessionID, cancel)
	defer a.live.remove(h.SessionID)
	began := a.clock.Now()
	a.services.Serve(ctx, h, conn)
	a.sessionEnd(ctx, h, began)
}

// outputOnly is a recorder that records no input: it hides the recording's
// Input method from sshd.
type outputOnly struct{ services.Recorder }
