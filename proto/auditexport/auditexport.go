// Package auditexport makes the audit log tamper-evident beyond its own
// file: signed checkpoints of every hash chain's head, and the export file
// (events and checkpoints) that `fleetctl audit export` writes for off-box
// storage and `fleetctl audit verify` checks.
//
// The hash chains (proto.ChainHash) live in the same file they protect:
// whoever can write that file can rewrite a chain consistently, recomputing
// every hash after the event they changed. So fleetd signs, with an
// ed25519 key of its own, a Checkpoint at a fixed interval and when it
// stops: the heads (source, sequence number, hash) that changed since the
// previous checkpoint, and the hash of that previous checkpoint, so the
// checkpoints form a chain of their own. A rewritten event, or a chain cut
// short, no longer matches the checkpoints that cover it. Someone who also
// holds the key can sign new checkpoints for a rewritten log, but not
// change the checkpoints already copied off the machine: checking the log
// against an earlier export's checkpoints catches them.
//
// An export is JSON Lines: a header line (the fleet, the checkpoint key,
// each source's anchor), then every checkpoint, then every event, each
// event with its canonical CBOR (from which its hash is recomputed) and a
// readable copy. Decode reads it and rejects malformed input with an error.
//
// Both fleetd (fleet/audit) and fleetctl import this package; it imports
// only proto.
package auditexport

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/fxamacker/cbor/v2"

	"remoteler.dev/edge/proto"
)

// Head is one source's chain head: its highest sequence number and that
// event's hash.
type Head struct {
	Source string `cbor:"1,keyasint" json:"source"`
	Seq    uint64 `cbor:"2,keyasint" json:"seq"`
	Hash   []byte `cbor:"3,keyasint" json:"hash"`
}

// Checkpoint is a signed statement of chain heads at a moment.
type Checkpoint struct {
	// N numbers checkpoints 1, 2, 3, ...
	N uint64 `cbor:"1,keyasint" json:"n"`
	// Time is when it was made, Unix milliseconds (the fleet's clock).
	Time int64 `cbor:"2,keyasint" json:"time"`
	// Prev is the SHA-256 of checkpoint N-1's encoding (with its
	// signature); empty for the first.
	Prev []byte `cbor:"3,keyasint,omitempty" json:"prev,omitempty"`
	// Heads are the heads that changed since checkpoint N-1 (every head,
	// in the first), sorted by source.
	Heads []Head `cbor:"4,keyasint,omitempty" json:"heads,omitempty"`
	// Sig is the ed25519 signature of the encoding without Sig, prefixed
	// with sigContext.
	Sig []byte `cbor:"5,keyasint,omitempty" json:"sig,omitempty"`
}

// sigContext separates checkpoint signatures from anything else the key
// could sign.
const sigContext = "remoteler-edge audit checkpoint v1\x00"

// Limits on decoding.
const (
	// MaxCheckpoint bounds one encoded checkpoint (a checkpoint of 100,000
	// changed heads is about 5 MB).
	MaxCheckpoint = 16 << 20
	// MaxHeads bounds the heads of one checkpoint.
	MaxHeads = 1 << 20
)

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	if encMode, err = cbor.CoreDetEncOptions().EncMode(); err != nil {
		panic(err)
	}
	decMode, err = cbor.DecOptions{
		DupMapKey: cbor.DupMapKeyEnforcedAPF, MaxNestedLevels: 4, MaxArrayElements: MaxHeads, MaxMapPairs: 16,
		IndefLength: cbor.IndefLengthForbidden, TagsMd: cbor.TagsForbidden, ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// Encode returns c's canonical encoding (with its signature).
func (c *Checkpoint) Encode() []byte {
	b, err := encMode.Marshal(c)
	if err != nil {
		panic("auditexport: encode checkpoint: " + err.Error()) // plain struct: cannot fail
	}
	return b
}

// Digest is what the next checkpoint's Prev holds: SHA-256 of Encode.
func (c *Checkpoint) Digest() []byte {
	sum := sha256.Sum256(c.Encode())
	return sum[:]
}

func (c *Checkpoint) signed() []byte {
	u := *c
	u.Sig = nil
	return append([]byte(sigContext), u.Encode()...)
}

// Sign sets c.Sig.
func (c *Checkpoint) Sign(key ed25519.PrivateKey) {
	c.Sig = ed25519.Sign(key, c.signed())
}

// Verify checks c's signature against pub.
func (c *Checkpoint) Verify(pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize || !ed25519.Verify(pub, c.signed(), c.Sig) {
		return fmt.Errorf("auditexport: checkpoint %d: the signature does not verify with key %s", c.N, KeyString(pub))
	}
	return nil
}

// DecodeCheckpoint decodes an encoded checkpoint. It rejects unknown
// fields, trailing bytes and heads out of order.
func DecodeCheckpoint(b []byte) (*Checkpoint, error) {
	if len(b) > MaxCheckpoint {
		return nil, fmt.Errorf("auditexport: checkpoint of %d bytes, the most is %d", len(b), MaxCheckpoint)
	}
	var c Checkpoint
	if err := decMode.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("auditexport: decode checkpoint: %w", err)
	}
	if c.N == 0 {
		return nil, errors.New("auditexport: decode checkpoint: no number")
	}
	for i, h := range c.Heads {
		if h.Source == "" || h.Seq == 0 || len(h.Hash) != proto.HashSize {
			return nil, fmt.Errorf("auditexport: checkpoint %d: head %d is malformed", c.N, i)
		}
		if i > 0 && c.Heads[i-1].Source >= h.Source {
			return nil, fmt.Errorf("auditexport: checkpoint %d: heads out of order at %q", c.N, h.Source)
		}
	}
	return &c, nil
}

