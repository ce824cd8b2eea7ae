package proto

import "time"

// Kind names the type of a frame's body.
type Kind uint8

// Frame kinds. Append new kinds at the end only.
const (
	KindHello          Kind = 1
	KindHelloAck       Kind = 2
	KindHeartbeat      Kind = 3
	KindHeartbeatAck   Kind = 4
	KindRenewRequest   Kind = 5
	KindRenewResponse  Kind = 6
	KindError          Kind = 7
	KindStreamHeader   Kind = 8
	KindStreamAccept   Kind = 9
	KindResume         Kind = 10
	KindResumeAccept   Kind = 11
	KindAuditBatch     Kind = 12
	KindAuditAck       Kind = 13
	KindRecordingChunk Kind = 14
	KindRecordingAck   Kind = 15
	KindSessionEnd     Kind = 16
	KindUpdateOffer    Kind = 17
	KindUpdateStatus   Kind = 18
	KindAgentStream    Kind = 19
	KindClusterInfo    Kind = 20
	KindHeldSessions   Kind = 21
	kindEnd            Kind = 22 // one past the last kind
)

var kindNames = [...]string{
	KindHello:          "hello",
	KindHelloAck:       "hello-ack",
	KindHeartbeat:      "heartbeat",
	KindHeartbeatAck:   "heartbeat-ack",
	KindRenewRequest:   "renew-request",
	KindRenewResponse:  "renew-response",
	KindError:          "error",
	KindStreamHeader:   "stream-header",
	KindStreamAccept:   "stream-accept",
	KindResume:         "resume",
	KindResumeAccept:   "resume-accept",
	KindAuditBatch:     "audit-batch",
	KindAuditAck:       "audit-ack",
	KindRecordingChunk: "recording-chunk",
	KindRecordingAck:   "recording-ack",
	KindSessionEnd:     "session-end",
	KindUpdateOffer:    "update-offer",
	KindUpdateStatus:   "update-status",
	KindAgentStream:    "agent-stream",
	KindClusterInfo:    "cluster-info",
	KindHeldSessions:   "held-sessions",
}

func (k Kind) String() string {
	if k > 0 && k < kindEnd {
		return kindNames[k]
	}
	return "kind(" + itoa(int(k)) + ")"
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}

// Message is a frame body. Each message type reports its own kind.
type Message interface {
	Kind() Kind
}

// Hello is the agent's first message on the control stream. The device's
// identity is its mTLS certificate; Name is checked against it.
type Hello struct {
	ProtocolVersion int               `cbor:"1,keyasint"`
	Name            string            `cbor:"2,keyasint"`
	AgentVersion    string            `cbor:"3,keyasint,omitempty"`
	OS              string            `cbor:"4,keyasint,omitempty"`
	Arch            string            `cbor:"5,keyasint,omitempty"`
	Labels          map[string]string `cbor:"6,keyasint,omitempty"`
	// Time is the device clock in Unix milliseconds; the fleet compares it
	// with its own to spot devices without a real-time clock.
	Time     int64    `cbor:"7,keyasint,omitempty"`
	Services []string `cbor:"8,keyasint,omitempty"`
	// BootID is new each time the agent process starts. When it changes,
	// the fleet drops the sessions it held for the device: a restarted
	// agent cannot resume them.
	BootID string `cbor:"9,keyasint,omitempty"`
	// Apps are the web apps the agent offers (service "app"), as its
	// configuration declares them. The fleet checks each (App's doc) and
	// refuses those it does not accept; the others get a public address.
	Apps []App `cbor:"10,keyasint,omitempty"`
	// KeepaliveMillis and LivenessMillis are the agent's NAT keep-alive and
	// heartbeat periods (negative keep-alive: off); the fleet judges a device
	// that has sent nothing for a few keep-alive periods to be offline.
	// Zero: the agent's defaults.
	KeepaliveMillis int64 `cbor:"11,keyasint,omitempty"`
	LivenessMillis  int64 `cbor:"12,keyasint,omitempty"`
	// Direct, from a direct node (edge-agent --mode=direct), is the
	// address (IP:PORT) where the agent listens for the fleet: the fleet
	// dials it, QUIC with mutual TLS (DirectALPN), for each brokered
	// connection instead of opening a stream down a held tunnel, and the
	// agent's tunnel is up only while it checks in (its events, its
	// renewals), not held. Empty: a device on a held tunnel.
	Direct string `cbor:"16,keyasint,omitempty"`
}

