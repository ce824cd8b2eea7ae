package api

import "time"

// Audit and recording endpoints.
//
//	GET /v1/audit?since=&until=&device=&user=&session=&type=&limit=
//	    (admin) searches the audit log; since and until are RFC 3339 times,
//	    device a name or ID, type an event type or a prefix ending in "*"
//	    ("session.*"); limit defaults to 1000, at most 10000. The answer is
//	    an AuditSearch, oldest event first.
//	GET /v1/audit/verify
//	    (admin) checks every source's hash chain, and the chains against
//	    the signed checkpoints of their heads, and answers AuditVerify.
//	GET /v1/audit/export?checkpoints_only=true
//	    (admin) the audit log in the export format (JSON Lines, see
//	    proto/auditexport): a header, every signed checkpoint, then every
//	    event with its canonical encoding; only the header and checkpoints
//	    with checkpoints_only.
//	GET /v1/recordings
//	    lists session recordings ([]Recording): a user's own sessions, or
//	    every session for an admin.
//	GET /v1/recordings/ID
//	    the recording itself, an asciicast v2 file (same access rule).
const (
	PathAudit       = "/v1/audit"
	PathAuditVerify = "/v1/audit/verify"
	PathAuditExport = "/v1/audit/export"
	PathRecordings  = "/v1/recordings"
)

// Audit search limits.
const (
	DefaultAuditLimit = 1000
	MaxAuditLimit     = 10000
)

// SourceFleet is the audit source of the fleet's own events (logins,
// admin changes, access decisions); a device's source is its ID.
const SourceFleet = "fleet"

// AuditEvent is one audit event as exported in JSON, the audit log's export
// format. Seq and Hash place it in its source's hash chain.
type AuditEvent struct {
	Source     string            `json:"source"`
	Seq        uint64            `json:"seq"`
	Time       time.Time         `json:"time"`
	Type       string            `json:"type"`
	Outcome    string            `json:"outcome,omitempty"`
	User       string            `json:"user,omitempty"`
	Login      string            `json:"login,omitempty"`
	Session    string            `json:"session,omitempty"`
	Device     string            `json:"device,omitempty"` // device ID
	DeviceName string            `json:"device_name,omitempty"`
	Cluster    string            `json:"cluster,omitempty"`
	Addr       string            `json:"addr,omitempty"`
	Message    string            `json:"message,omitempty"`
	Fields     map[string]string `json:"fields,omitempty"`
	Hash       string            `json:"hash"` // hex
	// AssertedBy is who asserted the event: "fleet", or "device:" and the
	// device's ID (whose events the fleet checks only where they name a
	// user or a session).
	AssertedBy string `json:"asserted_by"`
	// Unverified, on a device's event, says why what it claims about a user
	// or a session did not verify (a session the fleet did not broker to
	// the device, say); such events never show in a user's or a session's
	// search.
	Unverified string `json:"unverified,omitempty"`
	// Replica is the fleetd replica whose log holds the event, with
	// several (docs/replicas.md): each replica chains the fleet's own
	// events it records ("fleet" on each), and holds the stretches of
	// devices' chains it received.
	Replica string `json:"replica,omitempty"`
}

// AuditSearch answers GET /v1/audit. Truncated says more events matched
// than the limit allowed: narrow the search or raise --since.
type AuditSearch struct {
	Events    []AuditEvent `json:"events"`
	Truncated bool         `json:"truncated,omitempty"`
	// Missing names the replicas that did not answer, with why: their
	// events are not in the answer.
	Missing []string `json:"missing,omitempty"`
}

// AuditVerify answers GET /v1/audit/verify.
type AuditVerify struct {
	OK      bool         `json:"ok"`
	Sources []AuditChain `json:"sources"`
	Checked time.Time    `json:"checked"`
	// Checkpoints describes the signed checkpoints the chains were
	// checked against (with several replicas, the answering replica's;
	// Replicas has every replica's).
	Checkpoints *AuditCheckpoints `json:"checkpoints,omitempty"`
	// Replicas are the checkpoints of every replica's log, with several.
	Replicas []AuditCheckpoints `json:"replicas,omitempty"`
	// Missing names the replicas that did not answer, with why.
	Missing []string `json:"missing,omitempty"`
}

