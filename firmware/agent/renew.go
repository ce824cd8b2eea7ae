package agent

import (
	"context"
	"time"

	"remoteler.dev/edge/firmware/identity"
	"remoteler.dev/edge/proto"
)

// maintenanceTick is how often the maintenance loop runs.
const maintenanceTick = 10 * time.Second

// renewLoop renews the certificates once half their lifetime has passed,
// and ticks for the watchdog.
func (a *Agent) renewLoop(ctx context.Context) {
	t := time.NewTicker(maintenanceTick)
	defer t.Stop()
	a.tick.Store(time.Now().UnixNano())
	for {
		if a.tunnel.Up() && a.renewDue() {
			if err := a.renew(ctx); err != nil {
				a.log.Warn("certificate renewal failed; will retry", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			a.tick.Store(time.Now().UnixNano())
		}
	}
}

func (a *Agent) renewDue() bool {
	issued, expires := a.identity().CertExpiry()
	return a.clock.Now().After(issued.Add(expires.Sub(issued) / 2))
}

// renew gets certificates for fresh keys over the control stream.
func (a *Agent) renew(ctx context.Context) error {
	id := a.identity()
	keys, err := identity.NewKeys(id.Name)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := a.tunnel.Renew(ctx, &proto.RenewRequest{CSR: keys.CSR, SSHPublicKey: keys.SSHPublic.Marshal()})
	if err != nil {
		return err
	}
	next := *id
	next.TLSKey, next.Cert, next.SSHKey, next.SSHHostCert = keys.TLSKey, resp.Cert, keys.SSHKey, resp.SSHHostCert
	if len(resp.CACerts) > 0 {
		next.CACerts = resp.CACerts
	}
	if len(resp.UserCAKeys) > 0 {
		next.UserCAKeys = resp.UserCAKeys
	}
	if err := a.store.Save(&next); err != nil {
		return err
	}
	a.mu.Lock()
	a.id = &next
	a.mu.Unlock()
	_, expires := next.CertExpiry()
	a.log.Info("certificates renewed", "expires", expires.UTC().Format(time.RFC3339))
	return nil
}
