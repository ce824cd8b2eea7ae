package fleetctl

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
)

// lockCommand is "fleetctl lock": shut a user, role, device or login out.
func (r *runner) lockCommand() *cobra.Command {
	var req api.LockRequest
	var format *cli.Format
	cmd := &cobra.Command{
		Use:   "lock (--user=USER | --role=ROLE | --device=DEVICE | --login=LOGIN)",
		Short: "Shut a user, role, device or login out of the fleet now",
		Long: `Lock a user, a role (every user who holds it), a device or a device login
(an OS account such as root, on every device). While the lock lasts the
fleet issues no certificates for it, refuses its logins, connections and
(for a device) its tunnel, and it ends every live session the lock
matches (SSH, sftp, port forwards, Kubernetes, web apps) on every fleetd
replica within a second, showing the user --message. Every refusal is
audited with the lock's ID. The lock lasts --ttl, or until
fleetctl locks rm ID.`,
		Example: `  fleetctl lock --user=alice --message="laptop reported stolen; call the help desk"
  fleetctl lock --device=pi-7 --ttl=2h --message="under investigation"
  fleetctl lock --login=root --ttl=30m`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			set := 0
			for _, v := range []string{req.Target.User, req.Target.Role, req.Target.Device, req.Target.Login} {
				if v != "" {
					set++
				}
			}
			if set != 1 {
				return cli.Usagef(cmd, "name exactly one of --user, --role, --device or --login")
			}
			if req.TTL < 0 {
				return cli.Usagef(cmd, "--ttl must not be negative (0: until removed)")
			}
			c, _, err := r.connect()
			if err != nil {
				return err
			}
			defer c.Close()
			l, err := c.AddLock(cmd.Context(), &req)
			if err != nil {
				return fmt.Errorf("lock: %w", apiHint(err))
			}
			if *format != cli.Text {
				return cli.PrintValue(r.stdio.Out, *format, l)
			}
			until := "until removed"
			if !l.Expires.IsZero() {
				until = "until " + cli.Time(l.Expires) + " (" + cli.Until(r.stdio.Now(), l.Expires) + ")"
			}
			fmt.Fprintf(r.stdio.Out, "Lock %s on %s, %s.\n", l.ID, lockTarget(l.Target), until)
			fmt.Fprintf(r.stdio.Out, "Its live sessions end now; remove it with: fleetctl locks rm %s\n", l.ID)
			return nil
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&req.Target.User, "user", "", "lock this fleet user")
	fl.StringVar(&req.Target.Role, "role", "", "lock every user who holds this role")
	fl.StringVar(&req.Target.Device, "device", "", "lock this device (its tunnel and every session to it)")
	fl.StringVar(&req.Target.Login, "login", "", "lock this device login (OS account) on every device")
	fl.StringVar(&req.Message, "message", "", "what the users shut out are shown (default: a message naming the lock)")
	fl.DurationVar(&req.TTL, "ttl", 0, "how long the lock lasts, e.g. 1h (default 0: until fleetctl locks rm)")
	format = cli.FormatFlag(cmd, "the lock")
	cmd.RegisterFlagCompletionFunc("user", cli.CompleteArgs(-1, r.names(r.userNames)))
	cmd.RegisterFlagCompletionFunc("role", cli.CompleteArgs(-1, r.names(r.roleNames)))
	cmd.RegisterFlagCompletionFunc("device", cli.CompleteArgs(-1, r.names(r.deviceNames)))
	return cmd
}

// locksCommand is "fleetctl locks ls|rm".
func (r *runner) locksCommand() *cobra.Command {
	group := &cobra.Command{
		Use:   "locks",
		Short: "Locks in force: list and remove them (fleetctl lock makes one)",
	}
	ls := listCommand(r, &cobra.Command{
		Use:   "ls",
		Short: "List the locks in force",
	}, "locks", (*client.Client).Locks, r.locksTable)
	rm := removeCommand(r, &cobra.Command{
		Use:   "rm ID",
		Short: "Remove a lock: what it shut out may connect again",
	}, (*client.Client).RemoveLock, "Lock %s removed.", r.names(r.lockIDs))
	group.AddCommand(ls, rm)
	return group
}

func (r *runner) locksTable(list []api.Lock) error {
	now := r.stdio.Now()
	tw := cli.NewTable(r.stdio.Out, "ID", "TARGET", "MESSAGE", "EXPIRES", "CREATED", "BY")
	for _, l := range list {
		exp := "never"
		if !l.Expires.IsZero() {
			exp = cli.Until(now, l.Expires)
		}
		msg := l.Message
		if msg == "" {
			msg = "-"
		}
		tw.Row(l.ID, lockTarget(l.Target), msg, exp, cli.Ago(now, l.Created), l.CreatedBy)
	}
	return tw.Flush()
}

// lockTarget names a lock's target: "user=alice".
func lockTarget(t api.LockTarget) string {
	switch {
	case t.User != "":
		return "user=" + t.User
	case t.Role != "":
		return "role=" + t.Role
	case t.Device != "":
		return "device=" + t.Device
	case t.Login != "":
		return "login=" + t.Login
	}
	return "-"
}

// lockIDs offers the IDs of the locks in force.
func (r *runner) lockIDs(ctx context.Context, c *client.Client) ([]cobra.Completion, error) {
	list, err := c.Locks(ctx)
	if err != nil {
		return nil, err
	}
	now := r.stdio.Now()
	out := make([]cobra.Completion, 0, len(list))
	for _, l := range list {
		exp := "no expiry"
		if !l.Expires.IsZero() {
			exp = cli.Until(now, l.Expires)
		}
		out = append(out, cli.Completion(l.ID, lockTarget(l.Target)+" "+exp))
	}
	return out, nil
}
