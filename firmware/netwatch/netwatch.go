// Package netwatch tells the agent when the device's network changes: an
// address added or removed, a link going up or down (a modem reconnecting,
// a switch from Wi-Fi to cellular). On Linux it listens to rtnetlink; on
// other systems Watch returns at once and the agent relies on its timers.
//
// Only firmware/... imports this package.
package netwatch

import (
	"context"
	"time"
)

// Debounce is how long Watch waits after a change for more changes before
// it reports them: one modem reconnect makes several events.
const Debounce = 200 * time.Millisecond

// Watch calls changed after each burst of network changes, until ctx ends.
// It returns an error when it cannot watch (for example no netlink in a
// sandbox); callers go on without it.
func Watch(ctx context.Context, changed func()) error {
	events := make(chan struct{}, 1)
	errc := make(chan error, 1)
	go func() { errc <- watch(ctx, events) }()
	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case <-events:
			timer = time.After(Debounce)
		case <-timer:
			timer = nil
			changed()
		}
	}
}
