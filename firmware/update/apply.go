package update

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/minio/selfupdate"
	"golang.org/x/time/rate"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/ota"
)

// run takes an offer from verification to the restart onto the new
// binary. Nothing is written next to the agent binary before the manifest,
// the artefact's hash and its signature have verified.
func (u *Updater) run(ctx context.Context, o *proto.UpdateOffer, st *proto.UpdateStatus) error {
	if u.cfg.Off {
		return refuse("self-update is off on this device (update.off in its config)")
	}
	// Release keys: rotations first, each signed by a key already pinned.
	u.mu.Lock()
	keys := u.keys
	u.mu.Unlock()
	if len(o.Rotations) > 0 {
		rots := make([]ota.RotationText, len(o.Rotations))
		for i, r := range o.Rotations {
			rots[i] = ota.RotationText{Key: r.Key, Sig: r.Sig}
		}
		nk, added, err := keys.Rotate(rots)
		if err != nil {
			return refuse("%v", err)
		}
		if added > 0 {
			if err := u.saveKeys(nk); err != nil {
				return err
			}
			u.mu.Lock()
			u.keys = nk
			u.mu.Unlock()
			keys = nk
			u.log.Info("release key rotated", "keys", len(nk))
			u.emit(ctx, proto.EventUpdateKeyRotated, proto.OutcomeSuccess, "a release key signed by a pinned key was added",
				map[string]string{"keys": fmt.Sprint(len(nk))})
		}
	}
	if len(keys) == 0 {
		return refuse("this device pins no release key (--release-key, or release_key in its config)")
	}
	m, err := keys.VerifyManifest(o.Manifest, o.ManifestSig)
	if err != nil {
		return refuse("%v", err)
	}
	if m.Version != o.Version {
		return refuse("the offer says %s but its manifest says %s", o.Version, m.Version)
	}
	if !ota.Newer(m.Version, u.cfg.Version) {
		return refuse("%s is not newer than the running %s: downgrades are refused", m.Version, u.cfg.Version)
	}
	art, ok := m.Artifact(u.cfg.BuildTarget)
	if !ok {
		return refuse("release %s has no artefact for this device's target %s", m.Version, u.cfg.BuildTarget)
	}
	if _, err := keyFor(keys, o.ArtifactSig); err != nil {
		// Only the key is checked here (an unknown key is refused before
		// any download); the signature is checked on the result.
		return refuse("artefact signature: %v", err)
	}
	u.emit(ctx, proto.EventUpdateOffered, proto.OutcomeSuccess, "", map[string]string{"version": m.Version, "rollout": o.Rollout, "from": u.cfg.Version})

	// The maintenance windows: the device's and the rollout's.
	if err := u.waitWindows(ctx, o, st); err != nil {
		return err
	}

	// What to download: the delta when it applies to this binary.
	running, err := fileSHA256(u.cfg.Target)
	if err != nil {
		return failf("read the agent binary %s: %v", u.cfg.Target, err)
	}
	useDelta := o.Delta != nil && hexEq(running, o.Delta.FromSHA256) && o.Delta.Size > 0 && o.Delta.Size < art.Size
	size, sum, path := art.Size, art.Sum(), o.ArtifactPath
	if useDelta {
		size, sum, path = o.Delta.Size, o.Delta.SHA256, o.Delta.Path
	}
	// Room: the download here, and the new binary next to the target.
	if err := roomFor(u.cfg.Dir, size+u.cfg.MinFree); err != nil {
		return failf("no room to download %s: %v", m.Version, err)
	}
	if err := roomFor(filepath.Dir(u.cfg.Target), art.Size+u.cfg.MinFree); err != nil {
		return failf("no room for the new binary: %v", err)
	}
	file := filepath.Join(u.cfg.Dir, hex.EncodeToString(sum))
	st.State, st.Total, st.Delta = proto.StateDownloading, size, useDelta
	u.report(*st)
	lastReport := u.cfg.Now()
	f := &fetch{client: u.httpClient(), url: "http://fleet" + path, path: file, size: size, sum: sum,
		limit: u.limiter(o), log: u.log, progress: func(done int64) {
			if now := u.cfg.Now(); now.Sub(lastReport) >= 5*time.Second || done == size {
				lastReport = now
				st.Done = done
				u.report(*st)
			}
		}}
	defer u.cleanDownloads(file)
	err = f.run(ctx, func(ctx context.Context, attempt int) error {
		d := min(time.Second<<min(attempt, 6), time.Minute)
		d = d/2 + rand.N(d/2+1)
		u.log.Info("download interrupted; resuming", "in", d.Round(time.Millisecond), "attempt", attempt+1)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(d):
			return nil
		}
	})
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		if useDelta {
			return refuse("the delta does not match its SHA-256 (corrupted): %v", err)
		}
		return refuse("the artefact does not match its SHA-256: %v", err)
	}
	st.State, st.Done = proto.StateDownloaded, size
	u.report(*st)
	u.emit(ctx, proto.EventUpdateDownloaded, proto.OutcomeSuccess, "", map[string]string{"version": m.Version, "bytes": fmt.Sprint(size), "delta": fmt.Sprint(useDelta)})
	return u.apply(ctx, o, m, art, file, useDelta, running, st)
}

