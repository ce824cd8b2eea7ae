// Package ota is what the fleet, fleetctl and the agent share about signed
// agent releases: the release manifest, its minisign signatures, the
// release keys a device pins and their rotation, release versions, and
// maintenance windows.
//
// A release is a set of artefacts (edge-agent-TARGET, as cross/build.sh
// names them) with one minisign signature each, and a manifest: JSON that
// names the version and, per artefact, its target, size and SHA-256. The
// manifest is signed with the same release key. Whoever checks a release
// checks the manifest's signature with a key it pins, then every artefact
// against the manifest and its own signature. The fleet does so when a
// release is added; the agent does so again before it writes anything.
//
// Signatures are minisign's (Ed25519), made offline with the release key
// by `fleetctl releases sign` or Debian's minisign, and checked with
// aead.dev/minisign: the implementation github.com/minio/selfupdate already
// uses for its verifier, so the agent links one minisign, not two, and the
// same code signs (fleetctl) and verifies (fleet, agent).
//
// A release key is rotated by signing the new public key's text form with
// the old key (`fleetctl releases sign --key OLD.key NEW.pub`); an agent
// adds a key only when such a signature verifies with a key it already
// pins (Keys.Rotate).
//
// Package ota imports neither firmware/ nor fleet/; both sides import it.
package ota

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"aead.dev/minisign"
	"golang.org/x/mod/semver"
)

// Product is the name every manifest carries.
const Product = "edge-agent"

// ManifestName is the manifest's file name in a release directory, and
// SigSuffix what a signature file adds to the signed file's name.
const (
	ManifestName = "manifest.json"
	SigSuffix    = ".minisig"
)

// Limits on what is parsed.
const (
	MaxManifest  = 32 << 10
	MaxSignature = 4 << 10
	MaxArtifacts = 16
)

// Manifest describes a release.
type Manifest struct {
	Product   string     `json:"product"`
	Version   string     `json:"version"`
	Artifacts []Artifact `json:"artifacts"`
	// Notes are free text for people; nothing acts on them.
	Notes string `json:"notes,omitempty"`
}

// Artifact is one binary of a release.
type Artifact struct {
	// Name is the file name, edge-agent-TARGET.
	Name string `json:"name"`
	// Target is the build target ("linux-arm64", ...), as the agent reports
	// it (internal/buildinfo.Target).
	Target string `json:"target"`
	Size   int64  `json:"size"`
	// SHA256 is the hex SHA-256 of the file.
	SHA256 string `json:"sha256"`
}

// Sum returns the artefact's SHA-256 as bytes.
func (a Artifact) Sum() []byte {
	b, _ := hex.DecodeString(a.SHA256)
	return b
}

var (
	targetRE = regexp.MustCompile(`^[a-z0-9]+-[a-z0-9_]+$`)
	sha256RE = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ArtifactName returns the file name of the artefact for target.
func ArtifactName(target string) string { return Product + "-" + target }

// ParseManifest decodes and checks a manifest: known fields only, a valid
// semantic version, at least one artefact, each with a distinct target,
// the conventional name, a positive size and a SHA-256.
func ParseManifest(b []byte) (*Manifest, error) {
	if len(b) > MaxManifest {
		return nil, fmt.Errorf("ota: manifest of %d bytes, at most %d", len(b), MaxManifest)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("ota: manifest: %w", err)
	}
	if dec.More() {
		return nil, errors.New("ota: manifest: trailing data")
	}
	if m.Product != Product {
		return nil, fmt.Errorf("ota: manifest is for %q, not %q", m.Product, Product)
	}
	if err := CheckVersion(m.Version); err != nil {
		return nil, fmt.Errorf("ota: manifest: %w", err)
	}
	if len(m.Artifacts) == 0 || len(m.Artifacts) > MaxArtifacts {
		return nil, fmt.Errorf("ota: manifest lists %d artefacts, want 1 to %d", len(m.Artifacts), MaxArtifacts)
	}
	seen := map[string]bool{}
	for _, a := range m.Artifacts {
		switch {
		case !targetRE.MatchString(a.Target) || len(a.Target) > 64:
			return nil, fmt.Errorf("ota: manifest: bad target %q", a.Target)
		case seen[a.Target]:
			return nil, fmt.Errorf("ota: manifest lists target %s twice", a.Target)
		case a.Name != ArtifactName(a.Target):
			return nil, fmt.Errorf("ota: manifest: artefact %q for %s should be named %s", a.Name, a.Target, ArtifactName(a.Target))
		case a.Size <= 0 || a.Size > 1<<30:
			return nil, fmt.Errorf("ota: manifest: %s has size %d", a.Name, a.Size)
		case !sha256RE.MatchString(a.SHA256):
			return nil, fmt.Errorf("ota: manifest: %s: sha256 must be 64 lower-case hex digits", a.Name)
		}
		seen[a.Target] = true
	}
	return &m, nil
}

// Marshal encodes m as the manifest file's bytes.
func (m *Manifest) Marshal() []byte {
	b, _ := json.MarshalIndent(m, "", "  ")
	return append(b, '\n')
}

// Artifact returns the artefact for target.
func (m *Manifest) Artifact(target string) (Artifact, bool) {
	i := slices.IndexFunc(m.Artifacts, func(a Artifact) bool { return a.Target == target })
	if i < 0 {
		return Artifact{}, false
	}
	return m.Artifacts[i], true
}

// CheckVersion reports whether v is a release version: semantic, with the
// leading "v" ("v1.2.3", "v1.3.0-rc.1").
func CheckVersion(v string) error {
	if !semver.IsValid(v) || semver.Canonical(v) != strings.SplitN(v, "+", 2)[0] {
		return fmt.Errorf("version %q is not a semantic version like v1.2.3", v)
	}
	return nil
}

// Compare orders versions as semver does: -1, 0 or +1. A version that is
// not semantic (a development build's "dev") is older than any release.
func Compare(a, b string) int { return semver.Compare(a, b) }

// Newer reports whether v is newer than running: what an agent accepts.
// Any release is newer than a development build.
func Newer(v, running string) bool {
	return CheckVersion(v) == nil && semver.Compare(v, running) > 0
}

// Keys is a set of release public keys.
type Keys []minisign.PublicKey

// ParseKey reads one public key: its base64 line ("RWQ..."), or a
// minisign .pub file's text (an untrusted comment line, then the key).
func ParseKey(s string) (minisign.PublicKey, error) {
	s = strings.TrimSpace(s)
	lines := strings.Split(s, "\n")
	last := strings.TrimSpace(lines[len(lines)-1])
	var k minisign.PublicKey
	if err := k.UnmarshalText([]byte(last)); err != nil {
		return k, fmt.Errorf("ota: release key: %w", err)
	}
	return k, nil
}

// ParseKeys reads keys with ParseKey.
func ParseKeys(list []string) (Keys, error) {
	var ks Keys
	for _, s := range list {
		k, err := ParseKey(s)
		if err != nil {
			return nil, err
		}
		ks = ks.add(k)
	}
	return ks, nil
}

func (ks Keys) add(k minisign.PublicKey) Keys {
	if slices.ContainsFunc(ks, func(x minisign.PublicKey) bool { return x.Equal(k) }) {
		return ks
	}
	return append(ks, k)
}

// Strings returns the keys' base64 lines.
func (ks Keys) Strings() []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = KeyString(k)
	}
	return out
}

