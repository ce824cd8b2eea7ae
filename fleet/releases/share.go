package releases

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/ota"
)

// Blobs shared between replicas.
//
// Several fleetd replicas on one store each keep blobs in their own data
// dir. The store says who holds what: "releaseblobs/SHA256/REPLICA" is
// written by each replica for each blob it holds (uploaded, made, or
// fetched). A replica asked for a blob it lacks (an agent's download, a
// delta to make) fetches it from a running replica that holds it, over
// the peer connection (Config.Peers), into a temporary file, and keeps it
// only once its SHA-256 is its name: a replica that sends other bytes is
// refused, logged, and the next is tried. Concurrent requests for one blob
// share one fetch. Each replica also fetches the blobs of every release
// record it sees appear (a watch), so a rollout does not wait on them.
//
// A release's removal reaches every replica by the same watch: each
// deletes the blobs no release names any more (once older than
// Config.KeepUnreferenced, so an upload not yet added is spared) and its
// own records of them.

// Peers reaches the fleet's other replicas for the blobs this one lacks
// (fleetd implements it over fleet/peer, serving PeerHandler).
type Peers interface {
	// Self is this replica's ID.
	Self() string
	// Live reports whether replica id is running.
	Live(id string) bool
	// Blob opens blob sum on replica id (its PeerHandler).
	Blob(ctx context.Context, id, sum string) (io.ReadCloser, error)
}

// ErrUnknownBlob reports a blob no replica of the fleet holds.
var ErrUnknownBlob = errors.New("no such release blob")

// ErrUnavailable reports a blob the fleet holds, but that no running
// replica holding it gave: retry later.
var ErrUnavailable = errors.New("release blob unavailable")

const holdersPrefix = "releaseblobs/"

// holding is a replica's record of a blob it holds.
type holding struct {
	Size int64     `json:"size"`
	At   time.Time `json:"at"`
}

func holderKey(sum, replica string) string { return holdersPrefix + sum + "/" + replica }

// fetchCall is one fetch of a blob, shared by its concurrent requests.
type fetchCall struct {
	done chan struct{}
	err  error
	// shared counts the requests that wait on the fetch besides the
	// first (guarded by the Service's mu).
	shared int
}

// have reports whether the blob is in this replica's folder.
func (s *Service) have(sum string) bool {
	_, err := os.Stat(s.blobPath(sum))
	return err == nil
}

// hold records in the store that this replica holds blob sum.
func (s *Service) hold(ctx context.Context, sum string, size int64) error {
	if s.cfg.Peers == nil {
		return nil
	}
	b, _ := json.Marshal(holding{Size: size, At: s.cfg.Now().UTC()})
	if err := s.cfg.Store.Put(ctx, holderKey(sum, s.cfg.Peers.Self()), b); err != nil {
		return fmt.Errorf("releases: record blob %s as held here: %w", sum, err)
	}
	return nil
}

// holders returns the replicas the store says hold blob sum.
func (s *Service) holders(ctx context.Context, sum string) ([]string, error) {
	items, err := s.cfg.Store.List(ctx, holdersPrefix+sum+"/")
	if err != nil {
		return nil, fmt.Errorf("releases: who holds blob %s: %w", sum, err)
	}
	out := make([]string, 0, len(items))
	for _, it := range items {
		out = append(out, strings.TrimPrefix(it.Key, holdersPrefix+sum+"/"))
	}
	return out, nil
}

