package api

import "time"

// Web apps on devices. Each app has a public address under the fleet's
// apps domain, https://APP--DEVICE.DOMAIN[:PORT] (docs/apps.md), that a
// browser opens after the fleet's login, and that tsh proxy app reaches
// with an app certificate from tsh apps login.
const (
	// PathApps is GET: the apps the user may open, []App (for admins:
	// every app, with its URI on the device).
	PathApps = "/v1/apps"
	// PathAppsLogin is POST AppLoginRequest: a short-lived client
	// certificate for one app (AppLoginResponse).
	PathAppsLogin = "/v1/apps/login"
	// PathAppsRotateKey is POST (admin): a new signing key for the JWTs
	// apps receive; the previous key stays published (AppKeys).
	PathAppsRotateKey = "/v1/apps/rotate-key"
	// PathAppsCluster is the query parameter of PathApps that lists a
	// leaf cluster's apps, with their addresses on this fleet.
	PathAppsCluster = "cluster"
	// HeaderAppSession names, on a request a root fleet relays to an app
	// of a leaf, the root's app session it belongs to: the leaf keeps one
	// app session per root session and app, and the root ends it by that
	// ID (proto.SessionEnd).
	HeaderAppSession = "X-Remoteler-App-Session"
	// HeaderAppEnded, on a leaf's answer to a relayed app request, says
	// the leaf ended the app session, and why: the root ends its own.
	HeaderAppEnded = "X-Remoteler-App-Ended"
	// PathJWKS is where the fleet publishes the keys that verify app
	// JWTs, on its own host.
	PathJWKS = "/.well-known/jwks.json"
)

// App is one web app on a device, as GET /v1/apps lists it.
type App struct {
	// Name is the app's name on its device; Label is APP--DEVICE, its
	// name in the fleet (tsh apps login LABEL).
	Name   string `json:"name"`
	Device string `json:"device"`
	Label  string `json:"label"`
	// Cluster is the leaf cluster whose device offers the app, reached
	// through this fleet (its Label is then APP---CLUSTER--DEVICE); empty
	// for this fleet's own devices.
	Cluster string `json:"cluster,omitempty"`
	// Labels are the app's own labels (roles match them together with
	// the device's).
	Labels map[string]string `json:"labels,omitempty"`
	// PublicAddr is where a browser opens it, https://APP--DEVICE.DOMAIN[:PORT];
	// empty when its name is too long for one DNS label.
	PublicAddr string `json:"public_addr,omitempty"`
	// Online says whether its device's tunnel is up.
	Online bool `json:"online"`
	// URI is where the app listens on the device, and InsecureSkipVerify
	// whether the agent accepts its certificate unverified (admins only).
	URI                string `json:"uri,omitempty"`
	InsecureSkipVerify bool   `json:"insecure_skip_verify,omitempty"`
}

// AppLoginRequest asks for a client certificate for one app. App is its
// label (APP--DEVICE) or, when one device only offers it, its name. CSR
// is a DER PKCS#10 request for the certificate's key.
type AppLoginRequest struct {
	App string `json:"app"`
	CSR []byte `json:"csr"`
	// Cluster names the leaf cluster whose app it is (trusted clusters);
	// the leaf decides whether the user may open it.
	Cluster string `json:"cluster,omitempty"`
	// TTL is a requested lifetime; the fleet caps it by the user's
	// certificate.
	TTL time.Duration `json:"ttl,omitempty"`
}

// AppLoginResponse carries an app certificate: present it (mutual TLS) to
// the app's public address, with SNI and Host naming it.
type AppLoginResponse struct {
	App        App       `json:"app"`
	Cert       []byte    `json:"cert"`     // DER
	CACerts    [][]byte  `json:"ca_certs"` // DER, the fleet's
	Expires    time.Time `json:"expires"`
	PublicHost string    `json:"public_host"` // APP--DEVICE.DOMAIN
}

// AppKeys answers PathAppsRotateKey: the IDs of the keys published, the
// signing key first.
type AppKeys struct {
	Keys []string `json:"keys"`
}
