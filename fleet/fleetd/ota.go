package fleetd

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/audit"
	"remoteler.dev/edge/fleet/devices"
	"remoteler.dev/edge/fleet/leader"
	"remoteler.dev/edge/fleet/releases"
	"remoteler.dev/edge/fleet/rollouts"
	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/ota"
)

// otaParts are the fleet's OTA services: releases (kept, verified, with
// deltas), rollouts, and the HTTP server that agents download from over
// their tunnels.
type otaParts struct {
	releases *releases.Service
	rollouts *rollouts.Engine
	streams  *streamListener
	http     *http.Server
}

// newOTA builds the OTA services and hooks them to the tunnel server's
// config: update statuses go to the rollout engine, agent streams of the
// "ota" service to the download server. send reaches devices.
func newOTA(ctx context.Context, cfg Config, st store.Store, reg *devices.Registry, events *audit.Log, send func(string, proto.Message) error, peers releases.Peers, elsewhere func(string) bool, tcfg *tunnelsrv.Config, log *slog.Logger, now func() time.Time) (*otaParts, error) {
	keys, err := ota.ParseKeys(cfg.ReleaseKeys)
	if err != nil {
		return nil, err
	}
	rels, err := releases.New(releases.Config{Store: st, Dir: filepath.Join(cfg.DataDir, "releases"),
		Keys: func() ota.Keys { return keys }, Peers: peers, Logger: log, Now: now})
	if err != nil {
		return nil, err
	}
	ro, err := rollouts.New(rollouts.Config{
		Store: st, Releases: rels, Devices: reg,
		Send: send, Elsewhere: elsewhere,
		Record: func(ctx context.Context, ev *proto.AuditEvent) {
			if events == nil {
				return
			}
			ev.Cluster = cfg.Cluster
			if err := events.Append(context.WithoutCancel(ctx), ev); err != nil {
				log.Error("audit event not recorded", "type", ev.Type, "err", err)
			}
		},
		Logger: log, Now: now,
	})
	if err != nil {
		return nil, err
	}
	if err := ro.Load(ctx); err != nil {
		return nil, err
	}
	o := &otaParts{releases: rels, rollouts: ro, streams: newStreamListener()}
	o.http = &http.Server{Handler: rels.Handler(), ReadHeaderTimeout: 30 * time.Second, IdleTimeout: time.Minute,
		ErrorLog: slog.NewLogLogger(log.With("component", "ota-http").Handler(), slog.LevelDebug)}

	next := tcfg.OnMessage
	tcfg.OnMessage = func(ctx context.Context, id string, m proto.Message) (proto.Message, error) {
		if s, ok := m.(*proto.UpdateStatus); ok {
			return ro.HandleStatus(ctx, id, s), nil
		}
		if next == nil {
			return nil, proto.Errorf(proto.CodeBadRequest, "unexpected %s on the control stream", m.Kind())
		}
		return next(ctx, id, m)
	}
	hello := tcfg.OnHello
	tcfg.OnHello = func(ctx context.Context, id string, addr net.Addr, h *proto.Hello) (*proto.HelloAck, error) {
		// A new connection (which may replace one the fleet has not seen
		// end, after an agent restart): no offers until its status.
		ro.Connected(id)
		ack, err := hello(ctx, id, addr, h)
		if ack != nil {
			ack.Updates = true
		}
		return ack, err
	}
	disc := tcfg.OnDisconnect
	tcfg.OnDisconnect = func(id string, lastHeard time.Time, err error) {
		ro.Disconnected(id)
		if disc != nil {
			disc(id, lastHeard, err)
		}
	}
	tcfg.OnAgentStream = func(ctx context.Context, id, service string, conn net.Conn) {
		if service != proto.ServiceOTA {
			conn.Close()
			return
		}
		o.streams.push(ctx, conn)
	}
	return o, nil
}

// run serves downloads, runs the delta worker and offers releases to the
// devices connected here until ctx ends, and the rollout controller
// whenever this fleetd is the elected leader (the
// rollouts job, like token pruning): one fleetd at a time advances and
// halts rollouts and pushes their offers, writing through the store fenced
// by its term.
func (o *otaParts) run(ctx context.Context, wg *sync.WaitGroup, el leader.Elector, st store.Store, log *slog.Logger) {
	wg.Go(func() { o.releases.Run(ctx) })
	wg.Go(func() { o.rollouts.Serve(ctx) })
	wg.Go(func() {
		leader.Run(ctx, "rollouts", el, st, log, func(ctx context.Context, fenced store.Store) error {
			o.rollouts.Run(ctx, fenced)
			return nil
		})
	})
	wg.Go(func() {
		if err := o.http.Serve(o.streams); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Default().Debug("ota http", "err", err)
		}
	})
	wg.Go(func() {
		<-ctx.Done()
		o.http.Close()
	})
}

// streamListener is a net.Listener of the streams agents open to the
// "ota" service.
type streamListener struct {
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

func newStreamListener() *streamListener {
	return &streamListener{conns: make(chan net.Conn), done: make(chan struct{})}
}

func (l *streamListener) push(ctx context.Context, c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	case <-ctx.Done():
		c.Close()
	}
}

func (l *streamListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *streamListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *streamListener) Addr() net.Addr { return &net.UnixAddr{Name: "ota-streams", Net: "tunnel"} }
