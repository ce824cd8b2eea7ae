package proto

import (
	"crypto/sha256"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Audit events.
//
// Every source of audit events (each device, and the fleet itself) numbers
// its events 1, 2, 3, ... and chains them: an event's Hash is
//
//	SHA-256(previous event's Hash || canonical CBOR of the event without Hash)
//
// where the first event's previous hash is 32 zero bytes (or, after the fleet
// pruned old events, the hash it kept as the chain's anchor). The canonical
// CBOR is this package's deterministic encoding of the decoded AuditEvent,
// so a receiver recomputes the hash from what it decoded; an event whose
// encoding does not round-trip does not verify. Sequence numbers make loss
// and duplication visible; the chain makes edits, deletions and reordering
// visible.

// Audit event types. New types may be added at any time; receivers keep
// events of types they do not know.
const (
	EventUserLogin       = "user.login"
	EventUserLoginFailed = "user.login.failed"
	EventUserLogout      = "user.logout"
	EventCertIssued      = "cert.issued"
	EventSessionStart    = "session.start"
	EventSessionEnd      = "session.end"
	EventExec            = "exec"
	EventExecEnd         = "exec.end"
	EventFileTransfer    = "file.transfer"
	EventPortForward     = "port.forward"
	EventAccessDenied    = "access.denied"
	EventDeviceJoin      = "device.join"
	EventDeviceOnline    = "device.online"
	EventDeviceOffline   = "device.offline"
	EventDeviceDelete    = "device.delete"
	EventTokenCreate     = "token.create"
	EventTokenDelete     = "token.delete"
	EventUserCreate      = "user.create"
	EventUserDelete      = "user.delete"
	EventRoleCreate      = "role.put"
	EventRoleDelete      = "role.delete"
	EventAgentStart      = "agent.start"
	EventAgentStop       = "agent.stop"
	EventAgentConfig     = "agent.config"
	EventUpdateApplied   = "update.applied"
	// EventAppRequest is one HTTP request to a web app through the fleet:
	// method, path, status and bytes in its fields.
	EventAppRequest = "app.request"
	// EventAppKeyRotate is a new signing key for the JWTs apps receive.
	EventAppKeyRotate = "app.key.rotate"
	// OTA steps on the device (firmware/update) and on the fleet (releases
	// and rollouts); Fields name the version and the rollout.
	EventUpdateOffered    = "update.offered"
	EventUpdateRefused    = "update.refused"
	EventUpdateDownloaded = "update.downloaded"
	EventUpdateCommitted  = "update.committed"
	EventUpdateRolledBack = "update.rolled_back"
	EventUpdateFailed     = "update.failed"
	EventUpdateKeyRotated = "update.key_rotated"
	EventReleaseAdd       = "release.add"
	EventReleaseDelete    = "release.delete"
	EventRolloutCreate    = "rollout.create"
	EventRolloutChange    = "rollout.change" // paused, resumed, aborted, halted, stage advanced, done
	EventRolloutPin       = "rollout.pin"
	// EventAuditDropped is the marker a source writes when it could not
	// keep events (its queue was full, its disk was full): Fields["count"]
	// says how many, Fields["reason"] why.
	EventAuditDropped = "audit.dropped"
	// EventAuditDamaged is written when a device found its audit queue file
	// damaged: Fields say what was kept and what was lost.
	EventAuditDamaged = "audit.damaged"
	// EventRecordingSkipped says a session was not recorded, and why.
	EventRecordingSkipped = "recording.skipped"
	// EventAuditExport: an admin exported the audit log.
	EventAuditExport = "audit.export"
	// EventUploadsPaused: the fleet takes no more of a device's uploads
	// for now (Fields["what"]: audit or recordings; Message: why, its quota
	// or the fleet's disk); the device keeps them and sends them later.
	EventUploadsPaused = "uploads.paused"
	// EventRetentionSet: an admin changed the storage policy.
	EventRetentionSet = "retention.set"
	// EventConnectorPut and EventConnectorDelete: an admin created,
	// changed or removed a single sign-on connector.
	EventConnectorPut    = "connector.put"
	EventConnectorDelete = "connector.delete"
	// EventHeadlessApproved and EventHeadlessDenied: a user logged in to
	// the fleet in a browser approved or denied a headless login (tsh
	// login --headless); Fields["user_code"] names it.
	EventHeadlessApproved = "login.headless.approved"
	EventHeadlessDenied   = "login.headless.denied"
	// EventLockCreate, EventLockDelete and EventLockExpire: an admin
	// locked a user, role, device or login (fleetctl lock), removed a
	// lock, or a lock ran out; Fields["lock"] names it. Refusals because
	// of a lock are access.denied (or user.login.failed) events with
	// Fields["rule"] "lock" and Fields["lock"] its ID.
	EventLockCreate = "lock.create"
	EventLockDelete = "lock.delete"
	EventLockExpire = "lock.expire"
	// Trusted clusters. On a root: EventClusterJoin (a leaf joined, or
	// was refused), EventClusterOnline and EventClusterOffline (its
	// tunnel), EventClusterDelete (an admin ended the trust). On a leaf:
	// EventTrustPut (an admin trusted a root) and EventClusterDelete.
	// Fields["cluster"] names the other fleet.
	EventClusterJoin    = "cluster.join"
	EventClusterOnline  = "cluster.online"
	EventClusterOffline = "cluster.offline"
	EventClusterDelete  = "cluster.delete"
	EventTrustPut       = "trust.put"
)

// Outcomes of an audited action.
const (
	OutcomeSuccess = "success"
	OutcomeFailure = "failure"
	OutcomeDenied  = "denied"
)

// Limits on one audit event, so that a batch of them fits a control frame.
const (
	// MaxEventString bounds each string field of an event (command lines
	// are cut there, with a "…" mark).
	MaxEventString = 2048
	// MaxEventFields bounds the number of extra fields.
	MaxEventFields = 32
	// MaxAuditBatch is the most events one AuditBatch carries.
	MaxAuditBatch = 256
	// MaxRecordingChunk is the most recording bytes one RecordingChunk
	// carries.
	MaxRecordingChunk = 32 << 10
)

// HashSize is the size of an audit chain hash.
const HashSize = sha256.Size

// AuditEvent is one audited action. Seq and Hash are set by the source's
// queue when the event is written; see the package's "Audit events" notes.
type AuditEvent struct {
	Seq uint64 `cbor:"1,keyasint"`
	// Time is when it happened, Unix milliseconds (the device's estimate
	// of the fleet's clock for device events).
	Time    int64  `cbor:"2,keyasint"`
	Type    string `cbor:"3,keyasint"`
	Outcome string `cbor:"4,keyasint,omitempty"`
	// User is the fleet user (or "admin:NAME" for an admin identity) who
	// acted; Login the device login used.
	User  string `cbor:"5,keyasint,omitempty"`
	Login string `cbor:"6,keyasint,omitempty"`
	// Session is the brokered session's ID.
	Session string `cbor:"7,keyasint,omitempty"`
	// Device is the ID of the device the event is about. Devices leave it
	// empty in their own events: the source is the device.
	Device string `cbor:"8,keyasint,omitempty"`
	// Cluster names the fleet that verified the user.
	Cluster string `cbor:"9,keyasint,omitempty"`
	// Addr is the client's address as the fleet saw it.
	Addr string `cbor:"10,keyasint,omitempty"`
	// Message is a human-readable reason or summary.
	Message string `cbor:"11,keyasint,omitempty"`
	// Fields hold type-specific details (command, bytes, exit status).
	Fields map[string]string `cbor:"12,keyasint,omitempty"`
	// Hash chains the event to its source's previous event.
	Hash []byte `cbor:"13,keyasint,omitempty"`
}

// Sanitize makes e safe to encode: strings are valid UTF-8 and no longer
// than MaxEventString, and there are at most MaxEventFields fields.
func (e *AuditEvent) Sanitize() {
	for _, p := range []*string{&e.Type, &e.Outcome, &e.User, &e.Login, &e.Session, &e.Device, &e.Cluster, &e.Addr, &e.Message} {
		*p = clip(*p)
	}
	if len(e.Fields) == 0 {
		e.Fields = nil
		return
	}
	out := make(map[string]string, min(len(e.Fields), MaxEventFields))
	for k, v := range e.Fields {
		if len(out) == MaxEventFields {
			break
		}
		out[clip(k)] = clip(v)
	}
	e.Fields = out
}

// clip returns s as valid UTF-8 of at most MaxEventString bytes.
func clip(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if len(s) <= MaxEventString {
		return s
	}
	const mark = "…"
	cut := MaxEventString - len(mark)
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + mark
}

// ChainHash returns the hash that chains e (whose Hash is ignored) to prev.
func ChainHash(prev []byte, e *AuditEvent) ([]byte, error) {
	c := *e
	c.Hash = nil
	body, err := encMode.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("proto: encode audit event %d: %w", e.Seq, err)
	}
	h := sha256.New()
	if len(prev) == 0 {
		prev = make([]byte, HashSize)
	}
	h.Write(prev)
	h.Write(body)
	return h.Sum(nil), nil
}

