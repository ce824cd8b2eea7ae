package client

import (
	"context"
	"net/http"

	"remoteler.dev/edge/proto/api"
)

// Clusters calls GET /v1/clusters: the leaf clusters this fleet reaches
// and, for admins, the root clusters it trusts.
func (c *Client) Clusters(ctx context.Context) ([]api.Cluster, error) {
	var out []api.Cluster
	return out, c.do(ctx, http.MethodGet, api.PathClusters, nil, &out)
}

// RemoveCluster calls DELETE /v1/clusters/NAME (admin): it ends the trust
// with a leaf or a root cluster.
func (c *Client) RemoveCluster(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, item(api.PathClusters, name), nil, nil)
}

// TrustedClusters calls GET /v1/trusted-clusters (admin).
func (c *Client) TrustedClusters(ctx context.Context) ([]api.TrustedCluster, error) {
	var out []api.TrustedCluster
	return out, c.do(ctx, http.MethodGet, api.PathTrustedClusters, nil, &out)
}

// PutTrustedCluster calls PUT /v1/trusted-clusters (admin): the fleet
// joins the root the resource names, and keeps trusting it.
func (c *Client) PutTrustedCluster(ctx context.Context, tc *api.TrustedCluster) error {
	return c.do(ctx, http.MethodPut, api.PathTrustedClusters, tc, nil)
}

// JoinCluster calls POST /v1/trust/join (open, with the token in req): a
// leaf fleet joins this root.
func (c *Client) JoinCluster(ctx context.Context, req *api.ClusterJoinRequest) (*api.ClusterJoinResponse, error) {
	var out api.ClusterJoinResponse
	return &out, c.do(ctx, http.MethodPost, api.PathTrustJoin, req, &out)
}

// ClusterCerts calls POST /v1/clusters/NAME/certs: a certificate for the
// leaf cluster's devices (tsh login NAME).
func (c *Client) ClusterCerts(ctx context.Context, cluster string, req *api.ClusterCertsRequest) (*api.ClusterCertsResponse, error) {
	var out api.ClusterCertsResponse
	return &out, c.do(ctx, http.MethodPost, api.ClusterCertsPath(cluster), req, &out)
}
