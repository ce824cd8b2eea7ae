//go:build !linux

package sshd

import (
	"context"
	"fmt"
	"runtime"

	"golang.org/x/crypto/ssh"
)

// startProc fails: the agent starts session commands on Linux only. SFTP
// (in-process) and port forwarding still work.
func startProc(ctx context.Context, c *command, ch ssh.Channel) (proc, error) {
	return nil, fmt.Errorf("sshd: start %s: sessions are not supported on %s", c.path, runtime.GOOS)
}
