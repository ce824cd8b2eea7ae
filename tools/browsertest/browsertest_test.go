package browsertest

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

// TestHostRules loads a page by a made-up host name mapped to loopback and
// reads what the page's script wrote: the browser starts, resolves by the
// rules, runs script, and a cookie set by the server comes back to it.
func TestHostRules(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/echo" {
			c, _ := r.Cookie("k")
			if c != nil {
				fmt.Fprint(w, c.Value)
			}
			return
		}
		http.SetCookie(w, &http.Cookie{Name: "k", Value: "v-" + r.Host, HttpOnly: true})
		fmt.Fprint(w, `<!doctype html><title>t</title><p id=host></p><script>document.getElementById('host').textContent = location.host</script>`)
	}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	b := New(t, Options{Hosts: map[string]string{"*.fleet.test": "127.0.0.1"}})
	base := "http://app--dev.fleet.test:" + port
	b.Do("load", chromedp.Navigate(base+"/"))
	host := Get(b, "read host", chromedp.Text(chromedp.CSS("#host")))
	if want := "app--dev.fleet.test:" + port; host != want {
		t.Errorf("page saw host %q, want %q", host, want)
	}
	b.Do("echo", chromedp.Navigate(base+"/echo"))
	echo := Get(b, "read echo", chromedp.Text(chromedp.CSS("body")))
	if want := "v-app--dev.fleet.test:" + port; echo != want {
		t.Errorf("cookie came back as %q, want %q", echo, want)
	}
	if p := b.Screenshot(t.TempDir(), "page"); p == "" {
		t.Error("no screenshot")
	}
}
