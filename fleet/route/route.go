// Package route reaches devices wherever their tunnel is: on this fleetd
// replica (fleet/tunnelsrv), or on another, over the authenticated
// connection between replicas (fleet/peer). Where a device is comes from
// fleet/presence. A Router is what the broker, the HTTPS API and OTA hold
// in place of the tunnel server: the same methods, for every device of the
// fleet.
//
// A stream to a device on replica A opened by replica B is a peer stream
// from B to A, spliced on A with the tunnel stream A opens. B, where the
// user is, holds the session's resume state; A only relays its frames. So
// when A dies, or the device moves, the session lives on: the agent
// re-attaches it on its next connection, to whichever replica that is, and
// a replica that does not hold the session relays the agent's resume to
// the one that does (RelayResume asks every running replica; the holder
// answers). A session whose user and device are on one replica is held
// there, and dies with it.
//
// Opening waits, as the tunnel server does, for a device that is moving:
// when A cannot be reached (it died, and its presence entries have not
// expired yet) or no longer holds the device, the Router waits for the
// device's entry to change and tries again, as long as the caller's
// context allows.
//
// Register adds the peer endpoints (open a stream, send a control message,
// disconnect, resume a session) to the replica's peer handler. They act on
// this replica's own tunnels and sessions only: a stream is never carried
// over two hops.
//
// Only fleet/... server packages import route.
package route

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"remoteler.dev/edge/fleet/broker"
	"remoteler.dev/edge/fleet/peer"
	"remoteler.dev/edge/fleet/presence"
	"remoteler.dev/edge/fleet/tunnelsrv"
	"remoteler.dev/edge/proto"
)

// Local is this replica's tunnel server (*tunnelsrv.Server).
type Local interface {
	Open(ctx context.Context, deviceID string, h *proto.StreamHeader) (net.Conn, error)
	OpenTransport(ctx context.Context, deviceID string, h *proto.StreamHeader) (net.Conn, error)
	OpenVia(ctx context.Context, deviceID string, h *proto.StreamHeader, dial func(context.Context, *proto.StreamHeader) (net.Conn, string, error)) (net.Conn, error)
	ResumeRelayed(deviceID string, req *proto.Resume, accept func() (net.Conn, error)) (bool, error)
	Send(deviceID string, m proto.Message) error
	Online(deviceID string) bool
	Info(deviceID string) (tunnelsrv.Info, bool)
	Count() int
	Disconnect(deviceID, reason string)
	EndReason(err error) string
}

// Config configures a Router. Every field but Logger is required.
type Config struct {
	Local    Local
	Presence *presence.Registry
	Peers    *peer.Node
	// Logger receives logs; nil discards them.
	Logger *slog.Logger
}

// Router reaches devices on any replica. Create it with New.
type Router struct {
	cfg Config
	log *slog.Logger
}

// New returns a Router for cfg.
func New(cfg Config) *Router {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Router{cfg: cfg, log: cfg.Logger.With("component", "route")}
}

// Peer endpoints.
const (
	// pathOpen: the holder keeps the session's resume state (replicas
	// before sessions outlived them call it, and answer only it).
	pathOpen = "/peer/v1/open"
	// pathOpenRelay: the caller keeps it, the holder relays.
	pathOpenRelay  = "/peer/v1/open-relay"
	pathSend       = "/peer/v1/send"
	pathDisconnect = "/peer/v1/disconnect"
	pathResume     = "/peer/v1/resume"
)

// where returns the replica holding deviceID's tunnel when it is another
// replica; ok is false when the device is here or nowhere known.
func (r *Router) where(deviceID string) (presence.Entry, peer.Target, bool) {
	e, found := r.cfg.Presence.Lookup(deviceID)
	if !found || e.Replica == r.cfg.Presence.Self().ID {
		return e, peer.Target{}, false
	}
	rep, ok := r.cfg.Presence.Replica(e.Replica)
	if !ok {
		// Its replica is gone: the entry goes with its lease.
		return e, peer.Target{ID: e.Replica}, true
	}
	return e, peer.Target{ID: rep.ID, Addr: rep.Addr}, true
}

