package fleetctl

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"strings"
	"text/tabwriter"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
)

// printJSON writes v as indented JSON.
func (r *runner) printJSON(v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = r.stdio.Out.Write(append(b, '\n'))
	return err
}

// checkFormat accepts text or json.
func (r *runner) checkFormat(fs *flag.FlagSet, format string) error {
	if format != "text" && format != "json" {
		return r.usageError(fs, "--format must be text or json, not %q", format)
	}
	return nil
}

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

func (r *runner) usersAdd(ctx context.Context, fs *flag.FlagSet, args []string) error {
	roles := fs.String("roles", "", "the user's roles, comma-separated (fleetctl roles ls lists them); required")
	logins := fs.String("logins", "", "the user's logins on devices, comma-separated; roles use them as {{internal.logins}}")
	totp := fs.Bool("totp", false, "enrol a TOTP authenticator: login then needs a code; prints the otpauth:// URL to enrol")
	pos, err := r.parseN(fs, args, 1, "NAME")
	if err != nil {
		return err
	}
	name := pos[0]
	if len(splitList(*roles)) == 0 {
		return r.usageError(fs, "--roles is required, e.g. --roles=dev (fleetctl roles ls lists the roles)")
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
		Name: name, Password: password, Roles: splitList(*roles), Logins: splitList(*logins), TOTP: *totp,
	})
	if err != nil {
		if apiErr, ok := errors.AsType[*api.Error](err); ok && apiErr.Code == api.CodeConflict {
			return fmt.Errorf("users add %s: %s", name, withAdvice(apiErr.Message, fmt.Sprintf("remove the user first (fleetctl users rm %s) to re-create it", name)))
		}
		return fmt.Errorf("users add %s: %w", name, apiHint(err))
	}
	fmt.Fprintf(r.stdio.Out, "User %q added with roles %s", name, cli.List(resp.User.Roles))
	if l := splitList(*logins); len(l) > 0 {
		fmt.Fprintf(r.stdio.Out, " and logins %s", cli.List(l))
	}
	fmt.Fprintln(r.stdio.Out, ".")
	if resp.TOTPURL != "" {
		fmt.Fprintf(r.stdio.Out, "TOTP: add this to %s's authenticator app (as a QR code, or pasted); tsh login asks for its code:\n  %s\n", name, resp.TOTPURL)
	} else if *totp {
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

func (r *runner) usersLs(ctx context.Context, fs *flag.FlagSet, args []string) error {
	return list(ctx, r, fs, args, "users ls", (*client.Client).Users, func(users []api.User) error {
		now := r.stdio.Now()
		tw := tabwriter.NewWriter(r.stdio.Out, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tROLES\tLOGINS\tTOTP\tCREATED")
		for _, u := range users {
			totp := "no"
			if u.TOTP {
				totp = "yes"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", u.Name, cli.Dash(strings.Join(u.Roles, ",")),
				cli.Dash(strings.Join(u.Traits["logins"], ",")), totp, cli.Ago(now, u.CreatedAt))
		}
		return tw.Flush()
	})
}

func (r *runner) usersRm(ctx context.Context, fs *flag.FlagSet, args []string) error {
	return remove(ctx, r, fs, args, "users rm", (*client.Client).RemoveUser, "User %q removed.")
}
