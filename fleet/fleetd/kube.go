package fleetd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/kubesrv"
	"remoteler.dev/edge/fleet/recordings"
	"remoteler.dev/edge/fleet/sessions"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/proto"
)

// newKube builds the Kubernetes endpoint: devices' clusters down their
// tunnels, and the cluster fleetd runs in when it runs in one. Its events
// go to the audit trail (and the audit logger), its long-running requests
// to the session registry, and its terminal sessions to the recordings.
func newKube(cfg Config, tunnels *tunnelsrv.Server, audit, log *slog.Logger, now func() time.Time,
	events *audit.Log, recs *recordings.Store, reg *sessions.Registry) *kubesrv.Server {
	var local *kubesrv.Local
	dir := cfg.KubeServiceAccountDir
	if dir == "" {
		dir = kubesrv.DefaultServiceAccountDir
	}
	if dir != "off" {
		name := cfg.KubeClusterName
		if name == "" {
			name = cfg.Cluster
		}
		l, err := kubesrv.DetectLocal(dir, os.Getenv, name, cfg.KubeClusterLabels, now)
		switch {
		case err == nil:
			log.Info("offering the Kubernetes cluster fleetd runs in", "name", name, "server", l.Server())
			local = l
		case errors.Is(err, kubesrv.ErrNotInCluster):
			log.Debug("not running in Kubernetes", "service_account_dir", dir)
		default:
			log.Warn("running in Kubernetes, but its cluster cannot be offered", "err", err)
		}
	}
	var opener kubesrv.Opener = tunnels
	if events != nil {
		// The fleet records each stream's session.start before the device
		// hears of it: the device's own events are checked against it.
		opener = &brokeredOpener{tunnels: tunnels, events: events, cluster: cfg.Cluster, log: log}
	}
	kcfg := kubesrv.Config{
		Tunnels:  opener,
		Offline:  tunnelsrv.ErrOffline,
		Online:   tunnels.Online,
		Local:    local,
		AuditLog: audit,
		Sessions: reg,
		Logger:   log.With("component", "kube"),
		Now:      now,
	}
	if events != nil {
		kcfg.Audit = func(ev kubesrv.Event) error {
			kubesrv.LogEvent(audit, ev)
			e := ev.AuditEvent()
			e.Cluster = cfg.Cluster
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			return events.Append(ctx, e)
		}
	}
	if recs != nil {
		kcfg.Recordings = recordingSink{recs}
	}
	return kubesrv.New(kcfg)
}

// recordingSink hands Kubernetes terminal recordings to the store.
type recordingSink struct{ s *recordings.Store }

func (r recordingSink) Create(deviceID, id string, meta proto.RecordingMeta) (io.WriteCloser, error) {
	return r.s.Create(deviceID, id, meta)
}

// brokeredOpener opens Kubernetes streams down device tunnels, recording
// the fleet's session.start of each in the audit log before the device
// hears of it (the device's own events about the stream are checked
// against that record: see fleet/audit's claims.go), and its session.end
// when it closes. A stream the audit log cannot record is not opened.
type brokeredOpener struct {
	tunnels kubesrv.Opener
	events  *audit.Log
	cluster string
	log     *slog.Logger
}

func (o *brokeredOpener) Open(ctx context.Context, deviceID string, h *proto.StreamHeader) (net.Conn, error) {
	ev := func(typ, outcome, msg string) *proto.AuditEvent {
		return &proto.AuditEvent{Type: typ, Outcome: outcome, User: h.Identity.User, Session: h.SessionID, Device: deviceID,
			Cluster: o.cluster, Addr: h.ClientAddr, Message: msg, Fields: map[string]string{
				"service": h.Service, "kube_user": h.Identity.KubeUser, "kube_groups": strings.Join(h.Identity.KubeGroups, ","),
			}}
	}
	if err := o.events.Append(context.WithoutCancel(ctx), ev(proto.EventSessionStart, proto.OutcomeSuccess, "")); err != nil {
		o.log.Error("audit event not recorded; Kubernetes stream not opened", "device_id", deviceID, "err", err)
		return nil, fmt.Errorf("the fleet cannot write its audit log right now; try again later: %w", err)
	}
	conn, err := o.tunnels.Open(ctx, deviceID, h)
	if err != nil {
		o.record(ev(proto.EventSessionEnd, proto.OutcomeFailure, err.Error()))
		return nil, err
	}
	return &recordedConn{Conn: conn, end: func() { o.record(ev(proto.EventSessionEnd, proto.OutcomeSuccess, "")) }}, nil
}

func (o *brokeredOpener) record(e *proto.AuditEvent) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := o.events.Append(ctx, e); err != nil {
		o.log.Error("audit event not recorded", "type", e.Type, "err", err)
	}
}

// recordedConn calls end once, when it is first closed.
type recordedConn struct {
	net.Conn
	once sync.Once
	end  func()
}

func (c *recordedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.end)
	return err
}

// CloseWrite half-closes the stream, when the stream can.
func (c *recordedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

var serviceRE = regexp.MustCompile(`^[a-z0-9-]{1,32}$`)

// cleanServices keeps the well-formed service names of a hello, at most
// 16, sorted.
func cleanServices(in []string) []string {
	var out []string
	for _, s := range in {
		if serviceRE.MatchString(s) && !slices.Contains(out, s) && len(out) < 16 {
			out = append(out, s)
		}
	}
	slices.Sort(out)
	return out
}
