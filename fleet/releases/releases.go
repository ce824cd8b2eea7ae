// Package releases keeps the fleet's agent releases: it verifies a
// release's signed manifest and every artefact's hash and minisign
// signature against the fleet's release keys (proto/ota) before it keeps
// it, prepares deltas to it from the last few releases per target
// (pure-Go zstd with the old binary as dictionary; a delta larger than half
// the artefact is not kept), and serves artefacts and deltas to agents
// over their tunnels with HTTP Range support.
//
// Release records live in the fleet's store ("releases/VERSION", JSON);
// the bytes, being megabytes each, live in a folder (DATA_DIR/releases/
// blobs/SHA256), named by their SHA-256. Several fleetd replicas on one
// store fetch the blobs they lack from each other (share.go).
//
// Only fleet/... imports this package.
package releases

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/ota"
)

// Config configures a Service. Store, Dir and Keys are required.
type Config struct {
	Store store.Store
	// Dir holds the blobs (DATA_DIR/releases).
	Dir string
	// Keys returns the release keys the fleet trusts.
	Keys func() ota.Keys
	// DeltaFrom is how many earlier releases deltas are made from, per
	// target; default 3, negative: none.
	DeltaFrom int
	// Peers, on several replicas, reaches the others for the blobs this
	// one lacks; nil: one fleetd, which holds every blob itself.
	Peers Peers
	// FetchTimeout bounds a blob's fetch from the other replicas; default
	// 5 minutes.
	FetchTimeout time.Duration
	// KeepUnreferenced is how long a blob no release names is kept (an
	// upload waits for its release to be added); default an hour.
	KeepUnreferenced time.Duration
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Service keeps releases. Create it with New and call Run for the delta
// worker.
type Service struct {
	cfg      Config
	log      *slog.Logger
	work     chan string // versions whose deltas to make
	prefetch chan string // blobs to fetch from the other replicas

	order   func([]string)        // the order holders are asked in (spread)
	mu      sync.Mutex            // guards fetches
	fetches map[string]*fetchCall // blob → its fetch under way
}

// Release is a release as kept.
type Release struct {
	Version     string            `json:"version"`
	Manifest    []byte            `json:"manifest"`
	ManifestSig []byte            `json:"manifest_sig"`
	Sigs        map[string][]byte `json:"sigs"` // target → artefact signature
	Deltas      []Delta           `json:"deltas,omitempty"`
	AddedAt     time.Time         `json:"added_at"`
	KeyID       string            `json:"key_id"`
}

// Delta is a patch to the release's artefact for Target from release
// From's.
type Delta struct {
	Target     string `json:"target"`
	From       string `json:"from"`
	FromSHA256 string `json:"from_sha256"`
	SHA256     string `json:"sha256,omitempty"`
	Size       int64  `json:"size"`
	// Skipped says why no delta is kept (larger than half the artefact).
	Skipped string `json:"skipped,omitempty"`
}

const (
	prefix         = "releases/"
	rotationPrefix = "releasekeys/"
)

// rotation is a release key added by rotation.
type rotation struct {
	Key string `json:"key"`
	Sig []byte `json:"sig"`
}

// Rotations returns the key rotations, oldest first, for offers.
func (s *Service) Rotations(ctx context.Context) []ota.RotationText {
	items, err := s.cfg.Store.List(ctx, rotationPrefix)
	if err != nil {
		s.log.Warn("release key rotations", "err", err)
		return nil
	}
	var out []ota.RotationText
	for _, it := range items {
		var r rotation
		if json.Unmarshal(it.Value, &r) == nil {
			out = append(out, ota.RotationText{Key: r.Key, Sig: r.Sig})
		}
	}
	return out
}

// TrustedKeys returns the configured keys and those added by rotation.
func (s *Service) TrustedKeys(ctx context.Context) ota.Keys {
	keys := s.cfg.Keys()
	rots := s.Rotations(ctx)
	// Rotations may chain in any stored order: repeat until none is added.
	for range len(rots) {
		var added int
		for _, r := range rots {
			if nk, n, err := keys.Rotate([]ota.RotationText{r}); err == nil && n > 0 {
				keys, added = nk, added+n
			}
		}
		if added == 0 {
			break
		}
	}
	return keys
}

// AddRotation adds a release key signed by a key the fleet trusts, and
// returns its ID.
func (s *Service) AddRotation(ctx context.Context, key string, sig []byte) (string, error) {
	k, err := ota.ParseKey(key)
	if err != nil {
		return "", invalidf("releases: %v", err)
	}
	if _, _, err := s.TrustedKeys(ctx).Rotate([]ota.RotationText{{Key: ota.KeyString(k), Sig: sig}}); err != nil {
		return "", invalidf("releases: %v", err)
	}
	id := fmt.Sprintf("%X", k.ID())
	b, _ := json.Marshal(rotation{Key: ota.KeyString(k), Sig: sig})
	if err := s.cfg.Store.Put(ctx, rotationPrefix+id, b); err != nil {
		return "", fmt.Errorf("releases: %w", err)
	}
	return id, nil
}

// New returns a service for cfg.
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil || cfg.Dir == "" || cfg.Keys == nil {
		return nil, errors.New("releases: Store, Dir and Keys are required")
	}
	if cfg.DeltaFrom == 0 {
		cfg.DeltaFrom = 3
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.FetchTimeout <= 0 {
		cfg.FetchTimeout = 5 * time.Minute
	}
	if cfg.KeepUnreferenced <= 0 {
		cfg.KeepUnreferenced = time.Hour
	}
	if err := os.MkdirAll(filepath.Join(cfg.Dir, "blobs"), 0o700); err != nil {
		return nil, fmt.Errorf("releases: %w", err)
	}
	return &Service{cfg: cfg, log: cfg.Logger.With("component", "releases"), work: make(chan string, 64),
		prefetch: make(chan string, 256), fetches: map[string]*fetchCall{}, order: spread}, nil
}

var sumRE = regexp.MustCompile(`^[0-9a-f]{64}$`)

func (s *Service) blobPath(sum string) string { return filepath.Join(s.cfg.Dir, "blobs", sum) }

// MaxBlob bounds an uploaded artefact.
const MaxBlob = ota.MaxBinary

// invalid marks errors of the caller's input (httpapi answers 400).
type invalid struct{ error }

func (invalid) InvalidInput() bool { return true }

func (e invalid) Unwrap() error { return e.error }

func invalidf(format string, args ...any) error { return invalid{fmt.Errorf(format, args...)} }

// PutBlob stores bytes that must hash to sum, and records that this
// replica holds them. It is idempotent.
func (s *Service) PutBlob(ctx context.Context, sum string, r io.Reader) error {
	if !sumRE.MatchString(sum) {
		return invalidf("releases: blob name %q is not a SHA-256 in lower-case hex", sum)
	}
	if st, err := os.Stat(s.blobPath(sum)); err == nil {
		io.Copy(io.Discard, io.LimitReader(r, MaxBlob))
		return s.hold(ctx, sum, st.Size())
	}
	n, err := s.write(sum, r, ".upload-*")
	if bad, ok := errors.AsType[*mismatch](err); ok {
		return invalidf("releases: the upload hashes to %s, not %s", bad.got, sum)
	}
	if err != nil {
		return err
	}
	return s.hold(ctx, sum, n)
}

// Add verifies and keeps a release whose artefacts were uploaded with
// PutBlob: the manifest's signature by a fleet release key, each
// artefact's size, hash and signature.
func (s *Service) Add(ctx context.Context, req api.AddReleaseRequest) (*Release, error) {
	keys := s.TrustedKeys(ctx)
	if len(keys) == 0 {
		return nil, invalidf("releases: the fleet trusts no release key: start fleetd with --release-key")
	}
	m, err := keys.VerifyManifest([]byte(req.Manifest), []byte(req.ManifestSig))
	if err != nil {
		return nil, invalidf("releases: %v", err)
	}
	signer, _ := keys.KeyFor([]byte(req.ManifestSig))
	rel := &Release{Version: m.Version, Manifest: []byte(req.Manifest), ManifestSig: []byte(req.ManifestSig),
		Sigs: map[string][]byte{}, AddedAt: s.cfg.Now().UTC(), KeyID: fmt.Sprintf("%X", signer.ID())}
	for _, a := range m.Artifacts {
		sig := req.ArtifactSigs[a.Target]
		if sig == "" {
			return nil, invalidf("releases: no signature for %s", a.Name)
		}
		// The upload may have reached another replica.
		err := s.Ensure(ctx, a.SHA256)
		if errors.Is(err, ErrUnknownBlob) {
			return nil, invalidf("releases: %s (sha256 %s) was not uploaded", a.Name, a.SHA256)
		}
		if err != nil {
			return nil, fmt.Errorf("releases: %s: %w", a.Name, err)
		}
		b, err := os.ReadFile(s.blobPath(a.SHA256))
		if err != nil {
			return nil, fmt.Errorf("releases: %w", err)
		}
		if int64(len(b)) != a.Size || ota.Sum256(b) != a.SHA256 {
			return nil, invalidf("releases: %s does not match the manifest", a.Name)
		}
		if err := keys.Verify(b, []byte(sig)); err != nil {
			return nil, invalidf("releases: %s: %v", a.Name, err)
		}
		rel.Sigs[a.Target] = []byte(sig)
	}
	v, _ := json.Marshal(rel)
	if err := s.cfg.Store.Create(ctx, prefix+m.Version, v); err != nil {
		if errors.Is(err, store.ErrExists) {
			return nil, fmt.Errorf("releases: release %s already exists: remove it first (fleetctl releases rm %s): %w", m.Version, m.Version, err)
		}
		return nil, fmt.Errorf("releases: %w", err)
	}
	select {
	case s.work <- m.Version:
	default:
		s.log.Warn("delta worker busy; deltas for this release are made at the next start", "version", m.Version)
	}
	return rel, nil
}

// Get returns a release.
func (s *Service) Get(ctx context.Context, version string) (*Release, error) {
	b, err := s.cfg.Store.Get(ctx, prefix+version)
	if err != nil {
		return nil, fmt.Errorf("releases: release %s: %w", version, err)
	}
	var r Release
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("releases: release %s: %w", version, err)
	}
	return &r, nil
}