// Ensure makes blob sum present in this replica's folder, fetching it from
// a replica that holds it when it is not. It returns an error wrapping
// ErrUnknownBlob when no replica holds it, ErrUnavailable when none that
// does gave it.
func (s *Service) Ensure(ctx context.Context, sum string) error {
	if !sumRE.MatchString(sum) {
		return invalid{fmt.Errorf("releases: blob name %q is not a SHA-256 in lower-case hex: %w", sum, ErrUnknownBlob)}
	}
	if s.have(sum) {
		return nil
	}
	if s.cfg.Peers == nil {
		return fmt.Errorf("releases: blob %s: %w", sum, ErrUnknownBlob)
	}
	s.mu.Lock()
	c, shared := s.fetches[sum]
	if shared {
		c.shared++
	} else {
		c = &fetchCall{done: make(chan struct{})}
		s.fetches[sum] = c
	}
	s.mu.Unlock()
	if shared {
		select {
		case <-c.done:
			return c.err
		case <-ctx.Done():
			return fmt.Errorf("releases: blob %s: %w", sum, ctx.Err())
		}
	}
	// The first request fetches for all: its own end does not cut the
	// others' fetch short (FetchTimeout bounds it).
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.FetchTimeout)
	c.err = s.fetch(fctx, sum)
	cancel()
	s.mu.Lock()
	delete(s.fetches, sum)
	s.mu.Unlock()
	close(c.done)
	return c.err
}

// spread orders the replicas to ask for a blob: at random, so fetches
// spread over the holders.
func spread(ids []string) { rand.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] }) }

// fetch gets blob sum from a running replica that holds it.
func (s *Service) fetch(ctx context.Context, sum string) error {
	ids, err := s.holders(ctx, sum)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	self := s.cfg.Peers.Self()
	s.order(ids)
	var why []string
	for _, id := range ids {
		if id == self {
			// Recorded here, but gone (a wiped data dir): not any more.
			if err := s.cfg.Store.Delete(ctx, holderKey(sum, self)); err != nil && !errors.Is(err, store.ErrNotFound) {
				s.log.Warn("forget a blob this replica no longer holds", "sha256", sum, "err", err)
			}
			continue
		}
		if !s.cfg.Peers.Live(id) {
			why = append(why, id+": not running")
			continue
		}
		size, err := s.fetchFrom(ctx, id, sum)
		if err != nil {
			s.log.Warn("fetch a release blob from a replica", "sha256", sum, "replica", id, "err", err)
			why = append(why, id+": "+err.Error())
			continue
		}
		s.log.Info("release blob fetched from a replica", "sha256", sum, "replica", id, "size", size)
		if err := s.hold(ctx, sum, size); err != nil {
			s.log.Warn("record a fetched release blob", "err", err)
		}
		return nil
	}
	if len(why) == 0 {
		return fmt.Errorf("releases: blob %s: %w", sum, ErrUnknownBlob)
	}
	return fmt.Errorf("releases: blob %s is not on this replica and no replica holding it gave it (%s): %w",
		sum, strings.Join(why, "; "), ErrUnavailable)
}

// fetchFrom copies blob sum from replica id and keeps it if it is right.
func (s *Service) fetchFrom(ctx context.Context, id, sum string) (int64, error) {
	body, err := s.cfg.Peers.Blob(ctx, id, sum)
	if err != nil {
		return 0, err
	}
	defer body.Close()
	n, err := s.write(sum, body, ".fetch-*")
	if bad, ok := errors.AsType[*mismatch](err); ok {
		return 0, fmt.Errorf("refused: it sent bytes that hash to %s", bad.got)
	}
	return n, err
}

// mismatch reports bytes that do not hash to their name.
type mismatch struct{ got, want string }

func (m *mismatch) Error() string { return fmt.Sprintf("the bytes hash to %s, not %s", m.got, m.want) }

