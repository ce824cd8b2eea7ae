package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"slices"
	"sync"
	"time"

	"remoteler.dev/edge/firmware/direct"
	"remoteler.dev/edge/proto"
)

// A direct node (Config.Mode ModeDirect) holds no tunnel: the fleet dials
// it at Config.Listen for each brokered connection (firmware/direct), and
// the agent brings its tunnel up only to check in: at the start, every
// Config.CheckIn, when audit events are queued and when its certificates
// are due. A check-in says hello (with where the node listens), ships the
// queued events and recordings, renews what is due, and hangs up once
// that is done. Its sessions are served on the fleet's connections, as a
// tunnel's are on its streams.

// Check-in tuning.
const (
	// checkInSettle is how long a check-in stays up with nothing left to
	// do before it hangs up (a late ack, an update offer).
	checkInSettle = time.Second
	// checkInMax bounds a check-in; the next one carries on.
	checkInMax = 2 * time.Minute
	// checkInDebounce gathers the events of a burst into one check-in.
	checkInDebounce = 2 * time.Second
)

// startDirect listens for the fleet and starts the check-ins; wg owns
// their goroutines.
func (a *Agent) startDirect(ctx context.Context, wg *sync.WaitGroup) error {
	srv, err := direct.Listen(direct.Config{
		Listen:    a.cfg.Listen,
		TLSConfig: a.directTLS,
		Check:     a.checkAudited,
		Handle:    a.handleAudited,
		OnMessage: a.onMessage,
		Logger:    a.log,
	})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.directAddr.Store(srv.Addr().String()) // the port, when --listen asked for any
	a.log.Info("direct node: listening for the fleet", "listen", srv.Addr().String(), "check_in", a.cfg.CheckIn)
	wg.Go(func() {
		if err := srv.Serve(ctx); err != nil {
			a.log.Error("direct node: serving the fleet stopped", "err", err)
		}
	})
	wg.Go(func() { a.checkIns(ctx) })
	return nil
}

// queued tells a direct node's check-ins that an audit event was queued.
func (a *Agent) queued() {
	select {
	case a.checkInNow <- struct{}{}:
	default:
	}
}

// checkIns checks in at once, then every CheckIn and whenever events are
// queued, until ctx ends.
func (a *Agent) checkIns(ctx context.Context) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.checkInNow:
			// Let a burst of events gather first.
			select {
			case <-ctx.Done():
				return
			case <-time.After(checkInDebounce):
			}
		}
		a.checkIn(ctx)
		t.Reset(a.cfg.CheckIn)
	}
}

// checkIn brings the tunnel up until what it is for is done.
func (a *Agent) checkIn(ctx context.Context) {
	cctx, cancel := context.WithTimeout(ctx, checkInMax)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.tunnel.Run(cctx)
	}()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var settled time.Time
	for {
		select {
		case <-cctx.Done():
			<-done
			return
		case <-tick.C:
		}
		now := time.Now()
		if !a.tunnel.Up() || !a.settled() {
			settled = time.Time{}
			continue
		}
		if settled.IsZero() {
			settled = now
		}
		if now.Sub(settled) >= checkInSettle {
			cancel()
			<-done
			return
		}
	}
}

// settled reports whether a check-in has nothing left to do: no event or
// recording waits for the fleet, no renewal is due.
func (a *Agent) settled() bool {
	if a.renewDue() {
		return false
	}
	if au := a.audit; au != nil {
		if au.q.Status().Pending > 0 || (au.recs != nil && au.recs.Pending() > 0) {
			return false
		}
	}
	return true
}

// directTLS is a direct node's TLS config: its device certificate, and
// only the fleet's own client certificate accepted.
func (a *Agent) directTLS() (*tls.Config, error) {
	id := a.identity()
	cert, err := id.TLSCertificate()
	if err != nil {
		return nil, err
	}
	pool, err := id.CertPool()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAnyClientCert,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyFleetClient(raw, pool, a.clock.VerifyTime)
		},
	}, nil
}

// verifyFleetClient checks the client certificate of a connection to a
// direct node: the fleet's own (OU proto.FleetOU), from the fleet's CAs,
// at the time at(leaf) gives.
func verifyFleetClient(raw [][]byte, pool *x509.CertPool, at func(*x509.Certificate) time.Time) error {
	leaf, err := verifyPeer(raw, pool, at, x509.VerifyOptions{KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, "client")
	if err != nil {
		return err
	}
	if !slices.Equal(leaf.Subject.OrganizationalUnit, []string{proto.FleetOU}) {
		return fmt.Errorf("agent: the client %q is not the fleet (a %v certificate)", leaf.Subject.CommonName, leaf.Subject.OrganizationalUnit)
	}
	return nil
}
