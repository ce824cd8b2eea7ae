package releases

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"aead.dev/minisign"

	"remoteler.dev/edge/fleet/store"
	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/proto/ota"
)

// A fleet of replicas on one store, each with its own folder. The peer
// connection (fleet/peer: mutual TLS, HTTP/2) is stood in for by plain
// HTTP to each replica's PeerHandler; tools/e2e runs the real one
// (TestReplicasOTA).

type replicaSet struct {
	st    store.Store
	pub   minisign.PublicKey
	priv  minisign.PrivateKey
	svc   map[string]*Service
	srv   map[string]*httptest.Server
	calls map[string]*atomic.Int64
	mu    sync.Mutex // guards down, liar, gate
	down  map[string]bool
	liar  map[string]bool          // replicas that send other bytes
	gate  map[string]chan struct{} // replicas whose answers wait on it
}

// peersOf is replica self's view of the others.
type peersOf struct {
	rs   *replicaSet
	self string
}

func (p peersOf) Self() string { return p.self }

func (p peersOf) Live(id string) bool {
	p.rs.mu.Lock()
	defer p.rs.mu.Unlock()
	_, ok := p.rs.svc[id]
	return ok && !p.rs.down[id]
}

func (p peersOf) Blob(ctx context.Context, id, sum string) (io.ReadCloser, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.rs.srv[id].URL+PeerBlobPath(sum), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("replica %s: %s", id, resp.Status)
	}
	return resp.Body, nil
}

func newReplicaSet(t testing.TB, ids ...string) *replicaSet {
	t.Helper()
	pub, priv, _ := minisign.GenerateKey(rand.Reader)
	rs := &replicaSet{st: memstore.New(), pub: pub, priv: priv, svc: map[string]*Service{}, srv: map[string]*httptest.Server{},
		calls: map[string]*atomic.Int64{}, down: map[string]bool{}, liar: map[string]bool{}, gate: map[string]chan struct{}{}}
	for _, id := range ids {
		s, err := New(Config{Store: rs.st, Dir: t.TempDir(), Keys: func() ota.Keys { return ota.Keys{pub} }, Peers: peersOf{rs, id}})
		if err != nil {
			t.Fatal(err)
		}
		s.order = slices.Sort[[]string] // ask in ID order: the cases know who is asked first
		rs.svc[id], rs.calls[id] = s, &atomic.Int64{}
		h := s.PeerHandler()
		rs.srv[id] = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			rs.calls[id].Add(1)
			rs.mu.Lock()
			liar, gate := rs.liar[id], rs.gate[id]
			rs.mu.Unlock()
			if gate != nil {
				<-gate
			}
			if liar {
				w.Write(bytes.Repeat([]byte("x"), 1000))
				return
			}
			h.ServeHTTP(w, r)
		}))
		t.Cleanup(rs.srv[id].Close)
	}
	return rs
}

// put uploads a blob to replica id and returns its name.
func (rs *replicaSet) put(t testing.TB, id string, b []byte) string {
	t.Helper()
	sum := ota.Sum256(b)
	if err := rs.svc[id].PutBlob(context.Background(), sum, bytes.NewReader(b)); err != nil {
		t.Fatal(err)
	}
	return sum
}

