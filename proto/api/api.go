// Package api holds the JSON types and paths of fleetd's HTTPS API, shared by
// fleetd, tsh, fleetctl and the agent's join. It imports neither firmware/ nor
// fleet/.
//
// Authentication: /v1/ping, /v1/join and /v1/login are open; everything else
// needs a client certificate issued by the fleet's X.509 CA (a user's from
// tsh login, or the admin identity in the fleet's data dir). Errors come back
// as an Error body with a non-2xx status.
//
// Brokered connections: a client sends
//
//	GET /v1/connect?device=NAME&login=LOGIN&service=ssh
//	Connection: Upgrade
//	Upgrade: remoteler-connect/1
//
// over HTTP/1.1 with its user certificate. When the user's roles allow the
// login on the device and the device is online, the fleet answers
// 101 Switching Protocols and the connection carries the raw bytes of the
// service (SSH) from then on.
package api

import "time"

// Paths of the API.
const (
	PathPing    = "/v1/ping"
	PathJoin    = "/v1/join"
	PathLogin   = "/v1/login"
	PathDevices = "/v1/devices" // GET list; DELETE /v1/devices/NAME (admin)
	PathConnect = "/v1/connect" // GET with Upgrade, see package doc
	PathUsers   = "/v1/users"   // admin: GET list, POST add, DELETE /v1/users/NAME
	PathRoles   = "/v1/roles"   // admin: GET list, PUT create/replace, DELETE /v1/roles/NAME
	PathTokens  = "/v1/tokens"  // admin: GET list, POST add, DELETE /v1/tokens/ID
	PathStatus  = "/v1/status"  // admin: GET
	PathWhoami  = "/v1/whoami"  // any certificate: GET
	// PathReady is a fleetd replica's readiness, for load balancers: 200
	// while it takes devices and users, 503 while it cannot (a replica
	// cut off from the fleet's store). No certificate needed.
	PathReady = "/v1/ready"
)

// Ready answers GET PathReady.
type Ready struct {
	Ready bool `json:"ready"`
	// Replica is the replica's ID, with several.
	Replica string `json:"replica,omitempty"`
}

// UpgradeProto is the Upgrade header value for /v1/connect.
const UpgradeProto = "remoteler-connect/1"

// ConnectWait is the longest the fleet waits for a device to take a
// connection (an idle device whose NAT forgot it answers at its next
// keep-alive, every 25 s by default) before it answers a connect. Clients
// wait for the answer longer than this, so that the fleet's reason, not a
// timeout, reaches the user.
const ConnectWait = 35 * time.Second

// HeaderSession names the session in the 101 answer to /v1/connect; GET
// PathSessions/ID then tells why it ended.
const HeaderSession = "X-Remoteler-Session"

// HeaderSessionToken carries, in the 101 answer to /v1/connect, a secret
// that lets the client ask GET PathSessions/ID how the session ended
// without a certificate (it may have expired or been revoked by then):
// the client sends it back in the same header.
const HeaderSessionToken = "X-Remoteler-Session-Token"

// HeaderFrames, sent with the value "1" by a client of /v1/connect, asks
// the fleet to frame what it sends down the upgraded connection
// (proto/userframe): the device's bytes in data frames, and, the moment
// the fleet ends the session, an end frame with the reason, which the
// client shows its user before anything else. The fleet's 101 answer
// carries the same header when it frames; without it the bytes are raw.
// What the client sends up is never framed.
const HeaderFrames = "X-Remoteler-Frames"

// HeaderResume, sent with the value "1" by a client of /v1/connect, asks
// for a session whose fleet end of the resume state (proto/resume) the
// client holds itself: the session then outlives the fleetd replica the
// client is connected to, and any other. The fleet's 101 answer carries
// HeaderResumeSecret when it agreed; the upgraded connection then carries
// proto/resume frames both ways (framed down when HeaderFrames asked for
// it), to and from the device's agent. When it breaks without the fleet
// saying why (HeaderFrames' end frame), the client connects again, to any
// replica, with HeaderResume set to the session's ID, HeaderResumeSecret
// to its secret and HeaderResumeReceived to how many of the session's
// bytes it has; the 101 answer's HeaderResumeReceived says how many the
// device has, and the session goes on from there. An answer 404 means the
// device no longer holds the session; 403 that the user may no longer
// reach the device.
const (
	HeaderResume         = "X-Remoteler-Resume"
	HeaderResumeSecret   = "X-Remoteler-Resume-Secret"
	HeaderResumeReceived = "X-Remoteler-Resume-Received"
)

// PathSessions is GET /v1/sessions/ID: how a brokered session ended (its own
// user, or an admin).
const PathSessions = "/v1/sessions"

