package broker

import (
	"errors"
	"io"
	"net"
	"sync"
	"time"

	"remoteler.dev/edge/proto/userframe"
)

type closeWriter interface{ CloseWrite() error }

// DefaultMaxDrain bounds what a device may still send the user after the
// fleet cut the session (SpliceOptions.MaxDrain).
const DefaultMaxDrain = 256 << 10

// SpliceOptions adjust a Splicer. The zero value works.
type SpliceOptions struct {
	// Buffered holds bytes already read from the user's connection (an
	// HTTP server's buffer after a hijack); nil for none.
	Buffered io.Reader
	// DevFailed, when set, is called when the device's side fails (it did
	// not come back within the hold time, say), before the user's
	// connection is closed.
	DevFailed func(error)
	// Frames, when set, carries everything sent to the user (the client
	// asked for frames, api.HeaderFrames): the device's bytes as data
	// frames, and Cut's reason as an end frame.
	Frames *userframe.Writer
	// MaxDrain bounds the device's bytes passed on after Cut; default
	// DefaultMaxDrain.
	MaxDrain int64
}

// Splicer copies between a user's connection and a device stream until
// both directions end, passing half-closes on, and lets the fleet cut the
// session (Cut).
//
// Why a cut works this way: the device is the one that can tell an SSH
// user why inside their session (its "remoteler: REASON" line on each
// channel's standard error), so the fleet lets the device's bytes reach
// the user for a while after the cut, bounded in bytes (MaxDrain) and in
// time (the broker closes both sides after Config.EndGrace); but the
// user's input stops at the cut, so a device that does not cooperate gets
// nothing more from the user. And because a busy or hostile device may
// say nothing in time, a client that asked for frames is told the reason
// by the fleet itself, in order with the data, at the moment of the cut
// (proto/userframe): tsh prints it before OpenSSH can see the connection
// close, so the reason never depends on the device, nor on a question
// asked after OpenSSH has exited (and killed its ProxyCommand).
type Splicer struct {
	client, dev net.Conn
	opt         SpliceOptions

	mu      sync.Mutex // guards cut, reason and drained
	cut     bool
	reason  string
	drained int64
	endOnce sync.Once // writes the end frame, once
}

// NewSplicer returns a Splicer of client and dev.
func NewSplicer(client, dev net.Conn, opt SpliceOptions) *Splicer {
	if opt.MaxDrain <= 0 {
		opt.MaxDrain = DefaultMaxDrain
	}
	return &Splicer{client: client, dev: dev, opt: opt}
}

// Splice is NewSplicer(client, dev, {Buffered: buffered, DevFailed:
// devFailed}).Run().
func Splice(client net.Conn, buffered io.Reader, dev net.Conn, devFailed func(error)) (up, down int64, devErr error) {
	return NewSplicer(client, dev, SpliceOptions{Buffered: buffered, DevFailed: devFailed}).Run()
}

// errCut ends the user-to-device copy at a cut.
var errCut = errors.New("broker: the fleet ended the session")

// errDrained ends the device-to-user copy when a cut session's device
// sent more than MaxDrain.
var errDrained = errors.New("broker: the device sent too much after the session was ended")

// Cut ends the session for the fleet, with reason: the user's input stops
// reaching the device at once, the reason goes to a framing client at
// once, and what the device still sends reaches the user up to MaxDrain
// bytes. The caller closes both sides a bounded time later (the broker's
// EndGrace). Cut is safe to call from any goroutine, once or more.
func (s *Splicer) Cut(reason string) {
	s.mu.Lock()
	if s.cut {
		s.mu.Unlock()
		return
	}
	s.cut, s.reason = true, reason
	s.mu.Unlock()
	// Unblock the read of the user's input: nothing more goes up.
	s.client.SetReadDeadline(time.Unix(1, 0))
	if s.opt.Frames != nil {
		// Not on the caller's goroutine (the registry's, which must not
		// wait for a slow user); the device's bytes that follow wait for
		// it (downWriter), so the reason comes first. The write ends
		// when the user reads it or the broker closes the connection.
		go s.writeEnd()
	}
}

// writeEnd writes the end frame, once, whoever calls first.
func (s *Splicer) writeEnd() {
	s.endOnce.Do(func() {
		s.mu.Lock()
		reason := s.reason
		s.mu.Unlock()
		s.opt.Frames.End(reason)
	})
}

func (s *Splicer) isCut() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cut
}

// Run splices until both directions end. It returns the bytes sent to the
// device and back, and why the device's side failed (nil when it ended
// normally). When the device's side fails it calls DevFailed and closes
// the user's connection at once.
func (s *Splicer) Run() (up, down int64, devErr error) {
	var src io.Reader = s.client
	if s.opt.Buffered != nil {
		src = io.MultiReader(s.opt.Buffered, s.client)
	}
	var dst io.Writer = s.client
	if s.opt.Frames != nil {
		dst = downWriter{s}
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		up, _ = io.Copy(s.dev, &upReader{s: s, r: src})
		if s.isCut() {
			return // the device is told, and closed, by the broker
		}
		if cw, ok := s.dev.(closeWriter); ok {
			cw.CloseWrite()
		} else {
			s.dev.Close()
		}
	})
	wg.Go(func() {
		var err error
		down, err = io.Copy(dst, &downReader{s: s, r: s.dev})
		switch {
		case errors.Is(err, errDrained):
			s.client.Close()
			return
		case err != nil && !s.isCut():
			devErr = err
			if s.opt.DevFailed != nil {
				s.opt.DevFailed(err)
			}
			s.client.Close()
			return
		}
		if cw, ok := s.client.(closeWriter); ok {
			cw.CloseWrite()
		} else {
			s.client.Close()
		}
	})
	wg.Wait()
	return up, down, devErr
}

// upReader is the user's input until the cut.
type upReader struct {
	s *Splicer
	r io.Reader
}

func (u *upReader) Read(p []byte) (int, error) {
	if u.s.isCut() {
		return 0, errCut
	}
	n, err := u.r.Read(p)
	if u.s.isCut() {
		return 0, errCut // read as the cut came: not passed on
	}
	return n, err
}

// downWriter frames the device's output, after the end frame once the
// session is cut.
type downWriter struct{ s *Splicer }

func (d downWriter) Write(p []byte) (int, error) {
	if d.s.isCut() {
		d.s.writeEnd()
	}
	return d.s.opt.Frames.Write(p)
}

// downReader is the device's output, bounded after the cut.
type downReader struct {
	s *Splicer
	r io.Reader
}

func (d *downReader) Read(p []byte) (int, error) {
	n, err := d.r.Read(p)
	s := d.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cut {
		left := s.opt.MaxDrain - s.drained
		if int64(n) > left {
			n = int(max(left, 0))
			err = errDrained
		}
		s.drained += int64(n)
	}
	return n, err
}