func TestEnsureFetchesFromReplicas(t *testing.T) {
	blob := randomBytes(300 << 10)
	sum := ota.Sum256(blob)
	tests := []struct {
		name    string
		holders []string
		down    []string
		liars   []string
		wantErr error    // nil: fetched
		asked   []string // the replicas asked, once each
	}{
		{name: "fetched and verified", holders: []string{"r-b"}, asked: []string{"r-b"}},
		{name: "wrong bytes refused, another replica tried", holders: []string{"r-b", "r-c"}, liars: []string{"r-b"}, asked: []string{"r-b", "r-c"}},
		{name: "only wrong bytes: nothing kept", holders: []string{"r-b"}, liars: []string{"r-b"}, wantErr: ErrUnavailable, asked: []string{"r-b"}},
		{name: "holder not running, another holds it", holders: []string{"r-b", "r-c"}, down: []string{"r-b"}, asked: []string{"r-c"}},
		{name: "no running holder", holders: []string{"r-b"}, down: []string{"r-b"}, wantErr: ErrUnavailable},
		{name: "unknown blob", wantErr: ErrUnknownBlob},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rs := newReplicaSet(t, "r-a", "r-b", "r-c")
			for _, id := range tt.holders {
				rs.put(t, id, blob)
			}
			for _, id := range tt.down {
				rs.down[id] = true
			}
			for _, id := range tt.liars {
				rs.liar[id] = true
			}
			a := rs.svc["r-a"]
			err := a.Ensure(context.Background(), sum)
			if tt.wantErr == nil && err != nil {
				t.Fatalf("Ensure: %v", err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("Ensure: %v, want %v", err, tt.wantErr)
			}
			got, rerr := os.ReadFile(a.blobPath(sum))
			switch {
			case tt.wantErr == nil && !bytes.Equal(got, blob):
				t.Errorf("kept %d bytes (%v), not the blob", len(got), rerr)
			case tt.wantErr != nil && rerr == nil:
				t.Errorf("kept a file after %v", err)
			}
			for id, c := range rs.calls {
				want := int64(0)
				if slices.Contains(tt.asked, id) {
					want = 1
				}
				if c.Load() != want {
					t.Errorf("replica %s asked %d times, want %d", id, c.Load(), want)
				}
			}
			// A fetched blob is recorded as held here too.
			holders, _ := a.holders(context.Background(), sum)
			if here := slices.Contains(holders, "r-a"); here != (tt.wantErr == nil) {
				t.Errorf("holders %v after Ensure %v", holders, err)
			}
			// What devices are told.
			rec := httptest.NewRecorder()
			a.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, BlobPath(sum), nil))
			switch {
			case tt.wantErr == nil && (rec.Code != http.StatusOK || !bytes.Equal(rec.Body.Bytes(), blob)):
				t.Errorf("download after the fetch: %d, %d bytes", rec.Code, rec.Body.Len())
			case errors.Is(tt.wantErr, ErrUnknownBlob) && rec.Code != http.StatusNotFound:
				t.Errorf("download of an unknown blob: %d, want 404", rec.Code)
			case errors.Is(tt.wantErr, ErrUnavailable) && (rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" || !strings.Contains(rec.Body.String(), "retry later")):
				t.Errorf("download of an unavailable blob: %d %q (Retry-After %q), want 503 saying to retry", rec.Code, rec.Body.String(), rec.Header().Get("Retry-After"))
			}
		})
	}
}

func TestBlobNames(t *testing.T) {
	rs := newReplicaSet(t, "r-a", "r-b")
	a := rs.svc["r-a"]
	held := rs.put(t, "r-a", randomBytes(100))
	// A file next to the blobs' folder that no name may reach.
	os.WriteFile(filepath.Join(a.cfg.Dir, "secret"), []byte("secret"), 0o600)
	for _, name := range []string{
		"../secret", "..%2fsecret", strings.ToUpper(held), held[:63], held + "0", "", "blobs/" + held, held + "/x",
	} {
		t.Run(name, func(t *testing.T) {
			for _, h := range []struct {
				what string
				h    http.Handler
				path string
			}{{"agents", a.Handler(), BlobPath(name)}, {"peers", a.PeerHandler(), PeerBlobPath(name)}} {
				rec := httptest.NewRecorder()
				h.h.ServeHTTP(rec, &http.Request{Method: http.MethodGet, URL: mustURL(h.path), Header: http.Header{}})
				if rec.Code != http.StatusNotFound {
					t.Errorf("%s: %q answered %d, want 404", h.what, name, rec.Code)
				}
			}
			if err := a.Ensure(context.Background(), name); !errors.Is(err, ErrUnknownBlob) {
				t.Errorf("Ensure(%q) = %v, want ErrUnknownBlob", name, err)
			}
		})
	}
	if rs.calls["r-b"].Load() != 0 {
		t.Errorf("bad names reached a peer %d times", rs.calls["r-b"].Load())
	}
	// The peer endpoint serves only what is here: it never fetches.
	other := rs.put(t, "r-b", randomBytes(100))
	rec := httptest.NewRecorder()
	a.PeerHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, PeerBlobPath(other), nil))
	if rec.Code != http.StatusNotFound || rs.calls["r-b"].Load() != 0 {
		t.Errorf("the peer endpoint for a blob held elsewhere: %d, %d calls to its holder", rec.Code, rs.calls["r-b"].Load())
	}
}

