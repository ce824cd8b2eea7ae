package fleetctl

import (
	"context"

	"github.com/spf13/cobra"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/fleet/client/cli"
	"remoteler.dev/edge/proto/api"
)

func (r *runner) clustersCommand() *cobra.Command {
	group := &cobra.Command{
		Use:   "clusters",
		Short: "Trusted clusters: the leaf fleets that tunnel to this one, and the roots this one trusts",
		Long: `Trusted clusters (docs/trusted-clusters.md). A leaf fleet tunnels to a
root fleet, and the root's users reach the leaf's devices through the root
as the leaf's roles allow. On the root, a leaf joins with a token (fleetctl
tokens add --type=trusted-cluster); on the leaf, its admin trusts the root
with a trusted_cluster resource (fleetctl create -f).`,
	}
	ls := listCommand(r, &cobra.Command{
		Use:   "ls",
		Short: "List the leaf clusters and the trusted root clusters, with their tunnels' state",
	}, "clusters", (*client.Client).Clusters, r.clustersTable)
	rm := removeCommand(r, &cobra.Command{
		Use:   "rm NAME",
		Short: "End the trust with a leaf or a root cluster",
		Long: `End the trust with a leaf cluster (on the root) or a root cluster (on the
leaf): its tunnel closes, the sessions of the root's users on the leaf's
devices end, and the leaf must join again with a new token to be trusted
again. Either side may end it.`,
	}, (*client.Client).RemoveCluster, "Trust with cluster %q ended.", r.names(r.clusterNames))
	group.AddCommand(ls, rm)
	return group
}

// clusterNames offers the fleet's trusted clusters.
func (r *runner) clusterNames(ctx context.Context, c *client.Client) ([]cobra.Completion, error) {
	list, err := c.Clusters(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]cobra.Completion, 0, len(list))
	for _, cl := range list {
		out = append(out, cli.Completion(cl.Name, cl.Kind))
	}
	return out, nil
}

func (r *runner) clustersTable(list []api.Cluster) error {
	now := r.stdio.Now()
	tw := cli.NewTable(r.stdio.Out, "NAME", "KIND", "STATUS", "LAST SEEN", "ADDRESS", "VERSION", "SINCE")
	for _, c := range list {
		status, seen := "offline", "never"
		if c.Online {
			status, seen = "online", "now"
		} else if !c.LastSeen.IsZero() {
			seen = cli.Ago(now, c.LastSeen)
		}
		since := "-"
		if !c.Since.IsZero() {
			since = cli.Ago(now, c.Since)
		}
		tw.Row(c.Name, c.Kind, status, seen, cli.Dash(c.Addr), cli.Dash(c.Version), since)
	}
	return tw.Flush()
}