// App is a web app on the device, as the agent's configuration declares
// it. A stream of service "app" names one by Name in its header's Target;
// the agent then connects to URI (and to nothing else) and the stream
// carries HTTP/1.1 to the app.
type App struct {
	// Name is one DNS label (a-z, 0-9, '-', not starting or ending with
	// '-', without "--"), unique on the device.
	Name string `cbor:"1,keyasint" json:"name"`
	// URI is where the app listens on the device's side:
	// http://HOST[:PORT] or https://HOST[:PORT], no path, query or user.
	URI string `cbor:"2,keyasint" json:"uri"`
	// Labels describe the app for roles' app_labels.
	Labels map[string]string `cbor:"3,keyasint,omitempty" json:"labels,omitempty"`
	// InsecureSkipVerify says the agent does not verify an https app's
	// certificate (a self-signed one): the operator opted in.
	InsecureSkipVerify bool `cbor:"4,keyasint,omitempty" json:"insecure_skip_verify,omitempty"`
	// Rewrite adjusts what passes between the user and the app.
	Rewrite *AppRewrite `cbor:"5,keyasint,omitempty" json:"rewrite,omitempty"`
}

// AppRewrite adjusts requests to an app and its answers.
type AppRewrite struct {
	// Redirect lists more host names (HOST or HOST:PORT) by which the app
	// names itself in Location headers and cookie domains; like the URI's
	// host, they are rewritten to the app's public address.
	Redirect []string `cbor:"1,keyasint,omitempty" json:"redirect,omitempty"`
	// Headers are set on every request to the app. A value may hold
	// {{user}} and {{roles}} (comma-separated), which the fleet fills in.
	Headers []AppHeader `cbor:"2,keyasint,omitempty" json:"headers,omitempty"`
}

// AppHeader is one header Rewrite sets.
type AppHeader struct {
	Name  string `cbor:"1,keyasint" json:"name"`
	Value string `cbor:"2,keyasint" json:"value"`
}

// HelloAck answers Hello. It tells the device the fleet's time (devices often
// have no real-time clock) and its link settings.
type HelloAck struct {
	DeviceID   string `cbor:"1,keyasint"`
	ServerTime int64  `cbor:"2,keyasint"` // Unix milliseconds
	// KeepaliveMillis is how often the agent refreshes its NAT mapping
	// while idle; 0 keeps the agent's own setting, negative turns it off.
	KeepaliveMillis int64 `cbor:"3,keyasint,omitempty"`
	// RenewAfter is when (Unix milliseconds) the agent should renew its
	// certificates; 0 means the agent decides from the certificate itself.
	RenewAfter int64 `cbor:"4,keyasint,omitempty"`
	// LivenessMillis is how often the agent sends a heartbeat while idle;
	// 0 keeps the agent's own setting.
	LivenessMillis int64 `cbor:"5,keyasint,omitempty"`
	// LinkTag names this connection in the agent's NAT keep-alives, so the
	// fleet can tell when a keep-alive comes from a new address (see
	// LinkPokeByte).
	LinkTag []byte `cbor:"6,keyasint,omitempty"`
	// Updates says the fleet takes update-status messages (OTA, see
	// update.go); an agent sends none to a fleet that does not.
	Updates bool `cbor:"7,keyasint,omitempty"`
	// LinkKey keys the MAC of the fleet's link hurries on this connection
	// (see LinkHurryByte); LinkKeySize bytes, new for every connection.
	LinkKey []byte `cbor:"8,keyasint,omitempty"`
	// ResetToken is what a link reset for this connection carries
	// (LinkResetToken of LinkTag under the fleet's link key).
	ResetToken []byte `cbor:"9,keyasint,omitempty"`
}

// Heartbeat tells the fleet the agent is alive (its QUIC ACK is the
// answer: the fleet sends no HeartbeatAck since protocol 1's revision of
// 2026-11-21) and carries only what changed since the last one (nil fields
// mean "unchanged").
type Heartbeat struct {
	Seq uint64 `cbor:"1,keyasint"`
	// Labels, when present, replaces the device's labels; an empty map
	// clears them and an absent one leaves them as they are.
	Labels map[string]string `cbor:"2,keyasint,omitzero"`
}

