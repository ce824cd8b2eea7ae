// Package services is the agent's registry of the services the fleet
// brokers to the device: SSH (firmware/sshd), the device's Kubernetes API
// (firmware/kubeproxy) and web apps (firmware/apps) are entries alike, and
// a new service (a TCP port, say) is one more Service added to the
// registry. The registry answers for all of them what every service needs:
// which services the device offers (its hello), whether a stream may be
// accepted (Check), and serving an accepted one until the user's access
// expires (Serve).
//
// (Package firmware/service is something else: the agent's supervision by
// systemd.)
//
// Only firmware/... imports this package.
package services

import (
	"context"
	"fmt"
	"net"
	"slices"
	"time"

	"remoteler.dev/edge/proto"
)

// Service serves the streams of one brokered service.
type Service interface {
	// Name is the service's name in stream headers (proto.ServiceSSH,
	// ServiceKube, ServiceApp, ...).
	Name() string
	// Check decides, before any byte flows, whether to accept a stream:
	// nil accepts; a *proto.Error refuses with its code and message.
	Check(h *proto.StreamHeader) error
	// Serve serves an accepted stream until it ends or ctx is done, and
	// closes conn. It runs on its own goroutine.
	Serve(ctx context.Context, h *proto.StreamHeader, conn net.Conn)
}

// HelloAdder is a Service that adds to the agent's hello what the fleet
// must know of it (the web apps' declarations, say).
type HelloAdder interface {
	Hello(h *proto.Hello)
}

// ExpiryEnforcer is a Service that ends its streams itself when the user's
// access expires, telling the user why (SSH does); the registry cuts the
// streams of other services then.
type ExpiryEnforcer interface {
	EnforcesExpiry() bool
}

// Registry holds the device's services by name. Build it with New; it is
// not changed afterwards, so its methods are safe for concurrent use.
type Registry struct {
	m map[string]Service
	// now is the device's clock (the fleet's time, on devices without a
	// real-time clock); skew is how far past an expiry streams may run,
	// for clocks that disagree.
	now  func() time.Time
	skew time.Duration
}

// New returns a registry of list. now is the device's clock (nil:
// time.Now) and skew the clock skew tolerated at expiry. Two services of
// one name are an error.
func New(now func() time.Time, skew time.Duration, list ...Service) (*Registry, error) {
	if now == nil {
		now = time.Now
	}
	r := &Registry{m: map[string]Service{}, now: now, skew: skew}
	for _, s := range list {
		if s == nil {
			continue
		}
		if _, dup := r.m[s.Name()]; dup {
			return nil, fmt.Errorf("services: %q registered twice", s.Name())
		}
		r.m[s.Name()] = s
	}
	return r, nil
}

// Names lists the services, sorted, for the hello.
func (r *Registry) Names() []string {
	out := make([]string, 0, len(r.m))
	for n := range r.m {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// Hello fills in the hello's services and lets each service add to it.
func (r *Registry) Hello(h *proto.Hello) {
	h.Services = r.Names()
	for _, n := range h.Services {
		if ha, ok := r.m[n].(HelloAdder); ok {
			ha.Hello(h)
		}
	}
}

// Check refuses streams the device cannot serve before any byte flows: a
// header that names no user, a service the device does not offer, and
// whatever the service itself refuses.
func (r *Registry) Check(h *proto.StreamHeader) error {
	if h.Identity.User == "" {
		return proto.Errorf(proto.CodeBadRequest, "stream header names no user")
	}
	s := r.m[h.Service]
	if s == nil {
		return proto.Errorf(proto.CodeNotFound, "this device does not offer %q", h.Service)
	}
	return s.Check(h)
}

// Serve serves an accepted stream with its service. Unless the service
// enforces expiry itself, the stream ends when the user's certificate
// does, as the device's clock sees it, give or take the skew.
func (r *Registry) Serve(ctx context.Context, h *proto.StreamHeader, conn net.Conn) {
	s := r.m[h.Service]
	if s == nil {
		conn.Close()
		return
	}
	if ee, ok := s.(ExpiryEnforcer); (!ok || !ee.EnforcesExpiry()) && h.Identity.Expires > 0 {
		left := time.UnixMilli(h.Identity.Expires).Sub(r.now()) + r.skew
		var stop context.CancelFunc
		ctx, stop = context.WithTimeout(ctx, left)
		defer stop()
	}
	s.Serve(ctx, h, conn)
}

// SessionInfo describes a terminal session that starts, for a service's
// Record hook (Trail.Record, sshd's Config.Record).
type SessionInfo struct {
	// Kind is "shell", "exec", "sftp" or "scp" (legacy scp, an exec) for
	// SSH, "kube.exec" or "kube.attach" for Kubernetes; Command the
	// command.
	Kind    string
	Command string
	// Term, Cols and Rows describe the terminal, when there is one (zero
	// without a terminal).
	Term       string
	Cols, Rows int
}

// Recorder records a session's terminal output (the agent writes asciicast
// files). Its methods must be safe for concurrent use and must not block
// for long: the user's output waits for Output.
type Recorder interface {
	// Output records bytes as they are sent to the user.
	Output(p []byte)
	// Resize records a new terminal size.
	Resize(cols, rows int)
	// Close ends the recording.
	Close() error
}

// InputRecorder is a Recorder that also records what the user types; a
// Recorder that implements it gets the terminal's input.
type InputRecorder interface {
	Input(p []byte)
}

// Ended is the cause, in the context given to a service's Serve, of a
// stream the fleet ended (access ended: proto.SessionEnd), or, in sshd,
// whose certificate expired: the service shows Message to the user where
// its protocol allows (an SSH session's standard error, a kubectl exec's
// error channel) before the stream closes.
type Ended struct{ Message string }

func (e *Ended) Error() string { return "session ended: " + e.Message }

// Trail is the agent's audit trail, as a service that audits what happens
// in its streams itself uses it (Audited).
type Trail struct {
	// Audit records ev in the session of ctx before what it records goes
	// ahead; an error means it could not be kept, and the action must not
	// go ahead.
	Audit func(ctx context.Context, ev *proto.AuditEvent) error
	// Record starts the recording of a terminal session in the session of
	// ctx; nil when it is not recorded (the agent audits why).
	Record func(ctx context.Context, info SessionInfo) Recorder
}

// Audited is a Service that audits what happens in some of its streams
// itself (the requests of a Kubernetes stream whose bytes the fleet only
// relays): the agent gives it its audit trail before serving.
type Audited interface {
	UseTrail(Trail)
}
