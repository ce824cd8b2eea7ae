package api

import (
	"net/url"
	"strings"
	"time"
)

// Trusted clusters (docs/trusted-clusters.md): a leaf fleet dials a tunnel
// to a root fleet, and the root's users reach the leaf's devices through
// the root.
//
// On the root:
//
//   - GET PathClusters lists the clusters this fleet knows: the leaves that
//     tunnel to it (ClusterLeaf) and, for admins, the roots it tunnels to
//     (ClusterRoot), []Cluster.
//   - DELETE PathClusters/NAME (admin) ends the trust with a leaf or a root,
//     on either side.
//   - PathClusters/NAME/v1/... is the leaf NAME's own API, reached through
//     the root (ClusterPath): the root forwards the request down the leaf's
//     tunnel with the caller it vouches for, and the leaf answers with its
//     own roles. GET ClusterPath(NAME, PathDevices) lists the leaf's
//     devices, ClusterPath(NAME, PathConnect) brokers SSH,
//     ClusterPath(NAME, PathKube+"/DEVICE") is a Kubernetes API.
//   - POST PathClusters/NAME/certs (ClusterCertsRequest) asks the root for
//     a certificate for the leaf's devices (ClusterCertsResponse): tsh
//     login NAME.
//   - POST PathTrustJoin (open, with a token of type TokenTrustedCluster)
//     joins a leaf (ClusterJoinRequest, ClusterJoinResponse).
//
// On the leaf: PUT PathTrustedClusters (admin) creates a TrustedCluster,
// which joins the root at once; GET lists them ([]TrustedCluster, tokens
// left out).
const (
	PathClusters        = "/v1/clusters"
	PathTrustJoin       = "/v1/trust/join"
	PathTrustedClusters = "/v1/trusted-clusters"
)

// ClusterPath is the path, on a root fleet, of path (an API path, /v1/...)
// on its leaf cluster; for "" (the fleet itself) it is path.
func ClusterPath(cluster, path string) string {
	if cluster == "" {
		return path
	}
	return PathClusters + "/" + url.PathEscape(cluster) + path
}

// ClusterCertsPath is POST ClusterCertsRequest on a root fleet.
func ClusterCertsPath(cluster string) string {
	return PathClusters + "/" + url.PathEscape(cluster) + "/certs"
}

// SplitClusterPath splits a root's path under PathClusters into the
// cluster's name and the rest ("/v1/devices"); ok is false for other
// paths.
func SplitClusterPath(path string) (cluster, rest string, ok bool) {
	after, found := strings.CutPrefix(path, PathClusters+"/")
	if !found {
		return "", "", false
	}
	cluster, rest, _ = strings.Cut(after, "/")
	return cluster, "/" + rest, cluster != ""
}

// Kinds of Cluster.
const (
	// ClusterLeaf is a leaf fleet that tunnels to this one: this fleet's
	// users reach its devices.
	ClusterLeaf = "leaf"
	// ClusterRoot is a root fleet this one tunnels to: its users reach
	// this fleet's devices, as this fleet's role_map lets them.
	ClusterRoot = "root"
)

// Cluster is one trusted cluster as GET PathClusters lists it.
type Cluster struct {
	Name string `json:"name"`
	// Kind is ClusterLeaf or ClusterRoot.
	Kind string `json:"kind"`
	// Online says the tunnel between the two is up now.
	Online bool `json:"online"`
	// LastSeen is when the tunnel was last up (now while it is).
	LastSeen time.Time `json:"last_seen,omitzero"`
	// Addr is the leaf's address as the root sees it, or the root's
	// address as the leaf dials it (admins only).
	Addr string `json:"addr,omitempty"`
	// Version is the other fleet's fleetd version, when known.
	Version string `json:"version,omitempty"`
	// Since is when the trust was made.
	Since time.Time `json:"since,omitzero"`
	// Error is why the tunnel is down, when the fleet knows (a root that
	// refuses the leaf, say).
	Error string `json:"error,omitempty"`
}

// TrustedClusterKind is the kind of a TrustedCluster resource.
const TrustedClusterKind = "trusted_cluster"

