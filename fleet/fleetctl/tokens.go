package fleetctl

import (
	"context"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/pin"
)

// parseLabels parses k=v,k2=v2.
func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, part := range splitList(s) {
		k, v, ok := strings.Cut(part, "=")
		if !ok || strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("label %q is not KEY=VALUE", part)
		}
		out[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

func (r *runner) tokensCommand() *cobra.Command {
	group := &cobra.Command{
		Use:   "tokens",
		Short: "Join tokens: how devices join the fleet",
	}
	var f tokenFlags
	add := &cobra.Command{
		Use:   "add",
		Short: "Make a join token and print the command that joins a device",
		Long: `Make a join token: a device joins the fleet once with it (edge-agent start
--token=JOIN_STRING), within --ttl, and at most --uses devices may use it.
The join string holds the token and the fleet's CA pin, so the device can
verify the fleet. Devices joined with it get --labels, which the device
cannot change.

With --type=trusted-cluster the token is for a leaf fleet instead, which
joins this one as its root (docs/trusted-clusters.md): its admin puts the
token and the CA pin in a trusted_cluster resource (fleetctl create -f on
the leaf).`,
		Example: `  fleetctl tokens add --ttl=1h --labels=site=north
  fleetctl tokens add --uses=50 --fleet-addr=fleet.example.com:3080 --format=json
  fleetctl tokens add --type=trusted-cluster --ttl=5m`,
		Args: cli.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return r.tokensAdd(cmd, f) },
	}
	fl := add.Flags()
	fl.DurationVar(&f.ttl, "ttl", time.Hour, "how long the token can be used")
	fl.IntVar(&f.uses, "uses", 1, "how many devices can join with it")
	fl.StringVar(&f.labels, "labels", "", "labels the joining devices get, KEY=VALUE,... (roles select devices by them)")
	fl.StringVar(&f.fleetAddr, "fleet-addr", "", "the fleet's address as devices reach it, for the printed command (default: the address fleetctl uses)")
	fl.StringVar(&f.typ, "type", api.TokenDevice, "what joins with it: device, or trusted-cluster (a leaf fleet)")
	f.format = cli.FormatFlag(add, "the token, with join_string for scripts")

	ls := listCommand(r, &cobra.Command{
		Use:   "ls",
		Short: "List the join tokens that can still be used",
	}, "tokens", (*client.Client).Tokens, r.tokensTable)
	rm := removeCommand(r, &cobra.Command{
		Use:   "rm ID",
		Short: "Remove a join token (devices that joined with it stay)",
	}, (*client.Client).RemoveToken, "Token %s removed; devices that already joined with it stay.", r.names(r.tokenIDs))
	group.AddCommand(add, ls, rm)
	return group
}

// tokenFlags are tokens add's flags.
type tokenFlags struct {
	ttl               time.Duration
	uses              int
	labels, fleetAddr string
	typ               string
	format            *cli.Format
}

// tokenIDs offers the IDs of the fleet's tokens.
func (r *runner) tokenIDs(ctx context.Context, c *client.Client) ([]cobra.Completion, error) {
	toks, err := c.Tokens(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]cobra.Completion, 0, len(toks))
	for _, t := range toks {
		out = append(out, cli.Completion(t.ID, cli.Labels(t.Labels)+" "+cli.Until(r.stdio.Now(), t.Expires)))
	}
	return out, nil
}

