// Package static holds the files the fleet's browser pages load: the
// vendored JavaScript and CSS libraries (vendor/, listed with their versions,
// licences and checksums in vendor/VENDOR.md) and the fleet's own scripts
// and styles (dash/: the dashboard's). They are embedded in fleetd, so the
// pages work with no network and no build step, and served with long cache
// lifetimes under content-hashed names.
//
// Only fleet/... imports this package.
package static

import (
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"
)

//go:embed vendor dash fleet.css
var files embed.FS

// FS is every embedded file, by its path under this folder
// ("vendor/htmx/htmx.min.js").
var FS fs.FS = files

var (
	hashOnce sync.Once
	hashes   map[string]string // path -> first 12 hex digits of its sha256
)

func loadHashes() {
	hashes = map[string]string{}
	fs.WalkDir(files, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(files, p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		hashes[p] = hex.EncodeToString(sum[:])[:12]
		return nil
	})
}

// URL returns the address under prefix at which Handler serves the file at
// p, with its content hash in the query, so that pages can let browsers
// cache it for good. It panics on a file that is not embedded: a page that
// names a missing file is a bug caught by the first test that renders it.
func URL(prefix, p string) string {
	hashOnce.Do(loadHashes)
	h, ok := hashes[p]
	if !ok {
		panic("static: no embedded file " + p)
	}
	return strings.TrimSuffix(prefix, "/") + "/" + p + "?v=" + h
}

// gzipped holds the files' gzip encodings, made at first use.
var (
	gzipMu  sync.Mutex        // guards gzipped
	gzipped map[string][]byte // path -> gzip of the file; nil entry: not worth it
)

// gzipOf returns the gzip encoding of the file at p, or nil when it does
// not pay (small files, images).
func gzipOf(p string) []byte {
	gzipMu.Lock()
	defer gzipMu.Unlock()
	if z, ok := gzipped[p]; ok {
		return z
	}
	if gzipped == nil {
		gzipped = map[string][]byte{}
	}
	var z []byte
	if ext := path.Ext(p); ext == ".js" || ext == ".css" || ext == ".html" || ext == ".json" || ext == ".svg" {
		if b, err := fs.ReadFile(files, p); err == nil && len(b) > 1024 {
			var buf bytes.Buffer
			zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
			zw.Write(b)
			zw.Close()
			if buf.Len() < len(b) {
				z = buf.Bytes()
			}
		}
	}
	gzipped[p] = z
	return z
}

// AcceptsGzip reports whether the request's client takes gzip.
func AcceptsGzip(r *http.Request) bool {
	for _, part := range strings.Split(r.Header.Get("Accept-Encoding"), ",") {
		enc, q, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.TrimSpace(enc) == "gzip" && strings.ReplaceAll(q, " ", "") != "q=0" {
			return true
		}
	}
	return false
}

// Handler serves the embedded files under prefix, gzipped for clients
// that take it (scripts and styles compress to a third). A request that
// carries the file's current hash (see URL) may be cached for a year;
// others must revalidate.
func Handler(prefix string) http.Handler {
	hashOnce.Do(loadHashes)
	fsrv := http.StripPrefix(strings.TrimSuffix(prefix, "/"), http.FileServerFS(files))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := strings.TrimPrefix(path.Clean(strings.TrimPrefix(r.URL.Path, strings.TrimSuffix(prefix, "/"))), "/")
		h, ok := hashes[p]
		if !ok {
			http.NotFound(w, r)
			return
		}
		if r.URL.Query().Get("v") == h {
			w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
		} else {
			w.Header().Set("Cache-Control", "no-cache")
		}
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Add("Vary", "Accept-Encoding")
		if z := gzipOf(p); z != nil && AcceptsGzip(r) {
			if ct := mime.TypeByExtension(path.Ext(p)); ct != "" {
				w.Header().Set("Content-Type", ct)
			}
			w.Header().Set("Content-Encoding", "gzip")
			http.ServeContent(w, r, p, time.Time{}, bytes.NewReader(z))
			return
		}
		fsrv.ServeHTTP(w, r)
	})
}
