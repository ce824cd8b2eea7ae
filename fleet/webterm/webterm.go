// Package webterm is the terminal in the browser: the dashboard's page
// speaks to fleetd over a websocket, and fleetd is the SSH client of the
// session, with a certificate of the user's own issued for it.
//
// The session takes the broker's path (fleet/broker), like tsh ssh: the
// user's current roles authorise it, its start and end are recorded in the
// audit trail, it is registered as live (so it ends when access ends), and
// its stream rides the resumable layer, so a link blackout pauses the
// terminal (the page is told) and it resumes with nothing lost. The
// device's SSH server checks the certificate, the login and the fleet's
// identity header as for any session, and records it.
//
// The websocket carries the terminal's bytes in binary messages both ways,
// and JSON in text messages: {"type":"resize","cols":C,"rows":R} from the
// page; {"type":"status","state":"live"|"paused"} and {"type":"end",
// "message":...} from fleetd. fleetd pings the page; a page that stops
// answering for DeadAfter (a closed laptop, a lost network) ends the
// remote shell rather than leaving it running.
//
// Only fleet/... server packages import webterm.
package webterm

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	"golang.org/x/crypto/ssh"

	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/rbac"
	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/api"
)

// Defaults of Config.
const (
	DefaultCertTTL     = 8 * time.Hour
	DefaultPingEvery   = 10 * time.Second
	DefaultDeadAfter   = 30 * time.Second
	DefaultStatusEvery = time.Second
	DefaultPauseAfter  = 3 * time.Second
)

// CA issues the session's user certificate and knows the host CAs that
// vouch for devices (*ca.Authority).
type CA interface {
	SignUserSSH(pub ssh.PublicKey, user string, logins []string, ttl time.Duration) (*ssh.Certificate, error)
	HostCAKeys() []ssh.PublicKey
}