// write stores what r gives as blob sum if it hashes to sum (else a
// *mismatch), through a temporary file named by pattern, and returns its
// size. Nothing is kept that is not verified.
func (s *Service) write(sum string, r io.Reader, pattern string) (int64, error) {
	f, err := os.CreateTemp(filepath.Join(s.cfg.Dir, "blobs"), pattern)
	if err != nil {
		return 0, fmt.Errorf("releases: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, MaxBlob+1))
	if err != nil {
		return 0, fmt.Errorf("releases: read blob: %w", err)
	}
	if n > MaxBlob {
		return 0, invalidf("releases: blob larger than %d bytes", MaxBlob)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return 0, &mismatch{got: got, want: sum}
	}
	if err := f.Sync(); err != nil {
		return 0, fmt.Errorf("releases: %w", err)
	}
	f.Close()
	if err := os.Rename(f.Name(), s.blobPath(sum)); err != nil {
		return 0, fmt.Errorf("releases: %w", err)
	}
	return n, nil
}

// Where says which running replicas hold blob sum (nil on one fleetd) and,
// when devices cannot download it now, why.
func (s *Service) Where(ctx context.Context, sum string) (replicas []string, unavailable string) {
	if s.cfg.Peers == nil {
		if s.have(sum) {
			return nil, ""
		}
		return nil, "not in this fleetd's data dir"
	}
	ids, err := s.holders(ctx, sum)
	if err != nil {
		return nil, err.Error()
	}
	var down []string
	for _, id := range ids {
		switch {
		case id == s.cfg.Peers.Self():
			if s.have(sum) {
				replicas = append(replicas, id)
			} // else a stale record: Ensure drops it
		case s.cfg.Peers.Live(id):
			replicas = append(replicas, id)
		default:
			down = append(down, id)
		}
	}
	switch {
	case len(replicas) > 0:
		return replicas, ""
	case len(down) > 0:
		return nil, "held only by replicas not running (" + strings.Join(down, ", ") + ")"
	}
	return nil, "held by no replica"
}

// Describe is the release as the API lists it, with where its blobs are.
func (s *Service) Describe(ctx context.Context, r *Release) api.Release {
	out := r.API()
	for i, a := range out.Artifacts {
		out.Artifacts[i].Replicas, out.Artifacts[i].Unavailable = s.Where(ctx, a.SHA256)
	}
	for i, d := range out.Deltas {
		if d.SHA256 != "" {
			out.Deltas[i].Replicas, out.Deltas[i].Unavailable = s.Where(ctx, d.SHA256)
		}
	}
	return out
}

// Available reports whether devices can download blob sum now: at once
// when this replica holds it, else as Where says (a store read, which the
// rollouts' offers would make on every tick).
func (s *Service) Available(ctx context.Context, sum string) bool {
	if s.have(sum) {
		return true
	}
	_, why := s.Where(ctx, sum)
	return why == ""
}

// PeerBlobPath is the peer endpoint (fleet/peer) of a blob.
func PeerBlobPath(sum string) string { return "/peer/v1/releases/blobs/" + sum }

// PeerHandler serves this replica's blobs to the other replicas (GET
// PeerBlobPath(SHA256)); it never fetches (no request goes round the
// replicas). Mount it only where fleet/peer has checked the caller's
// replica certificate.
func (s *Service) PeerHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sum, ok := strings.CutPrefix(r.URL.Path, PeerBlobPath(""))
		if r.Method != http.MethodGet || !ok || !sumRE.MatchString(sum) {
			http.Error(w, "no such release blob", http.StatusNotFound)
			return
		}
		s.serveFile(w, r, sum)
	})
}

