package static

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
)

// TestVendorChecksums checks every vendored file against its row in
// vendor/VENDOR.md, and that every vendored file has a row: a library
// cannot change, or arrive, without its version, licence and checksum.
func TestVendorChecksums(t *testing.T) {
	f, err := os.Open("vendor/VENDOR.md")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "|") {
			continue
		}
		cols := strings.Split(line, "|")
		if len(cols) != 9 {
			t.Fatalf("VENDOR.md row %q: want 7 columns", line)
		}
		for i := range cols {
			cols[i] = strings.TrimSpace(cols[i])
		}
		pkg, version, licence, integrity, file, sum := cols[1], cols[2], cols[3], cols[4], cols[5], cols[7]
		if pkg == "package" || strings.HasPrefix(pkg, "-") {
			continue
		}
		if version == "" || licence == "" || !strings.HasPrefix(integrity, "sha512-") || len(sum) != 64 {
			t.Errorf("VENDOR.md row for %s is incomplete: %q", file, line)
		}
		want["vendor/"+file] = sum
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	seen := 0
	err = fs.WalkDir(FS, "vendor", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || p == "vendor/VENDOR.md" {
			return err
		}
		seen++
		b, err := fs.ReadFile(FS, p)
		if err != nil {
			return err
		}
		got := sha256.Sum256(b)
		w, ok := want[p]
		switch {
		case !ok:
			t.Errorf("%s is vendored but has no row in VENDOR.md", p)
		case hex.EncodeToString(got[:]) != w:
			t.Errorf("%s: sha256 %x, VENDOR.md says %s", p, got, w)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != len(want) {
		t.Errorf("VENDOR.md lists %d files, %d are vendored", len(want), seen)
	}
}

func TestHandler(t *testing.T) {
	h := Handler("/web/static/")
	u := URL("/web/static/", "vendor/htmx/htmx.min.js")
	tests := []struct {
		name       string
		target     string
		wantStatus int
		wantCache  string
	}{
		{"hashed", u, http.StatusOK, "public, max-age=31536000, immutable"},
		{"stale hash", "/web/static/vendor/htmx/htmx.min.js?v=000000000000", http.StatusOK, "no-cache"},
		{"missing", "/web/static/vendor/nope.js", http.StatusNotFound, ""},
		{"escape", "/web/static/../static.go", http.StatusNotFound, ""},
		{"directory", "/web/static/vendor/", http.StatusNotFound, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", tt.target, nil))
			if rec.Code != tt.wantStatus {
				t.Fatalf("status %d, want %d", rec.Code, tt.wantStatus)
			}
			if got := rec.Header().Get("Cache-Control"); got != tt.wantCache {
				t.Errorf("Cache-Control %q, want %q", got, tt.wantCache)
			}
			if tt.wantStatus == http.StatusOK {
				if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/javascript") {
					t.Errorf("Content-Type %q", ct)
				}
				b, _ := io.ReadAll(rec.Body)
				if len(b) < 1000 {
					t.Errorf("body %d bytes", len(b))
				}
			}
		})
	}
}

func TestURLPanicsOnMissingFile(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("URL of a missing file did not panic")
		}
	}()
	URL("/s", "vendor/missing.js")
}

// TestGzip: scripts go gzipped to a client that takes it, plain to one
// that does not, and both decode to the file.
func TestGzip(t *testing.T) {
	h := Handler("/web/static/")
	u := URL("/web/static/", "vendor/htmx/htmx.min.js")
	want, err := fs.ReadFile(FS, "vendor/htmx/htmx.min.js")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, accept string
		gzipped      bool
	}{
		{"gzip", "gzip, deflate, br", true},
		{"refused", "gzip;q=0, br", false},
		{"none", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", u, nil)
			if tc.accept != "" {
				req.Header.Set("Accept-Encoding", tc.accept)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			body := rec.Body.Bytes()
			if got := rec.Header().Get("Content-Encoding") == "gzip"; got != tc.gzipped {
				t.Fatalf("gzipped %v, want %v", got, tc.gzipped)
			}
			if tc.gzipped {
				zr, err := gzip.NewReader(bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				if body, err = io.ReadAll(zr); err != nil {
					t.Fatal(err)
				}
				if rec.Body.Len() > len(want)/2 {
					t.Errorf("gzip is %d bytes of %d", rec.Body.Len(), len(want))
				}
			}
			if !bytes.Equal(body, want) {
				t.Error("the body is not the file")
			}
			if ct := rec.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/javascript") {
				t.Errorf("Content-Type %q", ct)
			}
		})
	}
}