// Open opens a stream down deviceID's tunnel, on whichever replica holds
// it (see tunnelsrv.Server.Open for what the stream is). A device on no
// replica gets the local tunnel server's answer: offline, or the stream
// once a device that is reconnecting is back. The session of a stream to
// a device on another replica is held here (see the package comment).
func (r *Router) Open(ctx context.Context, deviceID string, h *proto.StreamHeader) (net.Conn, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	if _, _, remote := r.where(deviceID); !remote {
		return r.cfg.Local.Open(ctx, deviceID, h)
	}
	conn, err := r.cfg.Local.OpenVia(ctx, deviceID, h, func(ctx context.Context, hdr *proto.StreamHeader) (net.Conn, string, error) {
		return r.reach(ctx, deviceID, hdr, pathOpenRelay)
	})
	if errors.Is(err, errOldPeer) {
		// The device's replica runs an fleetd from before relayed
		// sessions (a rolling upgrade): it holds the session.
		conn, _, err = r.reach(ctx, deviceID, h, pathOpen)
	}
	return conn, err
}

// OpenTransport opens a raw stream down deviceID's tunnel, on whichever
// replica holds it (see tunnelsrv.Server.OpenTransport): the session's
// resume state is held by the caller, or by the user's client (a
// user-held session, fleet/broker), and the stream only carries its
// frames. It waits for a device that is moving as Open does.
func (r *Router) OpenTransport(ctx context.Context, deviceID string, h *proto.StreamHeader) (net.Conn, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	conn, _, err := r.reach(ctx, deviceID, h, pathOpenRelay)
	return conn, err
}

// headerBoot, in the answer to pathOpenRelay, is the boot ID of the agent
// that accepted the stream.
const headerBoot = "X-Agent-Boot"

// errOldPeer: the peer does not know pathOpenRelay.
var errOldPeer = errors.New("route: the device's replica does not relay sessions (an older fleetd)")

// reach opens h's stream to deviceID with path on the replica holding its
// tunnel, or here if the device turns out to be here: a relayed stream
// (pathOpenRelay: the raw tunnel stream, and the boot ID of the agent
// that took it) or a held session (pathOpen).
func (r *Router) reach(ctx context.Context, deviceID string, h *proto.StreamHeader, path string) (net.Conn, string, error) {
	first, err := proto.Marshal(h)
	if err != nil {
		return nil, "", fmt.Errorf("route: %w", err)
	}
	for {
		changed := r.cfg.Presence.Changes()
		e, t, remote := r.where(deviceID)
		if !remote {
			if path == pathOpenRelay {
				conn, err := r.cfg.Local.OpenTransport(ctx, deviceID, h)
				info, _ := r.cfg.Local.Info(deviceID)
				return conn, info.Boot, err
			}
			conn, err := r.cfg.Local.Open(ctx, deviceID, h)
			return conn, "", err
		}
		var err error
		if t.Addr == "" {
			err = fmt.Errorf("replica %s holding the device is gone", t.ID)
		} else {
			var s *peer.Stream
			s, err = r.cfg.Peers.Stream(ctx, t, path, openQuery(ctx, deviceID), first)
			if err == nil {
				return s, s.Header.Get(headerBoot), nil
			}
			if pe, ok := refusal(err); ok {
				return nil, "", pe
			}
			if u, ok := unreachable(err); ok {
				// Its replica has the device as offline (silent too
				// long), or waited for it in vain.
				return nil, "", fmt.Errorf("%w (on replica %s)", u, e.Replica)
			}
			if pe, ok := errors.AsType[*peer.Error](err); ok && pe.Status == http.StatusNotFound && path == pathOpenRelay {
				return nil, "", errOldPeer
			}
		}
		if ctx.Err() != nil {
			return nil, "", fmt.Errorf("route: open a stream to %s on replica %s: %w", deviceID, t.ID, err)
		}
		// The replica died: wait for the device's entry to change (it
		// reconnects elsewhere, or its old replica's lease ends) and go
		// again.
		r.log.Debug("device's replica did not answer; waiting for the device to move", "device_id", deviceID, "replica", t.ID, "err", err)
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, "", fmt.Errorf("route: open a stream to %s on replica %s: %w (and the device did not move in time)", deviceID, t.ID, err)
		}
	}
}