// HeartbeatAck answers a Heartbeat with the fleet's time.
type HeartbeatAck struct {
	Seq        uint64 `cbor:"1,keyasint"`
	ServerTime int64  `cbor:"2,keyasint"`
}

// RenewRequest asks the fleet for fresh certificates for new keys the device
// generated. CSR is a DER PKCS#10 request signed by the new TLS key, which
// proves possession; SSHPublicKey is in SSH wire format.
type RenewRequest struct {
	CSR          []byte `cbor:"1,keyasint"`
	SSHPublicKey []byte `cbor:"2,keyasint"`
}

// RenewResponse carries renewed certificates, or an error.
type RenewResponse struct {
	Cert        []byte   `cbor:"1,keyasint,omitempty"` // DER
	CACerts     [][]byte `cbor:"2,keyasint,omitempty"` // DER
	SSHHostCert []byte   `cbor:"3,keyasint,omitempty"` // SSH wire format
	UserCAKeys  [][]byte `cbor:"4,keyasint,omitempty"` // SSH wire format
	Err         *Error   `cbor:"5,keyasint,omitempty"`
}

// Identity is the fleet-verified identity of the user behind a brokered
// stream. The device trusts it only because it arrives on the fleet's
// tunnel, and still checks what it can itself (certificate, login).
type Identity struct {
	User  string   `cbor:"1,keyasint"`
	Roles []string `cbor:"2,keyasint,omitempty"`
	// Login is the device login the fleet allowed for this stream.
	Login string `cbor:"3,keyasint,omitempty"`
	// Expires is when the user's certificate expires, Unix milliseconds.
	Expires int64 `cbor:"4,keyasint,omitempty"`
	// Cluster is the name of the fleet that verified the user.
	Cluster string `cbor:"5,keyasint,omitempty"`
	// KubeUser and KubeGroups are who the user acts as in the device's
	// Kubernetes cluster (service "kube"): the agent sends them as
	// Impersonate-User and Impersonate-Group and drops any impersonation
	// headers of the user's own. The fleet resolved them from the user's
	// roles (kubernetes_users, kubernetes_groups).
	KubeUser   string   `cbor:"6,keyasint,omitempty"`
	KubeGroups []string `cbor:"7,keyasint,omitempty"`
	// RecordInput asks the device to record what the user types in an
	// interactive session, as well as the output.
	RecordInput bool `cbor:"8,keyasint,omitempty"`
	// NoPortForwarding and NoFileCopy say the user's roles turn SSH port
	// forwarding (ssh -L) and file copies (scp, sftp) off (role options
	// port_forwarding and ssh_file_copy); the device refuses them.
	NoPortForwarding bool `cbor:"9,keyasint,omitempty"`
	NoFileCopy       bool `cbor:"10,keyasint,omitempty"`
	// Traits are the user's traits as the fleet that verified them holds
	// them. A root fleet vouches with them for its user to a leaf fleet
	// (service "cluster"), which fills its roles' templates
	// ({{internal.logins}}) with them.
	Traits map[string][]string `cbor:"11,keyasint,omitempty"`
	// Admin says the caller is the vouching fleet's admin identity
	// (fleetctl), not a user (service "cluster"): a leaf lets it read its
	// audit trail when its trust allows that, and nothing else.
	Admin bool `cbor:"12,keyasint,omitempty"`
	// UserCAKeys are SSH user CA keys (wire format) the device trusts for
	// this stream besides its fleet's own: those of the root fleet whose
	// user this is, which the device's fleet trusts (trusted clusters).
	// The device's fleet decided the login; the device still checks the
	// user's certificate against them.
	UserCAKeys [][]byte `cbor:"13,keyasint,omitempty"`
}

