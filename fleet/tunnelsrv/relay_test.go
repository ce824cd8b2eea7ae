package tunnelsrv

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"remoteler.dev/edge/proto"
)

// TestSessionHeldByAnotherServer: server c holds a session (OpenVia)
// whose stream server a opens down the device's tunnel (OpenTransport),
// as replica C does for a user whose device's tunnel is on replica A.
// When the device's connection to a ends and the agent reconnects there,
// a does not hold the session and relays the agent's resume to c, which
// re-attaches it: the bytes written meanwhile arrive, once. A new boot of
// the agent (DeviceBoot) ends it; the same boot does not.
func TestSessionHeldByAnotherServer(t *testing.T) {
	pki := newPKI(t)
	a := startServer(t, pki, "127.0.0.1:0")
	c := startServer(t, pki, "127.0.0.1:0")
	relayed := make(chan string, 4)
	a.srv.RelayResumes(func(ctx context.Context, deviceID string, req *proto.Resume, conn net.Conn) (bool, error) {
		// Stands in for fleet/route, which carries the stream to the
		// replica holding the session over the peer connection.
		held, err := c.srv.ResumeRelayed(deviceID, req, func() (net.Conn, error) { return conn, nil })
		if held {
			relayed <- req.SessionID
		}
		return held, err
	})
	_, state := startAgent(t, a, "pi-1", "pi-1", nil)
	waitState(t, state, true)

	ctx := context.Background()
	conn, err := c.srv.OpenVia(ctx, "pi-1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "s1"},
		func(ctx context.Context, h *proto.StreamHeader) (net.Conn, string, error) {
			conn, err := a.srv.OpenTransport(ctx, "pi-1", h)
			return conn, "boot-1", err
		})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	echo(t, conn, strings.Repeat("before ", 20000))
	if a.srv.Sessions("pi-1") != 0 || c.srv.Sessions("pi-1") != 1 {
		t.Fatalf("sessions held: a %d, c %d; want the session on c alone", a.srv.Sessions("pi-1"), c.srv.Sessions("pi-1"))
	}

	// a drops the device's connection (as a replica cut off from its
	// store does); the agent reconnects and resumes.
	a.srv.Shed()
	msg := strings.Repeat("during and after ", 20000)
	go conn.Write([]byte(msg))
	select {
	case id := <-relayed:
		if id != "s1" {
			t.Errorf("a relayed session %q, want s1", id)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the agent's resume did not reach c within 30 s")
	}
	buf := make([]byte, len(msg))
	conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != msg {
		t.Fatalf("echo across the reconnect: %v (%d bytes), want the message back once", err, len(buf))
	}
	conn.SetReadDeadline(time.Time{})

	c.srv.DeviceBoot("pi-1", "boot-1")
	echo(t, conn, "same boot: the session goes on")
	c.srv.DeviceBoot("pi-1", "boot-2")
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Read(make([]byte, 1)); !errors.Is(err, ErrAgentRestarted) {
		t.Fatalf("read after another boot connected = %v, want ErrAgentRestarted", err)
	}
}

// TestOpenTransportNeedsASecret: a relayed stream carries a session held
// elsewhere, which the agent re-attaches with the secret in the header.
func TestOpenTransportNeedsASecret(t *testing.T) {
	a := startServer(t, newPKI(t), "127.0.0.1:0")
	_, state := startAgent(t, a, "pi-1", "pi-1", nil)
	waitState(t, state, true)
	_, err := a.srv.OpenTransport(context.Background(), "pi-1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "s1"})
	var pe *proto.Error
	if !errors.As(err, &pe) || pe.Code != proto.CodeBadRequest {
		t.Fatalf("OpenTransport without a secret = %v, want a bad request", err)
	}
}

// TestResumeRelayedChecksOwnerAndSecret: a relayed resume re-attaches a
// session only for the device that owns it and with its secret; anything
// else is not held here, and the stream is not taken.
func TestResumeRelayedChecksOwnerAndSecret(t *testing.T) {
	pki := newPKI(t)
	a := startServer(t, pki, "127.0.0.1:0")
	c := startServer(t, pki, "127.0.0.1:0")
	_, state := startAgent(t, a, "pi-1", "pi-1", nil)
	waitState(t, state, true)
	conn, err := c.srv.OpenVia(context.Background(), "pi-1", &proto.StreamHeader{Service: proto.ServiceSSH, SessionID: "s1"},
		func(ctx context.Context, h *proto.StreamHeader) (net.Conn, string, error) {
			conn, err := a.srv.OpenTransport(ctx, "pi-1", h)
			return conn, "", err
		})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c.srv.mu.Lock()
	secret := c.srv.sessions["pi-1"]["s1"].secret
	c.srv.mu.Unlock()
	for _, tt := range []struct {
		name, device, session string
		secret                []byte
	}{
		{"another device with the right secret", "pi-2", "s1", secret},
		{"the owner with a wrong secret", "pi-1", "s1", []byte("not the secret")},
		{"the owner, another session", "pi-1", "s2", secret},
	} {
		t.Run(tt.name, func(t *testing.T) {
			held, err := c.srv.ResumeRelayed(tt.device, &proto.Resume{SessionID: tt.session, Secret: tt.secret}, func() (net.Conn, error) {
				t.Error("the stream was taken")
				return nil, errors.New("taken")
			})
			if held || err != nil {
				t.Errorf("ResumeRelayed = %v, %v; want not held", held, err)
			}
		})
	}
	echo(t, conn, "the session is untouched")
}
