package api

// Kubernetes access. kubectl reaches a device's cluster at
//
//	https://FLEET/v1/kube/NAME/...   (the cluster's API paths follow NAME)
//
// with the user's X.509 certificate (tsh kube login writes the kubeconfig).
// The fleet checks the user's roles (kubernetes_users, kubernetes_groups),
// sends the request down the device's tunnel, and the agent forwards it to
// the device's API server as the mapped Kubernetes user and groups
// (impersonation). A request may narrow what it acts as with kubectl --as
// (one of the allowed users) and --as-group (some of the allowed groups);
// asking for anything else is refused. Errors on this path come back as a
// Kubernetes Status object, which kubectl prints.
const (
	// PathKube is GET (list the clusters the user may reach, []KubeCluster)
	// and the prefix of the proxied cluster APIs, PathKube + "/NAME/...".
	PathKube = "/v1/kube"
)

// KubeCluster is one Kubernetes cluster the asking user may reach: a
// device that offers service "kube", or the cluster fleetd runs in.
type KubeCluster struct {
	// Name is the device name, or the fleet's own cluster's name (Local).
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
	Online bool              `json:"online"`
	// Local is true for the cluster fleetd itself runs in.
	Local bool `json:"local,omitempty"`
	// Users and Groups are the Kubernetes users and groups the user's
	// roles allow there. With no user, the user acts as their fleet name.
	Users  []string `json:"users,omitempty"`
	Groups []string `json:"groups,omitempty"`
}
