package proto

// OTA self-update of the agent.
//
// Once its tunnel is up the agent sends an UpdateStatus saying where its
// update stands (StateIdle when nothing is under way). The fleet answers
// with an UpdateOffer when a rollout or a pin wants the device on another
// release, and may push offers later (a rollout reaching the device's
// stage) to an agent that has sent its status on the current connection.
// The agent reports every step with further UpdateStatus messages, which
// the fleet does not answer.
//
// The artefact itself is not on the control stream: the agent opens a
// stream that starts with AgentStream{Service: ServiceOTA} and speaks
// HTTP/1.1 on it, GETting the offer's ArtifactPath (or the delta's Path)
// with Range requests, so that a download resumes where it stopped.
// Everything the agent trusts comes from the signed manifest (see package
// proto/ota): the fleet's hashes and paths only say where to fetch.

// ServiceOTA is the fleet service an agent reaches with AgentStream to
// download release artefacts.
const ServiceOTA = "ota"

// Update states an agent reports in UpdateStatus.State. The fleet keeps
// the last one per device; rollouts count StateCommitted as a success and
// StateFailed, StateRolledBack and StateRefused as failures.
const (
	StateIdle        = "idle"        // nothing under way
	StateWaiting     = "waiting"     // offered; waiting for the maintenance window
	StateDownloading = "downloading" // Done of Total bytes downloaded
	StateDownloaded  = "downloaded"  // downloaded and verified
	StateApplying    = "applying"    // being put in place
	StateRestarting  = "restarting"  // in place; the agent restarts on it
	StateCommitted   = "committed"   // the new agent came up healthy and stays
	StateRolledBack  = "rolled_back" // the new agent was not healthy; the old one is back
	StateFailed      = "failed"      // the update could not be done (Reason says why); nothing changed
	StateRefused     = "refused"     // the offer failed verification (signature, hash, downgrade); nothing was written
)

// UpdateOffer tells the agent which release to run. Cancel withdraws an
// earlier offer (the rollout was aborted): an update not yet applied
// stops.
type UpdateOffer struct {
	// Rollout names the rollout (or pin) behind the offer, for the
	// agent's status reports.
	Rollout string `cbor:"1,keyasint"`
	// Version is the release's version; the manifest must say the same.
	Version string `cbor:"2,keyasint,omitempty"`
	// Manifest is the release manifest exactly as signed, and
	// ManifestSig its minisign signature by a release key.
	Manifest    []byte `cbor:"3,keyasint,omitempty"`
	ManifestSig []byte `cbor:"4,keyasint,omitempty"`
	// ArtifactPath is where the full artefact for the device's target is
	// (HTTP path on the "ota" service), and ArtifactSig its minisign
	// signature.
	ArtifactPath string `cbor:"5,keyasint,omitempty"`
	ArtifactSig  []byte `cbor:"6,keyasint,omitempty"`
	// Delta, when set, turns the device's running binary into the
	// artefact with less to download.
	Delta *UpdateDelta `cbor:"7,keyasint,omitempty"`
	// Rotations are release keys signed by earlier release keys; the
	// agent adds a key when its signature verifies with a key it pins.
	Rotations []KeyRotation `cbor:"8,keyasint,omitempty"`
	// Window, when set, is the maintenance window ("02:00-05:00", UTC)
	// outside which the agent neither downloads nor applies.
	Window string `cbor:"9,keyasint,omitempty"`
	// BandwidthBytes caps the download, bytes per second; 0 leaves the
	// agent's own cap.
	BandwidthBytes int64 `cbor:"10,keyasint,omitempty"`
	// HealthMillis is how long the new agent has to come up healthy
	// (ready, with its tunnel up) before it is rolled back; 0 leaves the
	// agent's default.
	HealthMillis int64 `cbor:"11,keyasint,omitempty"`
	// Cancel withdraws the rollout's offer.
	Cancel bool `cbor:"12,keyasint,omitempty"`
}

// UpdateDelta is a patch from the device's running binary to the
// offered artefact: zstd with the running binary as a raw dictionary.
type UpdateDelta struct {
	// FromSHA256 is the SHA-256 of the binary the patch applies to.
	FromSHA256 []byte `cbor:"1,keyasint"`
	// Path is where the patch is (HTTP path on the "ota" service).
	Path string `cbor:"2,keyasint"`
	// Size and SHA256 are the patch's own, checked before it is applied.
	Size   int64  `cbor:"3,keyasint"`
	SHA256 []byte `cbor:"4,keyasint"`
}

// KeyRotation is a release public key (minisign text form) and a
// minisign signature of that text by an earlier release key.
type KeyRotation struct {
	Key string `cbor:"1,keyasint"`
	Sig []byte `cbor:"2,keyasint"`
}

// UpdateStatus reports where the agent's update stands.
type UpdateStatus struct {
	// Rollout and Version are the offer's; empty with StateIdle.
	Rollout string `cbor:"1,keyasint,omitempty"`
	Version string `cbor:"2,keyasint,omitempty"`
	State   string `cbor:"3,keyasint"`
	// Reason says why for StateFailed, StateRolledBack and StateRefused.
	Reason string `cbor:"4,keyasint,omitempty"`
	// Done and Total are the bytes downloaded and to download.
	Done  int64 `cbor:"5,keyasint,omitempty"`
	Total int64 `cbor:"6,keyasint,omitempty"`
	// Running is the version the agent runs now.
	Running string `cbor:"7,keyasint,omitempty"`
	// Delta says the download is a delta.
	Delta bool `cbor:"8,keyasint,omitempty"`
	// Target is the agent's build target ("linux-arm64"), which picks
	// the release artefact.
	Target string `cbor:"9,keyasint,omitempty"`
}

// AgentStream is the first frame of a stream the agent opens to reach a
// fleet service (other than Resume, which re-attaches a session).
type AgentStream struct {
	Service string `cbor:"1,keyasint"`
}

func (*UpdateOffer) Kind() Kind  { return KindUpdateOffer }
func (*UpdateStatus) Kind() Kind { return KindUpdateStatus }
func (*AgentStream) Kind() Kind  { return KindAgentStream }
