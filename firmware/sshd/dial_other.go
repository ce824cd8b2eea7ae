//go:build !linux

package sshd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
)

// dial connects to addr for a port forward. Elsewhere than on Linux the
// agent cannot dial as another user, and refuses to dial for one.
func (s *Server) dial(ctx context.Context, acct *account, addr string) (net.Conn, error) {
	if acct.switchUser && acct.uid != 0 {
		return nil, fmt.Errorf("sshd: dial %s as %s: not supported on %s", addr, acct.name, runtime.GOOS)
	}
	d := net.Dialer{Timeout: s.cfg.DialTimeout}
	return d.DialContext(ctx, "tcp", addr)
}

// ServeDialHelper fails: the dial helper runs on Linux only.
func ServeDialHelper(args []string) error {
	return errors.New("sshd: dial helper: not supported on " + runtime.GOOS)
}
