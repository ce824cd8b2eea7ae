// Package demoapp is a small web app to run on a device behind the fleet:
// make demo gives its device one, the browser and curl tests of web-app
// access (tools/e2e) reach it through the fleet, and the app benchmark
// measures against it. It shows what peers often break: a websocket
// (/ws, an echo), server-sent events (/events, a tick a second from the
// first moment), uploads (/upload counts and hashes what arrives), large
// downloads with Range (/download?size=N), a redirect to its own internal
// address (/redirect), a cookie scoped to its internal host (/cookie), a
// slow answer (/slow?ms=N), and who the fleet says the user is (/whoami:
// the fleet's JWT header, decoded; verify it against the fleet's JWKS).
//
// It is imported by tools/ only.
package demoapp

import (
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// JWTHeader is the header the fleet puts the user's identity in
// (fleet/apps.JWTHeader; tools may not import fleet server packages).
const JWTHeader = "Remoteler-Jwt-Assertion"

//go:embed static
var static embed.FS

// Whoami is what /whoami answers.
type Whoami struct {
	// User is the JWT's username claim (not verified here).
	User string `json:"user"`
	// JWT is the fleet's header as the app received it.
	JWT string `json:"jwt"`
	// Host is the Host the app received; Forwarded the X-Forwarded-*
	// headers; Cookies the names of the cookies it got.
	Host      string            `json:"host"`
	Forwarded map[string]string `json:"forwarded"`
	Cookies   []string          `json:"cookies"`
	// Headers are every header it received, for header tests.
	Headers http.Header `json:"headers"`
}

// Upload is what /upload answers.
type Upload struct {
	Bytes  int64  `json:"bytes"`
	SHA256 string `json:"sha256"`
}

// Handler returns the app. log receives a line per websocket and stream;
// nil discards.
func Handler(log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	sub, _ := fs.Sub(static, "static")
	mux.Handle("GET /", http.FileServerFS(sub))
	mux.HandleFunc("GET /whoami", whoami)
	mux.HandleFunc("GET /events", events)
	mux.HandleFunc("GET /ws", func(w http.ResponseWriter, r *http.Request) { echo(w, r, log) })
	mux.HandleFunc("POST /upload", upload)
	mux.HandleFunc("GET /download", download)
	mux.HandleFunc("GET /redirect", func(w http.ResponseWriter, r *http.Request) {
		// The app names itself by the address it listens on: the fleet
		// rewrites that to the public one.
		http.Redirect(w, r, "http://"+r.Host+"/landed", http.StatusFound)
	})
	mux.HandleFunc("GET /landed", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		fmt.Fprint(w, `<!doctype html><title>Landed</title><h1 id="landed">Landed on the app's page</h1>`)
	})
	mux.HandleFunc("GET /cookie", func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.Host)
		http.SetCookie(w, &http.Cookie{Name: "demo", Value: "1", Domain: host, Path: "/"})
		http.SetCookie(w, &http.Cookie{Name: "__Host-fleet_app", Value: "the app may not set this", Path: "/", Secure: true})
		fmt.Fprintln(w, "cookies set")
	})
	mux.HandleFunc("GET /slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		select {
		case <-time.After(time.Duration(ms) * time.Millisecond):
		case <-r.Context().Done():
			return
		}
		fmt.Fprintln(w, "slow answer")
	})
	mux.HandleFunc("GET /small", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("ok\n"))
	})
	return mux
}

func whoami(w http.ResponseWriter, r *http.Request) {
	out := Whoami{JWT: r.Header.Get(JWTHeader), Host: r.Host, Forwarded: map[string]string{}, Headers: r.Header}
	for k, v := range r.Header {
		if strings.HasPrefix(k, "X-Forwarded-") {
			out.Forwarded[k] = strings.Join(v, ",")
		}
	}
	for _, c := range r.Cookies() {
		out.Cookies = append(out.Cookies, c.Name)
	}
	if parts := strings.Split(out.JWT, "."); len(parts) == 3 {
		if b, err := base64.RawURLEncoding.DecodeString(parts[1]); err == nil {
			var c struct {
				Username string `json:"username"`
			}
			json.Unmarshal(b, &c)
			out.User = c.Username
		}
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(out)
}

// events streams a tick a second, the first at once, until the client
// goes.
func events(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	rc := http.NewResponseController(w)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for n := 1; ; n++ {
		fmt.Fprintf(w, "event: tick\nid: %d\ndata: %s\n\n", n, time.Now().UTC().Format(time.RFC3339))
		if err := rc.Flush(); err != nil {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-t.C:
		}
	}
}

// echo is a websocket echo. The origin may be the app's public address
// (X-Forwarded-Host: the fleet passes the app its own Host).
func echo(w http.ResponseWriter, r *http.Request, log *slog.Logger) {
	origins := []string{r.Host}
	if fh := r.Header.Get("X-Forwarded-Host"); fh != "" {
		origins = append(origins, fh)
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{OriginPatterns: origins})
	if err != nil {
		log.Info("websocket refused", "err", err)
		return
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)
	ctx := r.Context()
	for {
		typ, b, err := c.Read(ctx)
		if err != nil {
			return
		}
		if err := c.Write(ctx, typ, b); err != nil {
			return
		}
	}
}

func upload(w http.ResponseWriter, r *http.Request) {
	h := sha256.New()
	n, err := io.Copy(h, r.Body)
	if err != nil {
		http.Error(w, "upload: "+err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(Upload{Bytes: n, SHA256: hex.EncodeToString(h.Sum(nil))})
}

// download serves size bytes of Pattern, with Range support.
func download(w http.ResponseWriter, r *http.Request) {
	size, err := strconv.ParseInt(r.URL.Query().Get("size"), 10, 64)
	if err != nil || size < 0 || size > 1<<40 {
		http.Error(w, "download: size must be a number of bytes", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "data.bin", time.Unix(1700000000, 0), &Pattern{Size: size})
}

// Pattern is size bytes whose byte at offset i is At(i), so a part of it
// can be checked without the rest (a resumed download, say). It is an
// io.ReadSeeker.
type Pattern struct {
	Size int64
	off  int64
}

// period is the pattern's period: a prime, so that it does not line up
// with buffer sizes.
const period = 65521

var table = func() []byte {
	t := make([]byte, 2*period)
	for i := range t {
		t[i] = byte(i*7 + i/251)
	}
	copy(t[period:], t[:period])
	return t
}()

// At is the pattern's byte at offset i.
func At(i int64) byte { return table[i%period] }

func (p *Pattern) Read(b []byte) (int, error) {
	if p.off >= p.Size {
		return 0, io.EOF
	}
	n := int(min(int64(len(b)), p.Size-p.off))
	done := 0
	for done < n {
		start := int((p.off + int64(done)) % period)
		done += copy(b[done:n], table[start:start+period])
	}
	p.off += int64(n)
	return n, nil
}

// Seek implements io.Seeker.
func (p *Pattern) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += p.off
	case io.SeekEnd:
		offset += p.Size
	}
	if offset < 0 {
		return 0, errors.New("pattern: negative offset")
	}
	p.off = offset
	return offset, nil
}