// List returns every release, newest first.
func (s *Service) List(ctx context.Context) ([]*Release, error) {
	items, err := s.cfg.Store.List(ctx, prefix)
	if err != nil {
		return nil, fmt.Errorf("releases: %w", err)
	}
	out := make([]*Release, 0, len(items))
	for _, it := range items {
		var r Release
		if err := json.Unmarshal(it.Value, &r); err != nil {
			return nil, fmt.Errorf("releases: %s: %w", it.Key, err)
		}
		out = append(out, &r)
	}
	slices.SortFunc(out, func(a, b *Release) int { return ota.Compare(b.Version, a.Version) })
	return out, nil
}

// Delete removes a release. Every replica then removes the blobs no
// release names any more (see collect).
func (s *Service) Delete(ctx context.Context, version string) error {
	if err := s.cfg.Store.Delete(ctx, prefix+version); err != nil {
		return fmt.Errorf("releases: release %s: %w", version, err)
	}
	return nil
}

// API returns the release as the API lists it.
func (r *Release) API() api.Release {
	out := api.Release{Version: r.Version, AddedAt: r.AddedAt, KeyID: r.KeyID}
	if m, err := ota.ParseManifest(r.Manifest); err == nil {
		for _, a := range m.Artifacts {
			out.Artifacts = append(out.Artifacts, api.ReleaseArtifact{Target: a.Target, Size: a.Size, SHA256: a.SHA256})
		}
	}
	for _, d := range r.Deltas {
		out.Deltas = append(out.Deltas, api.ReleaseDelta{Target: d.Target, From: d.From, Size: d.Size, SHA256: d.SHA256, Skipped: d.Skipped})
	}
	return out
}

