package client

import (
	"context"
	"net/http"

	"remoteler.dev/edge/proto/api"
)

// KubeClusters calls GET /v1/kube: the Kubernetes clusters the user may
// reach, with the users and groups they act as there.
func (c *Client) KubeClusters(ctx context.Context) ([]api.KubeCluster, error) {
	var out []api.KubeCluster
	err := c.do(ctx, http.MethodGet, api.PathKube, nil, &out)
	return out, err
}
