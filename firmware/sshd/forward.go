package sshd

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"

	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/proto"
)

// directTCPIPRequest is the payload of a direct-tcpip channel open
// (RFC 4254 section 7.2).
type directTCPIPRequest struct {
	Host     string
	Port     uint32
	OrigHost string
	OrigPort uint32
}

// parseDirectTCPIP decodes a direct-tcpip payload and returns the address
// to dial.
func parseDirectTCPIP(b []byte) (string, error) {
	var r directTCPIPRequest
	if err := ssh.Unmarshal(b, &r); err != nil {
		return "", fmt.Errorf("sshd: direct-tcpip: %w", err)
	}
	if r.Host == "" || r.Port == 0 || r.Port > 65535 {
		return "", fmt.Errorf("sshd: direct-tcpip: bad destination %q port %d", r.Host, r.Port)
	}
	return net.JoinHostPort(r.Host, strconv.Itoa(int(r.Port))), nil
}

// directTCPIP serves a local port forward (ssh -L): it dials the
// destination from the device and copies bytes both ways. Only
// certificates with permit-port-forwarding may forward.
func (c *connState) directTCPIP(nc ssh.NewChannel) {
	addr, err := parseDirectTCPIP(nc.ExtraData())
	if err != nil {
		nc.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	log := c.log.With("dest", addr)
	if !c.permits("permit-port-forwarding") {
		log.Info("sshd: refused port forwarding: the certificate lacks permit-port-forwarding")
		c.s.deny(c.ctx, "port forward to "+addr, "the certificate lacks permit-port-forwarding")
		nc.Reject(ssh.Prohibited, "port forwarding is not permitted by your certificate")
		return
	}
	if c.id.NoPortForwarding {
		log.Info("sshd: refused port forwarding: the user's roles turn it off")
		c.s.deny(c.ctx, "port forward to "+addr, "the user's roles turn port forwarding off (port_forwarding)")
		nc.Reject(ssh.Prohibited, "port forwarding is turned off by your roles")
		return
	}
	if err := c.s.audit(c.ctx, &proto.AuditEvent{Type: proto.EventPortForward, Fields: map[string]string{"dest": addr}}); err != nil {
		log.Warn("sshd: refused port forwarding: its audit event could not be written", "err", err)
		nc.Reject(ssh.ResourceShortage, "the device cannot record this port forward in its audit log")
		return
	}
	tc, err := c.s.dial(c.ctx, c.acct, addr)
	if err != nil {
		log.Info("sshd: port forwarding dial failed", "err", err)
		nc.Reject(ssh.ConnectionFailed, "dial "+addr+" from the device failed")
		return
	}
	ch, reqs, err := nc.Accept()
	if err != nil {
		tc.Close()
		return
	}
	log.Info("sshd: port forwarding started")
	stop := context.AfterFunc(c.ctx, func() {
		tc.Close()
		ch.Close()
	})
	defer stop()

	var wg sync.WaitGroup
	wg.Go(func() { ssh.DiscardRequests(reqs) })
	up := make(chan struct{})
	wg.Go(func() {
		defer close(up)
		io.Copy(tc, ch)
		if cw, ok := tc.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	})
	io.Copy(ch, tc)
	ch.CloseWrite()
	// Close once both directions have ended: the client answers our EOF
	// by closing, and the connection's end closes everything.
	<-up
	ch.Close()
	tc.Close()
	wg.Wait()
	log.Info("sshd: port forwarding ended")
}