// Run makes deltas for added releases until ctx ends; at the start it
// makes those that are missing. It follows the release records too: on
// several replicas it fetches their blobs, and on every fleetd it removes
// the blobs of removed releases.
func (s *Service) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	if s.cfg.Peers != nil {
		s.announce(ctx)
		wg.Go(func() { s.prefetchLoop(ctx) })
	}
	wg.Go(func() { s.follow(ctx) })
	if list, err := s.List(ctx); err == nil {
		for _, r := range list {
			s.makeDeltas(ctx, r.Version)
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case v := <-s.work:
			s.makeDeltas(ctx, v)
		}
	}
}

// makeDeltas makes the release's missing deltas from the DeltaFrom
// releases before it, per target.
func (s *Service) makeDeltas(ctx context.Context, version string) {
	if s.cfg.DeltaFrom < 0 {
		return
	}
	rel, err := s.Get(ctx, version)
	if err != nil {
		return
	}
	all, err := s.List(ctx)
	if err != nil {
		return
	}
	m, err := ota.ParseManifest(rel.Manifest)
	if err != nil {
		return
	}
	var earlier []*ota.Manifest
	var names []string
	for _, r := range all { // newest first
		if ota.Compare(r.Version, version) < 0 && len(earlier) < s.cfg.DeltaFrom {
			if em, err := ota.ParseManifest(r.Manifest); err == nil {
				earlier = append(earlier, em)
				names = append(names, r.Version)
			}
		}
	}
	for _, a := range m.Artifacts {
		for i, em := range earlier {
			from, ok := em.Artifact(a.Target)
			if !ok || slices.ContainsFunc(rel.Deltas, func(d Delta) bool { return d.Target == a.Target && d.From == names[i] }) {
				continue
			}
			if ctx.Err() != nil {
				return
			}
			d, err := s.makeDelta(ctx, from, a)
			if err != nil {
				s.log.Warn("make delta", "version", version, "from", names[i], "target", a.Target, "err", err)
				continue
			}
			d.From = names[i]
			if err := s.addDelta(ctx, version, d); err != nil {
				s.log.Warn("keep delta", "err", err)
				return
			}
			s.log.Info("delta made", "version", version, "from", d.From, "target", d.Target, "size", d.Size, "full", a.Size, "skipped", d.Skipped)
		}
	}
}