// Config configures a Term. Broker and CA are required.
type Config struct {
	Broker *broker.Broker
	CA     CA
	// CertTTL caps the session's certificate (and the session); it never
	// outlives the user's web session. Default DefaultCertTTL.
	CertTTL time.Duration
	// PingEvery is how often the page is pinged; DeadAfter how long it may
	// go without answering before the session ends. Defaults
	// DefaultPingEvery and DefaultDeadAfter.
	PingEvery, DeadAfter time.Duration
	// StatusEvery is how often the device's link is checked for the
	// page's status: the tunnel is up, and the device answers a keep-alive
	// request on the session's SSH connection (as OpenSSH's
	// ServerAliveInterval); default DefaultStatusEvery.
	StatusEvery time.Duration
	// PauseAfter is how long a keep-alive may go unanswered before the
	// page shows the terminal paused; default DefaultPauseAfter.
	PauseAfter time.Duration
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Term serves terminals. Create it with New; it is safe for concurrent
// use.
type Term struct {
	cfg Config
	log *slog.Logger
}

// New returns a Term for cfg.
func New(cfg Config) *Term {
	if cfg.CertTTL <= 0 {
		cfg.CertTTL = DefaultCertTTL
	}
	if cfg.PingEvery <= 0 {
		cfg.PingEvery = DefaultPingEvery
	}
	if cfg.DeadAfter <= 0 {
		cfg.DeadAfter = DefaultDeadAfter
	}
	if cfg.StatusEvery <= 0 {
		cfg.StatusEvery = DefaultStatusEvery
	}
	if cfg.PauseAfter <= 0 {
		cfg.PauseAfter = DefaultPauseAfter
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Term{cfg: cfg, log: cfg.Logger.With("component", "webterm")}
}

// Request is a terminal asked for by a logged-in user (the dashboard has
// checked the page's origin and CSRF token).
type Request struct {
	User    api.User
	Checker *rbac.Checker
	// Device and Login say where and as whom.
	Device, Login string
	// Expires is when the user's web session ends: the terminal ends then
	// at the latest.
	Expires    time.Time
	ClientAddr string
	// Cols and Rows are the terminal's size.
	Cols, Rows int
}

// message is a text message on the websocket.
type message struct {
	Type    string `json:"type"`
	Cols    int    `json:"cols,omitempty"`
	Rows    int    `json:"rows,omitempty"`
	State   string `json:"state,omitempty"`
	Message string `json:"message,omitempty"`
}

// Serve serves one terminal on the websocket request r: it authorises the
// session through the broker (a refusal is answered before the upgrade,
// with its reason), upgrades, connects and relays until the shell ends,
// the page goes, or the fleet ends the session.
func (t *Term) Serve(w http.ResponseWriter, r *http.Request, req Request) {
	b := t.cfg.Broker
	now := t.cfg.Now()
	expires := now.Add(t.cfg.CertTTL)
	if !req.Expires.IsZero() && req.Expires.Before(expires) {
		expires = req.Expires
	}
	ask := broker.Ask{Service: proto.ServiceSSH, Kind: "web", User: req.User, Checker: req.Checker, Device: req.Device,
		Login: req.Login, ClientAddr: req.ClientAddr, Expires: expires, Fields: map[string]string{"client": "web"}}
	g, err := b.Authorize(r.Context(), ask)
	if err != nil {
		var ref *broker.Refusal
		errors.As(err, &ref)
		http.Error(w, ref.Msg, refusalStatus(ref.Status))
		return
	}
	c, err := websocket.Accept(w, r, nil) // the page's own origin only
	if err != nil {
		t.log.Info("terminal websocket not opened", "err", err)
		return
	}
	c.SetReadLimit(1 << 20)
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	defer cancel()
	t.run(ctx, c, g, req, expires)
	c.CloseNow()
}

// run is the session: recorded and registered, connected, relayed. It
// returns why it ended ("" when the shell exited cleanly).
func (t *Term) run(ctx context.Context, c *websocket.Conn, g *broker.Grant, req Request, expires time.Time) string {
	b := t.cfg.Broker
	log := t.log.With("user", req.User.Name, "device", req.Device, "login", req.Login)
	var st broker.Stats
	send := func(m message) {
		j, _ := json.Marshal(m)
		wctx, wcancel := context.WithTimeout(ctx, min(t.cfg.DeadAfter, 5*time.Second))
		defer wcancel()
		c.Write(wctx, websocket.MessageText, j)
	}
	end := func(msg string) string {
		send(message{Type: "end", Message: msg})
		return msg
	}
	sess, err := b.Start(ctx, g, broker.StartOptions{})
	if err != nil {
		return end(err.Error())
	}
	// A session the device cannot take ends in an access.denied for it,
	// as for tsh ssh (fleet/httpapi's connect).
	conn, err := b.Open(ctx, g, "")
	if err != nil {
		var ref *broker.Refusal
		if !errors.As(err, &ref) {
			ref = &broker.Refusal{Status: broker.StatusNoAnswer, Msg: err.Error()}
		}
		sess.DoneSilently(ref.Msg)
		b.Deny(context.WithoutCancel(ctx), g.Ask, ref)
		return end(ref.Msg)
	}
	reason := ""
	defer func() { sess.Done(context.WithoutCancel(ctx), reason, st) }()
	counted := &countConn{Conn: conn}
	defer counted.Close()
	sess.OnEnd(func() { counted.Close(); c.CloseNow() })

	client, err := t.dial(counted, g, req, expires)
	if err != nil {
		reason = err.Error()
		if why := sess.Ending(); why != "" {
			reason = why
		}
		log.Info("terminal could not start", "err", err)
		return end("the terminal could not start: " + reason)
	}
	defer client.Close()
	// failed ends a session that did not start: why the fleet ended it,
	// if it did (the shell's start then fails with the device's EOF).
	failed := func(why string) string {
		reason = why
		if ending := sess.Ending(); ending != "" {
			reason = ending
		}
		return end(reason)
	}
	shell, err := client.NewSession()
	if err != nil {
		return failed("ssh: " + err.Error())
	}
	defer shell.Close()
	modes := ssh.TerminalModes{ssh.ECHO: 1, ssh.TTY_OP_ISPEED: 38400, ssh.TTY_OP_OSPEED: 38400}
	if err := shell.RequestPty("xterm-256color", max(req.Rows, 2), max(req.Cols, 2), modes); err != nil {
		return failed("ssh: pty: " + err.Error())
	}
	stdin, err := shell.StdinPipe()
	if err != nil {
		return failed(err.Error())
	}
	stdout, err := shell.StdoutPipe()
	if err != nil {
		return failed(err.Error())
	}
	shell.Stderr = nil // a PTY merges it into stdout
	if err := shell.Shell(); err != nil {
		return failed("ssh: shell: " + err.Error())
	}
	log.Info("terminal started", "session", sess.ID())
	send(message{Type: "status", State: "live"})

	// loops ends the loops below; the websocket's reads and writes use
	// ctx, since cancelling their context would close the websocket
	// before the page is told why the terminal ended.
	loops, stopLoops := context.WithCancel(ctx)
	defer stopLoops()
	var why atomic.Pointer[string]
	stop := func(s string) {
		why.CompareAndSwap(nil, &s)
		stopLoops()
	}
	var wg sync.WaitGroup
	// The page's keys and resizes to the shell, until the websocket
	// closes.
	wg.Go(func() {
		for {
			typ, data, err := c.Read(ctx)
			if err != nil {
				stop("the browser closed the terminal")
				return
			}
			if typ == websocket.MessageBinary {
				stdin.Write(data)
				continue
			}
			var m message
			if json.Unmarshal(data, &m) == nil && m.Type == "resize" && m.Cols > 1 && m.Rows > 1 && m.Cols <= 1000 && m.Rows <= 1000 {
				shell.WindowChange(m.Rows, m.Cols)
			}
		}
	})
	// The shell's output to the page.
	output := make(chan struct{})
	wg.Go(func() {
		defer close(output)
		buf := make([]byte, 32<<10)
		for {
			n, err := stdout.Read(buf)
			if n > 0 {
				wctx, wcancel := context.WithTimeout(ctx, t.cfg.DeadAfter)
				werr := c.Write(wctx, websocket.MessageBinary, buf[:n])
				wcancel()
				if werr != nil {
					stop(fmt.Sprintf("the browser did not take the output for %s", t.cfg.DeadAfter))
					return
				}
			}
			if err != nil {
				return
			}
		}
	})
	// Pings: a page that stops answering ends the session.
	wg.Go(func() {
		tick := time.NewTicker(t.cfg.PingEvery)
		defer tick.Stop()
		for {
			select {
			case <-loops.Done():
				return
			case <-tick.C:
			}
			pctx, pcancel := context.WithTimeout(ctx, t.cfg.DeadAfter)
			err := c.Ping(pctx)
			pcancel()
			if err != nil && loops.Err() == nil {
				stop(fmt.Sprintf("the browser did not answer for %s", t.cfg.DeadAfter))
				return
			}
		}
	})
	// The device's link, for the page's status: its tunnel, and an answer
	// to a keep-alive on the session's own SSH connection, which measures
	// the whole path (a blackout leaves the tunnel up for a while, and the
	// session's stream waits on the resumable layer meanwhile).
	wg.Go(func() {
		tick := time.NewTicker(t.cfg.StatusEvery)
		defer tick.Stop()
		paused := false
		var probe chan struct{} // closed when the keep-alive in flight is answered
		var sentAt time.Time
		for {
			select {
			case <-loops.Done():
				return
			case <-tick.C:
			}
			if probe != nil {
				select {
				case <-probe:
					probe = nil
				default:
				}
			}
			if probe == nil {
				probe, sentAt = make(chan struct{}), time.Now()
				// Answered, or failed when the connection closes: the
				// goroutine ends with the session.
				go func(done chan struct{}) {
					client.SendRequest("keepalive@remoteler.dev", true, nil)
					close(done)
				}(probe)
			}
			down := !b.Online(g.Session.DeviceID) || (probe != nil && time.Since(sentAt) > t.cfg.PauseAfter)
			if down == paused {
				continue
			}
			paused = down
			if paused {
				send(message{Type: "status", State: "paused",
					Message: "The link to the device is down: waiting for it to come back. Nothing you type or the device prints is lost."})
			} else {
				send(message{Type: "status", State: "live", Message: "Connected: the link to the device is back."})
			}
		}
	})
	exit := make(chan error, 1)
	go func() { exit <- shell.Wait() }()
	select {
	case err := <-exit:
		reason = exitReason(err)
		// What the shell printed last reaches the page before its end.
		select {
		case <-output:
		case <-time.After(time.Second):
		}
	case <-loops.Done():
		if p := why.Load(); p != nil {
			reason = *p
		}
	}
	pageGone := why.Load() != nil
	if ending := sess.Ending(); ending != "" {
		reason = ending
	}
	stopLoops()
	shell.Close()
	client.Close()
	counted.Close()
	st.Up, st.Down = counted.up.Load(), counted.down.Load()
	log.Info("terminal ended", "session", sess.ID(), "reason", reason)
	msg := reason
	if msg == "" {
		msg = "the shell exited"
	}
	if pageGone {
		c.CloseNow() // no one to tell
	} else {
		send(message{Type: "end", Message: msg})
		c.Close(websocket.StatusNormalClosure, truncate(msg, 100))
	}
	wg.Wait()
	return reason
}

// dial runs the SSH handshake on the device's stream, with a certificate
// for the user and login, valid until expires, and verifies the device's
// host certificate against the fleet's host CAs.
func (t *Term) dial(conn net.Conn, g *broker.Grant, req Request, expires time.Time) (*ssh.Client, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil, err
	}
	ttl := expires.Sub(t.cfg.Now())
	if ttl <= 0 {
		return nil, errors.New("your web session has ended: log in again")
	}
	cert, err := t.cfg.CA.SignUserSSH(signer.PublicKey(), req.User.Name, []string{req.Login}, ttl)
	if err != nil {
		return nil, fmt.Errorf("issue the session's certificate: %w", err)
	}
	certSigner, err := ssh.NewCertSigner(cert, signer)
	if err != nil {
		return nil, err
	}
	hosts := &ssh.CertChecker{IsHostAuthority: func(auth ssh.PublicKey, _ string) bool {
		for _, k := range t.cfg.CA.HostCAKeys() {
			if bytes.Equal(k.Marshal(), auth.Marshal()) {
				return true
			}
		}
		return false
	}}
	cc, chans, reqs, err := ssh.NewClientConn(conn, net.JoinHostPort(g.Device.Name, "22"), &ssh.ClientConfig{
		User:            req.Login,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(certSigner)},
		HostKeyCallback: hosts.CheckHostKey,
		HostKeyAlgorithms: []string{
			ssh.CertAlgoED25519v01, ssh.CertAlgoECDSA256v01, ssh.CertAlgoRSASHA512v01, ssh.CertAlgoRSASHA256v01,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("ssh: %w", err)
	}
	return ssh.NewClient(cc, chans, reqs), nil
}

// exitReason says how a shell ended: "" for a clean exit.
func exitReason(err error) string {
	var ee *ssh.ExitError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &ee):
		if ee.Signal() != "" {
			return "the shell was killed by signal " + ee.Signal()
		}
		return fmt.Sprintf("the shell exited with status %d", ee.ExitStatus())
	case errors.Is(err, io.EOF):
		return "the connection to the device closed"
	}
	var missing *ssh.ExitMissingError
	if errors.As(err, &missing) {
		return "the connection to the device closed"
	}
	return err.Error()
}

func refusalStatus(s broker.Status) int {
	switch s {
	case broker.StatusBadRequest:
		return http.StatusBadRequest
	case broker.StatusUnauthorized:
		return http.StatusUnauthorized
	case broker.StatusForbidden:
		return http.StatusForbidden
	case broker.StatusNotFound:
		return http.StatusNotFound
	case broker.StatusOffline, broker.StatusUnavailable:
		return http.StatusServiceUnavailable
	case broker.StatusInternal:
		return http.StatusInternalServerError
	}
	return http.StatusBadGateway
}

// truncate cuts s to at most n bytes, on a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// countConn counts the bytes a connection carries: up is written to the
// device, down read from it.
type countConn struct {
	net.Conn
	up, down atomic.Int64
}

func (c *countConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.down.Add(int64(n))
	return n, err
}

func (c *countConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.up.Add(int64(n))
	return n, err
}
