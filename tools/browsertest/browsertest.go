// Package browsertest runs Debian's headless Chromium for tests, driven with
// chromedp: the fleet's login pages, app access and dashboard are tested in
// the browser people use, not in a stand-in. New starts a browser with a
// fresh, empty profile (so every test is a first visit, like a private
// window), flags that keep it off the network (this machine has none, and a
// test must not depend on one), and host-resolver rules that send chosen
// host names (the fleet's app addresses, say) to loopback.
//
// It fails, never skips, when Chromium is missing: tools/setup/setup.sh
// installs it.
//
// Tests import this package; so do benchmark commands under tools/bench
// (Start), never product code.
package browsertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Options configure New; the zero value works.
type Options struct {
	// Hosts maps host names (or patterns such as "*.fleet.test") to the
	// address they resolve to, e.g. {"*.fleet.test": "127.0.0.1"}.
	Hosts map[string]string
	// TrustedSPKI lists base64 SHA-256 hashes of public keys (SPKI) whose
	// certificates Chromium accepts although no system root vouches for
	// them: the fleet's test CA, say. Empty: no exceptions.
	TrustedSPKI []string
	// Width and Height are the window size; default 1280×800.
	Width, Height int
	// Timeout bounds the browser's life; default 3 minutes.
	Timeout time.Duration
	// Logf receives chromedp's errors; nil drops them (New logs them on
	// the test).
	Logf func(format string, args ...any)

	dir string // the profile directory; empty: a new one
}

// Browser is a running headless Chromium.
type Browser struct {
	// Ctx is the context of the browser's first tab: pass it to
	// chromedp.Run. It ends when the test ends.
	Ctx context.Context
	// Dir is the profile directory (empty at start).
	Dir string
	t   testing.TB
}

// Path returns the Chromium binary, or fails the test.
func Path(t testing.TB) string {
	t.Helper()
	p, err := findChromium()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func findChromium() (string, error) {
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("browsertest: chromium not found: run tools/setup/setup.sh (Debian package chromium)")
}

// New starts a browser that closes when the test ends.
func New(t testing.TB, opt Options) *Browser {
	t.Helper()
	opt.dir = t.TempDir()
	if opt.Logf == nil {
		opt.Logf = t.Logf
	}
	ctx, stop, err := Start(opt)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(stop)
	return &Browser{Ctx: ctx, Dir: opt.dir, t: t}
}

// Start starts a browser for a program that is not a test (a benchmark
// command): the context of its first tab, and the function that closes
// it. Options.Timeout bounds its life; its profile is a new directory
// that stop removes.
func Start(opt Options) (ctx context.Context, stop func(), err error) {
	if opt.Width == 0 {
		opt.Width, opt.Height = 1280, 800
	}
	if opt.Timeout == 0 {
		opt.Timeout = 3 * time.Minute
	}
	path, err := findChromium()
	if err != nil {
		return nil, nil, err
	}
	dir := opt.dir
	rmDir := false
	if dir == "" {
		if dir, err = os.MkdirTemp("", "browsertest-"); err != nil {
			return nil, nil, fmt.Errorf("browsertest: %w", err)
		}
		rmDir = true
	}
	flags := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.UserDataDir(dir),
		chromedp.Headless,
		chromedp.NoSandbox, // the tests run as root in a container
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.WindowSize(opt.Width, opt.Height),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-features", "Translate,OptimizationHints,MediaRouter,InterestFeedContentSuggestions"),
		chromedp.Flag("metrics-recording-only", true),
		chromedp.Flag("password-store", "basic"),
		chromedp.Flag("use-mock-keychain", true),
	}
	if len(opt.Hosts) > 0 {
		var rules []string
		names := make([]string, 0, len(opt.Hosts))
		for h := range opt.Hosts {
			names = append(names, h)
		}
		sort.Strings(names)
		for _, h := range names {
			rules = append(rules, fmt.Sprintf("MAP %s %s", h, opt.Hosts[h]))
		}
		rules = append(rules, "EXCLUDE localhost")
		flags = append(flags, chromedp.Flag("host-resolver-rules", strings.Join(rules, ", ")))
	}
	if len(opt.TrustedSPKI) > 0 {
		flags = append(flags, chromedp.Flag("ignore-certificate-errors-spki-list", strings.Join(opt.TrustedSPKI, ",")))
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(), flags...)
	logf := opt.Logf
	if logf == nil {
		logf = func(string, ...any) {}
	}
	ctx, cancel := chromedp.NewContext(actx, chromedp.WithErrorf(func(format string, args ...any) {
		logf("browsertest: "+format, args...)
	}))
	ctx, tcancel := context.WithTimeout(ctx, opt.Timeout)
	stop = func() {
		tcancel()
		cancel()
		acancel()
		if rmDir {
			os.RemoveAll(dir)
		}
	}
	// Start the browser now, so a broken installation fails here.
	if err := chromedp.Do(ctx); err != nil {
		stop()
		return nil, nil, fmt.Errorf("browsertest: start chromium: %w", err)
	}
	return ctx, stop, nil
}

// Do runs actions that return nothing in the browser's tab, in order, and
// fails the test on error, saying which step failed. chromedp's API is
// generic (v0.20 and later): an action returns its value; see Get.
func (b *Browser) Do(step string, actions ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := chromedp.Do(b.Ctx, actions...); err != nil {
		b.t.Fatalf("browser: %s: %v", step, err)
	}
}

// Get runs one action in b's tab and returns its value, failing the test
// on error: text := Get(b, "title", chromedp.Text(chromedp.CSS("h1"))).
func Get[T any](b *Browser, step string, a chromedp.Action[T]) T {
	b.t.Helper()
	v, err := chromedp.Run(b.Ctx, a)
	if err != nil {
		b.t.Fatalf("browser: %s: %v", step, err)
	}
	return v
}

// Screenshot saves a PNG of the whole page to dir/name.png (dir is created)
// and returns its path (chromedp writes PNG at quality 100 only, JPEG
// below). Tests keep the screenshots a person would look at;
// `make screenshots` copies chosen ones into docs/.
func (b *Browser) Screenshot(dir, name string) string {
	b.t.Helper()
	// A page between two layouts (a swap, a reload) measures 0 wide, and
	// Chromium refuses to shoot it: wait for a laid-out page.
	Get(b, "screenshot "+name+": the page laid out", chromedp.Poll[bool](
		`document.readyState === 'complete' && document.documentElement.scrollWidth > 0 && document.documentElement.scrollHeight > 0`,
		chromedp.WithPollingTimeout(2*time.Minute)))
	png := Get(b, "screenshot "+name, chromedp.FullScreenshot(100)) // 100: PNG (below, JPEG)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		b.t.Fatal(err)
	}
	p := filepath.Join(dir, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	return p
}