// MarshalEvent encodes one audit event (with its Hash) for storage.
func MarshalEvent(e *AuditEvent) ([]byte, error) {
	b, err := encMode.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("proto: encode audit event %d: %w", e.Seq, err)
	}
	return b, nil
}

// UnmarshalEvent decodes an audit event stored with MarshalEvent. Like
// every decoder here it rejects unknown fields and trailing bytes.
func UnmarshalEvent(b []byte) (*AuditEvent, error) {
	var e AuditEvent
	if err := decMode.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("proto: decode audit event: %w", err)
	}
	return &e, nil
}

// AuditQueueStatus is a device's report on its audit queue, sent with every
// AuditBatch so the fleet can show it in the device's status.
type AuditQueueStatus struct {
	// Pending events and their bytes in the queue, and the queue's cap.
	Pending uint64 `cbor:"1,keyasint,omitempty"`
	Bytes   uint64 `cbor:"2,keyasint,omitempty"`
	Cap     uint64 `cbor:"3,keyasint,omitempty"`
	// Dropped counts events the queue could not keep since it was created
	// (each drop is also reported by an audit.dropped event).
	Dropped uint64 `cbor:"4,keyasint,omitempty"`
	// Damaged counts the times the queue file was found damaged.
	Damaged uint64 `cbor:"5,keyasint,omitempty"`
	// LastError is the queue's last write error, if any.
	LastError string `cbor:"6,keyasint,omitempty"`
	// Head is the last sequence number the queue wrote.
	Head uint64 `cbor:"7,keyasint,omitempty"`
}

