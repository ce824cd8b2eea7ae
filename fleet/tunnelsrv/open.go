package tunnelsrv

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/quic-go/quic-go"

	"remoteler.dev/edge/proto"
	"remoteler.dev/edge/proto/quicconn"
	"remoteler.dev/edge/proto/resume"
)

// ErrOffline is returned by Open for a device with no live tunnel, or one
// that has been silent too long (see presence.go); the error is an
// *OfflineError, which says when the device was last heard.
var ErrOffline = errors.New("tunnelsrv: device is offline")

// OfflineError says that a device is offline and when the fleet last
// heard from it. It matches ErrOffline.
type OfflineError struct {
	// LastHeard is zero when this fleet has not heard from the device since
	// it started.
	LastHeard time.Time
}

func (e *OfflineError) Error() string {
	if e.LastHeard.IsZero() {
		return ErrOffline.Error()
	}
	return fmt.Sprintf("%v (last heard %s)", ErrOffline, e.LastHeard.UTC().Format(time.RFC3339))
}

// Is makes errors.Is(err, ErrOffline) true.
func (e *OfflineError) Is(target error) bool { return target == ErrOffline }

// LastHeardAt is LastHeard (the broker reads it through an interface).
func (e *OfflineError) LastHeardAt() time.Time { return e.LastHeard }

// reconnectWait is how long Open waits for a device whose agent closed its
// connection itself (it is restarting, or redialling after an outage)
// before calling it offline: the agent restarts within seconds (its
// systemd unit waits 5 s after a crash), and a user's command started
// meanwhile should go through, not fail.
const reconnectWait = 15 * time.Second

// Open opens a stream down deviceID's tunnel, sends h (with a fresh resume
// secret) and waits for the agent's acceptance. A refusal comes back as
// *proto.Error. The returned conn survives the device's reconnects for up
// to the hold time; it implements CloseWrite.
//
// A device that is offline (no connection, or silent for a few keep-alive
// periods) gets an *OfflineError at once. A device that is coming back
// gets the stream on its next connection: when the connection dies while
// the stream is being opened (the agent crashed and was restarted, or it is
// replacing the connection after an outage), when the agent refuses the
// stream because it is stopping, or when its agent closed the connection
// moments ago, Open waits for the next connection (up to reconnectWait for
// one that is gone) and tries again, as long as ctx allows (30 s without a
// deadline).
func (s *Server) Open(ctx context.Context, deviceID string, h *proto.StreamHeader) (net.Conn, error) {
	return s.openLoop(ctx, deviceID, func(ctx context.Context, dc *deviceConn) (net.Conn, error) {
		return s.open(ctx, deviceID, dc, h)
	})
}

// OpenTransport is Open without the session: it opens the stream, sends h
// (whose Secret the caller chose) and waits for the agent's acceptance,
// waiting as Open does for a device that is coming back, and returns the
// raw tunnel stream. The caller holds the session's resume state, and the
// stream carries its frames: another replica's session (fleet/route), or
// this one's through OpenVia. A stream that breaks is not replaced here:
// the agent re-attaches the session, wherever its next connection is.
func (s *Server) OpenTransport(ctx context.Context, deviceID string, h *proto.StreamHeader) (net.Conn, error) {
	if len(h.Secret) == 0 {
		return nil, proto.Errorf(proto.CodeBadRequest, "a relayed stream needs its session's resume secret")
	}
	return s.openLoop(ctx, deviceID, func(ctx context.Context, dc *deviceConn) (net.Conn, error) {
		return s.handshake(ctx, dc, h)
	})
}

// OpenVia is Open for a device whose tunnel another replica holds: the
// session (its resume state, and the secret the agent re-attaches it with)
// is held here, and dial brings its first transport, a stream that has
// been opened with the header it is given and accepted (another replica's
// OpenTransport, relayed), and the boot ID of the agent that accepted it
// ("" if unknown): the session ends when another boot of the agent
// connects (DeviceBoot), since the agent's side is gone.
//
// When the tunnel's replica dies, or the device moves, the agent resumes
// the session on its next connection, wherever that is; a replica that
// does not hold it relays the resume here (RelayResumes). The session
// therefore outlives the replica that held the device's tunnel.
func (s *Server) OpenVia(ctx context.Context, deviceID string, h *proto.StreamHeader, dial func(context.Context, *proto.StreamHeader) (net.Conn, string, error)) (net.Conn, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	hdr, err := s.prepare(deviceID, h)
	if err != nil {
		return nil, err
	}
	tr, boot, err := dial(ctx, hdr)
	if err != nil {
		return nil, err
	}
	return s.hold(deviceID, boot, hdr, tr, tr.LocalAddr(), tr.RemoteAddr())
}

