package tsh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"html/template"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/oauth2"

	"remoteler.dev/edge/fleet/client"
	"remoteler.dev/edge/proto/api"
)

// Single sign-on logins (docs/sso.md): tsh login --auth=CONNECTOR logs in
// in a browser and receives its ticket on a loopback port; tsh login
// --headless has the login approved in a browser elsewhere. Both end with
// a ticket that only this tsh can redeem: the fleet checks it against the
// hash of a verifier tsh sent when it started.

// authHeadless is the --auth value (and profile Auth) of headless logins.
const authHeadless = "headless"

// loopbackPage is what the browser shows once it has handed tsh the
// ticket (or the refusal).
var loopbackPage = template.Must(template.New("loopback").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tsh login</title></head>
<body><h1>{{.Title}}</h1><p id="message">{{.Message}}</p></body></html>
`))

// ssoLogin logs in through connector in a browser and returns the
// certificates.
func (r *runner) ssoLogin(ctx context.Context, c *client.Client, connector string, k *keys, ttl time.Duration, browser string) (*api.LoginResponse, error) {
	verifier := oauth2.GenerateVerifier()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listen on a loopback port for the browser's answer: %w", err)
	}
	defer ln.Close()
	type answer struct{ ticket, err string }
	answers := make(chan answer, 1)
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/callback" {
			http.NotFound(w, req)
			return
		}
		q := req.URL.Query()
		a := answer{ticket: q.Get(api.LoopbackTicket), err: q.Get(api.LoopbackError)}
		title, msg := "Logged in", "You are logged in to the fleet: go back to your terminal. You may close this tab."
		if a.ticket == "" {
			if a.err == "" {
				a.err = "the fleet's answer holds neither a ticket nor an error"
			}
			title, msg = "Login refused", a.err
		}
		var page bytes.Buffer
		loopbackPage.Execute(&page, struct{ Title, Message string }{title, msg})
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'none'")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Length", strconv.Itoa(page.Len()))
		w.Write(page.Bytes())
		select {
		case answers <- a:
		default: // one answer only
		}
	})}
	go srv.Serve(ln)
	defer func() {
		// Let the page that brought the answer reach the browser (Close
		// could cut it off once the answer was taken) before stopping.
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if srv.Shutdown(sctx) != nil {
			srv.Close()
		}
	}()

	start, err := c.SSOLogin(ctx, &api.SSOLoginRequest{
		Connector: connector, CSR: k.csr, SSHPublicKey: string(ssh.MarshalAuthorizedKey(k.sshPub)), TTL: ttl,
		RedirectURL: "http://" + ln.Addr().String() + "/callback", CodeChallenge: oauth2.S256ChallengeFromVerifier(verifier),
	})
	if err != nil {
		return nil, ssoError(err)
	}
	if browser == "none" || r.openBrowser(browser, start.AuthURL) != nil {
		fmt.Fprintf(r.stdio.Err, "Open this address in a browser to log in:\n  %s\n", start.AuthURL)
	} else {
		fmt.Fprintf(r.stdio.Err, "Your browser opened the login page; if it did not, open this address:\n  %s\n", start.AuthURL)
	}
	wait := time.Until(start.Expires) + 5*time.Second
	if wait <= 0 || wait > 15*time.Minute {
		wait = 15 * time.Minute
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	var a answer
	select {
	case a = <-answers:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-timer.C:
		return nil, errors.New("nobody logged in through the browser in time; run tsh login again")
	}
	if a.ticket == "" {
		return nil, fmt.Errorf("the fleet refused the login: %s", a.err)
	}
	resp, err := c.SSORedeem(ctx, &api.SSORedeemRequest{Ticket: a.ticket, CodeVerifier: verifier})
	if err != nil {
		return nil, ssoError(err)
	}
	return resp, nil
}

// headlessLogin has the login approved in a browser elsewhere (RFC 8628)
// and returns the certificates.
func (r *runner) headlessLogin(ctx context.Context, c *client.Client, k *keys, ttl time.Duration) (*api.LoginResponse, error) {
	verifier := oauth2.GenerateVerifier()
	host, _ := os.Hostname()
	if len(host) > 64 {
		host = host[:64]
	}
	da, err := c.DeviceAuthorize(ctx, &client.DeviceRequest{CSR: k.csr, SSHPublicKey: string(ssh.MarshalAuthorizedKey(k.sshPub)),
		TTLSeconds: int64(ttl / time.Second), Challenge: oauth2.S256ChallengeFromVerifier(verifier), Host: host})
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(r.stdio.Err, "To log in, open this address in a browser where you can log in to the fleet:\n  %s\n", da.VerificationURIComplete)
	fmt.Fprintf(r.stdio.Err, "and check that it shows the code %s (or open %s and enter the code).\n", da.UserCode, da.VerificationURI)
	fmt.Fprintf(r.stdio.Err, "Waiting for the approval (until %s)...\n", da.Expiry.Local().Format("15:04:05"))
	ticket, err := c.DeviceWait(ctx, da)
	if err != nil {
		return nil, err
	}
	resp, err := c.SSORedeem(ctx, &api.SSORedeemRequest{Ticket: ticket, CodeVerifier: verifier})
	if err != nil {
		return nil, ssoError(err)
	}
	return resp, nil
}

// openBrowser opens url in the user's browser: the program named by
// --browser or $BROWSER, else the system's opener.
func (r *runner) openBrowser(browser, url string) error {
	if browser == "" {
		browser = r.stdio.Getenv("BROWSER")
	}
	var cmd *exec.Cmd
	switch {
	case browser != "":
		cmd = exec.Command(browser, url)
	case runtime.GOOS == "darwin":
		cmd = exec.Command("open", url)
	case runtime.GOOS == "windows":
		cmd = exec.Command("rundll32", "url.dll,FileProtocolHandler", url)
	default:
		cmd = exec.Command("xdg-open", url)
	}
	cmd.Stdout, cmd.Stderr = io.Discard, io.Discard
	if err := cmd.Start(); err != nil {
		return err
	}
	go cmd.Wait()
	return nil
}

// ssoError adds what to do to a failed single sign-on step.
func ssoError(err error) error {
	if apiErr, ok := errors.AsType[*api.Error](err); ok {
		switch apiErr.Code {
		case api.CodeNotFound:
			return fmt.Errorf("%s; pick one with --auth=NAME", strings.TrimSuffix(apiErr.Message, "."))
		case api.CodeUnauthorized:
			return fmt.Errorf("%s", apiErr.Message)
		}
	}
	return err
}
