package api

import "time"

// OTA: releases, rollouts and pins (admin endpoints), and the update state
// devices show.
const (
	// PathReleases: GET list, POST add (AddReleaseRequest), DELETE
	// /v1/releases/VERSION. PathReleaseBlobs/SHA256: PUT an artefact's
	// bytes (raw body) before the release that names it is added.
	PathReleases     = "/v1/releases"
	PathReleaseBlobs = "/v1/release-blobs"
	// PathRollouts: GET list, POST create (CreateRolloutRequest); GET
	// /v1/rollouts/ID; POST /v1/rollouts/ID/ACTION (pause, resume, abort).
	PathRollouts = "/v1/rollouts"
	// PathPins: GET list, PUT (Pin), DELETE /v1/pins/NAME.
	PathPins = "/v1/pins"
	// PathReleaseKeys: POST a key rotation (KeyRotation).
	PathReleaseKeys = "/v1/release-keys"
)

// KeyRotation adds a release key: the new key's base64 line and a
// minisign signature of that line by a key the fleet already trusts.
// Agents get it with their next offer and add the key the same way.
type KeyRotation struct {
	Key string `json:"key"`
	Sig string `json:"sig"`
}

// Release is an agent release the fleet holds.
type Release struct {
	Version   string            `json:"version"`
	AddedAt   time.Time         `json:"added_at"`
	Artifacts []ReleaseArtifact `json:"artifacts"`
	Deltas    []ReleaseDelta    `json:"deltas,omitempty"`
	// KeyID is the release key that signed it (hex).
	KeyID string `json:"key_id"`
}

// ReleaseArtifact is one binary of a release.
type ReleaseArtifact struct {
	Target string `json:"target"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
	// Replicas are the running fleetd replicas that hold it (on several
	// replicas; the others fetch it from them when a device asks).
	Replicas []string `json:"replicas,omitempty"`
	// Unavailable says why devices cannot download it now (no running
	// replica holds it); empty when they can.
	Unavailable string `json:"unavailable,omitempty"`
}

// ReleaseDelta is a patch to a release's artefact from an earlier
// release's, for one target. Skipped says why none is offered (too large).
type ReleaseDelta struct {
	Target  string `json:"target"`
	From    string `json:"from"`
	Size    int64  `json:"size"`
	SHA256  string `json:"sha256,omitempty"`
	Skipped string `json:"skipped,omitempty"`
	// Replicas and Unavailable: as ReleaseArtifact's.
	Replicas    []string `json:"replicas,omitempty"`
	Unavailable string   `json:"unavailable,omitempty"`
}

// AddReleaseRequest adds a release whose artefacts were uploaded: the
// manifest as signed, its signature, and each artefact's signature by
// target (minisign signature files' text).
type AddReleaseRequest struct {
	Manifest     string            `json:"manifest"`
	ManifestSig  string            `json:"manifest_sig"`
	ArtifactSigs map[string]string `json:"artifact_sigs"`
}

// Rollout states.
const (
	RolloutRunning = "running"
	RolloutPaused  = "paused"
	RolloutHalted  = "halted" // stopped by itself: failures crossed the threshold
	RolloutAborted = "aborted"
	RolloutDone    = "done"
)

// CreateRolloutRequest starts a rollout.
type CreateRolloutRequest struct {
	Release  string            `json:"release"`
	Selector map[string]string `json:"selector,omitempty"`
	// Stages are cumulative shares of the selected devices, in percent;
	// default 1, 10, 50, 100.
	Stages []float64 `json:"stages,omitempty"`
	// Soak is how long a stage runs before the next may start; default 1h.
	Soak string `json:"soak,omitempty"`
	// MaxFailure is the failure share (percent) that halts the rollout;
	// default 5.
	MaxFailure float64 `json:"max_failure,omitempty"`
	// Window is the maintenance window, "HH:MM-HH:MM" UTC; default none.
	Window string `json:"window,omitempty"`
	// OfflineDeadline counts a device that went offline during its update
	// and stays away this long as failed; default 30m.
	OfflineDeadline string `json:"offline_deadline,omitempty"`
	// HealthTimeout is how long the new agent has to come up healthy;
	// default the agent's (2m).
	HealthTimeout string `json:"health_timeout,omitempty"`
	// BandwidthBytes caps each device's download, bytes per second.
	BandwidthBytes int64 `json:"bandwidth_bytes,omitempty"`
}

// Rollout is a rollout and its progress.
type Rollout struct {
	ID              string            `json:"id"`
	Release         string            `json:"release"`
	Selector        map[string]string `json:"selector,omitempty"`
	Stages          []float64         `json:"stages"`
	Soak            string            `json:"soak"`
	MaxFailure      float64           `json:"max_failure"`
	Window          string            `json:"window,omitempty"`
	OfflineDeadline string            `json:"offline_deadline"`
	HealthTimeout   string            `json:"health_timeout,omitempty"`
	BandwidthBytes  int64             `json:"bandwidth_bytes,omitempty"`
	State           string            `json:"state"`
	// Stage is the index of the current stage.
	Stage int `json:"stage"`
	// Reason says why it halted (or was paused or aborted).
	Reason    string    `json:"reason,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	CreatedBy string    `json:"created_by,omitempty"`
	UpdatedAt time.Time `json:"updated_at"`
	StageAt   time.Time `json:"stage_at"`
	// Devices counts the rollout's devices; the others count them by
	// where they stand.
	Devices    int `json:"devices"`
	Assigned   int `json:"assigned"`
	Committed  int `json:"committed"`
	Failed     int `json:"failed"`
	InProgress int `json:"in_progress"`
	Pending    int `json:"pending"`
	// Failures lists failed devices and why (at most 20).
	Failures []RolloutFailure `json:"failures,omitempty"`
}

// RolloutFailure is one failed device of a rollout.
type RolloutFailure struct {
	Device string `json:"device"`
	State  string `json:"state"`
	Reason string `json:"reason"`
}

// Pin holds a device (by name) or the devices matching a selector at a
// version: rollouts of other versions leave them out, and they are
// offered the pinned version.
type Pin struct {
	Name     string            `json:"name"`
	Version  string            `json:"version"`
	Device   string            `json:"device,omitempty"`
	Selector map[string]string `json:"selector,omitempty"`
}

// DeviceUpdate is where a device's update stands, as the fleet last heard.
type DeviceUpdate struct {
	// Target is the version the device is being moved to.
	Target  string    `json:"target,omitempty"`
	Rollout string    `json:"rollout,omitempty"`
	State   string    `json:"state,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	Done    int64     `json:"done,omitempty"`
	Total   int64     `json:"total,omitempty"`
	At      time.Time `json:"at,omitzero"`
}
