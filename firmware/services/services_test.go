package services

import (
	"context"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto"
)

// fake is a service that records how it was served.
type fake struct {
	name    string
	refuse  error
	enforce bool
	served  chan time.Time // the context's deadline, zero for none
}

func (f *fake) Name() string                    { return f.name }
func (f *fake) Check(*proto.StreamHeader) error { return f.refuse }
func (f *fake) Hello(h *proto.Hello)            { h.Apps = append(h.Apps, proto.App{Name: f.name}) }
func (f *fake) EnforcesExpiry() bool            { return f.enforce }
func (f *fake) Serve(ctx context.Context, _ *proto.StreamHeader, conn net.Conn) {
	defer conn.Close()
	d, _ := ctx.Deadline()
	f.served <- d
}

func TestRegistry(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	ssh := &fake{name: "ssh", enforce: true, served: make(chan time.Time, 1)}
	app := &fake{name: "app", served: make(chan time.Time, 1)}
	picky := &fake{name: "picky", refuse: proto.Errorf(proto.CodeForbidden, "no"), served: make(chan time.Time, 1)}
	r, err := New(func() time.Time { return now }, time.Minute, ssh, app, picky)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(nil, 0, ssh, ssh); err == nil {
		t.Error("two services of one name were accepted")
	}
	var h proto.Hello
	r.Hello(&h)
	if !slices.Equal(h.Services, []string{"app", "picky", "ssh"}) || len(h.Apps) != 3 {
		t.Errorf("hello %+v, want the sorted services, each adding its part", h)
	}
	expires := now.Add(time.Hour)
	hdr := func(service string) *proto.StreamHeader {
		return &proto.StreamHeader{Service: service, Identity: proto.Identity{User: "alice", Expires: expires.UnixMilli()}}
	}
	tests := []struct {
		name, service, wantErr string
	}{
		{"offered", "app", ""},
		{"not offered", "vnc", `does not offer "vnc"`},
		{"refused by the service", "picky", "no"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := r.Check(hdr(tt.service))
			if (tt.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("got %v, want %q", err, tt.wantErr)
			}
		})
	}
	noUser := hdr("app")
	noUser.Identity.User = ""
	if err := r.Check(noUser); err == nil || !strings.Contains(err.Error(), "names no user") {
		t.Errorf("a header without a user: %v", err)
	}
	// Streams of other services end at the user's expiry (plus the
	// skew); a service that enforces expiry itself is left to it.
	serve := func(service string, f *fake) time.Time {
		a, b := net.Pipe()
		defer a.Close()
		r.Serve(context.Background(), hdr(service), b)
		return <-f.served
	}
	if d := serve("app", app); d.IsZero() || time.Until(d) > time.Hour+time.Minute+time.Second || time.Until(d) < time.Hour {
		t.Errorf("app stream deadline %v, want about an hour and a minute from now", d)
	}
	if d := serve("ssh", ssh); !d.IsZero() {
		t.Errorf("ssh stream deadline %v, want none (sshd enforces expiry itself)", d)
	}
}