// openLoop runs open on deviceID's connection, waiting for a device that
// is coming back and trying again as Open says.
func (s *Server) openLoop(ctx context.Context, deviceID string, open func(context.Context, *deviceConn) (net.Conn, error)) (net.Conn, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	var lastErr error
	for {
		s.mu.Lock()
		dc, changed, gone := s.conns[deviceID], s.changed, s.left[deviceID]
		s.mu.Unlock()
		if dc == nil {
			wait := gone.at.Add(reconnectWait).Sub(s.cfg.Now())
			if !gone.returning || wait <= 0 {
				return nil, &OfflineError{LastHeard: gone.lastHeard}
			}
			s.log.Debug("device is reconnecting; waiting for it", "device_id", deviceID, "for", wait.Round(time.Millisecond))
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, s.gaveUp(lastErr, gone.lastHeard)
			case <-changed:
			case <-t.C:
			}
			t.Stop()
			continue
		}
		if !s.online(dc) {
			return nil, &OfflineError{LastHeard: s.lastHeard(dc)}
		}
		conn, err := open(ctx, dc)
		if err == nil {
			return conn, nil
		}
		lastErr = err
		var pe *proto.Error
		switch {
		case errors.As(err, &pe) && pe.Code == proto.CodeGoingAway:
			// The agent is stopping: its next connection will serve.
			s.log.Debug("agent is stopping; waiting for its next connection", "device_id", deviceID)
			select {
			case <-ctx.Done():
				return nil, s.gaveUp(err, s.lastHeard(dc))
			case <-changed:
			case <-dc.qc.Context().Done():
			}
		case errors.As(err, &pe):
			return nil, err
		case connDied(err):
			// The connection died under us; quic-go may close the streams
			// a moment before the connection's context says so.
			s.log.Debug("device connection ended while opening a stream; waiting for the next", "device_id", deviceID, "err", err)
			select {
			case <-ctx.Done():
				return nil, s.gaveUp(err, s.lastHeard(dc))
			case <-dc.qc.Context().Done():
			}
		case ctx.Err() != nil:
			return nil, s.gaveUp(err, s.lastHeard(dc))
		default:
			return nil, err
		}
	}
}

// NoAnswerError says that a device did not take a stream in time.
type NoAnswerError struct {
	// LastHeard is when the fleet last heard from the device; zero if never.
	LastHeard time.Time
	// Err is the last failure, if any.
	Err error
}

func (e *NoAnswerError) Error() string {
	heard := "never heard from"
	if !e.LastHeard.IsZero() {
		heard = "last heard " + e.LastHeard.UTC().Format(time.RFC3339)
	}
	if e.Err == nil {
		return "tunnelsrv: the device did not come back in time (" + heard + ")"
	}
	return fmt.Sprintf("tunnelsrv: the device did not answer in time (%s): %v", heard, e.Err)
}

func (e *NoAnswerError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrNoAnswer) true.
func (e *NoAnswerError) Is(target error) bool { return target == ErrNoAnswer }

// LastHeardAt is LastHeard (the broker reads it through an interface).
func (e *NoAnswerError) LastHeardAt() time.Time { return e.LastHeard }

// ErrNoAnswer is what every *NoAnswerError is (errors.Is).
var ErrNoAnswer = errors.New("tunnelsrv: the device did not answer in time")

// gaveUp says that the device did not answer in time.
func (s *Server) gaveUp(err error, lastHeard time.Time) error {
	return &NoAnswerError{LastHeard: lastHeard, Err: err}
}

// connDied reports whether err comes from the QUIC connection ending
// rather than from the stream.
func connDied(err error) bool {
	var ae *quic.ApplicationError
	var ie *quic.IdleTimeoutError
	var te *quic.TransportError
	var sr *quic.StatelessResetError
	return errors.As(err, &ae) || errors.As(err, &ie) || errors.As(err, &te) || errors.As(err, &sr) || errors.Is(err, net.ErrClosed)
}

