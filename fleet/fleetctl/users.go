package fleetctl

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
)

// apiHint adds what to do next to errors of the fleet's API.
func apiHint(err error) error {
	apiErr, ok := errors.AsType[*api.Error](err)
	if !ok {
		return err
	}
	switch apiErr.Code {
	case api.CodeUnauthorized:
		return errors.New(withAdvice(apiErr.Message, "the fleet does not accept this identity: use the admin identity of this fleet (--data-dir, or -i)"))
	case api.CodeForbidden:
		return errors.New(withAdvice(apiErr.Message, "this identity is not an admin: use the admin identity in fleetd's data dir, or a user whose role has allow.admin"))
	case api.CodeInternal:
		return errors.New(withAdvice(apiErr.Message, "the fleet failed: see fleetd's log"))
	}
	return err
}

// withAdvice appends advice to a message from the fleet, unless the fleet
// already said what to do (it names a tsh or fleetctl command).
func withAdvice(msg, advice string) string {
	if strings.Contains(msg, "tsh ") || strings.Contains(msg, "fleetctl ") {
		return msg
	}
	return msg + "; " + advice
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

func (r *runner) usersCommand() *cobra.Command {
	group := &cobra.Command{
		Use:   "users",
		Short: "Add, list and remove the fleet's users",
	}
	var roles, logins string
	var totp bool
	add := &cobra.Command{
		Use:   "add NAME --roles=ROLE,...",
		Short: "Add a user",
		Long: `Add a user with roles and, optionally, logins (the device accounts that
roles grant as {{internal.logins}}). The password is read twice without
echo from a terminal, else one line from standard input. --totp enrols an
authenticator app: fleetctl prints the otpauth:// URL to scan.`,
		Example: `  fleetctl users add alice --roles=access --logins=root,pi
  echo "$PASSWORD" | fleetctl users add ci --roles=deploy`,
		Args: cli.ExactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return r.usersAdd(cmd, args[0], roles, logins, totp)
		},
	}
	add.Flags().StringVar(&roles, "roles", "", "the user's roles, comma-separated (fleetctl roles ls lists them); required")
	add.Flags().StringVar(&logins, "logins", "", "the user's logins on devices, comma-separated; roles use them as {{internal.logins}}")
	add.Flags().BoolVar(&totp, "totp", false, "enrol a TOTP authenticator: login then needs a code; prints the otpauth:// URL to enrol")
	add.RegisterFlagCompletionFunc("roles", r.completeList(r.roleNames))

	ls := listCommand(r, &cobra.Command{
		Use:   "ls",
		Short: "List the users",
	}, "users", (*client.Client).Users, r.usersTable)
	rm := removeCommand(r, &cobra.Command{
		Use:   "rm NAME",
		Short: "Remove a user",
	}, (*client.Client).RemoveUser, "User %q removed.", r.names(r.userNames))
	group.AddCommand(add, ls, rm)
	return group
}

// userNames offers the fleet's users.
func (r *runner) userNames(ctx context.Context, c *client.Client) ([]cobra.Completion, error) {
	users, err := c.Users(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]cobra.Completion, 0, len(users))
	for _, u := range users {
		out = append(out, cli.Completion(u.Name, "roles "+strings.Join(u.Roles, ",")))
	}
	return out, nil
}

// completeList completes a comma-separated flag value: the candidates of
// list for its last element.
func (r *runner) completeList(list func(ctx context.Context, c *client.Client) ([]cobra.Completion, error)) cobra.CompletionFunc {
	return func(cmd *cobra.Command, _ []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
		prefix := ""
		if i := strings.LastIndexByte(toComplete, ','); i >= 0 {
			prefix = toComplete[:i+1]
		}
		all := cli.Candidates(cmd, r.names(list))
		return cli.Filter(all, toComplete, prefix), cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveNoSpace
	}
}

func (r *runner) usersAdd(cmd *cobra.Command, name, roles, logins string, totp bool) error {
	ctx := cmd.Context()
	if len(splitList(roles)) == 0 {
		return cli.Usagef(cmd, "--roles is required, e.g. --roles=dev (fleetctl roles ls lists the roles)")
	}
	password, err := r.newPassword(ctx, name)
	if err != nil {
		return fmt.Errorf("users add %s: %w", name, err)
	}
	c, info, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	resp, err := c.AddUser(ctx, &api.AddUserRequest{
		Name: name, Password: password, Roles: splitList(roles), Logins: splitList(logins), TOTP: totp,
	})
	if err != nil {
		if apiErr, ok := errors.AsType[*api.Error](err); ok && apiErr.Code == api.CodeConflict {
			return fmt.Errorf("users add %s: %s", name, withAdvice(apiErr.Message, fmt.Sprintf("remove the user first (fleetctl users rm %s) to re-create it", name)))
		}
		return fmt.Errorf("users add %s: %w", name, apiHint(err))
	}
	fmt.Fprintf(r.stdio.Out, "User %q added with roles %s", name, cli.List(resp.User.Roles))
	if l := splitList(logins); len(l) > 0 {
		fmt.Fprintf(r.stdio.Out, " and logins %s", cli.List(l))
	}
	fmt.Fprintln(r.stdio.Out, ".")
	if resp.TOTPURL != "" {
		fmt.Fprintf(r.stdio.Out, "TOTP: add this to %s's authenticator app (as a QR code, or pasted); tsh login asks for its code:\n  %s\n", name, resp.TOTPURL)
	} else if totp {
		fmt.Fprintln(r.stdio.Err, "fleetctl: warning: the fleet sent no TOTP URL; check the user with fleetctl users ls")
	}
	fmt.Fprintf(r.stdio.Out, "%s logs in with:\n  tsh login --proxy=%s --user=%s --ca-pin=%s\n", name, info.Addr, name, info.CAPin)
	return nil
}

// newPassword reads the new user's password: one line from stdin when it
// is not a terminal, else typed twice without echo.
func (r *runner) newPassword(ctx context.Context, name string) (string, error) {
	_, isTerm := cli.Terminal(r.stdio.In)
	pw, err := r.prompt.Secret(ctx, fmt.Sprintf("Password for %s: ", name))
	if err != nil {
		return "", fmt.Errorf("read password: %w; pipe it on standard input or type it", err)
	}
	if pw == "" {
		return "", errors.New("empty password; type one, or pipe it on standard input")
	}
	if isTerm {
		again, err := r.prompt.Secret(ctx, "Again: ")
		if err != nil {
			return "", fmt.Errorf("read password: %w", err)
		}
		if again != pw {
			return "", errors.New("the passwords differ; run the command again")
		}
	}
	return pw, nil
}

func (r *runner) usersTable(users []api.User) error {
	now := r.stdio.Now()
	tw := cli.NewTable(r.stdio.Out, "NAME", "ROLES", "LOGINS", "TOTP", "SSO", "CREATED")
	for _, u := range users {
		totp := "no"
		if u.TOTP {
			totp = "yes"
		}
		sso := "-"
		if u.SSO != nil {
			// Single sign-on users have no password; their roles are
			// those of their last login.
			sso = u.SSO.Connector + ", last login " + cli.Ago(now, u.SSO.LastLogin)
		}
		tw.Row(u.Name, cli.Dash(strings.Join(u.Roles, ",")), cli.Dash(strings.Join(u.Traits["logins"], ",")), totp, sso, cli.Ago(now, u.CreatedAt))
	}
	return tw.Flush()
}