// AuditBatch carries a device's next queued events, in sequence order, on
// the control stream; the fleet answers each batch, in order, with an
// AuditAck once it has committed it, so a device may send several batches
// before the first answer. A batch without events asks for the fleet's
// head (an agent does that on every new connection). ID, chosen by the
// device, comes back in the answer.
type AuditBatch struct {
	Events []AuditEvent      `cbor:"1,keyasint,omitempty"`
	Queue  *AuditQueueStatus `cbor:"2,keyasint,omitempty"`
	ID     uint64            `cbor:"3,keyasint,omitempty"`
}

// AuditAck answers an AuditBatch once the fleet has committed it. Through
// is the highest sequence number the fleet holds for the device (its head)
// and Hash that event's chain hash; the device may forget every event up to
// Through. Err, when set, means nothing was committed.
type AuditAck struct {
	Through uint64 `cbor:"1,keyasint,omitempty"`
	Hash    []byte `cbor:"2,keyasint,omitempty"`
	Err     *Error `cbor:"3,keyasint,omitempty"`
	ID      uint64 `cbor:"4,keyasint,omitempty"` // the batch's ID
}

// RecordingMeta describes a session recording; it rides on the first chunk
// an agent sends for the recording on a connection.
type RecordingMeta struct {
	Session string `cbor:"1,keyasint,omitempty"`
	User    string `cbor:"2,keyasint,omitempty"`
	Login   string `cbor:"3,keyasint,omitempty"`
	Cluster string `cbor:"4,keyasint,omitempty"`
	// Start is when the recording started, Unix milliseconds.
	Start int64 `cbor:"5,keyasint,omitempty"`
	// Kind is "shell" or "exec"; Command the exec command.
	Kind    string `cbor:"6,keyasint,omitempty"`
	Command string `cbor:"7,keyasint,omitempty"`
}

// RecordingChunk uploads part of a session recording (an asciicast v2
// file). Data goes at Offset; the fleet keeps it only if Offset is what it
// already holds, and answers with what it holds, so an upload cut by an
// outage resumes where the fleet's copy ends. A chunk without data asks how
// much the fleet holds. Final says the recording ends with this chunk.
type RecordingChunk struct {
	ID     string         `cbor:"1,keyasint"`
	Offset uint64         `cbor:"2,keyasint,omitempty"`
	Data   []byte         `cbor:"3,keyasint,omitempty"`
	Final  bool           `cbor:"4,keyasint,omitempty"`
	Meta   *RecordingMeta `cbor:"5,keyasint,omitempty"`
}

// RecordingAck answers a RecordingChunk: Size is how many bytes of the
// recording the fleet has committed, Done that it holds all of it.
type RecordingAck struct {
	ID   string `cbor:"1,keyasint"`
	Size uint64 `cbor:"2,keyasint,omitempty"`
	Done bool   `cbor:"3,keyasint,omitempty"`
	Err  *Error `cbor:"4,keyasint,omitempty"`
}

func (*AuditBatch) Kind() Kind     { return KindAuditBatch }
func (*AuditAck) Kind() Kind       { return KindAuditAck }
func (*RecordingChunk) Kind() Kind { return KindRecordingChunk }
func (*RecordingAck) Kind() Kind   { return KindRecordingAck }
