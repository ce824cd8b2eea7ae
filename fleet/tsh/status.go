package tsh

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/printable"
)

func jsonIndent(v any) ([]byte, error) {
	b, err := json.MarshalIndent(v, "", "  ")
	return append(b, '\n'), err
}

func (r *runner) statusCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show your logins and how long they are valid",
		Long: `Show every login tsh keeps (the current one marked with ">", and
"current": true in JSON and YAML): the fleet, user, roles, logins and when
the certificates expire. It fails when there is no valid current login, so
scripts can test it.`,
		Args: cli.NoArgs,
	}
	format := cli.FormatFlag(cmd, "")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error { return r.status(*format) }
	return cmd
}

// statusItem is a login in tsh status --format=json or yaml.
type statusItem struct {
	*profile
	Current bool `json:"current"`
}

// status prints every profile, the current one marked with ">". It fails
// when there is no valid current login, so scripts can test it.
func (r *runner) status(format cli.Format) error {
	cur, _, curErr := r.currentProfile()
	all, errs := r.allProfiles()
	for _, err := range errs {
		fmt.Fprintf(r.stdio.Err, "tsh: warning: %v\n", err)
	}
	if len(all) == 0 {
		return errNotLoggedIn
	}
	now := r.stdio.Now()
	if format != cli.Text {
		items := make([]statusItem, len(all))
		for i, p := range all {
			items[i] = statusItem{p, cur != nil && cur.name() == p.name()}
		}
		if err := cli.PrintList(r.stdio.Out, format, "profiles", items, false, nil); err != nil {
			return err
		}
	}
	for i, p := range all {
		if format != cli.Text {
			break
		}
		if i > 0 {
			fmt.Fprintln(r.stdio.Out)
		}
		mark := " "
		if cur != nil && cur.name() == p.name() {
			mark = ">"
		}
		fmt.Fprintf(r.stdio.Out, "%s %s at %s (fleet %q)\n", mark, p.User, p.Proxy, p.Cluster)
		if p.Current != "" {
			fmt.Fprintf(r.stdio.Out, "    Cluster:     %s (a leaf of %s; tsh login %s goes back)\n", p.Current, p.Cluster, p.Cluster)
		}
		fmt.Fprintf(r.stdio.Out, "    Roles:       %s\n", printable.Escape(cli.List(p.Roles)))
		fmt.Fprintf(r.stdio.Out, "    Logins:      %s\n", printable.Escape(cli.List(p.Logins)))
		if now.After(p.Expires) {
			fmt.Fprintf(r.stdio.Out, "    Valid until: %s (EXPIRED %s ago; run tsh login --proxy=%s %s)\n",
				cli.Time(p.Expires), cli.Duration(now.Sub(p.Expires)), p.Proxy, p.loginFlag())
		} else {
			fmt.Fprintf(r.stdio.Out, "    Valid until: %s (for %s)\n", cli.Time(p.Expires), cli.Duration(p.Expires.Sub(now)))
		}
	}
	switch {
	case curErr != nil:
		return fmt.Errorf("no current login (%w)", curErr)
	case now.After(cur.Expires):
		return &cli.StatusError{Code: cli.ExitError} // said above
	}
	return nil
}

func (r *runner) logoutCommand() *cobra.Command {
	var proxy, userName string
	var all bool
	cmd := &cobra.Command{
		Use:   "logout",
		Short: "Forget the current login (or another, or all)",
		Long: `Remove a login's keys and certificates, its lines in TSH_HOME/known_hosts
and the kubeconfig entries tsh kube login added for it: the current login,
the one named by --proxy and --user, or every one with --all.`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return r.logout(cmd, proxy, userName, all) },
	}
	cmd.Flags().StringVar(&proxy, "proxy", "", "log out of this fleet (default: the current login's)")
	cmd.Flags().StringVar(&userName, "user", "", "log out this user (default: the current login's)")
	cmd.Flags().BoolVar(&all, "all", false, "log out of every fleet")
	return cmd
}

// logout removes the current profile (or the one named by proxy and
// userName, or all): its files, its known_hosts lines, and the current
// marker when it names it.
func (r *runner) logout(cmd *cobra.Command, proxyFlag, userFlag string, allFlag bool) error {
	proxy, userName, all := &proxyFlag, &userFlag, &allFlag
	var targets []*profile
	cur, _, curErr := r.currentProfile()
	switch {
	case *all:
		var errs []error
		targets, errs = r.allProfiles()
		for _, err := range errs {
			fmt.Fprintf(r.stdio.Err, "tsh: warning: %v\n", err)
		}
	case *proxy != "" || *userName != "":
		if *proxy == "" || *userName == "" {
			return cli.Usagef(cmd, "give both --proxy and --user, or neither")
		}
		p, _, err := r.loadProfile(*proxy, *userName)
		if err != nil {
			return fmt.Errorf("logout: %w", err)
		}
		targets = []*profile{p}
	case curErr != nil:
		if errors.Is(curErr, errNotLoggedIn) {
			fmt.Fprintln(r.stdio.Out, "Not logged in; nothing to do.")
			return nil
		}
		return fmt.Errorf("logout: %w; or run tsh logout --all", curErr)
	default:
		targets = []*profile{cur}
	}
	home, err := r.home()
	if err != nil {
		return err
	}
	for _, p := range targets {
		if err := r.removeProfile(home, p); err != nil {
			return fmt.Errorf("logout: %w", err)
		}
		if cur != nil && cur.name() == p.name() {
			if err := os.Remove(filepath.Join(home, "current")); err != nil && !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("logout: %w", err)
			}
		}
		fmt.Fprintf(r.stdio.Out, "Logged out %s from %s.\n", p.User, p.Proxy)
	}
	return nil
}

// removeProfile deletes a profile's directory, known_hosts lines and the
// kubeconfig entries tsh kube login added for it.
func (r *runner) removeProfile(home string, p *profile) error {
	if err := updateKnownHosts(filepath.Join(home, "known_hosts"), p.marker(), nil); err != nil {
		return err
	}
	if removed, err := r.removeKube(p, ""); err != nil {
		fmt.Fprintf(r.stdio.Err, "tsh: could not remove the Kubernetes contexts of %s: %v\n", p.name(), err)
	} else if len(removed) > 0 {
		fmt.Fprintf(r.stdio.Out, "Removed Kubernetes contexts: %s.\n", strings.Join(removed, ", "))
	}
	dir := filepath.Join(home, "keys", p.Proxy, p.User)
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	os.Remove(filepath.Dir(dir)) // the proxy's folder, when it is now empty
	return nil
}