// KeyString is a key's base64 line, the form ParseKey reads.
func KeyString(k minisign.PublicKey) string { return k.String() }

// ErrUnknownKey is returned when a signature is by no pinned key.
var ErrUnknownKey = errors.New("ota: signed by a key this device does not trust")

// ErrBadSignature is returned when a signature does not verify.
var ErrBadSignature = errors.New("ota: signature does not verify")

// Verify checks that sig (a minisign signature file's bytes) signs msg
// with one of the keys. It tells an unknown key from a bad signature.
func (ks Keys) Verify(msg, sig []byte) error {
	if len(sig) > MaxSignature {
		return fmt.Errorf("ota: signature of %d bytes: %w", len(sig), ErrBadSignature)
	}
	var s minisign.Signature
	if err := s.UnmarshalText(sig); err != nil {
		return fmt.Errorf("ota: %w: %v", ErrBadSignature, err)
	}
	for _, k := range ks {
		if k.ID() != s.KeyID {
			continue
		}
		if minisign.Verify(k, msg, sig) {
			return nil
		}
		return fmt.Errorf("%w (key %X)", ErrBadSignature, s.KeyID)
	}
	return fmt.Errorf("%w (key %X)", ErrUnknownKey, s.KeyID)
}

// KeyFor returns the key that made sig (by its key ID), without checking
// the signature: ErrUnknownKey when no key in ks made it.
func (ks Keys) KeyFor(sig []byte) (minisign.PublicKey, error) {
	var s minisign.Signature
	if len(sig) > MaxSignature || s.UnmarshalText(sig) != nil {
		return minisign.PublicKey{}, ErrBadSignature
	}
	for _, k := range ks {
		if k.ID() == s.KeyID {
			return k, nil
		}
	}
	return minisign.PublicKey{}, fmt.Errorf("%w (key %X)", ErrUnknownKey, s.KeyID)
}

// VerifyManifest checks the manifest's signature with the keys, then
// parses it.
func (ks Keys) VerifyManifest(manifest, sig []byte) (*Manifest, error) {
	if err := ks.Verify(manifest, sig); err != nil {
		return nil, fmt.Errorf("ota: manifest: %w", err)
	}
	return ParseManifest(manifest)
}

// Rotate adds the key of each rotation whose signature verifies with a
// key already in ks (or one added before it in the list), and returns the
// new set and how many keys were added. A rotation that does not verify is
// an error and adds nothing after it.
func (ks Keys) Rotate(rots []RotationText) (Keys, int, error) {
	added := 0
	for _, r := range rots {
		k, err := ParseKey(r.Key)
		if err != nil {
			return ks, added, err
		}
		if slices.ContainsFunc(ks, func(x minisign.PublicKey) bool { return x.Equal(k) }) {
			continue
		}
		if err := ks.Verify([]byte(KeyString(k)), r.Sig); err != nil {
			return ks, added, fmt.Errorf("ota: key rotation to %X: %w", k.ID(), err)
		}
		ks = append(ks, k)
		added++
	}
	return ks, added, nil
}

// RotationText is a key rotation: a new key and a signature of its base64
// line (KeyString) by an earlier key.
type RotationText struct {
	Key string
	Sig []byte
}

// Sign signs msg with a private key as minisign does by default: a
// pre-hashed (BLAKE2b) Ed25519 signature, with a trusted comment naming
// what was signed.
func Sign(priv minisign.PrivateKey, msg []byte, what string) []byte {
	r := minisign.NewReader(bytes.NewReader(msg))
	io.Copy(io.Discard, r)
	return r.SignWithComments(priv, "file:"+what, "signature from the Remoteler edge release key")
}

// Sum256 returns the hex SHA-256 of b.
func Sum256(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