// KeyString writes a public key as "ed25519:BASE64".
func KeyString(pub ed25519.PublicKey) string {
	return "ed25519:" + base64.StdEncoding.EncodeToString(pub)
}

// ParseKey reads a key written by KeyString.
func ParseKey(s string) (ed25519.PublicKey, error) {
	b64, ok := strings.CutPrefix(strings.TrimSpace(s), "ed25519:")
	if !ok {
		return nil, fmt.Errorf("auditexport: key %q does not start with \"ed25519:\"", s)
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(b) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("auditexport: key %q is not an ed25519 public key", s)
	}
	return ed25519.PublicKey(b), nil
}

// Want is an event hash a checkpoint names.
type Want struct {
	Hash       []byte
	Checkpoint uint64 // the last checkpoint that named it
}

// Expect is what a run of checkpoints says the chains must hold: for each
// source and sequence number that some checkpoint names, that event's hash.
type Expect map[string]map[uint64]Want

// Add records checkpoint n's heads.
func (x Expect) Add(n uint64, heads []Head) {
	for _, h := range heads {
		m := x[h.Source]
		if m == nil {
			m = map[uint64]Want{}
			x[h.Source] = m
		}
		m[h.Seq] = Want{Hash: h.Hash, Checkpoint: n}
	}
}

// Latest keeps, for each source, only the newest head named: enough to
// check a chain, since rewriting any event changes every hash after it.
func (x Expect) Latest() Expect {
	out := Expect{}
	for src, m := range x {
		var best uint64
		for seq := range m {
			best = max(best, seq)
		}
		out[src] = map[uint64]Want{best: m[best]}
	}
	return out
}

// CheckChain checks a run of checkpoints, oldest first: numbered without
// gaps, each signed by pub, each naming the one before (the first may
// start anywhere: older ones may have been left out). It returns the heads
// they name and the problems found. A checkpoint whose signature fails
// names nothing.
func CheckChain(cps []*Checkpoint, pub ed25519.PublicKey) (Expect, []string) {
	x := Expect{}
	var problems []string
	var prev *Checkpoint
	for _, c := range cps {
		if err := c.Verify(pub); err != nil {
			problems = append(problems, err.Error())
			prev = nil
			continue
		}
		if prev != nil {
			switch {
			case c.N != prev.N+1:
				problems = append(problems, fmt.Sprintf("checkpoints %d to %d are missing", prev.N+1, c.N-1))
			case !bytes.Equal(c.Prev, prev.Digest()):
				problems = append(problems, fmt.Sprintf("checkpoint %d does not follow checkpoint %d (they were replaced or reordered)", c.N, prev.N))
			}
		}
		x.Add(c.N, c.Heads)
		prev = c
	}
	return x, problems
}

// Check compares one event a checkpoint names with what the chain holds:
// stored is the hash held at that sequence number (nil when none is), and
// anchorSeq and anchorHash the chain's anchor (its last pruned event). It
// returns the problem, or "".
func Check(source string, seq uint64, w Want, stored []byte, anchorSeq uint64, anchorHash []byte) string {
	switch {
	case stored != nil && bytes.Equal(stored, w.Hash):
		return ""
	case stored != nil:
		return fmt.Sprintf("event %d differs from the one signed in checkpoint %d: the chain was rewritten", seq, w.Checkpoint)
	case seq == anchorSeq && bytes.Equal(anchorHash, w.Hash):
		return "" // pruned; the anchor is that event
	case seq == anchorSeq:
		return fmt.Sprintf("the chain's anchor (event %d) differs from the one signed in checkpoint %d: the chain was rewritten", seq, w.Checkpoint)
	case seq < anchorSeq:
		return "" // pruned past it
	default:
		return fmt.Sprintf("event %d, signed in checkpoint %d, is missing: the chain was cut or rewritten", seq, w.Checkpoint)
	}
}