// apply verifies the result and puts it in place, then restarts.
func (u *Updater) apply(ctx context.Context, o *proto.UpdateOffer, m *ota.Manifest, art ota.Artifact, file string, delta bool, running string, st *proto.UpdateStatus) error {
	if err := u.waitWindows(ctx, o, st); err != nil {
		return err
	}
	st.State = proto.StateApplying
	u.report(*st)
	verifier, err := u.verifier(o.ArtifactSig)
	if err != nil {
		return refuse("artefact signature: %v", err)
	}
	prev := prevPath(u.cfg.Target)
	opts := selfupdate.Options{
		TargetPath:  u.cfg.Target,
		TargetMode:  0o755,
		Checksum:    art.Sum(),
		Verifier:    verifier,
		OldSavePath: prev,
	}
	if delta {
		opts.Patcher = ota.Patcher{Max: art.Size}
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return failf("read the download: %v", err)
	}
	// selfupdate applies the delta to the running binary, checks the
	// result's SHA-256 against the signed manifest and its signature, and
	// only then writes .edge-agent.new beside the target.
	if err := selfupdate.PrepareAndCheckBinary(bytes.NewReader(data), opts); err != nil {
		os.Remove(newPath(u.cfg.Target))
		return refuse("the new binary does not verify: %v", err)
	}
	fault("prepared")
	if err := syncFile(newPath(u.cfg.Target)); err != nil {
		return failf("sync the new binary: %v", err)
	}
	if err := syncDir(filepath.Dir(u.cfg.Target)); err != nil {
		return failf("sync %s: %v", filepath.Dir(u.cfg.Target), err)
	}
	s := &state{Phase: phaseApplying, Rollout: o.Rollout, Version: m.Version, From: u.cfg.Version,
		Target: u.cfg.Target, Prev: prev, NewSHA256: art.SHA256, OldSHA256: running,
		HealthMillis: u.health(o).Milliseconds()}
	if err := saveState(u.cfg.Dir, s); err != nil {
		return err
	}
	fault("state-applying")
	// The two renames: target to prev, new to target. A crash between them
	// leaves no binary at the target; the pre-start check restores prev.
	if err := commitBinary(opts); err != nil {
		s.Phase, s.Reason = phaseFailed, err.Error()
		saveState(u.cfg.Dir, s)
		return failf("put the new binary in place: %v", err)
	}
	fault("renamed")
	if err := syncDir(filepath.Dir(u.cfg.Target)); err != nil {
		return failf("sync %s: %v", filepath.Dir(u.cfg.Target), err)
	}
	s.Phase = phaseTrial
	if err := saveState(u.cfg.Dir, s); err != nil {
		return err
	}
	fault("state-trial")
	u.emit(ctx, proto.EventUpdateApplied, proto.OutcomeSuccess, "the new binary is in place; restarting on it",
		map[string]string{"version": m.Version, "from": u.cfg.Version, "rollout": o.Rollout, "delta": fmt.Sprint(delta)})
	st.State = proto.StateRestarting
	u.report(*st)
	u.log.Info("update applied; restarting on the new binary", "version", m.Version)
	u.cfg.Restart("restarting on " + m.Version)
	return nil
}

