package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/chromedp/chromedp"

	"remoteler.dev/edge/tools/browsertest"
)

// figures are what the page's Performance API says of its load, the
// resources grouped by what they are (their URL's extension; the peer's
// API apart).
type figures struct {
	FirstPaint           float64           `json:"first_paint"`
	FirstContentfulPaint float64           `json:"first_contentful_paint"`
	DOMContentLoaded     float64           `json:"dom_content_loaded"`
	Load                 float64           `json:"load"`
	PageWire             int64             `json:"page_wire"`
	PageDecoded          int64             `json:"page_decoded"`
	Protocol             string            `json:"protocol"`
	Kinds                map[string]*group `json:"kinds"`
	Failed               []string          `json:"failed"` // "status path" of each failed request
}

// group sums the resources of one kind.
type group struct {
	N       int   `json:"n"`
	Wire    int64 `json:"wire"`
	Decoded int64 `json:"decoded"`
	Failed  int   `json:"failed"` // answered 4xx/5xx or not at all
}

// kinds are the groups, in the order printed.
var kinds = []struct{ key, label string }{
	{"script", "scripts"},
	{"style", "styles"},
	{"font", "fonts"},
	{"image", "images"},
	{"template", "HTML templates (fetched by the page's script)"},
	{"data", "static JSON (translations, themes)"},
	{"api", "the peer's API (JSON: the page's data, its event long-poll)"},
	{"other", "other"},
}

// figuresJS reads the figures (the same Performance API entries as the
// fleet's dashboard benchmark reads).
const figuresJS = `(function () {
	var nav = performance.getEntriesByType('navigation')[0], out = {kinds: {}, failed: []};
	performance.getEntriesByType('paint').forEach(function (p) {
		if (p.name === 'first-paint') out.first_paint = p.startTime;
		if (p.name === 'first-contentful-paint') out.first_contentful_paint = p.startTime;
	});
	out.dom_content_loaded = nav.domContentLoadedEventEnd;
	out.load = nav.loadEventEnd;
	out.protocol = nav.nextHopProtocol; out.page_wire = nav.transferSize; out.page_decoded = nav.decodedBodySize;
	performance.getEntriesByType('resource').forEach(function (r) {
		var u = new URL(r.name), p = u.pathname, k = 'other';
		if (p.startsWith('/rest/') || p === '/meta.js') k = 'api';
		else if (/\.js$/.test(p)) k = 'script';
		else if (/\.css$/.test(p)) k = 'style';
		else if (/\.(woff2?|ttf|eot|otf)$/.test(p)) k = 'font';
		else if (/\.(png|svg|gif|jpe?g|ico|webp)$/.test(p)) k = 'image';
		else if (/\.html?$/.test(p)) k = 'template';
		else if (/\.json$/.test(p)) k = 'data';
		var g = out.kinds[k] || (out.kinds[k] = {n: 0, wire: 0, decoded: 0, failed: 0});
		g.n++; g.wire += r.transferSize; g.decoded += r.decodedBodySize;
		if (!(r.responseStatus >= 200 && r.responseStatus < 400)) { g.failed++; out.failed.push(r.responseStatus + ' ' + p); }
	});
	return out;
})()`

// assetsJS counts the page's requests other than its API's: the page is
// loaded when the count has stayed the same for a while.
const assetsJS = `document.readyState === 'complete' ? performance.getEntriesByType('resource').filter(function (r) {
	var p = new URL(r.name).pathname; return !(p.startsWith('/rest/') || p === '/meta.js');
}).length : -1`