// SessionEnd says how a brokered session ended. Reason is empty while it is
// live and when it ended normally (one side closed it).
type SessionEnd struct {
	ID      string    `json:"id"`
	User    string    `json:"user"`
	Device  string    `json:"device"`
	Login   string    `json:"login,omitempty"`
	Ended   bool      `json:"ended"`
	EndedAt time.Time `json:"ended_at,omitzero"`
	Reason  string    `json:"reason,omitempty"`
}

// Error codes in Error.Code.
const (
	CodeBadRequest    = "bad_request"
	CodeUnauthorized  = "unauthorized"  // bad password, bad token, bad certificate
	CodeTOTPRequired  = "totp_required" // password ok, a TOTP code is needed
	CodeForbidden     = "forbidden"     // authenticated but not allowed
	CodeNotFound      = "not_found"
	CodeConflict      = "conflict"
	CodeDeviceOffline = "device_offline"
	CodeInternal      = "internal"
	// CodeBusy: the fleet is too busy to answer now (every password check
	// taken, say); try again after the Retry-After header's seconds.
	CodeBusy = "busy"
	// CodeRateLimited: too many requests from the client's address; try
	// again after the Retry-After header's seconds.
	CodeRateLimited = "rate_limited"
	// CodeUnavailable: this fleetd replica cannot take the request now (it
	// lost the fleet's store); try again, and another replica answers.
	CodeUnavailable = "unavailable"
)

// Error is the body of every non-2xx answer.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"error"`
}

func (e *Error) Error() string { return e.Message }

// Ping is the answer to GET /v1/ping.
type Ping struct {
	Cluster         string    `json:"cluster"`
	Version         string    `json:"version"`
	ProtocolVersion int       `json:"protocol_version"`
	CAPin           string    `json:"ca_pin"`
	ServerTime      time.Time `json:"server_time"`
}

// JoinRequest is POSTed by an agent joining the fleet with a token. The CSR
// (DER PKCS#10, signed by the device's new TLS key) proves possession of the
// key; SSHPublicKey is the device's host key in authorized_keys format.
type JoinRequest struct {
	Token        string            `json:"token"`
	Name         string            `json:"name"`
	Labels       map[string]string `json:"labels,omitempty"`
	CSR          []byte            `json:"csr"`
	SSHPublicKey string            `json:"ssh_public_key"`
	AgentVersion string            `json:"agent_version,omitempty"`
}

// JoinResponse carries the device's identity and certificates.
type JoinResponse struct {
	DeviceID    string    `json:"device_id"`
	Name        string    `json:"name"`
	Cluster     string    `json:"cluster"`
	Cert        []byte    `json:"cert"`          // DER X.509 client certificate
	CACerts     [][]byte  `json:"ca_certs"`      // DER, the fleet's X.509 CA(s)
	SSHHostCert string    `json:"ssh_host_cert"` // authorized_keys format
	UserCAKeys  []string  `json:"user_ca_keys"`  // authorized_keys format
	ServerTime  time.Time `json:"server_time"`
	// ReleaseKeys are the release keys (minisign, base64 lines) the fleet
	// accepts agent releases signed with; the agent pins them for OTA
	// when its config names none.
	ReleaseKeys []string `json:"release_keys,omitempty"`
}

// LoginRequest is POSTed by tsh. CSR is a DER PKCS#10 request for the user's
// X.509 certificate; SSHPublicKey is in authorized_keys format. TTL is a
// requested lifetime; the fleet caps it by the user's roles.
type LoginRequest struct {
	User         string        `json:"user"`
	Password     string        `json:"password"`
	TOTP         string        `json:"totp,omitempty"`
	CSR          []byte        `json:"csr"`
	SSHPublicKey string        `json:"ssh_public_key"`
	TTL          time.Duration `json:"ttl,omitempty"`
}

// LoginResponse carries the user's short-lived certificates.
type LoginResponse struct {
	User       string    `json:"user"`
	Roles      []string  `json:"roles"`
	Logins     []string  `json:"logins"`
	Cluster    string    `json:"cluster"`
	SSHCert    string    `json:"ssh_cert"`     // authorized_keys format
	Cert       []byte    `json:"cert"`         // DER X.509 client certificate
	CACerts    [][]byte  `json:"ca_certs"`     // DER
	HostCAKeys []string  `json:"host_ca_keys"` // authorized_keys format
	Expires    time.Time `json:"expires"`
}

// Whoami is the answer to GET /v1/whoami.
type Whoami struct {
	User    string    `json:"user"`
	Roles   []string  `json:"roles"`
	Logins  []string  `json:"logins"`
	Expires time.Time `json:"expires"`
}

