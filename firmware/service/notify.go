// Package service is the agent's systemd integration: it tells systemd when
// the agent is ready, alive and stopping (the sd_notify protocol, through
// go-systemd's daemon package), and it builds the agent's logger, which writes
// to journald natively when systemd connected stderr to the journal and as
// text to stderr otherwise.
//
// Outside systemd (no NOTIFY_SOCKET, no WATCHDOG_USEC, no JOURNAL_STREAM)
// every call is a cheap no-op, so the agent uses the same code when it runs in
// a terminal or a test.
//
// Only firmware/... imports this package (the agent's main and firmware/agent).
// The unit it is written for is images/device/edge-agent.service
// (Type=notify, NotifyAccess=main, WatchdogSec=30s).
package service

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier sends sd_notify messages to systemd. Its zero value is not
// usable; make one with NewNotifier. Its methods may be called from several
// goroutines.
type Notifier struct {
	logger *slog.Logger

	// newTicker starts the watchdog's ticker; tests replace it with a fake.
	// The returned func stops the ticker.
	newTicker func(d time.Duration) (<-chan time.Time, func())
}

// NewNotifier returns a Notifier that logs to logger (nil discards).
func NewNotifier(logger *slog.Logger) *Notifier {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Notifier{
		logger: logger.With("component", "systemd"),
		newTicker: func(d time.Duration) (<-chan time.Time, func()) {
			t := time.NewTicker(d)
			return t.C, t.Stop
		},
	}
}

// Ready tells systemd that start-up is finished (READY=1). With Type=notify,
// systemd considers the agent started, and units ordered after it start,
// only once this is sent. It returns nil when not running under systemd.
func (n *Notifier) Ready() error { return n.notify(daemon.SdNotifyReady) }

// Stopping tells systemd that the agent is shutting down (STOPPING=1), so a
// slow clean shutdown is not mistaken for a hang. It returns nil when not
// running under systemd.
func (n *Notifier) Stopping() error { return n.notify(daemon.SdNotifyStopping) }

// Status sets the one-line status that `systemctl status edge-agent` shows
// (STATUS=...). Newlines in s are replaced by spaces: the protocol is
// newline-separated, and a newline would let s smuggle in other assignments.
// It returns nil when not running under systemd.
func (n *Notifier) Status(s string) error {
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
	return n.notify("STATUS=" + s)
}

// WatchdogInterval returns systemd's watchdog interval for this process
// (WatchdogSec=, passed as WATCHDOG_USEC and WATCHDOG_PID), or 0 when the
// watchdog is off or meant for another process.
func (n *Notifier) WatchdogInterval() time.Duration {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		n.logger.Warn("systemd watchdog settings unreadable; watchdog pings off", "err", err)
		return 0
	}
	return d
}

// RunWatchdog keeps systemd's watchdog fed until ctx is done: it sends
// WATCHDOG=1 at once and then every half interval, but only when healthy()
// returns true, so a wedged main loop gets the agent killed and restarted
// by systemd (Restart=always). healthy is called from RunWatchdog's goroutine
// once per tick; it should be quick and must not block.
//
// When the watchdog is off (no WATCHDOG_USEC, or WATCHDOG_PID names another
// process) it returns at once. Otherwise it returns when ctx is done. Send
// errors are logged, not returned: the next tick tries again.
func (n *Notifier) RunWatchdog(ctx context.Context, healthy func() bool) {
	interval := n.WatchdogInterval()
	if interval <= 0 {
		return
	}
	period := interval / 2
	n.logger.Info("systemd watchdog on", "interval", interval, "ping_every", period)
	tick, stop := n.newTicker(period)
	defer stop()

	wasHealthy := true
	for {
		ok := healthy()
		switch {
		case ok:
			if !wasHealthy {
				n.logger.Info("main loop healthy again; watchdog pings resumed")
			}
			if err := n.notify(daemon.SdNotifyWatchdog); err != nil {
				n.logger.Warn("watchdog ping failed", "err", err)
			}
		case wasHealthy:
			n.logger.Warn("main loop unhealthy; watchdog pings withheld, systemd restarts the agent if this lasts", "interval", interval)
		}
		wasHealthy = ok
		select {
		case <-ctx.Done():
			return
		case <-tick:
		}
	}
}

// notify sends one state string to $NOTIFY_SOCKET.
func (n *Notifier) notify(state string) error {
	sent, err := daemon.SdNotify(false, state)
	if err != nil {
		return fmt.Errorf("service: notify %q: %w", state, err)
	}
	if sent {
		n.logger.Debug("sd_notify", "state", state)
	}
	return nil
}