func run(ctx context.Context, out io.Writer, bin string, settle time.Duration) error {
	dir, err := os.MkdirTemp("", "dashpeer-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	p, err := startSyncthing(ctx, bin, dir)
	if err != nil {
		return err
	}
	defer p.stop()
	fmt.Fprintf(os.Stderr, "dashpeer: %s serving its GUI at %s\n", bin, p.URL)

	bctx, stop, err := browsertest.Start(browsertest.Options{TrustedSPKI: []string{p.SPKI}, Timeout: 3 * time.Minute})
	if err != nil {
		return err
	}
	defer stop()
	defer context.AfterFunc(ctx, stop)()
	if err := chromedp.Do(bctx, chromedp.Navigate(p.URL)); err != nil {
		return fmt.Errorf("open %s: %w", p.URL, err)
	}
	if err := waitSettled(bctx, settle); err != nil {
		return err
	}
	f, err := chromedp.Run(bctx, chromedp.Evaluate[figures](figuresJS))
	if err != nil {
		return fmt.Errorf("read the figures: %w", err)
	}
	version, _ := exec.CommandContext(ctx, bin, "--version").Output()
	for _, r := range f.Failed {
		fmt.Fprintf(os.Stderr, "dashpeer: failed: %s\n", r)
	}
	report(out, f, strings.TrimSpace(string(version)))
	return nil
}

// waitSettled waits for the page's load and then for its count of
// assets to stay the same for settle (templates and translations come
// after the load event, fetched by its script), a minute at most.
func waitSettled(ctx context.Context, settle time.Duration) error {
	deadline := time.Now().Add(time.Minute)
	last, since := -2, time.Now()
	for time.Now().Before(deadline) {
		n, err := chromedp.Run(ctx, chromedp.Evaluate[int](assetsJS))
		if err != nil {
			return fmt.Errorf("wait for the page: %w", err)
		}
		if n != last {
			last, since = n, time.Now()
		} else if n >= 0 && time.Since(since) >= settle {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond): // polling the page
		}
	}
	return errors.New("wait for the page: it was still loading assets after a minute")
}

func report(out io.Writer, f figures, version string) {
	fmt.Fprintf(out, "**The peer's dashboard** (%s, a new device: no folder, no other device; over %s; cold: a new browser profile; ms from the navigation's start):\n\n", version, f.Protocol)
	fmt.Fprintln(out, "| first paint | first contentful paint | DOMContentLoaded | page loaded |")
	fmt.Fprintln(out, "|---:|---:|---:|---:|")
	fmt.Fprintf(out, "| %.0f | %.0f | %.0f | %.0f |\n\n", f.FirstPaint, f.FirstContentfulPaint, f.DOMContentLoaded, f.Load)
	fmt.Fprintln(out, "**Its weight** (bytes; on the wire: what the transfer took, gzip and headers included):")
	fmt.Fprintln(out)
	fmt.Fprintln(out, "| | requests | on the wire | decoded |")
	fmt.Fprintln(out, "|---|---:|---:|---:|")
	fmt.Fprintf(out, "| the page (HTML) | 1 | %d | %d |\n", f.PageWire, f.PageDecoded)
	var sub, all group
	sub = group{N: 1, Wire: f.PageWire, Decoded: f.PageDecoded}
	all = sub
	for _, k := range kinds {
		gr := f.Kinds[k.key]
		if gr == nil {
			continue
		}
		failed := ""
		if gr.Failed > 0 {
			failed = fmt.Sprintf(" (%d failed)", gr.Failed)
		}
		fmt.Fprintf(out, "| %s | %d%s | %d | %d |\n", k.label, gr.N, failed, gr.Wire, gr.Decoded)
		if k.key == "script" || k.key == "style" {
			sub.N += gr.N
			sub.Wire += gr.Wire
			sub.Decoded += gr.Decoded
		}
		all.N += gr.N
		all.Wire += gr.Wire
		all.Decoded += gr.Decoded
	}
	fmt.Fprintf(out, "| page, scripts and styles (what the fleet's figure counts) | %d | %d | %d |\n", sub.N, sub.Wire, sub.Decoded)
	api := group{}
	if gr := f.Kinds["api"]; gr != nil {
		api = *gr
	}
	fmt.Fprintf(out, "| every asset (the API aside) | %d | %d | %d |\n", all.N-api.N, all.Wire-api.Wire, all.Decoded-api.Decoded)
	fmt.Fprintf(out, "| in all | %d | %d | %d |\n\n", all.N, all.Wire, all.Decoded)
}
