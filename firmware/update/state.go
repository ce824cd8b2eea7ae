package update

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Phases of an update, as kept in the state file.
const (
	phaseIdle       = ""            // nothing under way
	phaseApplying   = "applying"    // the renames are under way
	phaseTrial      = "trial"       // the new binary is in place and on trial
	phaseCommitted  = "committed"   // the new binary came up healthy
	phaseRolledBack = "rolled_back" // the old binary is back
	phaseFailed     = "failed"      // nothing changed in place
)

// state is the update's record on disk (DIR/state.json), written with
// writeFileSync before and after every step that changes the binaries,
// so that a start-up after a crash or a power cut knows where things
// stand.
type state struct {
	Phase   string `json:"phase"`
	Rollout string `json:"rollout,omitempty"`
	Version string `json:"version,omitempty"`
	// From is the version that applied the update.
	From string `json:"from,omitempty"`
	// Target is the agent binary's path, Prev where the old binary is
	// kept (selfupdate's OldSavePath).
	Target string `json:"target,omitempty"`
	Prev   string `json:"prev,omitempty"`
	// NewSHA256 and OldSHA256 tell which binary is at Target.
	NewSHA256 string `json:"new_sha256,omitempty"`
	OldSHA256 string `json:"old_sha256,omitempty"`
	// Started is set by the new binary's first start on trial; a second
	// start without a commit means it stopped before it was healthy.
	Started bool `json:"started,omitempty"`
	// PreChecks counts the pre-start checks (ExecStartPre) of the trial:
	// two without Started means the new binary never got as far.
	PreChecks int `json:"pre_checks,omitempty"`
	// Deadline (Unix ms) is when the trial must have committed;
	// HealthMillis the time it is given from its first start.
	Deadline     int64 `json:"deadline,omitempty"`
	HealthMillis int64 `json:"health_ms,omitempty"`
	// Reason says why for failed and rolled_back.
	Reason string `json:"reason,omitempty"`
	// Reported is set once the fleet was told the final phase.
	Reported bool `json:"reported,omitempty"`
}

const stateFile = "state.json"

// loadState reads DIR/state.json; a missing file is the idle state. A
// damaged file is reported and treated as idle: the binaries themselves are
// then left as they are.
func loadState(dir string) (*state, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return &state{}, nil
	}
	if err != nil {
		return &state{}, fmt.Errorf("update: read state: %w", err)
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return &state{}, fmt.Errorf("update: state file %s is damaged: %w", filepath.Join(dir, stateFile), err)
	}
	return &s, nil
}

func saveState(dir string, s *state) error {
	b, _ := json.MarshalIndent(s, "", "  ")
	if err := writeFileSync(filepath.Join(dir, stateFile), b, 0o600); err != nil {
		return fmt.Errorf("update: save state: %w", err)
	}
	return nil
}

// writeFileSync writes a file atomically and durably: a temporary file,
// fsync'd, renamed over path, and the folder fsync'd.
func writeFileSync(path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(filepath.Dir(path))
}

// syncFile fsyncs a file by path.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// syncDir fsyncs a folder, so that renames and creations in it last.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// fileSHA256 returns the hex SHA-256 of a file.
func fileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