// Device is one device as listed by GET /v1/devices.
type Device struct {
	ID           string            `json:"id"`
	Name         string            `json:"name"`
	Labels       map[string]string `json:"labels,omitempty"`
	Online       bool              `json:"online"`
	LastSeen     time.Time         `json:"last_seen"`
	AgentVersion string            `json:"agent_version,omitempty"`
	OS           string            `json:"os,omitempty"`
	Arch         string            `json:"arch,omitempty"`
	Addr         string            `json:"addr,omitempty"`
	JoinedAt     time.Time         `json:"joined_at"`
	// Replica is the fleetd replica holding the device's tunnel, with
	// several (docs/replicas.md).
	Replica string `json:"replica,omitempty"`
	// Logins are the logins the asking user may use on this device.
	Logins []string `json:"logins,omitempty"`
	// Services are what the device offers, from its last hello: "ssh",
	// and "kube" when it runs a Kubernetes cluster.
	Services []string `json:"services,omitempty"`
	// Audit is the device's last report on its audit queue (admins only).
	Audit *DeviceAudit `json:"audit,omitempty"`
	// Link is the health of the device's tunnel.
	Link Link `json:"link"`
	// Update is where the device's self-update stands (nil: none yet).
	Update *DeviceUpdate `json:"update,omitempty"`
	// Mode is how the fleet reaches the device: ModeTunnel (its reverse
	// tunnel) or ModeDirect (the fleet dials it: a direct node).
	Mode string `json:"mode,omitempty"`
	// DirectAddr is where a direct node listens for the fleet.
	DirectAddr string `json:"direct_addr,omitempty"`
}

// How the fleet reaches a device (Device.Mode).
const (
	// ModeTunnel: the device holds a reverse tunnel to the fleet.
	ModeTunnel = "tunnel"
	// ModeDirect: a direct node on the fleet's own network; the fleet
	// dials it for each connection and holds nothing while it is idle.
	ModeDirect = "direct"
)

// Link is a device tunnel's health as the fleet sees it. Counters are for
// the current connection; Reconnects and AddrChangedAt span connections.
type Link struct {
	RTTMillis float64 `json:"rtt_ms,omitempty"`
	// LossPercent is the share of the packets the fleet sent while the link
	// worked that were lost: packets lost in blackouts do not count.
	LossPercent float64 `json:"loss_percent,omitempty"`
	// Blackouts counts the link's blackouts on this connection: seconds on
	// end in which the fleet sent and heard nothing.
	Blackouts      int       `json:"blackouts,omitempty"`
	BytesSent      uint64    `json:"bytes_sent,omitempty"` // fleet → device
	BytesReceived  uint64    `json:"bytes_received,omitempty"`
	ConnectedSince time.Time `json:"connected_since,omitzero"`
	// Reconnects counts the device's connections after its first.
	Reconnects int `json:"reconnects"`
	// AddrChangedAt is when the device's address last changed (a new NAT
	// mapping, or a move to another network).
	AddrChangedAt time.Time `json:"addr_changed_at,omitzero"`
}

// User is a fleet user as admins see it (never the password hash).
type User struct {
	Name      string              `json:"name"`
	Roles     []string            `json:"roles"`
	Traits    map[string][]string `json:"traits,omitempty"`
	TOTP      bool                `json:"totp"`
	CreatedAt time.Time           `json:"created_at"`
	// SSO is set for users who log in through a connector (single
	// sign-on): they have no password, and their roles and traits are
	// those their provider's claims gave at their last login.
	SSO *SSOUser `json:"sso,omitempty"`
}

// SSOUser says where a single sign-on user comes from.
type SSOUser struct {
	// Connector is the connector they logged in with, Subject their ID at
	// its provider (the sub claim).
	Connector string `json:"connector"`
	Subject   string `json:"subject"`
	// LastLogin is when they last logged in; Expires is when the
	// certificates of that login expire at the latest.
	LastLogin time.Time `json:"last_login"`
	Expires   time.Time `json:"expires,omitzero"`
}

// AddUserRequest is POSTed to /v1/users. When TOTP is true the answer's
// TOTPURL holds the otpauth:// URL to enrol an authenticator.
type AddUserRequest struct {
	Name     string   `json:"name"`
	Password string   `json:"password"`
	Roles    []string `json:"roles"`
	Logins   []string `json:"logins,omitempty"`
	TOTP     bool     `json:"totp,omitempty"`
}

// AddUserResponse answers AddUserRequest.
type AddUserResponse struct {
	User    User   `json:"user"`
	TOTPURL string `json:"totp_url,omitempty"`
}

