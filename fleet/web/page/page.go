// Package page holds what every page fleetd serves to browsers shares: the
// security headers (a strict Content-Security-Policy with no inline script
// or style, no framing, no sniffing, no referrer to other origins, no
// caching), the check
// that a state-changing request comes from the fleet's own origin, and a
// plain message page rendered with html/template.
//
// Only fleet/... server packages import page.
package page

import (
	"html/template"
	"log/slog"
	"net/http"
	"strings"
)

// Headers sets the headers every fleet page carries. Forms may post to the
// fleet itself and to formTargets (CSP source expressions: the identity
// providers a login form sends the browser to, say).
func Headers(h http.Header, formTargets ...string) {
	forms := strings.Join(append([]string{"'self'"}, formTargets...), " ")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; script-src 'self'; connect-src 'self'; "+
		"form-action "+forms+"; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	// same-origin, not no-referrer: with no-referrer, browsers send
	// "Origin: null" on the fleet's own form POSTs, and SameOrigin must
	// refuse those. Other origins get no referrer either way (a callback
	// address with its code never leaks).
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
}

// SameOrigin reports whether a state-changing request comes from a page of
// origin (https://HOST[:PORT]): its Origin header, when sent, must be
// origin ("null", which browsers send for pages with a no-referrer
// policy or from sandboxes, is not), and its Sec-Fetch-Site, when sent,
// same-origin (or none: the user typed it). Browsers send one or both on every POST; requests
// without either are not from a browser's page at all, and the CSRF token
// the caller also checks decides them.
func SameOrigin(r *http.Request, origin string) bool {
	if o := r.Header.Get("Origin"); o != "" && o != origin {
		return false
	}
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return false
	}
	return true
}

// Text is a message page: a title, what happened, and what to do next.
type Text struct {
	Title, Message string
	// Details are more paragraphs.
	Details []string
	// Link and LinkText offer one way on.
	Link, LinkText string
}

var message = template.Must(template.New("message").Parse(`<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1"><title>{{.Title}}</title></head>
<body>
<main>
<h1>{{.Title}}</h1>
<p id="message">{{.Message}}</p>
{{range .Details}}<p>{{.}}</p>
{{end}}{{if .Link}}<p><a href="{{.Link}}">{{.LinkText}}</a></p>{{end}}
</main>
</body>
</html>
`))

// Message renders t with status.
func Message(w http.ResponseWriter, status int, t Text) {
	Render(w, status, message, t, nil)
}

// Render renders tmpl with data and status, with Headers (forms may post
// to formTargets too). A template error is logged on log (nil: dropped):
// the status is out by then.
func Render(w http.ResponseWriter, status int, tmpl *template.Template, data any, log *slog.Logger, formTargets ...string) {
	Headers(w.Header(), formTargets...)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := tmpl.Execute(w, data); err != nil && log != nil {
		log.Warn("render page", "page", tmpl.Name(), "err", err)
	}
}
