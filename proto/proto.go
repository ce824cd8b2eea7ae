// Package proto is the wire protocol that edge-agent and fleetd share.
//
// A device tunnel is one QUIC connection whose ALPN names the protocol
// version. The agent opens the first bidirectional stream, the control
// stream, and both sides exchange framed CBOR messages on it (hello,
// heartbeats, certificate renewal, errors). For every brokered user
// connection the fleet opens a further bidirectional stream that starts with a
// StreamHeader frame; the agent answers with a StreamAccept frame and from
// then on the stream carries the session's resume frames (package resume).
// After a reconnect the agent opens one stream per live session, starting
// with a Resume frame; the fleet answers ResumeAccept and the session
// continues on the new stream.
//
// A frame is one kind byte, the body length as an unsigned varint, and the
// CBOR body. Decoders reject unknown kinds, oversized frames, duplicate map
// keys and trailing bytes with an error; they never panic.
//
// Package proto imports neither firmware/ nor fleet/; both sides import it.
//
// # Changelog
//
// Version 1 (2026-11-21): hello/hello-ack, heartbeat/heartbeat-ack,
// renew request/response, error, stream header/accept; resume and
// resume-accept on agent-opened streams, the hello's boot ID and the stream
// header's resume secret (package resume frames every brokered stream);
// the hello answer's liveness period; heartbeats are no longer answered;
// the stream header identity's Kubernetes user and groups (Identity keys 6
// and 7, for service "kube"; older agents never receive them);
// audit-batch/audit-ack (hash-chained audit events shipped from the
// device's queue, see AuditEvent) and recording-chunk/recording-ack
// (resumable upload of session recordings) on the control stream.
//
// Revision of 2026-12-06: session-end (the fleet tells the agent on the
// control stream to end a brokered session, with the message for the
// user: access ended); the stream header identity's NoPortForwarding and
// NoFileCopy (Identity keys 9 and 10; an older fleet sends neither, which
// keeps its behaviour: allowed). An agent older than this revision reads
// session-end as an unknown frame and reconnects (its other sessions
// resume; the fleet closes the ended one itself), and refuses streams
// whose header has keys 9 or 10 (users whose roles turn forwarding or
// file copies off): update agents after the fleet.
//
// Revision of 2026-12-06, later (OTA; older agents never receive these,
// since the fleet sends an offer only to an agent that sent an
// update-status first): update-offer (fleet to agent: the signed release
// the device should run, with an optional delta) and update-status (agent
// to fleet: where its update stands) on the control stream; agent-stream,
// the first frame of a stream the agent opens to reach a fleet service
// (service "ota": HTTP/1.1 downloads of release artefacts with Range
// requests); the hello answer's Updates (key 7), without which (an older
// fleet) the agent sends no update-status. See update.go.
//
// Third revision of 2026-12-06: the hello's apps (Hello key 10: the web
// apps the agent offers, each with its name, URI, labels, certificate
// opt-out and rewrites) and service "app" streams, whose header's Target
// names the app and which carry HTTP/1.1 to it. An agent that declares no
// apps sends no key 10, so an older fleet reads its hello as before; an
// older fleet refuses the hello of an agent that declares apps (an
// unknown key): update the fleet before you declare apps on devices.
//
// Revision of 2026-12-06, trusted clusters and direct nodes: service
// "cluster" streams, which a root fleet opens down a leaf fleet's tunnel
// to carry its users' HTTPS requests to the leaf's API; cluster-info on a
// leaf's control stream (CA keys each side keeps of the other); the stream
// header identity's Traits, Admin and UserCAKeys (Identity keys 11, 12 and
// 13: a root vouches for its user's traits, or for its admin identity; a
// leaf tells its device which root user CA signed the user's certificate);
// the hello's Direct (Hello key 16: a direct node's address, which the
// fleet dials with DirectALPN). Agents only ever see Identity key 13, and
// only for users of a trusted root: an older agent refuses those streams
// (an unknown key), so update agents before their fleet trusts a root. An
// older fleet refuses the hello of a direct node (an unknown key).
//
// Revision of 2026-12-07: the hello answer's link key and reset
// token (HelloAck keys 8 and 9); link resets carry the reset token, and the
// fleet sends link hurries (LinkHurryByte); the hello's keep-alive and
// liveness periods (Hello keys 11 and 12; 13 to 15 are unassigned, 16 is
// the direct node's address of the revision before), from which the fleet
// judges that a silent device is offline; error code 10, going away (an agent that is
// stopping refuses new streams with it); NAT keep-alives are one byte, and
// carry the link tag only when the fleet asks (LinkWhoByte); Resume keys 4
// and 5 (an agent that learnt the fleet's position from a hurry replays at
// once). Agents of the earlier revision ignore the new keys and send none;
// a fleet then judges them by the default periods.
//
// Revision of 2026-12-08: cluster-info's Leaving (key 5): a leaf that
// removed its trust tells its root so before it closes its tunnel. An
// older root refuses that last cluster-info (an unknown key); it then
// learns of the removal only from the tunnel's absence, as before.
//
// Revision of 2026-12-07, user-held sessions: the stream header's
// UserHeld, Resume, Received and End (keys 14 to 17): the user's client
// holds the fleet's end of a session's resume state, and re-attaches or
// ends it through any replica. An older agent refuses such a header (an
// unknown key) and the session does not open: update agents before a
// fleet runs several replicas, the only fleet that sends them.
// Held-sessions (kind 21), which an agent sends on an agent stream of
// service "held" (ServiceHeld) to list the user-held sessions it holds
// for away users; an older fleet closes that stream (an unknown service),
// and the agent does not open it again on that connection.
package proto