// Role is a role resource, as in role.yaml:
//
//	kind: role
//	version: v1
//	metadata:
//	  name: field-tech
//	spec:
//	  allow:
//	    logins: ["{{internal.logins}}", pi]
//	    device_labels: {site: [north]}
//	  deny:
//	    logins: [root]
//	    device_labels: {"*": ["*"]}
//	  options:
//	    max_session_ttl: 8h
type Role struct {
	Kind     string   `json:"kind"`
	Version  string   `json:"version"`
	Metadata Metadata `json:"metadata"`
	Spec     RoleSpec `json:"spec"`
}

// Metadata names a resource.
type Metadata struct {
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
}

// RoleSpec is what a role allows and denies. Deny wins.
type RoleSpec struct {
	Allow   RoleConditions `json:"allow"`
	Deny    RoleConditions `json:"deny,omitempty"`
	Options RoleOptions    `json:"options,omitempty"`
}

// RoleConditions select devices and logins. DeviceLabels maps a label to
// the values it may take ("*" matches any value; a role with no labels in
// allow matches no device). Logins may use "{{internal.logins}}", which
// expands to the user's logins trait.
type RoleConditions struct {
	Logins       []string            `json:"logins,omitempty"`
	DeviceLabels map[string][]string `json:"device_labels,omitempty"`
	// Admin grants (in allow) or takes away (in deny) the fleet admin API:
	// users, roles, tokens, devices rm, status.
	Admin bool `json:"admin,omitempty"`
	// KubernetesUsers and KubernetesGroups are whom the user acts as
	// (impersonation) in the Kubernetes clusters of the devices the
	// condition selects. Like logins they may be "{{internal.TRAIT}}"
	// templates; "*" only in deny, where it removes every value.
	KubernetesUsers  []string `json:"kubernetes_users,omitempty"`
	KubernetesGroups []string `json:"kubernetes_groups,omitempty"`
	// AppLabels select the web apps on devices the user may open (allow)
	// or may not (deny), like device_labels select devices. They are
	// matched against the app's labels together with its device's
	// labels; where both have a key, the device's value counts.
	AppLabels map[string][]string `json:"app_labels,omitempty"`
}

// RoleOptions hold per-role settings.
type RoleOptions struct {
	// MaxSessionTTL caps certificate lifetime, e.g. "8h". The smallest across
	// a user's roles applies. Empty means the fleet default (8h).
	MaxSessionTTL string `json:"max_session_ttl,omitempty"`
	// RecordInput records what the user types in interactive sessions, as
	// well as what they see (which is always recorded). Any of a user's
	// roles turning it on turns it on.
	RecordInput bool `json:"record_input,omitempty"`
	// PortForwarding allows SSH port forwarding (ssh -L) to devices;
	// unset means allowed. Any of a user's roles setting it to false
	// turns it off.
	PortForwarding *bool `json:"port_forwarding,omitempty"`
	// SSHFileCopy allows copying files over SSH (scp, sftp); unset means
	// allowed. Any of a user's roles setting it to false turns it off.
	SSHFileCopy *bool `json:"ssh_file_copy,omitempty"`
}

// Token is a join token as admins see it.
type Token struct {
	ID        string            `json:"id"`
	Token     string            `json:"token,omitempty"` // only when just created
	Expires   time.Time         `json:"expires"`
	UsesLeft  int               `json:"uses_left"`
	Labels    map[string]string `json:"labels,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	// JoinString holds the token and the fleet's CA pin together, for
	// edge-agent start --token (only when just created).
	JoinString string `json:"join_string,omitempty"`
	CAPin      string `json:"ca_pin,omitempty"`
	// Type is what the token joins: TokenDevice or TokenTrustedCluster.
	Type string `json:"type,omitempty"`
}

// AddTokenRequest is POSTed to /v1/tokens. Zero TTL means 1h; zero Uses means 1.
type AddTokenRequest struct {
	TTL    time.Duration     `json:"ttl,omitempty"`
	Uses   int               `json:"uses,omitempty"`
	Labels map[string]string `json:"labels,omitempty"`
	// Type is what the token joins: TokenDevice (the default) or
	// TokenTrustedCluster (a leaf fleet, which takes no labels).
	Type string `json:"type,omitempty"`
}

// Token types (AddTokenRequest.Type, Token.Type).
const (
	TokenDevice         = "device"
	TokenTrustedCluster = "trusted-cluster"
)

// Status is the answer to GET /v1/status.
type Status struct {
	Cluster       string    `json:"cluster"`
	Version       string    `json:"version"`
	CAPin         string    `json:"ca_pin"`
	Listen        string    `json:"listen"`
	StartedAt     time.Time `json:"started_at"`
	Users         int       `json:"users"`
	Devices       int       `json:"devices"`
	DevicesOnline int       `json:"devices_online"`
}