// commitBinary is selfupdate.CommitBinary with a fault point between
// its renames (for the crash tests; see fault).
var commitBinary = func(opts selfupdate.Options) error {
	if faultAt("between-renames") {
		// Do the first rename only, then die as a power cut would.
		os.Remove(opts.OldSavePath)
		if err := os.Rename(opts.TargetPath, opts.OldSavePath); err != nil {
			return err
		}
		syncDir(filepath.Dir(opts.TargetPath))
		fault("between-renames")
	}
	return selfupdate.CommitBinary(opts)
}

// keyFor returns the text of the pinned key that made sig.
func keyFor(keys ota.Keys, sig []byte) (string, error) {
	k, err := keys.KeyFor(sig)
	if err != nil {
		return "", err
	}
	return ota.KeyString(k), nil
}

// verifier returns selfupdate's minisign verifier for sig, with the
// pinned key that made it.
func (u *Updater) verifier(sig []byte) (*selfupdate.Verifier, error) {
	u.mu.Lock()
	keys := u.keys
	u.mu.Unlock()
	key, err := keyFor(keys, sig)
	if err != nil {
		return nil, err
	}
	sigPath := filepath.Join(u.cfg.Dir, "artifact"+ota.SigSuffix)
	if err := writeFileSync(sigPath, sig, 0o600); err != nil {
		return nil, err
	}
	v := selfupdate.NewVerifier()
	if err := v.LoadFromFile(sigPath, key); err != nil {
		return nil, err
	}
	return v, nil
}

func (u *Updater) health(o *proto.UpdateOffer) time.Duration {
	if o.HealthMillis > 0 {
		return time.Duration(o.HealthMillis) * time.Millisecond
	}
	return u.cfg.HealthTimeout
}

// limiter caps the download at the smaller of the device's and the
// offer's bandwidth; nil when neither sets one.
func (u *Updater) limiter(o *proto.UpdateOffer) *rate.Limiter {
	bw := u.cfg.MaxBandwidth
	if o.BandwidthBytes > 0 && (bw <= 0 || o.BandwidthBytes < bw) {
		bw = o.BandwidthBytes
	}
	if bw <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(bw), 32<<10)
}

// waitWindows waits until both maintenance windows are open.
func (u *Updater) waitWindows(ctx context.Context, o *proto.UpdateOffer, st *proto.UpdateStatus) error {
	mine, _ := ota.ParseWindow(u.cfg.Window)
	theirs, err := ota.ParseWindow(o.Window)
	if err != nil {
		return refuse("%v", err)
	}
	for {
		now := u.cfg.Now()
		if mine.Open(now) && theirs.Open(now) {
			return nil
		}
		next := mine.Next(now)
		if n := theirs.Next(now); n.After(next) {
			next = n
		}
		if st.State != proto.StateWaiting {
			saved := st.State
			st.State = proto.StateWaiting
			u.report(*st)
			st.State = saved
		}
		u.log.Info("waiting for the maintenance window", "until", next.Format(time.RFC3339))
		wait := max(next.Sub(now), time.Second)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(wait, 10*time.Minute)):
		}
	}
}

// cleanDownloads removes what the download left (the part file stays
// while an update is under way elsewhere).
func (u *Updater) cleanDownloads(file string) {
	os.Remove(file)
	os.Remove(file + ".part")
	os.Remove(file + ".part.synced")
}

// newPath is where selfupdate writes the new binary; prevPath where the
// old one is kept (a hidden file beside the target: renames stay on one
// file system).
func newPath(target string) string {
	return filepath.Join(filepath.Dir(target), "."+filepath.Base(target)+".new")
}

func prevPath(target string) string {
	return filepath.Join(filepath.Dir(target), "."+filepath.Base(target)+".prev")
}

// PrevPath returns where the old binary of target is kept after an update
// (the unit's ExecStartPre runs it).
func PrevPath(target string) string { return prevPath(target) }