// RelayResume carries conn, a device's resume stream for a session this
// replica does not hold (req already read from it), to the running
// replica that holds it, and relays the stream until either side ends it.
// It reports false, having written nothing, when no replica took the
// session, with an error when some replica could not be asked (it may
// hold it). Every running replica is asked at once: only the holder takes
// the stream, the others answer at once that they do not hold it.
func (r *Router) RelayResume(ctx context.Context, deviceID string, req *proto.Resume, conn net.Conn) (bool, error) {
	first, err := proto.Marshal(req)
	if err != nil {
		return false, fmt.Errorf("route: %w", err)
	}
	self := r.cfg.Presence.Self().ID
	var targets []peer.Target
	for _, rep := range r.cfg.Presence.Replicas() {
		if rep.ID != self && rep.Addr != "" {
			targets = append(targets, peer.Target{ID: rep.ID, Addr: rep.Addr})
		}
	}
	type taken struct {
		s   *peer.Stream
		id  string
		err error // the replica could not be asked
	}
	ch := make(chan taken, len(targets))
	octx, cancel := context.WithTimeout(ctx, resumeAskTimeout)
	for _, t := range targets {
		go func() {
			s, err := r.cfg.Peers.Stream(octx, t, pathResume, url.Values{"device": {deviceID}}, first)
			if pe, ok := errors.AsType[*peer.Error](err); ok && pe.Status == http.StatusNotFound {
				err = nil // it does not hold the session
			} else if err != nil {
				r.log.Debug("a replica did not answer a relayed resume", "device_id", deviceID, "replica", t.ID, "err", err)
			}
			ch <- taken{s, t.ID, err}
		}()
	}
	var won taken
	var unasked error
	left := len(targets)
	for ; left > 0 && won.s == nil; left-- {
		won = <-ch
		if won.err != nil {
			unasked = fmt.Errorf("route: replica %s: %w", won.id, won.err)
		}
	}
	go func() {
		// The other answers: refusals, or (a holder cannot be two) a
		// stream to drop.
		for ; left > 0; left-- {
			if t := <-ch; t.s != nil {
				t.s.Close()
			}
		}
		cancel()
	}()
	if won.s == nil {
		return false, unasked
	}
	defer won.s.Close()
	defer conn.Close()
	r.log.Debug("relaying a session's resume to the replica holding it", "device_id", deviceID, "session", req.SessionID, "replica", won.id)
	broker.Splice(conn, nil, won.s, nil)
	return true, nil
}

// resumeAskTimeout bounds RelayResume's wait for the replicas' answers (a
// dead replica's address may not even refuse).
const resumeAskTimeout = 5 * time.Second

// openQuery passes the device and how long the caller waits.
func openQuery(ctx context.Context, deviceID string) url.Values {
	q := url.Values{"device": {deviceID}}
	if dl, ok := ctx.Deadline(); ok {
		q.Set("wait_ms", strconv.FormatInt(max(time.Until(dl).Milliseconds(), 1), 10))
	}
	return q
}

// errOffline is a peer's answer that it does not hold the device.
var errOffline = errors.New("route: the replica does not hold the device")

