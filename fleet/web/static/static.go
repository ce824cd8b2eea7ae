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
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"sync"
)

//go:embed vendor dash
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

// Handler serves the embedded files under prefix. A request that carries
// the file's current hash (see URL) may be cached for a year; others must
// revalidate.
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
		fsrv.ServeHTTP(w, r)
	})
}
