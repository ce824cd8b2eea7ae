package update

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// The start-up check.
//
// Two checks look at the previous attempt before an agent serves:
//
//   - PreStart runs as the unit's ExecStartPre, from the kept old binary
//     (images/device/edge-agent.service: `-/usr/local/bin/.edge-agent.prev
//     update-check`). The old binary is known to work, so it can put itself
//     back even when the new one dies before its own code runs, and it can
//     restore the binary when a power cut fell between selfupdate's two
//     renames (no file at the target path). The "-" makes systemd go on when
//     there is no kept binary (no update yet).
//   - Startup runs first thing in `edge-agent start`, in whatever binary
//     was started: the new binary on its first start begins its trial
//     (Result.Trial, with the deadline to be healthy by), and a restarted
//     one without a commit rolls back by itself even without the unit's
//     pre-start check.
//
// A trial ends with Commit (healthy: ready and the tunnel up) or with a
// rollback: the kept old binary is renamed over the target, the folder is
// fsync'd, and the agent exits for its supervisor to start the old one,
// which reports rolled_back with the reason.

// CheckResult tells the agent what the start-up check found.
type CheckResult struct {
	// Trial is set when this start is the new binary's trial: it must
	// call Commit once healthy, and roll back (Updater does) at Deadline.
	Trial    bool
	Deadline time.Time
	// Restart is set when the check put the old binary back: the agent
	// must exit at once so that its supervisor starts the old one.
	Restart bool
	// Message says what happened, for the log; empty when nothing did.
	Message string
}

// PreStart is the pre-start check (edge-agent update-check), run by the
// kept old binary before every start of the agent. dir is the update
// folder (DATA_DIR/update).
func PreStart(dir string, now time.Time) (CheckResult, error) {
	s, err := loadState(dir)
	if err != nil {
		return CheckResult{}, err
	}
	switch s.Phase {
	case phaseApplying:
		return settleApplying(dir, s)
	case phaseTrial:
		if !exists(s.Target) {
			return rollback(dir, s, "the new binary was missing at start")
		}
		s.PreChecks++
		switch {
		case s.Started:
			return rollback(dir, s, "the new agent stopped before it was healthy (it crashed, hung or was killed)")
		case s.PreChecks >= 2:
			return rollback(dir, s, "the new agent did not start")
		case s.Deadline > 0 && now.UnixMilli() > s.Deadline:
			return rollback(dir, s, "the new agent was not healthy in time")
		}
		return CheckResult{Message: "the new agent starts on trial"}, saveState(dir, s)
	}
	return CheckResult{}, nil
}

// Startup is the check `edge-agent start` runs before anything else.
// version is the running binary's.
func Startup(dir, version string, now time.Time) (CheckResult, error) {
	s, err := loadState(dir)
	if err != nil {
		return CheckResult{}, err
	}
	switch s.Phase {
	case phaseApplying:
		// No pre-start check ran (no unit, or an older one): settle here.
		r, err := settleApplying(dir, s)
		if err != nil || r.Restart {
			return r, err
		}
		if s.Phase != phaseTrial {
			return r, nil
		}
		fallthrough
	case phaseTrial:
		if version != s.Version {
			// The old binary runs while a trial is recorded: someone put it
			// back by hand.
			s.Phase, s.Reason, s.Reported = phaseRolledBack, "the old agent was started while the new one was on trial", false
			return CheckResult{Message: s.Reason}, saveState(dir, s)
		}
		if s.Started {
			return rollback(dir, s, "the new agent restarted before it was healthy")
		}
		s.Started = true
		health := time.Duration(s.HealthMillis) * time.Millisecond
		if health <= 0 {
			health = DefaultHealthTimeout
		}
		deadline := now.Add(health)
		if s.Deadline == 0 || deadline.UnixMilli() < s.Deadline {
			s.Deadline = deadline.UnixMilli()
		}
		if err := saveState(dir, s); err != nil {
			return CheckResult{}, err
		}
		return CheckResult{Trial: true, Deadline: time.UnixMilli(s.Deadline), Message: "on trial as " + s.Version}, nil
	}
	return CheckResult{}, nil
}

// settleApplying decides what a start after an interrupted apply runs:
// the target path is looked at by its hash.
func settleApplying(dir string, s *state) (CheckResult, error) {
	if !exists(s.Target) {
		if !exists(s.Prev) {
			return CheckResult{}, fmt.Errorf("update: neither %s nor the kept %s exists: reinstall the agent", s.Target, s.Prev)
		}
		return rollback(dir, s, "the update was interrupted between its renames")
	}
	sum, err := fileSHA256(s.Target)
	if err != nil {
		return CheckResult{}, fmt.Errorf("update: read %s: %w", s.Target, err)
	}
	switch sum {
	case s.NewSHA256:
		s.Phase, s.Started, s.PreChecks = phaseTrial, false, 0
		return CheckResult{Message: "the new binary is in place; it starts on trial"}, saveState(dir, s)
	case s.OldSHA256:
		s.Phase, s.Reason, s.Reported = phaseFailed, "the update was interrupted before the new binary was in place", false
		os.Remove(newPath(s.Target))
		return CheckResult{Message: s.Reason}, saveState(dir, s)
	}
	return CheckResult{}, fmt.Errorf("update: %s is neither the old nor the new binary (sha256 %s)", s.Target, sum)
}

// rollback puts the kept old binary back at the target path.
func rollback(dir string, s *state, reason string) (CheckResult, error) {
	if err := restore(s); err != nil {
		return CheckResult{}, err
	}
	s.Phase, s.Reason, s.Reported = phaseRolledBack, reason, false
	if err := saveState(dir, s); err != nil {
		return CheckResult{}, err
	}
	return CheckResult{Restart: true, Message: "rolled back to " + s.From + ": " + reason}, nil
}

// restore renames the kept binary over the target, durably.
func restore(s *state) error {
	if err := os.Rename(s.Prev, s.Target); err != nil {
		return fmt.Errorf("update: put the old binary back: %w", err)
	}
	if err := syncDir(filepath.Dir(s.Target)); err != nil {
		return fmt.Errorf("update: put the old binary back: %w", err)
	}
	return nil
}

func exists(path string) bool {
	if path == "" {
		return false
	}
	_, err := os.Stat(path)
	return !errors.Is(err, fs.ErrNotExist)
}

// Commit ends a trial: the new binary is healthy and stays.
func Commit(dir string) error {
	s, err := loadState(dir)
	if err != nil {
		return err
	}
	if s.Phase != phaseTrial {
		return fmt.Errorf("update: commit: no trial under way (phase %q)", s.Phase)
	}
	s.Phase, s.Reported, s.Reason = phaseCommitted, false, ""
	return saveState(dir, s)
}

// RollBack ends a trial that was not healthy in time: the old binary is
// put back, and the caller must exit for its supervisor to start it.
func RollBack(dir, reason string) error {
	s, err := loadState(dir)
	if err != nil {
		return err
	}
	if s.Phase != phaseTrial {
		return fmt.Errorf("update: roll back: no trial under way (phase %q)", s.Phase)
	}
	_, err = rollback(dir, s, reason)
	return err
}
