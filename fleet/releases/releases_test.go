package releases

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"aead.dev/minisign"

	"remoteler.dev/edge/fleet/store/memstore"
	"remoteler.dev/edge/proto/api"
	"remoteler.dev/edge/proto/ota"
)

type fixture struct {
	s    *Service
	priv minisign.PrivateKey
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	pub, priv, _ := minisign.GenerateKey(rand.Reader)
	s, err := New(Config{Store: memstore.New(), Dir: t.TempDir(), Keys: func() ota.Keys { return ota.Keys{pub} }})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{s: s, priv: priv}
}

// release uploads bins (target → bytes) and returns the add request.
func (f *fixture) release(t *testing.T, version string, bins map[string][]byte, signer minisign.PrivateKey) api.AddReleaseRequest {
	t.Helper()
	m := &ota.Manifest{Product: ota.Product, Version: version}
	req := api.AddReleaseRequest{ArtifactSigs: map[string]string{}}
	for _, target := range []string{"linux-arm64", "linux-armv6"} {
		b, ok := bins[target]
		if !ok {
			continue
		}
		m.Artifacts = append(m.Artifacts, ota.Artifact{Name: ota.ArtifactName(target), Target: target, Size: int64(len(b)), SHA256: ota.Sum256(b)})
		if err := f.s.PutBlob(context.Background(), ota.Sum256(b), bytes.NewReader(b)); err != nil {
			t.Fatal(err)
		}
		req.ArtifactSigs[target] = string(ota.Sign(signer, b, ota.ArtifactName(target)))
	}
	mb := m.Marshal()
	req.Manifest, req.ManifestSig = string(mb), string(ota.Sign(signer, mb, ota.ManifestName))
	return req
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func TestAddVerifies(t *testing.T) {
	f := newFixture(t)
	_, stranger, _ := minisign.GenerateKey(rand.Reader)
	bin := randomBytes(4096)
	tests := []struct {
		name string
		req  func() api.AddReleaseRequest
		want string
	}{
		{"manifest by an unknown key", func() api.AddReleaseRequest {
			return f.release(t, "v1.0.0", map[string][]byte{"linux-arm64": bin}, stranger)
		}, "not trust"},
		{"bad artefact signature", func() api.AddReleaseRequest {
			r := f.release(t, "v1.0.0", map[string][]byte{"linux-arm64": bin}, f.priv)
			r.ArtifactSigs["linux-arm64"] = string(ota.Sign(f.priv, []byte("other"), "x"))
			return r
		}, "signature does not verify"},
		{"missing signature", func() api.AddReleaseRequest {
			r := f.release(t, "v1.0.0", map[string][]byte{"linux-arm64": bin}, f.priv)
			delete(r.ArtifactSigs, "linux-arm64")
			return r
		}, "no signature"},
		{"artefact not uploaded", func() api.AddReleaseRequest {
			r := f.release(t, "v1.0.0", map[string][]byte{"linux-arm64": bin}, f.priv)
			m, _ := ota.ParseManifest([]byte(r.Manifest))
			m.Artifacts[0].SHA256 = strings.Repeat("0", 64)
			mb := m.Marshal()
			r.Manifest, r.ManifestSig = string(mb), string(ota.Sign(f.priv, mb, "m"))
			return r
		}, "was not uploaded"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := f.s.Add(context.Background(), tt.req())
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Add: %v, want an error saying %q", err, tt.want)
			}
		})
	}
	if _, err := f.s.Add(context.Background(), f.release(t, "v1.0.0", map[string][]byte{"linux-arm64": bin}, f.priv)); err != nil {
		t.Fatalf("a good release: %v", err)
	}
	if _, err := f.s.Add(context.Background(), f.release(t, "v1.0.0", map[string][]byte{"linux-arm64": bin}, f.priv)); err == nil {
		t.Error("the same version twice")
	}
}

func TestPutBlobChecksTheHash(t *testing.T) {
	f := newFixture(t)
	b := randomBytes(100)
	if err := f.s.PutBlob(context.Background(), ota.Sum256([]byte("other")), bytes.NewReader(b)); err == nil {
		t.Error("a blob that does not hash to its name was kept")
	}
	if err := f.s.PutBlob(context.Background(), "../../etc/passwd", bytes.NewReader(b)); err == nil {
		t.Error("a path as a blob name was accepted")
	}
}

func TestDeltas(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go f.s.Run(ctx)
	old := randomBytes(256 << 10)
	patch := bytes.Clone(old)
	copy(patch[100:], "patched")
	unrelated := randomBytes(256 << 10) // nothing in common: the delta is as large as the artefact
	if _, err := f.s.Add(ctx, f.release(t, "v1.0.0", map[string][]byte{"linux-arm64": old, "linux-armv6": old}, f.priv)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.Add(ctx, f.release(t, "v1.0.1", map[string][]byte{"linux-arm64": patch, "linux-armv6": unrelated}, f.priv)); err != nil {
		t.Fatal(err)
	}
	var rel *Release
	deadline := time.Now().Add(time.Minute)
	for {
		r, err := f.s.Get(ctx, "v1.0.1")
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Deltas) == 2 {
			rel = r
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("deltas not made: %+v", r.Deltas)
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, d := range rel.Deltas {
		switch d.Target {
		case "linux-arm64":
			if d.Skipped != "" || d.Size > 4096 || d.From != "v1.0.0" {
				t.Errorf("patch delta %+v: want a small one from v1.0.0", d)
			}
			// Served with Range support.
			srv := httptest.NewServer(f.s.Handler())
			defer srv.Close()
			req, _ := http.NewRequest("GET", srv.URL+BlobPath(d.SHA256), nil)
			req.Header.Set("Range", "bytes=10-")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusPartialContent || int64(len(body)) != d.Size-10 {
				t.Errorf("range request: %s, %d bytes; want 206 and %d", resp.Status, len(body), d.Size-10)
			}
		case "linux-armv6":
			if d.Skipped == "" || d.SHA256 != "" {
				t.Errorf("a delta larger than half the artefact was kept: %+v", d)
			}
		}
	}
}