func mustURL(p string) *url.URL {
	u, err := url.Parse(p)
	if err != nil {
		panic(err)
	}
	return u
}

func TestConcurrentRequestsShareOneFetch(t *testing.T) {
	rs := newReplicaSet(t, "r-a", "r-b")
	blob := randomBytes(1 << 20)
	sum := rs.put(t, "r-b", blob)
	gate := make(chan struct{})
	rs.gate["r-b"] = gate
	a := rs.svc["r-a"]
	srv := httptest.NewServer(a.Handler())
	defer srv.Close()
	const n = 8
	type answer struct {
		status int
		body   []byte
		err    error
	}
	answers := make(chan answer, n)
	for i := range n {
		go func() {
			req, _ := http.NewRequest(http.MethodGet, srv.URL+BlobPath(sum), nil)
			if i%2 == 1 { // half of them resume a download
				req.Header.Set("Range", "bytes=1000-")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				answers <- answer{err: err}
				return
			}
			b, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			answers <- answer{resp.StatusCode, b, err}
		}()
	}
	// Every request is waiting on the one fetch, which waits on the gate:
	// the other n-1 joined it, none found the blob already there.
	deadline := time.Now().Add(time.Minute)
	for rs.calls["r-b"].Load() == 0 || waiting(a, sum) != n-1 {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests wait on the fetch besides the first, want %d", waiting(a, sum), n-1)
		}
		time.Sleep(5 * time.Millisecond)
	}
	close(gate)
	for range n {
		ans := <-answers
		switch {
		case ans.err != nil:
			t.Error(ans.err)
		case ans.status == http.StatusOK && bytes.Equal(ans.body, blob):
		case ans.status == http.StatusPartialContent && bytes.Equal(ans.body, blob[1000:]):
		default:
			t.Errorf("answer %d with %d bytes", ans.status, len(ans.body))
		}
	}
	if got := rs.calls["r-b"].Load(); got != 1 {
		t.Errorf("%d concurrent requests made %d fetches, want 1", n, got)
	}
}

// waiting reports whether a fetch of sum is under way.
// waiting returns how many requests wait on the fetch of sum besides the
// one that started it; -1 when none is under way.
func waiting(s *Service, sum string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.fetches[sum]
	if !ok {
		return -1
	}
	return c.shared
}

func TestRangeAfterFetch(t *testing.T) {
	rs := newReplicaSet(t, "r-a", "r-b")
	blob := randomBytes(64 << 10)
	sum := rs.put(t, "r-b", blob)
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, BlobPath(sum), nil)
	req.Header.Set("Range", "bytes=100-199")
	rs.svc["r-a"].Handler().ServeHTTP(rec, req)
	if rec.Code != http.StatusPartialContent || !bytes.Equal(rec.Body.Bytes(), blob[100:200]) {
		t.Errorf("a range of a blob held elsewhere: %d, %d bytes; want 206 and bytes 100-199", rec.Code, rec.Body.Len())
	}
}