func (r *runner) tokensAdd(cmd *cobra.Command, f tokenFlags) error {
	ctx := cmd.Context()
	ttl, uses, labels, fleetAddr := &f.ttl, &f.uses, &f.labels, &f.fleetAddr
	if *ttl <= 0 {
		return cli.Usagef(cmd, "--ttl must be positive, e.g. 1h")
	}
	if *uses <= 0 {
		return cli.Usagef(cmd, "--uses must be at least 1")
	}
	lbls, err := parseLabels(*labels)
	if err != nil {
		return cli.Usagef(cmd, "--labels: %v", err)
	}
	switch f.typ {
	case api.TokenDevice:
	case api.TokenTrustedCluster:
		if len(lbls) > 0 {
			return cli.Usagef(cmd, "a trusted-cluster token takes no --labels")
		}
	default:
		return cli.Usagef(cmd, "--type=%s: want device or trusted-cluster", f.typ)
	}
	c, info, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	tok, err := c.AddToken(ctx, &api.AddTokenRequest{TTL: *ttl, Uses: *uses, Labels: lbls, Type: f.typ})
	if err != nil {
		return fmt.Errorf("tokens add: %w", apiHint(err))
	}
	caPin := tok.CAPin
	if caPin == "" {
		caPin = info.CAPin
	}
	join := tok.JoinString
	if join == "" {
		join = pin.JoinString(tok.Token, caPin)
	}
	if *f.format != cli.Text {
		tok.CAPin, tok.JoinString = caPin, join
		return cli.PrintValue(r.stdio.Out, *f.format, tok)
	}
	addr := *fleetAddr
	if addr == "" {
		addr = info.Addr
	}
	if f.typ == api.TokenTrustedCluster {
		return r.printClusterToken(tok, caPin, addr, info.Cluster)
	}
	devices := "1 device"
	if tok.UsesLeft != 1 {
		devices = fmt.Sprintf("%d devices", tok.UsesLeft)
	}
	out := r.stdio.Out
	fmt.Fprintf(out, "Join token %s for %s, valid until %s (%s).\n", tok.ID, devices, cli.Time(tok.Expires), cli.Until(r.stdio.Now(), tok.Expires))
	fmt.Fprintf(out, "  Token:       %s\n", tok.Token)
	fmt.Fprintf(out, "  CA pin:      %s\n", caPin)
	fmt.Fprintf(out, "  Join string: %s\n", join)
	if len(tok.Labels) > 0 {
		fmt.Fprintf(out, "  Labels:      %s\n", cli.Labels(tok.Labels))
	}
	fmt.Fprintf(out, "On the device, as root, run:\n  %s\n", pin.JoinCommand(addr, join))
	if host, _, err := net.SplitHostPort(addr); err == nil && isLocal(host) {
		fmt.Fprintf(out, "Note: %s is this machine's local address; give the devices' view with --fleet-addr=HOST:PORT.\n", addr)
	}
	return nil
}

// printClusterToken says how a leaf uses a trusted-cluster token.
func (r *runner) printClusterToken(tok *api.Token, caPin, addr, cluster string) error {
	out := r.stdio.Out
	leaves := "1 leaf cluster"
	if tok.UsesLeft != 1 {
		leaves = fmt.Sprintf("%d leaf clusters", tok.UsesLeft)
	}
	fmt.Fprintf(out, "Trusted-cluster token %s for %s, valid until %s (%s).\n", tok.ID, leaves, cli.Time(tok.Expires), cli.Until(r.stdio.Now(), tok.Expires))
	fmt.Fprintf(out, "  Token:  %s\n", tok.Token)
	fmt.Fprintf(out, "  CA pin: %s\n", caPin)
	if cluster == "" {
		cluster = "ROOT"
	}
	fmt.Fprintf(out, "On the leaf fleet, fleetctl create -f this file (map this fleet's roles to the leaf's):\n")
	fmt.Fprintf(out, "  kind: trusted_cluster\n  version: v1\n  metadata:\n    name: %s\n  spec:\n    root_addr: %s\n    token: %s\n    ca_pin: %s\n    role_map:\n    - {remote: access, local: [access]}\n",
		cluster, addr, tok.Token, caPin)
	return nil
}

// isLocal reports whether host is a loopback or unspecified address.
func isLocal(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
}

func (r *runner) tokensTable(toks []api.Token) error {
	now := r.stdio.Now()
	tw := cli.NewTable(r.stdio.Out, "ID", "TYPE", "EXPIRES", "USES LEFT", "LABELS", "CREATED")
	for _, t := range toks {
		typ := t.Type
		if typ == "" {
			typ = api.TokenDevice
		}
		tw.Row(t.ID, typ, cli.Until(now, t.Expires), fmt.Sprint(t.UsesLeft), cli.Labels(t.Labels), cli.Ago(now, t.CreatedAt))
	}
	return tw.Flush()
}