// StreamHeader starts every stream the fleet opens to a device.
type StreamHeader struct {
	Service   string   `cbor:"1,keyasint"`           // "ssh", later "kube", "app"
	Target    string   `cbor:"2,keyasint,omitempty"` // service-specific target
	SessionID string   `cbor:"3,keyasint"`
	Identity  Identity `cbor:"4,keyasint"`
	// ClientAddr is the user's address as the fleet saw it, for the audit.
	ClientAddr string `cbor:"5,keyasint,omitempty"`
	// Secret is the session's resume secret: the device must show it (on
	// its own mTLS-authenticated tunnel) to re-attach the session.
	Secret []byte `cbor:"6,keyasint,omitempty"`
	// UserHeld says the user's client holds the fleet's end of the
	// session's resume state (it asked for it: api.HeaderResume): the
	// fleet only relays the session's frames, so the session outlives any
	// replica. The agent does not re-attach such a session itself after a
	// reconnect: the client does, through whichever replica it reaches,
	// with a stream whose header says Resume.
	UserHeld bool `cbor:"14,keyasint,omitempty"`
	// Resume re-attaches the agent's user-held session SessionID (its
	// Secret shown again) instead of starting one; Received is how many of
	// the session's bytes the user's client has. The agent answers
	// StreamAccept and then, on the stream, ResumeAccept with how many it
	// has; the session's frames follow.
	Resume   bool   `cbor:"15,keyasint,omitempty"`
	Received uint64 `cbor:"16,keyasint,omitempty"`
	// End, with Resume, ends the session with this message instead of
	// re-attaching it: the fleet refused the user's resume because their
	// access ended while their client was away. The agent checks the
	// secret, user and login as for a re-attach, answers StreamAccept and
	// ends the session as proto.SessionEnd would.
	End string `cbor:"17,keyasint,omitempty"`
}

// Resume starts a stream the agent opens after a reconnect to re-attach a
// session. Received is how many bytes of the session the agent has.
type Resume struct {
	SessionID string `cbor:"1,keyasint"`
	Secret    []byte `cbor:"2,keyasint"`
	Received  uint64 `cbor:"3,keyasint"`
	// Replaying says the agent replays its bytes from From right behind
	// this frame, without waiting for ResumeAccept: a link hurry told it
	// where the fleet was (LinkHurry.Received). The fleet skips what it
	// already has; a From beyond that is a protocol error.
	Replaying bool   `cbor:"4,keyasint,omitempty"`
	From      uint64 `cbor:"5,keyasint,omitempty"`
}

// ResumeAccept answers Resume: a zero Code re-attaches the session and
// Received is how many bytes of it the fleet has; anything else ends it.
type ResumeAccept struct {
	Code     ErrorCode `cbor:"1,keyasint"`
	Message  string    `cbor:"2,keyasint,omitempty"`
	Received uint64    `cbor:"3,keyasint"`
}

// SessionEnd is sent by the fleet on the control stream to end a brokered
// session whose access ended (certificate expired, user or role removed,
// a lock). The agent shows Message to the user where the service can
// (on the standard error of each open SSH session), then closes the
// session. The fleet closes its side shortly after in any case, so a
// device that ignores it keeps nothing open.
type SessionEnd struct {
	SessionID string `cbor:"1,keyasint"`
	Message   string `cbor:"2,keyasint,omitempty"`
}

// MaxSessionEndMessage bounds SessionEnd.Message (the agent cuts longer
// ones).
const MaxSessionEndMessage = 1024

// Services the agent can serve.
const (
	ServiceSSH  = "ssh"
	ServiceKube = "kube" // the device's Kubernetes API
	ServiceApp  = "app"  // a web app on the device; Target names it
	// ServiceCluster is a leaf fleet's HTTPS API, reached by its root
	// fleet down the leaf's tunnel (trusted clusters): the stream carries
	// HTTP/1.1 requests of the root's user, whom the header's identity
	// names as the root vouches for them; the leaf decides with its own
	// roles. A leaf accepts no other service from its root.
	ServiceCluster = "cluster"
)

// ClusterInfo is exchanged on a leaf fleet's tunnel to its root (trusted
// clusters): the leaf sends its own after every hello and when its CAs
// change, and the root answers with its own. Each side keeps what it
// needs of the other's: the root the leaf's SSH host CA keys (its users
// verify the leaf's devices with them), the leaf the root's SSH user CA
// keys (the leaf's devices accept the root's users' certificates signed
// by them, stream by stream) and X.509 CA certificates (the leaf verifies
// the root with them when it dials). Keys are SSH wire format,
// certificates DER.
//
// A leaf whose admin removed its trust in the root sends a last one with
// Leaving (the reason, for the root's users) before it closes its tunnel:
// the root forgets the leaf and ends the sessions it relays there, so that
// its users learn why rather than wait for a leaf that will not come back.
type ClusterInfo struct {
	Cluster    string   `cbor:"1,keyasint,omitempty"`
	HostCAKeys [][]byte `cbor:"2,keyasint,omitempty"`
	UserCAKeys [][]byte `cbor:"3,keyasint,omitempty"`
	CACerts    [][]byte `cbor:"4,keyasint,omitempty"`
	Leaving    string   `cbor:"5,keyasint,omitempty"`
}

