package tsh

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
)

func (r *runner) proxyCommand() *cobra.Command {
	group := &cobra.Command{
		Use:   "proxy",
		Short: "Connections for other programs (OpenSSH's ProxyCommand, a web app on a local port)",
	}
	group.AddCommand(&cobra.Command{
		Use:   "ssh [LOGIN@]HOST[:PORT]",
		Short: "Connect standard input and output to a device's SSH server",
		Long: `Connect standard input and output to a device's SSH server through the
fleet, for OpenSSH's ProxyCommand (tsh config writes it): HOST is the
device, with or without ".CLUSTER"; the port is ignored.`,
		Args:              cli.ExactArgs(1, "[LOGIN@]HOST[:PORT]"),
		ValidArgsFunction: r.completeTarget(""),
		RunE:              func(cmd *cobra.Command, args []string) error { return r.proxySSH(cmd, args[0]) },
	})
	group.AddCommand(r.proxyAppCommand())
	return group
}

// proxySSH runs "tsh proxy ssh [LOGIN@]HOST[:PORT]", OpenSSH's ProxyCommand
// (see tsh config): it connects to the device HOST (minus ".CLUSTER")
// through the fleet and copies bytes between stdin/stdout and the
// connection. The port is ignored: the fleet always brokers the device's
// SSH service.
func (r *runner) proxySSH(cmd *cobra.Command, target string) error {
	ctx := cmd.Context()
	p, dir, err := r.currentProfile()
	if err != nil {
		return err
	}
	if i := strings.LastIndexByte(target, '@'); i >= 0 {
		// Split the port off the host part only.
		if host, _, err := net.SplitHostPort(target[i+1:]); err == nil {
			target = target[:i+1] + host
		}
	} else if host, _, err := net.SplitHostPort(target); err == nil {
		target = host
	}
	login, device := splitTarget(target, p.Cluster)
	if login == "" {
		login = r.localUser()
	}
	if device == "" {
		return cli.Usagef(cmd, "name a device")
	}
	c, err := r.newClient(p, dir)
	if err != nil {
		return err
	}
	defer c.Close()
	conn, err := c.Connect(ctx, device, login, "ssh")
	if err != nil {
		return connectError(err, p, device, login)
	}
	inDone, err := splice(ctx, conn, r.stdio.In, r.stdio.Out)
	if !inDone && ctx.Err() == nil {
		// The fleet ended the connection while OpenSSH still had things to
		// say: tell the user why (OpenSSH shows a ProxyCommand's stderr).
		r.explainEnd(ctx, c, conn)
	}
	return err
}

// explainEnd prints why the fleet ended a session, when it says.
func (r *runner) explainEnd(ctx context.Context, c *client.Client, conn net.Conn) {
	if conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	end, err := c.SessionEnd(ctx, conn)
	if err == nil && end.Reason != "" {
		fmt.Fprintf(r.stdio.Err, "tsh: the session to %s ended: %s\n", end.Device, end.Reason)
	}
}

// splice copies in to conn and conn to out. When in ends, it half-closes
// conn (the device sees EOF) and goes on reading; it returns when conn ends
// or ctx is done, and says whether in had ended by then. The goroutine
// reading in may stay blocked in a Read of stdin after that; the process
// exits right after.
func splice(ctx context.Context, conn net.Conn, in io.Reader, out io.Writer) (inDone bool, err error) {
	defer conn.Close()
	var inEnded atomic.Bool
	go func() {
		io.Copy(conn, in)
		inEnded.Store(true)
		if cw, ok := conn.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
	}()
	done := make(chan error, 1)
	go func() {
		_, err := io.Copy(out, conn)
		done <- err
	}()
	select {
	case err := <-done:
		return inEnded.Load(), err
	case <-ctx.Done():
		conn.Close()
		<-done
		return true, nil
	}
}