// AuditCheckpoints describes the fleet's signed checkpoints of its audit
// chains' heads.
type AuditCheckpoints struct {
	// Replica is the replica whose log they are, with several.
	Replica string `json:"replica,omitempty"`
	// Key is the public key they are signed with, "ed25519:BASE64": pin it
	// (fleetctl audit verify --export FILE --key KEY).
	Key   string    `json:"key"`
	Count int       `json:"count"`
	Last  time.Time `json:"last,omitzero"`
	// Problems are the checkpoints' own: a bad signature, a gap, a broken
	// link between two.
	Problems []string `json:"problems,omitempty"`
}

// AuditChain is the result of checking one source's chain.
type AuditChain struct {
	Source     string `json:"source"`
	DeviceName string `json:"device_name,omitempty"`
	OK         bool   `json:"ok"`
	// Events is how many events the fleet holds; First and Last their
	// sequence numbers.
	Events uint64 `json:"events"`
	First  uint64 `json:"first,omitempty"`
	Last   uint64 `json:"last,omitempty"`
	// Problems name what is wrong: gaps, edited events, a broken chain.
	Problems []string `json:"problems,omitempty"`
	// Queue is what the device last reported about its audit queue.
	Queue *DeviceAudit `json:"queue,omitempty"`
	// Replica is the fleetd replica whose log this is, with several.
	Replica string `json:"replica,omitempty"`
	// Handoffs are where a device's chain left this replica's log for
	// another replica's and came back: the events between are in that
	// replica's log.
	Handoffs []AuditHandoff `json:"handoffs,omitempty"`
}

// AuditHandoff is a stretch of a device's chain held by another replica:
// this replica's log holds events up to After, then from Seq+1, whose
// chain hash continues from Hash (event Seq's, held by Replica).
type AuditHandoff struct {
	After   uint64 `json:"after"`
	Seq     uint64 `json:"seq"`
	Hash    string `json:"hash"`
	Replica string `json:"replica,omitempty"`
}

// DeviceAudit is a device's last report on its audit queue.
type DeviceAudit struct {
	// Head is the last sequence number the fleet holds from the device.
	Head uint64 `json:"head"`
	// Pending events (and bytes) still in the device's queue, and its cap.
	Pending uint64 `json:"pending"`
	Bytes   uint64 `json:"bytes"`
	Cap     uint64 `json:"cap,omitempty"`
	// Dropped counts events the device could not keep (full queue or
	// disk); Damaged the times it found its queue file damaged.
	Dropped uint64 `json:"dropped"`
	Damaged uint64 `json:"damaged"`
	// Unverified counts the device's events whose claims about a user or
	// a session did not verify.
	Unverified uint64 `json:"unverified,omitempty"`
	// Stored is the bytes of the device's events the fleet holds, and
	// Paused why the fleet takes no more for now (the device's quota, the
	// fleet's disk), if it does not.
	Stored    int64     `json:"stored,omitempty"`
	Paused    string    `json:"paused,omitempty"`
	LastError string    `json:"last_error,omitempty"`
	Reported  time.Time `json:"reported"`
}

// Recording describes one session recording.
type Recording struct {
	ID         string        `json:"id"`
	Session    string        `json:"session"`
	Device     string        `json:"device"` // device ID
	DeviceName string        `json:"device_name,omitempty"`
	User       string        `json:"user,omitempty"`
	Login      string        `json:"login,omitempty"`
	Cluster    string        `json:"cluster,omitempty"`
	Kind       string        `json:"kind,omitempty"` // shell or exec
	Command    string        `json:"command,omitempty"`
	Start      time.Time     `json:"start"`
	Duration   time.Duration `json:"duration,omitempty"`
	Size       int64         `json:"size"`
	// Complete is false while the device is still uploading it.
	Complete bool      `json:"complete"`
	Updated  time.Time `json:"updated"`
}