func (s *Server) open(ctx context.Context, deviceID string, dc *deviceConn, h *proto.StreamHeader) (net.Conn, error) {
	hdr, err := s.prepare(deviceID, h)
	if err != nil {
		return nil, err
	}
	conn, err := s.handshake(ctx, dc, hdr)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	boot := s.boots[deviceID]
	s.mu.Unlock()
	return s.hold(deviceID, boot, hdr, conn, dc.qc.LocalAddr(), dc.qc.RemoteAddr())
}

// prepare checks that deviceID may have one more session with h's ID, and
// returns h with a fresh resume secret.
func (s *Server) prepare(deviceID string, h *proto.StreamHeader) (*proto.StreamHeader, error) {
	s.mu.Lock()
	full := len(s.sessions[deviceID]) >= maxSessionsPerDevice
	dup := s.sessions[deviceID][h.SessionID] != nil
	s.mu.Unlock()
	if full {
		return nil, proto.Errorf(proto.CodeUnavailable, "device has %d sessions open, the most it may", maxSessionsPerDevice)
	}
	if dup || h.SessionID == "" {
		return nil, proto.Errorf(proto.CodeConflict, "session id %q is empty or in use", h.SessionID)
	}
	hdr := *h
	hdr.Secret = make([]byte, 32)
	rand.Read(hdr.Secret)
	return &hdr, nil
}

// handshake opens a stream on dc, sends hdr and waits for the agent's
// acceptance; it returns the raw stream.
func (s *Server) handshake(ctx context.Context, dc *deviceConn, hdr *proto.StreamHeader) (net.Conn, error) {
	st, err := dc.qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, fmt.Errorf("tunnelsrv: open stream: %w", err)
	}
	r := proto.NewReader(st)
	conn := quicconn.New(dc.qc, st, r)
	if err := proto.WriteMsg(conn, hdr); err != nil {
		conn.Close()
		return nil, fmt.Errorf("tunnelsrv: send stream header: %w", err)
	}
	// Wait as long as the caller allows: an idle device behind a NAT that
	// forgot it is reached at its next keep-alive.
	deadline, _ := ctx.Deadline()
	st.SetReadDeadline(deadline)
	if err := proto.ReadAccept(r); err != nil {
		conn.Close()
		return nil, err
	}
	st.SetReadDeadline(time.Time{})
	return conn, nil
}

// hold registers the session hdr opened for deviceID, its agent's boot
// being boot, with tr as its first transport, and returns its resumable
// conn.
func (s *Server) hold(deviceID, boot string, hdr *proto.StreamHeader, tr net.Conn, local, remote net.Addr) (net.Conn, error) {
	ss := &session{id: hdr.SessionID, secret: hdr.Secret, tag: proto.SessionTag(hdr.Secret), boot: boot}
	ss.conn = resume.New(resume.Config{
		Buffer: s.cfg.SessionBuffer, Hold: s.cfg.SessionHold, Budget: s.budget,
		LocalAddr: local, RemoteAddr: remote,
		OnDone: func(error) {
			s.mu.Lock()
			defer s.mu.Unlock()
			if m := s.sessions[deviceID]; m[ss.id] == ss {
				delete(m, ss.id)
				if len(m) == 0 {
					delete(s.sessions, deviceID)
				}
			}
		},
	})
	s.mu.Lock()
	if s.sessions[deviceID][ss.id] != nil {
		// Taken since prepare checked.
		s.mu.Unlock()
		err := proto.Errorf(proto.CodeConflict, "session id %q is in use", ss.id)
		ss.conn.Abort(err)
		tr.Close()
		return nil, err
	}
	if s.sessions[deviceID] == nil {
		s.sessions[deviceID] = map[string]*session{}
	}
	s.sessions[deviceID][ss.id] = ss
	select {
	case s.sessionAdded <- struct{}{}:
	default:
	}
	s.mu.Unlock()
	if err := ss.conn.Attach(tr, 0); err != nil {
		ss.conn.Abort(err)
		return nil, err
	}
	return ss.conn, nil
}
