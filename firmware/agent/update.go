package agent

import (
	"context"
	"net"
	"path/filepath"
	"sync"

	"remoteler.dev/edge/firmware/update"
	"remoteler.dev/edge/internal/buildinfo"
	"remoteler.dev/edge/proto"
)

// RestartError is what Run returns when the agent stops to be started
// again by its supervisor: an update was applied (the new binary starts)
// or rolled back (the old one does). The command exits non-zero on it
// and systemd's Restart=always starts the unit again.
type RestartError struct{ Reason string }

func (e *RestartError) Error() string { return "agent: restarting: " + e.Reason }

// runUpdate starts the self-updater (firmware/update). A bad update
// setting is logged and leaves the agent without self-update: the agent
// is the only way into the device, so it runs regardless.
func (a *Agent) runUpdate(ctx context.Context, stop context.CancelFunc, wg *sync.WaitGroup) {
	u, err := update.New(update.Config{
		Settings:    a.cfg.Update,
		Dir:         filepath.Join(a.cfg.DataDir, "update"),
		Target:      a.cfg.UpdateTarget,
		Version:     buildinfo.Version,
		BuildTarget: buildinfo.Target,
		Check:       a.cfg.UpdateCheck,
		Dial: func(ctx context.Context) (net.Conn, error) {
			return a.tunnel.Dial(ctx, proto.ServiceOTA)
		},
		Send: a.tunnel.Send,
		Emit: func(ctx context.Context, ev *proto.AuditEvent) error { return a.emit(ctx, ev) },
		Restart: func(reason string) {
			a.restart.Store(&reason)
			stop()
		},
		Logger: a.log,
		Now:    a.clock.Now,
	})
	if err != nil {
		a.log.Error("self-update is off: fix the update settings", "err", err)
		return
	}
	a.updater = u
	wg.Go(func() { u.Run(ctx) })
}
