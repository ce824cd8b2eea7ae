package proto

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
)

// Sizes of the authenticated link datagrams (see LinkResetByte and
// LinkHurryByte).
const (
	// LinkKeySize is the size of HelloAck.LinkKey.
	LinkKeySize = 32
	// LinkMACSize is the size of a link datagram's MAC and of a reset
	// token: 64 bits, checked by the agent alone, which acts at most once
	// per datagram and never answers one.
	LinkMACSize = 8
	// LinkResetSize is a link reset: LinkResetByte and the reset token. It
	// is no larger than the keep-alive it answers, so a forged keep-alive
	// gains an attacker no amplification.
	LinkResetSize = 1 + LinkMACSize
	// LinkHurrySize is a link hurry: LinkHurryByte, then the fields of
	// LinkHurry (integers big-endian), then the MAC of all that under the
	// connection's link key.
	LinkHurrySize = 1 + 8 + 1 + 8 + 8 + LinkMACSize
)

// linkResetLabel separates reset tokens from every other use of the key.
const linkResetLabel = "remoteler-edge link reset v1"

// LinkResetToken returns the reset token of the connection whose link tag
// is tag, under the fleet's long-lived link key. A fleet that restarted
// (or another replica) with the same key computes the same token from the
// tag in a keep-alive, without any state for the connection.
func LinkResetToken(key, tag []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(linkResetLabel))
	m.Write(tag)
	return m.Sum(nil)[:LinkMACSize]
}

// AppendLinkReset appends a link reset carrying token to dst.
func AppendLinkReset(dst, token []byte) []byte {
	return append(append(dst, LinkResetByte), token...)
}

// IsLinkReset reports whether b is a link reset carrying token. An empty
// token matches nothing.
func IsLinkReset(b, token []byte) bool {
	return len(token) == LinkMACSize && len(b) == LinkResetSize && b[0] == LinkResetByte &&
		subtle.ConstantTimeCompare(b[1:], token) == 1
}

// LinkHurry is what a link hurry says: the fleet has a session to this
// device that is stalled, and how much of it the fleet has received, so
// that the agent can replay at once from there (Resume.Replaying) instead
// of waiting a round trip for ResumeAccept.
type LinkHurry struct {
	// Seq only grows; the agent ignores a hurry whose Seq it has seen.
	Seq uint64
	// Reason is HurrySending or HurryReceiving.
	Reason byte
	// Session is SessionTag of the stalled session's resume secret.
	Session [8]byte
	// Received is the bytes (a fin counts as one) of that session the fleet
	// has received.
	Received uint64
}

// Reasons for a link hurry.
const (
	// HurrySending: bytes the fleet sent on the session are not
	// acknowledged.
	HurrySending byte = 1
	// HurryReceiving: bytes were arriving on the session at speed when the
	// device went silent.
	HurryReceiving byte = 2
)

// SessionTag names a session in a link hurry: the first bytes of the
// SHA-256 of its resume secret, which tell nothing of the secret.
func SessionTag(secret []byte) (tag [8]byte) {
	sum := sha256.Sum256(secret)
	copy(tag[:], sum[:])
	return tag
}

// AppendLinkHurry appends h, MACed under key (HelloAck.LinkKey), to dst.
func AppendLinkHurry(dst, key []byte, h LinkHurry) []byte {
	start := len(dst)
	dst = append(dst, LinkHurryByte)
	dst = binary.BigEndian.AppendUint64(dst, h.Seq)
	dst = append(dst, h.Reason)
	dst = append(dst, h.Session[:]...)
	dst = binary.BigEndian.AppendUint64(dst, h.Received)
	return append(dst, linkMAC(key, dst[start:])...)
}

// ParseLinkHurry checks b as a link hurry under key and decodes it. The
// caller refuses sequence numbers it has already seen, so a recorded hurry
// cannot be played again.
func ParseLinkHurry(b, key []byte) (h LinkHurry, ok bool) {
	if len(key) == 0 || len(b) != LinkHurrySize || b[0] != LinkHurryByte {
		return LinkHurry{}, false
	}
	body := b[:LinkHurrySize-LinkMACSize]
	if !hmac.Equal(b[len(body):], linkMAC(key, body)) {
		return LinkHurry{}, false
	}
	h.Seq = binary.BigEndian.Uint64(b[1:])
	h.Reason = b[9]
	copy(h.Session[:], b[10:18])
	h.Received = binary.BigEndian.Uint64(b[18:])
	return h, true
}

func linkMAC(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)[:LinkMACSize]
}