// answer is a peer's refusal of a stream or message, as JSON.
type answer struct {
	// Code and Message are a refusal of the device (proto.Error).
	Code    proto.ErrorCode `json:"code,omitempty"`
	Message string          `json:"message"`
	// Offline: the replica does not hold the device, or has it as
	// silent too long.
	Offline bool `json:"offline,omitempty"`
	// NoAnswer: the replica holds the device, which did not take the
	// stream in time.
	NoAnswer bool `json:"no_answer,omitempty"`
	// LastHeard is when the replica last heard from the device (Unix
	// milliseconds), with Offline or NoAnswer; zero: never.
	LastHeard int64 `json:"last_heard,omitempty"`
}

// lastHeard is when err (a tunnel server's) says the device was last
// heard from, as answer.LastHeard.
func lastHeard(err error) int64 {
	if lh, ok := errors.AsType[interface {
		error
		LastHeardAt() time.Time
	}](err); ok && !lh.LastHeardAt().IsZero() {
		return lh.LastHeardAt().UnixMilli()
	}
	return 0
}

// heardAt is answer.LastHeard as a time.
func heardAt(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

const statusRefused = http.StatusConflict

// refusal turns a peer's answer into the error to return: a *proto.Error
// (ok) for a refusal by the device; errOffline (not ok) for a replica
// without the device.
func refusal(err error) (*proto.Error, bool) {
	var pe *peer.Error
	if !errors.As(err, &pe) || pe.Status != statusRefused {
		return nil, false
	}
	var a answer
	if json.Unmarshal([]byte(pe.Message), &a) != nil || a.Offline || a.NoAnswer {
		return nil, false
	}
	return &proto.Error{Code: a.Code, Message: a.Message}, true
}

// unreachable turns a peer's answer that the device is offline, or did
// not answer, into the tunnel server's error with when the peer last heard
// from it; ok is false for other answers.
func unreachable(err error) (error, bool) {
	var pe *peer.Error
	var a answer
	if !errors.As(err, &pe) || pe.Status != statusRefused || json.Unmarshal([]byte(pe.Message), &a) != nil {
		return nil, false
	}
	switch {
	case a.Offline:
		return &tunnelsrv.OfflineError{LastHeard: heardAt(a.LastHeard)}, true
	case a.NoAnswer:
		return &tunnelsrv.NoAnswerError{LastHeard: heardAt(a.LastHeard), Err: errors.New(a.Message)}, true
	}
	return nil, false
}

func offlineOr(err error) error {
	if u, ok := unreachable(err); ok && errors.Is(u, tunnelsrv.ErrOffline) {
		return errOffline
	}
	return err
}

// Send sends m to deviceID on its control stream, on whichever replica
// holds its tunnel.
func (r *Router) Send(deviceID string, m proto.Message) error {
	_, t, remote := r.where(deviceID)
	if !remote {
		return r.cfg.Local.Send(deviceID, m)
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return fmt.Errorf("route: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := r.cfg.Peers.Do(ctx, t, http.MethodPost, pathSend, url.Values{"device": {deviceID}}, b); err != nil {
		if errors.Is(offlineOr(err), errOffline) {
			return tunnelsrv.ErrOffline
		}
		return fmt.Errorf("route: send %s to %s on replica %s: %w", m.Kind(), deviceID, t.ID, err)
	}
	return nil
}

// Online reports whether deviceID holds a tunnel to any replica.
func (r *Router) Online(deviceID string) bool {
	return r.cfg.Presence.Online(deviceID) || r.cfg.Local.Online(deviceID)
}

// Info describes deviceID's tunnel: in full for a tunnel on this replica;
// the address and since when for one on another.
func (r *Router) Info(deviceID string) (tunnelsrv.Info, bool) {
	e, _, remote := r.where(deviceID)
	if !remote {
		return r.cfg.Local.Info(deviceID)
	}
	// Its replica holds it live; that replica judges its silences.
	info := tunnelsrv.Info{Since: e.Since, Online: !e.Silent}
	if a, err := net.ResolveUDPAddr("udp", e.Addr); err == nil {
		info.Addr = a
	} else {
		info.Addr = remoteAddr(e.Addr)
	}
	return info, true
}

type remoteAddr string

func (a remoteAddr) Network() string { return "udp" }
func (a remoteAddr) String() string  { return string(a) }

// Replica returns the ID of the replica holding deviceID's tunnel, or "".
func (r *Router) Replica(deviceID string) string {
	if e, ok := r.cfg.Presence.Lookup(deviceID); ok {
		return e.Replica
	}
	if r.cfg.Local.Online(deviceID) {
		return r.cfg.Presence.Self().ID
	}
	return ""
}

// EndReason says, in words for the user, why a brokered session whose
// device side failed with err ended (see tunnelsrv.Server.EndReason).
func (r *Router) EndReason(err error) string { return r.cfg.Local.EndReason(err) }

// Count returns how many devices hold a tunnel to some replica.
func (r *Router) Count() int { return max(r.cfg.Presence.Count(), r.cfg.Local.Count()) }

// Disconnect closes deviceID's tunnel, here and on the replica that holds
// it, with reason, and ends the sessions held for it on every replica
// (a session is held where its user landed).
func (r *Router) Disconnect(deviceID, reason string) {
	r.cfg.Local.Disconnect(deviceID, reason)
	self := r.cfg.Presence.Self().ID
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, rep := range r.cfg.Presence.Replicas() {
		if rep.ID == self || rep.Addr == "" {
			continue
		}
		t := peer.Target{ID: rep.ID, Addr: rep.Addr}
		wg.Go(func() {
			if _, err := r.cfg.Peers.Do(ctx, t, http.MethodPost, pathDisconnect, url.Values{"device": {deviceID}, "reason": {reason}}, nil); err != nil {
				r.log.Warn("could not disconnect a device on a replica", "device_id", deviceID, "replica", t.ID, "err", err)
			}
		})
	}
	wg.Wait()
}

// Register adds the peer endpoints to mux.
func (r *Router) Register(mux *http.ServeMux) {
	mux.HandleFunc("POST "+pathOpen, r.serveOpen)
	mux.HandleFunc("POST "+pathOpenRelay, r.serveOpenRelay)
	mux.HandleFunc("POST "+pathResume, r.serveResume)
	mux.HandleFunc("POST "+pathSend, r.serveSend)
	mux.HandleFunc("POST "+pathDisconnect, r.serveDisconnect)
}

func writeAnswer(w http.ResponseWriter, a answer) {
	b, _ := json.Marshal(a)
	http.Error(w, string(b), statusRefused)
}

// serveOpen opens a stream down a device's tunnel here for a peer, holding
// its session, and splices it with the peer's stream.
func (r *Router) serveOpen(w http.ResponseWriter, req *http.Request) {
	r.serveStream(w, req, r.cfg.Local.Open)
}

// serveOpenRelay opens a raw stream down a device's tunnel here for a
// peer, which holds its session, and splices it with the peer's stream.
func (r *Router) serveOpenRelay(w http.ResponseWriter, req *http.Request) {
	r.serveStream(w, req, r.cfg.Local.OpenTransport)
}

func (r *Router) serveStream(w http.ResponseWriter, req *http.Request, open func(context.Context, string, *proto.StreamHeader) (net.Conn, error)) {
	id := req.URL.Query().Get("device")
	br := proto.NewReader(req.Body)
	h, err := proto.ReadHeader(br)
	if err != nil {
		http.Error(w, "bad stream header: "+err.Error(), http.StatusBadRequest)
		return
	}
	wait := 30 * time.Second
	if ms, err := strconv.ParseInt(req.URL.Query().Get("wait_ms"), 10, 64); err == nil && ms > 0 {
		wait = min(time.Duration(ms)*time.Millisecond, 2*time.Minute)
	}
	ctx, cancel := context.WithTimeout(req.Context(), wait)
	dev, err := open(ctx, id, h)
	cancel()
	if err != nil {
		var pe *proto.Error
		switch {
		case errors.As(err, &pe):
			writeAnswer(w, answer{Code: pe.Code, Message: pe.Message})
		case errors.Is(err, tunnelsrv.ErrOffline):
			writeAnswer(w, answer{Offline: true, Message: err.Error(), LastHeard: lastHeard(err)})
		case errors.Is(err, tunnelsrv.ErrNoAnswer):
			writeAnswer(w, answer{NoAnswer: true, Message: err.Error(), LastHeard: lastHeard(err)})
		default:
			http.Error(w, err.Error(), http.StatusBadGateway)
		}
		return
	}
	defer dev.Close()
	if info, ok := r.cfg.Local.Info(id); ok && info.Boot != "" {
		w.Header().Set(headerBoot, info.Boot)
	}
	s, err := peer.Accept(w, req, br)
	if err != nil {
		return
	}
	defer s.Close()
	r.log.Debug("stream opened for a peer", "device_id", id, "caller", peer.Caller(req.Context()), "service", h.Service, "session", h.SessionID)
	broker.Splice(s, nil, dev, nil)
}

func (r *Router) serveSend(w http.ResponseWriter, req *http.Request) {
	id := req.URL.Query().Get("device")
	b, err := io.ReadAll(io.LimitReader(req.Body, proto.MaxControlFrame+16))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	m, err := proto.Unmarshal(b, proto.MaxControlFrame)
	if err != nil {
		http.Error(w, "bad message: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := r.cfg.Local.Send(id, m); err != nil {
		if errors.Is(err, tunnelsrv.ErrOffline) {
			writeAnswer(w, answer{Offline: true, Message: err.Error()})
			return
		}
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (r *Router) serveDisconnect(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	r.cfg.Local.Disconnect(q.Get("device"), q.Get("reason"))
	w.WriteHeader(http.StatusNoContent)
}

// serveResume re-attaches a session held here to a device's resume stream
// that the peer relays (the peer holds the device's tunnel); 404 when this
// replica does not hold the session.
func (r *Router) serveResume(w http.ResponseWriter, req *http.Request) {
	id := req.URL.Query().Get("device")
	br := proto.NewReader(req.Body)
	m, err := proto.ReadMsg(br, proto.MaxHeaderFrame)
	if err != nil {
		http.Error(w, "bad resume: "+err.Error(), http.StatusBadRequest)
		return
	}
	res, ok := m.(*proto.Resume)
	if !ok {
		http.Error(w, "stream starts with "+m.Kind().String()+", want resume", http.StatusBadRequest)
		return
	}
	done := make(chan struct{})
	var cn *closeNotify
	held, err := r.cfg.Local.ResumeRelayed(id, res, func() (net.Conn, error) {
		s, err := peer.Accept(w, req, br)
		if err != nil {
			return nil, err
		}
		cn = &closeNotify{Stream: s, done: done}
		return cn, nil
	})
	if !held {
		http.Error(w, "this replica holds no such session", http.StatusNotFound)
		return
	}
	if err != nil {
		r.log.Warn("relayed resume refused", "device_id", id, "session", res.SessionID, "caller", peer.Caller(req.Context()), "err", err)
		if cn != nil {
			cn.Abort()
		}
		return
	}
	// The stream is the session's transport until the session drops it;
	// once the handler returns, it must not be written to, so a stream
	// whose request ended is closed (failing the session's writes, which
	// then waits for the agent's next resume) before returning.
	select {
	case <-done:
	case <-req.Context().Done():
		cn.Abort()
	}
}

// closeNotify is a peer stream that says when it is closed, once it can
// no longer be written to.
type closeNotify struct {
	*peer.Stream
	once sync.Once
	done chan struct{}
}

func (c *closeNotify) Close() error {
	err := c.Stream.Close()
	c.once.Do(func() { close(c.done) })
	return err
}

// Abort is peer.Stream's Abort, then Close's notice.
func (c *closeNotify) Abort() {
	c.Stream.Abort()
	c.once.Do(func() { close(c.done) })
}