// TrustedCluster is the resource a leaf fleet's admin creates to trust a
// root fleet (fleetctl create -f):
//
//	kind: trusted_cluster
//	version: v1
//	metadata:
//	  name: root                    # the root fleet's cluster name
//	spec:
//	  root_addr: root.example.com:3080
//	  token: jt_...                 # fleetctl tokens add --type=trusted-cluster, on the root
//	  ca_pin: sha256:...            # the root's CA pin
//	  role_map:
//	  - {remote: admin, local: [admin]}
//	  - {remote: "site-*", local: [access]}
//	  - {remote: "^ops-(.*)$", local: ["operator-$1"]}
//	  audit_search: true            # the root's admins may search this fleet's audit
type TrustedCluster struct {
	Kind     string             `json:"kind"`
	Version  string             `json:"version"`
	Metadata Metadata           `json:"metadata"`
	Spec     TrustedClusterSpec `json:"spec"`
}

// TrustedClusterSpec says how to reach and trust a root fleet.
type TrustedClusterSpec struct {
	// RootAddr is the root fleet's HOST:PORT (HTTPS on TCP to join, the
	// tunnel on UDP).
	RootAddr string `json:"root_addr"`
	// Token is the root's join token; it is used once, to join, and never
	// stored or shown.
	Token string `json:"token,omitempty"`
	// CAPin is the pin of the root's CA (sha256:HEX): the leaf trusts the
	// root only if its CA has this pin.
	CAPin string `json:"ca_pin"`
	// RoleMap maps the roles the root vouches for to this fleet's roles;
	// a root user none of whose roles map is refused.
	RoleMap []RoleMapping `json:"role_map"`
	// AuditSearch lets the root's admins search this fleet's audit trail
	// and recordings through the root (fleetctl audit search
	// --cluster=THIS); default off.
	AuditSearch bool `json:"audit_search,omitempty"`
}

// RoleMapping maps remote roles to local ones. Remote is an exact role
// name, a glob ("site-*"), or a regular expression anchored with ^ and $
// ("^site-(.*)$"), whose captures Local may use ("operator-$1").
type RoleMapping struct {
	Remote string   `json:"remote"`
	Local  []string `json:"local"`
}

// ClusterJoinRequest is POSTed by a leaf to its root's PathTrustJoin. CSR
// (DER PKCS#10) is for the leaf's tunnel certificate; HostCAKeys are the
// leaf's SSH host CA keys (authorized_keys format).
type ClusterJoinRequest struct {
	Token      string   `json:"token"`
	Cluster    string   `json:"cluster"`
	Root       string   `json:"root"`
	CSR        []byte   `json:"csr"`
	HostCAKeys []string `json:"host_ca_keys"`
	Version    string   `json:"version,omitempty"`
}

// ClusterJoinResponse gives a leaf what it needs of its root: the tunnel
// certificate (DER), the root's X.509 CA certificates (DER) and its SSH
// user CA keys (authorized_keys format).
type ClusterJoinResponse struct {
	Cluster    string   `json:"cluster"`
	Cert       []byte   `json:"cert"`
	CACerts    [][]byte `json:"ca_certs"`
	UserCAKeys []string `json:"user_ca_keys"`
}

// ClusterCertsRequest asks a root fleet for an SSH certificate for its
// leaf's devices, for the user's key (authorized_keys format).
type ClusterCertsRequest struct {
	SSHPublicKey string `json:"ssh_public_key"`
}

// ClusterCertsResponse is the root's answer: an SSH certificate its user
// CA signed, whose principals are the logins the leaf's roles give the
// user (the leaf decided them), the leaf's roles for the user, and the
// leaf's SSH host CA keys, which verify its devices.
type ClusterCertsResponse struct {
	Cluster    string    `json:"cluster"`
	User       string    `json:"user"`
	Roles      []string  `json:"roles"`
	Logins     []string  `json:"logins"`
	SSHCert    string    `json:"ssh_cert"`
	HostCAKeys []string  `json:"host_ca_keys"`
	Expires    time.Time `json:"expires"`
}

// RemoteUser is how a leaf fleet names a user of its root fleet cluster:
// CLUSTER/USER. No local user name holds a '/', so a root's user never
// passes for one of the leaf's own; their certificates for the leaf's
// devices carry this name as their key ID.
func RemoteUser(cluster, user string) string { return cluster + "/" + user }
