package fleetctl

import (
	"context"
	"flag"
	"fmt"
	"net"
	"strings"
	"text/tabwriter"
	"time"

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

func (r *runner) tokensAdd(ctx context.Context, fs *flag.FlagSet, args []string) error {
	ttl := fs.Duration("ttl", time.Hour, "how long the token can be used")
	uses := fs.Int("uses", 1, "how many devices can join with it")
	labels := fs.String("labels", "", "labels the joining devices get, KEY=VALUE,... (roles select devices by them)")
	fleetAddr := fs.String("fleet-addr", "", "the fleet's address as devices reach it, for the printed command (default: the address fleetctl uses)")
	format := fs.String("format", "text", "output format: text or json (json holds join_string, for scripts)")
	if _, err := r.parseN(fs, args, 0, ""); err != nil {
		return err
	}
	if err := r.checkFormat(fs, *format); err != nil {
		return err
	}
	if *ttl <= 0 {
		return r.usageError(fs, "--ttl must be positive, e.g. 1h")
	}
	if *uses <= 0 {
		return r.usageError(fs, "--uses must be at least 1")
	}
	lbls, err := parseLabels(*labels)
	if err != nil {
		return r.usageError(fs, "--labels: %v", err)
	}
	c, info, err := r.connect()
	if err != nil {
		return err
	}
	defer c.Close()
	tok, err := c.AddToken(ctx, &api.AddTokenRequest{TTL: *ttl, Uses: *uses, Labels: lbls})
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
	if *format == "json" {
		tok.CAPin, tok.JoinString = caPin, join
		return r.printJSON(tok)
	}
	addr := *fleetAddr
	if addr == "" {
		addr = info.Addr
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
	fmt.Fprintf(out, "On the device, as root, run:\n  edge-agent start --fleet=%s --token=%s\n", addr, join)
	if host, _, err := net.SplitHostPort(addr); err == nil && isLocal(host) {
		fmt.Fprintf(out, "Note: %s is this machine's local address; give the devices' view with --fleet-addr=HOST:PORT.\n", addr)
	}
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

func (r *runner) tokensLs(ctx context.Context, fs *flag.FlagSet, args []string) error {
	return list(ctx, r, fs, args, "tokens ls", (*client.Client).Tokens, func(toks []api.Token) error {
		now := r.stdio.Now()
		tw := tabwriter.NewWriter(r.stdio.Out, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tEXPIRES\tUSES LEFT\tLABELS\tCREATED")
		for _, t := range toks {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", t.ID, cli.Until(now, t.Expires), t.UsesLeft, cli.Labels(t.Labels), cli.Ago(now, t.CreatedAt))
		}
		return tw.Flush()
	})
}

func (r *runner) tokensRm(ctx context.Context, fs *flag.FlagSet, args []string) error {
	return remove(ctx, r, fs, args, "tokens rm", (*client.Client).RemoveToken, "Token %s removed; devices that already joined with it stay.")
}
