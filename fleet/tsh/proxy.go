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
	"remoteler.dev/edge/proto/printable"
)

func (r *runner) proxyCommand() *cobra.Command {
	group := &cobra.Command{
		Use:   "proxy",
		Short: "Connections for other programs (OpenSSH's ProxyCommand, a web app or a Kubernetes API on a local port)",
	}
	var cluster string
	proxySSH := &cobra.Command{
		Use:   "ssh [LOGIN@]HOST[:PORT]",
		Short: "Connect standard input and output to a device's SSH server",
		Long: `Connect standard input and output to a device's SSH server through the
fleet, for OpenSSH's ProxyCommand (tsh config writes it): HOST is the
device, with or without ".CLUSTER"; the port is ignored.`,
		Args:              cli.ExactArgs(1, "[LOGIN@]HOST[:PORT]"),
		ValidArgsFunction: r.completeTarget(""),
		RunE:              func(cmd *cobra.Command, args []string) error { return r.proxySSH(cmd, args[0], cluster) },
	}
	r.clusterFlag(proxySSH, &cluster)
	group.AddCommand(proxySSH)
	group.AddCommand(r.proxyAppCommand())
	group.AddCommand(r.proxyKubeCommand())
	return group
}

// proxySSH runs "tsh proxy ssh [LOGIN@]HOST[:PORT]", OpenSSH's ProxyCommand
// (see tsh config): it connects to the device HOST (minus ".CLUSTER")
// through the fleet and copies bytes between stdin/stdout and the
// connection. The port is ignored: the fleet always brokers the device's
// SSH service.
func (r *runner) proxySSH(cmd *cobra.Command, target, cluster string) error {
	ctx := cmd.Context()
	st, err := r.site(cluster)
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
	login, device := splitTarget(target, st.name())
	if login == "" {
		login = r.localUser()
	}
	if device == "" {
		return cli.Usagef(cmd, "name a device")
	}
	c, err := r.client(st)
	if err != nil {
		return err
	}
	defer c.Close()
	conn, err := r.connectHeld(ctx, c, device, login)
	if err != nil {
		return connectError(err, st, device, login)
	}
	// The fleet says in-band why it ends the session, at the moment it
	// does: print it then (OpenSSH shows a ProxyCommand's stderr), before
	// OpenSSH can see the connection close, exit and kill this process.
	client.OnEnd(conn, func(reason string) { r.printEnd(device, reason) })
	inDone, err := splice(ctx, conn, r.stdio.In, r.stdio.Out)
	if !inDone && ctx.Err() == nil && client.EndReason(conn) == "" {
		// The fleet ended the connection while OpenSSH still had things to
		// say, and said nothing in-band (an older fleet): ask it why.
		r.explainEnd(ctx, c, conn)
	}
	return err
}

// connectHeld connects to device's SSH service as login, holding the
// session's resume state here (client.ConnectHeld): the session survives
// the loss of the fleet replica this connection reaches, and tsh says so
// on its standard error while it reconnects.
func (r *runner) connectHeld(ctx context.Context, c *client.Client, device, login string) (net.Conn, error) {
	conn, err := c.ConnectHeld(ctx, device, login, "ssh", 0)
	if err != nil {
		return nil, err
	}
	client.OnResume(conn, func(msg string) {
		fmt.Fprintf(r.stdio.Err, "tsh: %s: %s\n", device, printable.Escape(msg))
	})
	return conn, nil
}

// printEnd tells the user why the fleet ended their session to device.
func (r *runner) printEnd(device, reason string) {
	fmt.Fprintf(r.stdio.Err, "tsh: %s\n", printable.Escape(sessionEnded(device, reason).Error()))
}

// sessionEnded says why the fleet ended the user's session to device, the
// same way for tsh proxy ssh, tsh ssh and tsh scp.
func sessionEnded(device, reason string) error {
	return fmt.Errorf("the session to %s ended: %s", device, reason)
}

// explainEnd prints why the fleet ended a session: the reason it gave
// in-band, or else the one it gives when asked.
func (r *runner) explainEnd(ctx context.Context, c *client.Client, conn net.Conn) {
	if why := endReason(ctx, c, conn); why != "" {
		r.printEnd(client.SessionDevice(conn), why)
	}
}

// endReason says why the session on conn ended: the reason the fleet gave
// in-band, or else the one it gives when asked, waiting a moment for the
// fleet to finish ending it; "" when it does not say.
func endReason(ctx context.Context, c *client.Client, conn net.Conn) string {
	if conn == nil {
		return ""
	}
	if why := client.EndReason(conn); why != "" {
		return why
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		end, err := c.SessionEnd(ctx, conn)
		if err == nil && (end.Ended || end.Reason != "") {
			return end.Reason
		}
		select {
		case <-ctx.Done():
			return ""
		case <-time.After(100 * time.Millisecond):
		}
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
