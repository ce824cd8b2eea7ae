package fleetctl

import (
	"os"
	"path/filepath"
	"testing"

	"remoteler.dev/edge/proto/ota"
)

func TestReleaseFiles(t *testing.T) {
	dir := t.TempDir()
	for _, target := range []string{"linux-arm64", "linux-armv6"} {
		if err := os.WriteFile(filepath.Join(dir, "edge-agent-"+target), []byte("agent for "+target), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	prefix := filepath.Join(t.TempDir(), "release")
	// Unencrypted: minisign's scrypt takes seconds per use (encrypted keys
	// are minisign's own code, tested there).
	line, err := GenerateReleaseKey(prefix, "")
	if err != nil {
		t.Fatal(err)
	}
	pubText, _ := os.ReadFile(prefix + ".pub")
	pub, err := ota.ParseKey(string(pubText))
	if err != nil || ota.KeyString(pub) != line {
		t.Fatalf("the .pub file does not hold the printed key: %v", err)
	}
	priv, err := LoadReleaseKey(prefix+".key", func() (string, error) { t.Error("asked for a password"); return "", nil })
	if err != nil {
		t.Fatal(err)
	}
	if _, err := SignRelease(dir, "1.0", priv); err == nil {
		t.Error("signed a release with a version that is not semantic")
	}
	m, err := SignRelease(dir, "v1.0.0", priv)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Artifacts) != 2 {
		t.Errorf("%d artefacts signed, want 2", len(m.Artifacts))
	}
	rf, err := ReadRelease(dir, "v1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (ota.Keys{pub}).VerifyManifest(rf.manifest, rf.manifestSig); err != nil {
		t.Errorf("manifest signature: %v", err)
	}
	for target, sig := range rf.sigs {
		b, _ := os.ReadFile(rf.paths[target])
		if err := (ota.Keys{pub}).Verify(b, []byte(sig)); err != nil {
			t.Errorf("%s: %v", target, err)
		}
	}
	if _, err := ReadRelease(dir, "v2.0.0"); err == nil {
		t.Error("a release directory read as another version")
	}

	// Rotation: the new key's line, signed by the old key.
	newPrefix := filepath.Join(t.TempDir(), "new")
	newLine, err := GenerateReleaseKey(newPrefix, "")
	if err != nil {
		t.Fatal(err)
	}
	gotLine, sig, err := SignRotation(newPrefix+".pub", priv)
	if err != nil || gotLine != newLine {
		t.Fatalf("SignRotation: %q %v", gotLine, err)
	}
	if _, n, err := (ota.Keys{pub}).Rotate([]ota.RotationText{{Key: gotLine, Sig: sig}}); err != nil || n != 1 {
		t.Errorf("the rotation does not verify: %v", err)
	}
}