import "fmt"

// Version is the protocol version this package speaks.
const Version = 1

// ALPN is the TLS application protocol that names Version on the tunnel.
const ALPN = "remoteler-edge/1"

// ErrorCode classifies a refusal or failure on the wire. Codes only ever grow
// at the end: a code's number never changes meaning.
type ErrorCode uint16

// Error codes. Append new codes at the end only.
const (
	CodeOK              ErrorCode = 0
	CodeInternal        ErrorCode = 1
	CodeBadRequest      ErrorCode = 2
	CodeUnauthenticated ErrorCode = 3
	CodeForbidden       ErrorCode = 4
	CodeNotFound        ErrorCode = 5
	CodeUnavailable     ErrorCode = 6
	CodeVersion         ErrorCode = 7
	CodeConflict        ErrorCode = 8
	CodeExpired         ErrorCode = 9
	// CodeGoingAway: the agent is stopping; its next connection will serve
	// (the fleet opens the stream again there).
	CodeGoingAway ErrorCode = 10
)

var codeNames = [...]string{
	CodeOK:              "ok",
	CodeInternal:        "internal",
	CodeBadRequest:      "bad request",
	CodeUnauthenticated: "unauthenticated",
	CodeForbidden:       "forbidden",
	CodeNotFound:        "not found",
	CodeUnavailable:     "unavailable",
	CodeVersion:         "version mismatch",
	CodeConflict:        "conflict",
	CodeExpired:         "expired",
	CodeGoingAway:       "going away",
}

func (c ErrorCode) String() string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return fmt.Sprintf("code(%d)", uint16(c))
}

// Datagrams outside QUIC on the tunnel's UDP port. Their first bytes have
// the two top bits clear, so QUIC stacks see they are not QUIC (RFC 9443).
// Their encoders and decoders are in link.go.
//
// The agent's NAT keep-alive is the single byte NATKeepaliveByte. The
// fleet knows the sender by its address (the connection's). When it does
// not (the NAT mapping changed during an outage, the device moved, or the
// fleet restarted), it answers with the single byte LinkWhoByte, and the
// agent sends a tagged keep-alive: NATKeepaliveByte followed by the
// connection's HelloAck.LinkTag. A tagged keep-alive of a live connection
// from another address than that connection's draws the single byte
// LinkPokeByte, and the agent answers with a QUIC packet, which moves the
// connection there.
//
// When the tag names no connection the fleet has (it was made with a fleet
// that crashed or restarted), the fleet answers with a link reset:
// LinkResetByte and the connection's reset token, which only the fleet's
// link key can compute from the tag (LinkResetToken), and which the agent
// learnt in HelloAck.ResetToken. The agent drops its connection and dials
// again at once; a reset without the right token is ignored, so nobody who
// can merely send packets from the fleet's address can cut a tunnel.
//
// While a session stalls, the agent sends LinkPingSize-byte link pings,
// LinkPingByte and a nonce; the fleet echoes each with the first byte set
// to LinkPongByte. While a session the fleet sends on stalls, the fleet
// sends link hurries (LinkHurryByte, a sequence number and a MAC keyed by
// HelloAck.LinkKey): the agent moves the connection to a fresh path, which
// makes both sides resend what they have in flight at once instead of
// after QUIC's retransmission back-off.
const (
	NATKeepaliveByte byte = 0x00
	LinkPingByte     byte = 0x01
	LinkPongByte     byte = 0x02
	LinkPokeByte     byte = 0x03
	LinkResetByte    byte = 0x04
	LinkHurryByte    byte = 0x05
	LinkWhoByte      byte = 0x06
	LinkPingSize          = 9
	LinkTagSize           = 8
)

// RestartReason is the QUIC close reason a fleet gives when it shuts down:
// agents reconnect after a second plus a random delay up to the given
// number of milliseconds, which the fleet sizes to how many devices it
// holds, so that its successor is not met by all of them at once.
const RestartReason = "fleet shutting down; reconnect within %dms"

// BusyReason is the QUIC close reason a fleet gives a connection it has
// no time to answer (too many devices connecting at once): agents come
// back as after RestartReason.
const BusyReason = "fleet busy; reconnect within %dms"

// Error is a refusal carried on the wire, as a message or inside a
// StreamAccept. It implements error.
type Error struct {
	Code    ErrorCode `cbor:"1,keyasint"`
	Message string    `cbor:"2,keyasint,omitempty"`
}

func (e *Error) Error() string {
	if e.Message == "" {
		return "proto: " + e.Code.String()
	}
	return fmt.Sprintf("proto: %s: %s", e.Code, e.Message)
}

// Errorf returns an *Error with the code and a formatted message.
func Errorf(code ErrorCode, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}