// MaxClusterKeys bounds each list of a ClusterInfo.
const MaxClusterKeys = 16

// DirectALPN is the TLS application protocol of the fleet's connections
// to a direct node (Hello.Direct): the fleet opens one stream per brokered
// connection, starting with a StreamHeader that the agent answers with a
// StreamAccept, after which the stream carries the session's bytes as
// they are (no resume framing: a direct node is on the fleet's own
// network). To end a session the fleet opens another stream on the same
// connection with a SessionEnd frame.
const DirectALPN = "remoteler-edge-direct/1"

// DirectWindow is how long after its last check-in the fleet counts a
// direct node as online, and so dials it: three of MaxCheckIn. A direct
// node checks in at least every MaxCheckIn, so that one missed check-in
// does not take it offline.
const (
	DirectWindow = 3 * MaxCheckIn
	MaxCheckIn   = 5 * time.Minute
)

// FleetOU is the Subject OU of the client certificate a fleet presents
// when it dials a direct node; the agent accepts only a certificate with
// this OU from its fleet's CAs.
const FleetOU = "fleet"

// StreamAccept is the agent's answer to a StreamHeader. A zero Code accepts
// the stream; anything else refuses it and the stream is closed.
type StreamAccept struct {
	Code    ErrorCode `cbor:"1,keyasint"`
	Message string    `cbor:"2,keyasint,omitempty"`
}

func (*Hello) Kind() Kind         { return KindHello }
func (*HelloAck) Kind() Kind      { return KindHelloAck }
func (*Heartbeat) Kind() Kind     { return KindHeartbeat }
func (*HeartbeatAck) Kind() Kind  { return KindHeartbeatAck }
func (*RenewRequest) Kind() Kind  { return KindRenewRequest }
func (*RenewResponse) Kind() Kind { return KindRenewResponse }
func (*Error) Kind() Kind         { return KindError }
func (*StreamHeader) Kind() Kind  { return KindStreamHeader }
func (*StreamAccept) Kind() Kind  { return KindStreamAccept }
func (*Resume) Kind() Kind        { return KindResume }
func (*ResumeAccept) Kind() Kind  { return KindResumeAccept }
func (*SessionEnd) Kind() Kind    { return KindSessionEnd }
func (*ClusterInfo) Kind() Kind   { return KindClusterInfo }

// newMessage returns a zero message of kind k, or nil for an unknown kind.
func newMessage(k Kind) Message {
	switch k {
	case KindHello:
		return new(Hello)
	case KindHelloAck:
		return new(HelloAck)
	case KindHeartbeat:
		return new(Heartbeat)
	case KindHeartbeatAck:
		return new(HeartbeatAck)
	case KindRenewRequest:
		return new(RenewRequest)
	case KindRenewResponse:
		return new(RenewResponse)
	case KindError:
		return new(Error)
	case KindStreamHeader:
		return new(StreamHeader)
	case KindStreamAccept:
		return new(StreamAccept)
	case KindResume:
		return new(Resume)
	case KindResumeAccept:
		return new(ResumeAccept)
	case KindAuditBatch:
		return new(AuditBatch)
	case KindAuditAck:
		return new(AuditAck)
	case KindRecordingChunk:
		return new(RecordingChunk)
	case KindRecordingAck:
		return new(RecordingAck)
	case KindSessionEnd:
		return new(SessionEnd)
	case KindUpdateOffer:
		return new(UpdateOffer)
	case KindUpdateStatus:
		return new(UpdateStatus)
	case KindAgentStream:
		return new(AgentStream)
	case KindClusterInfo:
		return new(ClusterInfo)
	case KindHeldSessions:
		return new(HeldSessions)
	}
	return nil
}