// serveFile serves blob sum from this replica's folder (with Range).
func (s *Service) serveFile(w http.ResponseWriter, r *http.Request, sum string) {
	f, err := os.Open(s.blobPath(sum))
	if err != nil {
		http.Error(w, "no such release blob", http.StatusNotFound)
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		http.Error(w, "release blob unreadable", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("ETag", `"`+sum+`"`)
	http.ServeContent(w, r, "", st.ModTime(), f)
}

// releaseBlobs returns the blobs a release names: its artefacts and
// deltas.
func releaseBlobs(r *Release) []string {
	var out []string
	if m, err := ota.ParseManifest(r.Manifest); err == nil {
		for _, a := range m.Artifacts {
			out = append(out, a.SHA256)
		}
	}
	for _, d := range r.Deltas {
		if d.SHA256 != "" {
			out = append(out, d.SHA256)
		}
	}
	return out
}

// follow watches the release records until ctx ends: it queues the blobs
// of each record it sees for prefetch, and collects unreferenced blobs
// after a removal (and at the start).
func (s *Service) follow(ctx context.Context) {
	queue := func(v []byte) {
		var r Release
		if json.Unmarshal(v, &r) != nil {
			return
		}
		for _, sum := range releaseBlobs(&r) {
			if s.cfg.Peers == nil || s.have(sum) {
				continue
			}
			select {
			case s.prefetch <- sum:
			default:
				s.log.Warn("prefetch queue full; the blob is fetched when a device asks", "sha256", sum)
			}
		}
	}
	store.Follow(ctx, s.cfg.Store, prefix, store.FollowHandler{
		Reset: func(items []store.Item, _ int64) {
			for _, it := range items {
				queue(it.Value)
			}
			s.collect(ctx)
		},
		Apply: func(ev store.Event) {
			switch ev.Kind {
			case store.EventPut:
				queue(ev.Value)
			case store.EventDelete:
				s.collect(ctx)
			}
		},
		Retry: func(err error, wait time.Duration) {
			s.log.Warn("watch the releases", "err", err, "retry_in", wait.String())
		},
	})
}

// prefetchLoop fetches the queued blobs until ctx ends.
func (s *Service) prefetchLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case sum := <-s.prefetch:
			if err := s.Ensure(ctx, sum); err != nil && ctx.Err() == nil {
				s.log.Warn("prefetch a release blob; devices asking for it get a retryable error until a replica holding it runs", "sha256", sum, "err", err)
			}
		}
	}
}

// announce records the blobs in this replica's folder as held here (they
// may predate the records, or the records may be lost).
func (s *Service) announce(ctx context.Context) {
	entries, err := os.ReadDir(filepath.Join(s.cfg.Dir, "blobs"))
	if err != nil {
		s.log.Warn("list release blobs", "err", err)
		return
	}
	for _, e := range entries {
		if info, err := e.Info(); err == nil && sumRE.MatchString(e.Name()) && info.Mode().IsRegular() {
			if err := s.hold(ctx, e.Name(), info.Size()); err != nil {
				s.log.Warn("announce a release blob", "err", err)
				return
			}
		}
	}
}

// collect removes the blobs no release names any more, and the records of
// them, once older than KeepUnreferenced (an upload waits for its release
// to be added). Temporary files of that age go too.
func (s *Service) collect(ctx context.Context) {
	list, err := s.List(ctx)
	if err != nil {
		s.log.Warn("collect release blobs", "err", err)
		return
	}
	named := map[string]bool{}
	for _, r := range list {
		for _, sum := range releaseBlobs(r) {
			named[sum] = true
		}
	}
	old := s.cfg.Now().Add(-s.cfg.KeepUnreferenced)
	dir := filepath.Join(s.cfg.Dir, "blobs")
	entries, err := os.ReadDir(dir)
	if err != nil {
		s.log.Warn("collect release blobs", "err", err)
		return
	}
	for _, e := range entries {
		info, err := e.Info()
		name := e.Name()
		if err != nil || !info.ModTime().Before(old) || named[name] || !sumRE.MatchString(name) && !strings.HasPrefix(name, ".") {
			continue
		}
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			s.log.Warn("remove an unreferenced release blob", "name", name, "err", err)
			continue
		}
		s.log.Info("unreferenced release blob removed", "name", name, "size", info.Size())
	}
	// The records, this replica's and those of replicas gone for good.
	items, err := s.cfg.Store.List(ctx, holdersPrefix)
	if err != nil {
		s.log.Warn("collect release blob records", "err", err)
		return
	}
	for _, it := range items {
		sum, _, _ := strings.Cut(strings.TrimPrefix(it.Key, holdersPrefix), "/")
		var h holding
		if named[sum] || json.Unmarshal(it.Value, &h) == nil && !h.At.Before(old) {
			continue
		}
		if err := s.cfg.Store.Delete(ctx, it.Key); err != nil && !errors.Is(err, store.ErrNotFound) {
			s.log.Warn("remove a release blob record", "key", it.Key, "err", err)
		}
	}
}