func (s *Service) makeDelta(ctx context.Context, from, to ota.Artifact) (Delta, error) {
	// On several replicas the artefacts may be elsewhere.
	for _, sum := range []string{from.SHA256, to.SHA256} {
		if err := s.Ensure(ctx, sum); err != nil {
			return Delta{}, err
		}
	}
	old, err := os.ReadFile(s.blobPath(from.SHA256))
	if err != nil {
		return Delta{}, err
	}
	nw, err := os.ReadFile(s.blobPath(to.SHA256))
	if err != nil {
		return Delta{}, err
	}
	patch, err := ota.MakeDelta(old, nw)
	if err != nil {
		return Delta{}, err
	}
	// Check it applies before anyone downloads it.
	var out bytes.Buffer
	if err := ota.ApplyDelta(old, &out, bytes.NewReader(patch), to.Size); err != nil || ota.Sum256(out.Bytes()) != to.SHA256 {
		return Delta{}, fmt.Errorf("the delta does not reproduce the artefact: %v", err)
	}
	d := Delta{Target: to.Target, FromSHA256: from.SHA256, Size: int64(len(patch))}
	if d.Size > to.Size/2 {
		d.Skipped = fmt.Sprintf("%d bytes, more than half of the artefact's %d", d.Size, to.Size)
		return d, nil
	}
	d.SHA256 = ota.Sum256(patch)
	if err := s.PutBlob(ctx, d.SHA256, bytes.NewReader(patch)); err != nil {
		return Delta{}, err
	}
	return d, nil
}

func (s *Service) addDelta(ctx context.Context, version string, d Delta) error {
	for range 16 {
		old, err := s.cfg.Store.Get(ctx, prefix+version)
		if err != nil {
			return err
		}
		var r Release
		if err := json.Unmarshal(old, &r); err != nil {
			return err
		}
		// Two replicas starting at once may both have made it.
		if slices.ContainsFunc(r.Deltas, func(o Delta) bool { return o.Target == d.Target && o.From == d.From }) {
			return nil
		}
		r.Deltas = append(r.Deltas, d)
		next, _ := json.Marshal(&r)
		err = s.cfg.Store.CompareAndSwap(ctx, prefix+version, old, next)
		if !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
	return errors.New("releases: too many concurrent changes")
}

// BlobPath is the HTTP path (on the agents' "ota" service) of a blob.
func BlobPath(sum string) string { return "/ota/blobs/" + sum }

// RetryAfter is what a device is told to wait before it asks again for a
// blob no running replica gave.
const RetryAfter = 30 * time.Second

// Handler serves blobs to agents (GET /ota/blobs/SHA256, with Range
// requests), fetching first a blob another replica holds. Blobs are
// public bytes: what an agent trusts is checked against the signed
// manifest.
func (s *Service) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sum, ok := strings.CutPrefix(r.URL.Path, BlobPath(""))
		if r.Method != http.MethodGet && r.Method != http.MethodHead || !ok || !sumRE.MatchString(sum) {
			http.Error(w, "no such release blob", http.StatusNotFound)
			return
		}
		if err := s.Ensure(r.Context(), sum); err != nil {
			if errors.Is(err, ErrUnknownBlob) {
				http.Error(w, "no such release blob", http.StatusNotFound)
				return
			}
			w.Header().Set("Retry-After", strconv.Itoa(int(RetryAfter.Seconds())))
			http.Error(w, fmt.Sprintf("release blob %s is not available on this fleetd replica now (%v); retry later", sum, err), http.StatusServiceUnavailable)
			return
		}
		s.serveFile(w, r, sum)
	})
}