// TestPrefetchAndRemoval: a release added on one replica is fetched by
// another that follows the records, with no device asking; its removal
// removes the blobs and their records on every replica.
func TestPrefetchAndRemoval(t *testing.T) {
	rs := newReplicaSet(t, "r-a", "r-b")
	now := time.Now()
	var clock atomic.Int64
	clock.Store(now.UnixNano())
	for _, s := range rs.svc {
		s.cfg.Now = func() time.Time { return time.Unix(0, clock.Load()) }
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	b := rs.svc["r-b"]
	wg.Go(func() { b.Run(ctx) })
	f := &fixture{s: rs.svc["r-a"], priv: rs.priv}
	bin := randomBytes(128 << 10)
	sum := ota.Sum256(bin)
	if _, err := f.s.Add(ctx, f.release(t, "v1.0.0", map[string][]byte{"linux-arm64": bin}, rs.priv)); err != nil {
		t.Fatal(err)
	}
	if !eventually(func() bool { return b.have(sum) }) {
		t.Fatal("replica B did not fetch the new release's artefact")
	}
	if rs.calls["r-a"].Load() != 1 {
		t.Errorf("A was asked %d times", rs.calls["r-a"].Load())
	}
	if where, why := b.Where(ctx, sum); len(where) != 2 || why != "" {
		t.Errorf("Where = %v %q, want both replicas", where, why)
	}
	// A is killed: B still serves, and says so.
	rs.mu.Lock()
	rs.down["r-a"] = true
	rs.mu.Unlock()
	if where, why := b.Where(ctx, sum); !slices.Equal(where, []string{"r-b"}) || why != "" {
		t.Errorf("Where with A down = %v %q", where, why)
	}
	// Removed: B removes its copy once it is older than KeepUnreferenced.
	clock.Store(now.Add(2 * time.Hour).UnixNano())
	if err := f.s.Delete(ctx, "v1.0.0"); err != nil {
		t.Fatal(err)
	}
	if !eventually(func() bool { return !b.have(sum) }) {
		t.Fatal("replica B kept the removed release's artefact")
	}
	if !eventually(func() bool { h, _ := b.holders(ctx, sum); return len(h) == 0 }) {
		h, _ := b.holders(ctx, sum)
		t.Errorf("records of the removed blob remain: %v", h)
	}
	// A fresh upload no release names yet is spared.
	clock.Store(now.UnixNano())
	fresh := rs.put(t, "r-b", randomBytes(100))
	b.collect(ctx)
	if !b.have(fresh) {
		t.Error("an upload waiting for its release was removed")
	}
}

func eventually(cond func() bool) bool {
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

// FuzzBlobName: whatever name an agent or a peer asks for, only a blob
// held by its exact name is served, and nothing reaches another replica
// unless the name is a SHA-256 in lower-case hex.
func FuzzBlobName(f *testing.F) {
	held := randomBytes(100)
	sum := ota.Sum256(held)
	for _, s := range []string{sum, "../secret", "..%2f..%2fsecret", strings.ToUpper(sum), sum[:10], sum + "/", "%00", "blobs/" + sum, ""} {
		f.Add(s)
	}
	rs := newReplicaSet(f, "r-a", "r-b")
	a := rs.svc["r-a"]
	rs.put(f, "r-a", held)
	os.WriteFile(filepath.Join(a.cfg.Dir, "secret"), []byte("secret"), 0o600)
	f.Fuzz(func(t *testing.T, name string) {
		for _, h := range []struct {
			h    http.Handler
			path string
		}{{a.Handler(), BlobPath(name)}, {a.PeerHandler(), PeerBlobPath(name)}} {
			u, err := url.Parse(h.path)
			if err != nil {
				continue
			}
			rec := httptest.NewRecorder()
			h.h.ServeHTTP(rec, &http.Request{Method: http.MethodGet, URL: u, Header: http.Header{}})
			switch {
			case rec.Code == http.StatusOK && !bytes.Equal(rec.Body.Bytes(), held):
				t.Fatalf("%q served %q", h.path, rec.Body.Bytes())
			case rec.Code == http.StatusOK && u.Path != BlobPath(sum) && u.Path != PeerBlobPath(sum):
				t.Fatalf("%q served the blob under another name", h.path)
			}
		}
		if n := rs.calls["r-b"].Load(); n != 0 && !sumRE.MatchString(name) {
			t.Fatalf("%q reached a peer", name)
		}
	})
}
