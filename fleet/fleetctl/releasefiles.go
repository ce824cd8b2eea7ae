package fleetctl

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"aead.dev/minisign"

	"remoteler.dev/edge/proto/ota"
)

// Release files: plain functions behind `fleetctl releases sign|add|keygen`.
//
// A release directory holds the cross builds (edge-agent-TARGET, as
// `make cross` writes them to dist/), and after signing the manifest
// (manifest.json), its signature and one signature per artefact
// (NAME.minisig).

// GenerateReleaseKey writes a new minisign key pair: prefix.key (the
// private key, encrypted with password unless it is empty) and prefix.pub.
// It returns the public key's base64 line.
func GenerateReleaseKey(prefix, password string) (string, error) {
	pub, priv, err := minisign.GenerateKey(rand.Reader)
	if err != nil {
		return "", fmt.Errorf("generate key: %w", err)
	}
	var keyText []byte
	if password != "" {
		if keyText, err = minisign.EncryptKey(password, priv); err != nil {
			return "", fmt.Errorf("encrypt key: %w", err)
		}
	} else if keyText, err = priv.MarshalText(); err != nil {
		return "", err
	}
	if err := os.WriteFile(prefix+".key", keyText, 0o600); err != nil {
		return "", err
	}
	line := ota.KeyString(pub)
	pubText := fmt.Sprintf("untrusted comment: minisign public key %X\n%s\n", pub.ID(), line)
	if err := os.WriteFile(prefix+".pub", []byte(pubText), 0o644); err != nil {
		return "", err
	}
	return line, nil
}

// LoadReleaseKey reads a minisign private key file; an encrypted one needs
// its password.
func LoadReleaseKey(path string, password func() (string, error)) (minisign.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return minisign.PrivateKey{}, err
	}
	if !minisign.IsEncrypted(b) {
		var k minisign.PrivateKey
		if err := k.UnmarshalText(b); err != nil {
			return k, fmt.Errorf("release key %s: %w", path, err)
		}
		return k, nil
	}
	pw, err := password()
	if err != nil {
		return minisign.PrivateKey{}, err
	}
	k, err := minisign.DecryptKey(pw, b)
	if err != nil {
		return k, fmt.Errorf("release key %s: %w (wrong password?)", path, err)
	}
	return k, nil
}

// releaseArtifacts lists the agent artefacts in dir by target.
func releaseArtifacts(dir string) (map[string]string, error) {
	matches, err := filepath.Glob(filepath.Join(dir, ota.Product+"-*"))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, m := range matches {
		name := filepath.Base(m)
		if strings.HasSuffix(name, ota.SigSuffix) || strings.HasSuffix(name, ".tmp") || strings.Contains(name, ".tar") {
			continue
		}
		if st, err := os.Stat(m); err != nil || !st.Mode().IsRegular() {
			continue
		}
		out[strings.TrimPrefix(name, ota.Product+"-")] = m
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no %s-TARGET files in %s: run make cross first", ota.Product, dir)
	}
	return out, nil
}

// SignRelease writes the manifest of the artefacts in dir for version and
// signs it and every artefact with priv. It returns the manifest.
func SignRelease(dir, version string, priv minisign.PrivateKey) (*ota.Manifest, error) {
	if err := ota.CheckVersion(version); err != nil {
		return nil, err
	}
	arts, err := releaseArtifacts(dir)
	if err != nil {
		return nil, err
	}
	m := &ota.Manifest{Product: ota.Product, Version: version}
	targets := make([]string, 0, len(arts))
	for t := range arts {
		targets = append(targets, t)
	}
	sort.Strings(targets)
	for _, t := range targets {
		b, err := os.ReadFile(arts[t])
		if err != nil {
			return nil, err
		}
		name := filepath.Base(arts[t])
		m.Artifacts = append(m.Artifacts, ota.Artifact{Name: name, Target: t, Size: int64(len(b)), SHA256: ota.Sum256(b)})
		if err := os.WriteFile(arts[t]+ota.SigSuffix, ota.Sign(priv, b, name), 0o644); err != nil {
			return nil, err
		}
	}
	mb := m.Marshal()
	if _, err := ota.ParseManifest(mb); err != nil {
		return nil, err
	}
	mp := filepath.Join(dir, ota.ManifestName)
	if err := os.WriteFile(mp, mb, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(mp+ota.SigSuffix, ota.Sign(priv, mb, ota.ManifestName), 0o644); err != nil {
		return nil, err
	}
	return m, nil
}

// SignRotation returns the key rotation to the public key in pubPath: its
// base64 line signed by priv, an old release key.
func SignRotation(pubPath string, priv minisign.PrivateKey) (line string, sig []byte, err error) {
	b, err := os.ReadFile(pubPath)
	if err != nil {
		return "", nil, err
	}
	k, err := ota.ParseKey(string(b))
	if err != nil {
		return "", nil, err
	}
	line = ota.KeyString(k)
	return line, ota.Sign(priv, []byte(line), "release key "+line), nil
}

// ReleaseFiles are what `releases add` uploads (ReadRelease reads them).
type ReleaseFiles struct {
	manifest    []byte
	manifestSig []byte
	manifestObj *ota.Manifest
	paths       map[string]string // target → artefact file
	sigs        map[string]string // target → signature text
}

// ReadRelease reads a signed release directory and checks it is whole
// and matches version (when set). The signatures are checked by the fleet.
func ReadRelease(dir, version string) (*ReleaseFiles, error) {
	mp := filepath.Join(dir, ota.ManifestName)
	mb, err := os.ReadFile(mp)
	if err != nil {
		return nil, fmt.Errorf("%w: sign the release first (fleetctl releases sign --key KEY --version V %s, or minisign)", err, dir)
	}
	sig, err := os.ReadFile(mp + ota.SigSuffix)
	if err != nil {
		return nil, fmt.Errorf("%w: the manifest is not signed", err)
	}
	m, err := ota.ParseManifest(mb)
	if err != nil {
		return nil, err
	}
	if version != "" && m.Version != version {
		return nil, fmt.Errorf("the manifest in %s is for %s, not %s", dir, m.Version, version)
	}
	rf := &ReleaseFiles{manifest: mb, manifestSig: sig, manifestObj: m, paths: map[string]string{}, sigs: map[string]string{}}
	for _, a := range m.Artifacts {
		p := filepath.Join(dir, a.Name)
		s, err := os.ReadFile(p + ota.SigSuffix)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", a.Name, err)
		}
		rf.paths[a.Target], rf.sigs[a.Target] = p, string(s)
	}
	return rf, nil
}
